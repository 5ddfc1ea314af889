"""The tenants of a stack's Kafka: each one's users, topics and ACLs. L2.

Imports broker.config, broker.errors, broker.identity.tenants, the Kafka adapters, the stack
credentials and the topic registry. The tenants are those declared in
``PERMBROKER_TENANT_POLICIES_DIR`` (one subdirectory per tenant). Each gets an agent, a
service and an operator user (``agent@acme``, ``service@acme``, ``operator@acme``, passwords
added to the stack's credentials file), its decision and grant topics, and the ACLs of
``acls.tenant_table`` and ``acls.tenant_operator``: its principals read only their tenant's
decisions and grants. Idempotent: what exists is kept.
``ensure_tenant_users`` is the users alone, for a cluster the stack did not start
(``permbroker kafka provision``).
"""

from __future__ import annotations

from broker.adapters.kafka import acls
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.admin import ensure_topics, ensure_users
from broker.config import Settings
from broker.errors import ConfigError
from broker.identity.tenants import DEFAULT_TENANT, declared
from broker.stack.credentials import Credentials, credentials_file
from schemas import topics


def owned_topics(tenants: tuple[str, ...]) -> list[topics.Topic]:
    """The topics of their own that ``tenants`` need: each one's, and once there are any, the
    default tenant's."""
    return [t for tenant in ((DEFAULT_TENANT, *tenants) if tenants else ())
            for t in topics.tenant_topics(tenant)]


def apply_acls(admin: KafkaAccess, app_id: str, tenants: tuple[str, ...], *,
               dry_run: bool = False, timeout: float = 30.0) -> acls.Applied:
    """The ACL table of ``tenants``: what is missing created, what the other setup had
    deleted (``acls.withdrawn``: the default tenant's roles reading the shared decision and
    grant topics once tenants are declared, reading its own topics when there are none)."""
    return acls.apply(admin, acls.table(app_id, tenants=tenants), dry_run=dry_run,
                      withdraw=acls.withdrawn(app_id, tenants), timeout=timeout)


def with_tenants(settings: Settings, credentials: Credentials,
                 tenants: tuple[str, ...]) -> Credentials:
    """``credentials`` with a password for each tenant principal, written back when new."""
    more = credentials.with_tenants(tenants)
    if set(more.passwords) != set(credentials.passwords):
        more.write(credentials_file(settings))
    return more


def ensure_tenant_users(settings: Settings, admin: KafkaAccess, tenants: tuple[str, ...],
                        timeout: float = 30.0) -> list[str]:
    """Create the missing Kafka users of ``tenants`` (as admin); the users created. Their
    passwords are those the credentials file keeps, or new ones added to it (0600): a tenant
    user's password is known only from there (``permbroker stack env --role agent@acme``)."""
    if not tenants:
        return []
    path = credentials_file(settings)
    credentials = Credentials.read(path)
    if credentials is None:
        users = ", ".join(topics.tenant_role(r, t) for t in tenants
                          for r in topics.TENANT_PRINCIPALS)
        raise ConfigError(
            f"the tenants' Kafka users ({users}) keep their passwords in the Kafka credentials "
            f"file, and there is none at {path}: set PERMBROKER_KAFKA_CREDENTIALS_FILE to the "
            "file of this cluster's users (as `permbroker stack up` writes it)")
    more = with_tenants(settings, credentials, tenants)
    wanted = {user: more.password(user) for t in tenants
              for user in (topics.tenant_role(r, t) for r in topics.TENANT_PRINCIPALS)}
    return ensure_users(admin, wanted, timeout)


def provision_tenants(settings: Settings, admin: KafkaAccess, credentials: Credentials,
                      timeout: float = 30.0) -> tuple[str, ...]:
    """Users, topics and ACLs of every tenant ``settings`` declares (as admin); the tenants."""
    tenants = declared(settings.tenant_policies_dir)
    if not tenants:
        return ()
    credentials = with_tenants(settings, credentials, tenants)
    ensure_users(admin, credentials.users(), timeout)
    ensure_topics(admin, owned_topics(tenants), timeout=timeout)
    apply_acls(admin, settings.app_id, tenants, timeout=timeout)
    return tenants
