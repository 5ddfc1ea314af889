"""Kafka for the local stack: jars from Maven Central, KRaft config, format, argv. Imports stdlib.

Also imports broker.config, broker.errors and stack_procs. The jars are resolved once per
version into the cache dir with a small pom (kafka-pom.xml); a marker file written last tells a
complete download from a half one.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from broker.config import Settings
from broker.errors import StackError
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


def write_properties(settings: Settings, kafka_dir: Path) -> Path:
    """server.properties of a single-node KRaft cluster (broker + controller) on loopback."""
    port, cport = settings.kafka_port, settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{cport}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(kafka_dir / "data"),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    path = kafka_dir / "server.properties"
    path.write_text("".join(f"{key}={value}\n" for key, value in props.items()))
    return path


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


def format_once(libs: Path, kafka_dir: Path, properties: Path) -> None:
    """Format the KRaft log dir unless it already holds meta.properties."""
    if (kafka_dir / "data" / "meta.properties").is_file():
        return
    cmd = [tool("java"), *_LOGGING, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
           "-t", cluster_id(kafka_dir), "-c", str(properties)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,  # noqa: S603
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StackError("formatting the Kafka log dir did not finish within 120s") from exc
    if done.returncode != 0:
        raise StackError(f"formatting the Kafka log dir failed:\n{done.stdout}{done.stderr}")


def server_argv(libs: Path, properties: Path, heap: tuple[str, ...] = ()) -> list[str]:
    """The java command line of the broker (``heap``: -Xms/-Xmx replacing the default ones)."""
    jvm = [*heap, *(o for o in _JVM if not (heap and o.startswith(("-Xms", "-Xmx"))))]
    return [tool("java"), *jvm, *_LOGGING, "-cp", f"{libs}/*", "kafka.Kafka", str(properties)]
