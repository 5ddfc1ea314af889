"""Kafka for the local stack: jars from Maven Central, KRaft config, format, argv. Imports stdlib.

Also imports broker.config, broker.errors, stack credentials and procs. The jars are resolved
once per version into the cache dir with a small pom (kafka-pom.xml); a marker file written
last tells a complete download from a half one.

Security, on every stack this tooling starts: clients authenticate with SASL/SCRAM-SHA-512 on
the CLIENT listener (also the brokers' own listener, as the ``broker`` user); the controller
listener takes SASL/PLAIN from the static ``controller`` user only (SCRAM users live in the
metadata log, which the controllers must reach first; an unauthenticated controller listener
would make any local process a super user). KRaft's StandardAuthorizer with
``allow.everyone.if.no.acl.found=false``: no ACL, no access; ``admin``, ``broker`` and
``controller`` are the super users. server.properties holds two passwords: it is written 0600.
"""

from __future__ import annotations

import base64
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from broker.config import Settings
from broker.errors import StackError
from broker.stack.credentials import BROKER, CONTROLLER, Credentials
from broker.stack.procs import locked, tail

Progress = Callable[[str], None]

_MARKER = "COMPLETE"
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
# slf4j-simple writes to stderr (our log file). INFO without the ~1000-line config dumps.
_LOGGING = (
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
    "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.common.config.AbstractConfig=warn",
    "-Dorg.slf4j.simpleLogger.log.state.change.logger=warn",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSZ",
)
_JVM = ("-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true")


def tool(name: str) -> str:
    """Absolute path of an executable on PATH, or StackError."""
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not installed (run `make deps`, or install it yourself)")
    return path


def kafka_home(settings: Settings) -> Path:
    """Cache dir of one Kafka version (holds pom.xml, libs/, the marker and mvn.log)."""
    if not _VERSION.match(settings.kafka_version):
        raise StackError(f"kafka_version must look like 4.1.1, got {settings.kafka_version!r}")
    return settings.cache_dir.expanduser().resolve() / f"kafka-{settings.kafka_version}"


def ensure_jars(settings: Settings, progress: Progress) -> Path:
    """The libs dir of the configured Kafka version, resolved with Maven if not cached yet."""
    home = kafka_home(settings)
    libs = home / "libs"
    with locked(home / ".lock"):
        if (home / _MARKER).is_file() and libs.is_dir():
            return libs
        progress(f"Resolving Apache Kafka {settings.kafka_version} jars from Maven Central "
                 f"into {libs} (first run only, about 45 MB)")
        started = time.monotonic()
        _resolve(home, settings.kafka_version)
        count = len(list(libs.glob("*.jar")))
        progress(f"Resolved {count} jars in {time.monotonic() - started:.1f}s")
    return libs


def _resolve(home: Path, version: str) -> None:
    """Run Maven into libs.partial, then rename it to libs and write the marker."""
    libs, partial, log = home / "libs", home / "libs.partial", home / "mvn.log"
    (home / _MARKER).unlink(missing_ok=True)
    for stale in (libs, partial):
        shutil.rmtree(stale, ignore_errors=True)
    template = resources.files("broker.stack").joinpath("kafka-pom.xml").read_text()
    (home / "pom.xml").write_text(template.replace("@KAFKA_VERSION@", version))
    cmd = [tool("mvn"), "-q", "-B", "-Dstyle.color=never", "-f", str(home / "pom.xml"),
           "dependency:copy-dependencies", "-DincludeScope=runtime",
           f"-DoutputDirectory={partial}"]
    with log.open("wb") as out:
        try:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                  stdin=subprocess.DEVNULL, timeout=900, check=False).returncode
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"Maven did not finish within 15 min; see {log}") from exc
    if code != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        raise StackError(f"Maven could not resolve Kafka {version} (exit {code}):\n{tail(log)}")
    partial.rename(libs)
    (home / _MARKER).write_text("\n".join(sorted(p.name for p in libs.glob("*.jar"))) + "\n")


MECHANISM = "SCRAM-SHA-512"
SUPER_USERS = ("admin", BROKER, CONTROLLER)


def listeners(port: int, cport: int, host: str = "127.0.0.1") -> dict[str, str]:
    """The CLIENT (SASL/SCRAM, also inter-broker) and CONTROLLER (SASL/PLAIN) listeners."""
    return {
        "listeners": f"CLIENT://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"CLIENT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "CLIENT",
        "listener.security.protocol.map": "CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
    }


def security(credentials: Credentials) -> dict[str, str]:
    """Authentication and authorization settings of every node (see the module docstring)."""
    broker, controller = credentials.password(BROKER), credentials.password(CONTROLLER)
    return {
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "listener.name.client.sasl.enabled.mechanisms": MECHANISM,
        "listener.name.client.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER}" password="{broker}";',
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config":
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{CONTROLLER}" password="{controller}" '
            f'user_{CONTROLLER}="{controller}";',
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": ";".join(f"User:{user}" for user in SUPER_USERS),
        "auto.create.topics.enable": "false",  # topics come from the admin (and workers' CREATE)
    }


def write_secret_properties(path: Path, props: dict[str, str]) -> Path:
    """Write a properties file readable by this user only (it holds passwords)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("".join(f"{key}={value}\n" for key, value in props.items()))
    return path


def write_properties(settings: Settings, kafka_dir: Path, credentials: Credentials) -> Path:
    """server.properties of a single-node KRaft cluster (broker + controller) on loopback."""
    port, cport = settings.kafka_port, settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{cport}",
        **listeners(port, cport),
        **security(credentials),
        "log.dirs": str(kafka_dir / "data"),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    return write_secret_properties(kafka_dir / "server.properties", props)


def cluster_id(kafka_dir: Path) -> str:
    """The cluster id kept in the stack dir, created once (Kafka's base64url 16-byte Uuid)."""
    path = kafka_dir / "cluster.id"
    if path.is_file():
        return path.read_text().strip()
    value = "-"
    while value.startswith("-"):  # Kafka never issues ids that look like a CLI flag
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    path.write_text(value + "\n")
    return value


def formatted(kafka_dir: Path) -> bool:
    """Whether the node's KRaft log dir has been formatted."""
    return (kafka_dir / "data" / "meta.properties").is_file()


def format_once(libs: Path, kafka_dir: Path, properties: Path, credentials: Credentials) -> None:
    """Format the KRaft log dir (with every SCRAM user) unless it already holds meta.properties.

    The users exist from the first start: the brokers authenticate to each other as one of them.
    """
    if formatted(kafka_dir):
        return
    users = [arg for user, password in credentials.users().items()
             for arg in ("--add-scram", f"{MECHANISM}=[name={user},password={password}]")]
    cmd = [tool("java"), *_LOGGING, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
           "-t", cluster_id(kafka_dir), "-c", str(properties), *users]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,  # noqa: S603
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StackError("formatting the Kafka log dir did not finish within 120s") from exc
    if done.returncode != 0:  # the output names the file, never the passwords of the argv
        raise StackError(f"formatting the Kafka log dir failed:\n{done.stdout}{done.stderr}")


def server_argv(libs: Path, properties: Path, heap: tuple[str, ...] = (),
                extra: str = "") -> list[str]:
    """The java command line of the broker (``heap``: -Xms/-Xmx replacing the default ones;
    ``extra``: more JVM options, after them, so they win)."""
    jvm = [*heap, *(o for o in _JVM if not (heap and o.startswith(("-Xms", "-Xmx")))),
           *shlex.split(extra)]
    return [tool("java"), *jvm, *_LOGGING, "-cp", f"{libs}/*", "kafka.Kafka", str(properties)]
