"""An example resource service that permbroker protects: freezing a payment account.

Run it with the settings of a resource service (its Kafka user is the ``service`` role):

    uvicorn --app-dir examples payments_service:app --port 8081

``permbroker dev`` starts it for you. The caller proves who it is with a grant token
(``Authorization: Bearer <grant token>``, audience ``payments``); the service's grant view, fed
by the ``permbroker.grants.payments`` topic, decides whether that agent holds
``payments:accounts.freeze`` on the account. Anything else is a 403 with the reason (503 while
the view cannot vouch for its freshness).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.jwks import JwksView
from broker.config import Settings
from broker.sdk.resource.fastapi_deps import require_scope
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.view import GrantView
from schemas.topics import grant_topic

AUDIENCE = "payments"
# The caller must hold payments:accounts.freeze on the account in the path.
CanFreeze = Annotated[Verdict, Depends(require_scope("payments:accounts.freeze",
                                                     resource="{account_id}"))]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Follow the payments grant topic and the broker's published keys while the app runs."""
    settings = Settings()
    kafka = KafkaAccess.from_settings(settings)
    keys = JwksView.from_settings(settings, kafka)  # the broker's chain of trust, from its anchor
    view = GrantView(kafka, trust=keys.trust, topic=grant_topic(AUDIENCE).name)
    view.wait_ready(30)
    app.state.grant_view = view
    app.state.grant_verifier = GrantTokenVerifier(keys, audience=AUDIENCE,
                                                  issuer=settings.token_issuer, grants=view)
    try:
        yield
    finally:
        view.close()
        keys.close()


app = FastAPI(title="payments (permbroker example)", lifespan=lifespan)


@app.get("/healthz")
def healthz() -> dict[str, object]:
    """Whether the grant view is current (a stale view denies every check)."""
    freshness = app.state.grant_view.freshness()
    return {"fresh": freshness.fresh, "problem": freshness.problem}


@app.post("/accounts/{account_id}/freeze")
def freeze(account_id: str, verdict: CanFreeze) -> dict[str, str]:
    """Freeze an account: only for a caller holding payments:accounts.freeze on it."""
    return {"account": account_id, "status": "frozen", "allowed_by": verdict.reason}
