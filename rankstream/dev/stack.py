"""The local stack: a real single-node Apache Kafka broker (KRaft) bound to 127.0.0.1.

Jars come from Maven Central through ``infra/kafka/pom.xml`` and are cached
under the state directory; storage is formatted once; start, stop and status
are idempotent; readiness is a real metadata round trip, not a sleep. The
broker is a child we started, tracked by a PID file and stopped by that PID.

Secure mode (settings with ``security_protocol=SASL_PLAINTEXT`` and a SCRAM
mechanism): the client listener takes SASL/SCRAM only, the StandardAuthorizer
denies whatever no ACL allows, and the settings' user is the super user (its
SCRAM credential is written when the storage is formatted);
:mod:`rankstream.kafka_access` creates the teams' principals and ACLs.
The controller listener takes SASL/PLAIN with the same super user only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankstream.config import Settings
from rankstream.errors import ServiceUnavailable
from rankstream.kafka_admin import broker_ready

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
LOG4J_CONFIG = REPO_ROOT / "infra" / "kafka" / "log4j2.properties"
READY_TIMEOUT_S = 90.0


class StackError(ServiceUnavailable):
    """A failure of the local stack, with a one-line explanation for the user."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    ready: bool
    detail: str


def _kafka_dir(settings: Settings) -> Path:
    return settings.state_path / "kafka"


def _pid_file(settings: Settings) -> Path:
    return _kafka_dir(settings) / "broker.pid"


def _log_file(settings: Settings) -> Path:
    return _kafka_dir(settings) / "broker.log"


def bootstrap_address(settings: Settings) -> str:
    return f"127.0.0.1:{settings.kafka_port}"


# ------------------------------------------------------------------------ jars


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"'{name}' not found on PATH: {hint}")
    return path


def ensure_jars() -> Path:
    """Resolve the broker jars with Maven once; later calls reuse the cache."""
    if not POM.exists():
        raise StackError(f"{POM} not found: the local stack runs from a rankstream source checkout")
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rankstream"
    lib = cache / f"kafka-lib-{digest[:12]}"
    stamp = lib / ".complete"
    if stamp.exists():
        return lib
    mvn = _require_tool("mvn", "install Maven (apt-get install maven) to fetch the Kafka jars")
    _require_tool("java", "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)")
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={lib}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"Maven could not fetch the Kafka jars (exit {proc.returncode}): {last[0][:200]}")
    stamp.write_text(digest)
    return lib


# ----------------------------------------------------------------- processes


def _read_pid(settings: Settings) -> int | None:
    try:
        pid = int(_pid_file(settings).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _is_our_broker(pid, settings) else None


def _is_our_broker(pid: int, settings: Settings) -> bool:
    """True when ``pid`` is alive and is the broker of this state directory."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    config = str(_kafka_dir(settings) / "server.properties").encode()
    return b"kafka.Kafka" in cmdline and config in cmdline


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def secure(settings: Settings) -> bool:
    """Whether the broker of ``settings`` runs in secure mode (SASL/SCRAM listener, ACLs)."""
    return settings.security_protocol == "SASL_PLAINTEXT" and settings.sasl_mechanism.startswith("SCRAM")


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _secure_properties(settings: Settings) -> list[str]:
    port, cport = settings.kafka_port, settings.controller_port
    user, password = _jaas_quote(settings.sasl_username), _jaas_quote(settings.sasl_password)
    mechanism = settings.sasl_mechanism
    scram_module = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain_module = "org.apache.kafka.common.security.plain.PlainLoginModule"
    return [
        f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "inter.broker.listener.name=SASL_PLAINTEXT",
        f"sasl.enabled.mechanisms={mechanism}",
        f"sasl.mechanism.inter.broker.protocol={mechanism}",
        f"listener.name.sasl_plaintext.{mechanism.lower()}.sasl.jaas.config="
        f'{scram_module} required username="{user}" password="{password}";',
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config="
        f'{plain_module} required username="{user}" password="{password}" user_{user}="{password}";',
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{settings.sasl_username}",
        "allow.everyone.if.no.acl.found=false",
    ]


def _server_properties(settings: Settings, data_dir: Path) -> str:
    port, cport = settings.kafka_port, settings.controller_port
    listeners = (
        _secure_properties(settings)
        if secure(settings)
        else [
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
        ]
    )
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}",
            *listeners,
            "controller.listener.names=CONTROLLER",
            f"log.dirs={data_dir}",
            f"num.partitions={settings.partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.retention.hours=168",
            "message.max.bytes=2097152",
            "",
        ]
    )


def _new_cluster_id() -> str:
    """A KRaft cluster id: url-safe base64 of a random UUID, never starting with '-' (the
    storage tool would read it as an option; Kafka's own Uuid.randomUuid skips those too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _format_storage(settings: Settings, lib: Path) -> None:
    kdir = _kafka_dir(settings)
    data = kdir / "data"
    if (data / "meta.properties").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    cluster_id = _new_cluster_id()
    cmd = [
        "java",
        "-cp",
        f"{lib}/*",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(kdir / "server.properties"),
        "--standalone",
    ]
    if secure(settings):  # the super user's SCRAM credential is written with the first metadata records
        scram = f"{settings.sasl_mechanism}=[name={settings.sasl_username},password={settings.sasl_password}]"
        cmd += ["--add-scram", scram]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"formatting Kafka storage failed: {last[0][:200]}")


def start_broker(settings: Settings, ready_timeout_s: float = READY_TIMEOUT_S) -> BrokerStatus:
    """Start the broker unless ours is already running; wait until it answers metadata."""
    if secure(settings) and not (settings.sasl_username and settings.sasl_password):
        raise StackError("a SASL/SCRAM broker needs RANKSTREAM_SASL_USERNAME and RANKSTREAM_SASL_PASSWORD (its admin)")
    bootstrap = bootstrap_address(settings)
    pid = _read_pid(settings)
    if pid is not None:
        if not _wait_ready(settings, pid, bootstrap, ready_timeout_s):
            raise StackError(f"Kafka broker pid {pid} is running but not answering on {bootstrap}")
        return BrokerStatus(True, pid, bootstrap, True, "already running")
    for port in (settings.kafka_port, settings.controller_port):
        if _port_in_use(port):
            raise StackError(
                f"port {port} on 127.0.0.1 is taken by another process: stop it or set "
                f"RANKSTREAM_KAFKA_PORT / RANKSTREAM_KAFKA_CONTROLLER_PORT"
            )
    _require_tool("java", "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)")
    lib = ensure_jars()
    kdir = _kafka_dir(settings)
    kdir.mkdir(parents=True, exist_ok=True)
    (kdir / "server.properties").write_text(_server_properties(settings, kdir / "data"))
    _format_storage(settings, lib)
    log = _log_file(settings).open("ab")
    cmd = [
        "java",
        "-Xms256m",
        "-Xmx768m",
        "-XX:+UseG1GC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={kdir}",
        "-cp",
        f"{lib}/*",
        "kafka.Kafka",
        str(kdir / "server.properties"),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    _pid_file(settings).write_text(str(proc.pid))
    started = time.monotonic()
    if not _wait_ready(settings, proc.pid, bootstrap, ready_timeout_s):
        tail = _log_tail(settings)
        exited = proc.poll() is not None
        if not exited:
            proc.kill()
        proc.wait()
        _pid_file(settings).unlink(missing_ok=True)
        if exited:
            raise StackError(f"Kafka broker exited during start-up (exit {proc.returncode}): {tail}")
        raise StackError(f"Kafka broker did not become ready within {ready_timeout_s:.0f}s: {tail}")
    return BrokerStatus(True, proc.pid, bootstrap, True, f"started in {time.monotonic() - started:.1f}s")


def _security(settings: Settings) -> dict[str, Any]:
    """The client security settings to reach this broker (none for a plaintext one)."""
    kwargs = settings.kafka_python_kwargs()
    kwargs.pop("bootstrap_servers", None)
    return kwargs if secure(settings) else {}


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (checked by state, not cmdline:
    right after fork the child still shows the parent's command line)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_ready(settings: Settings, pid: int, bootstrap: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return False
        if broker_ready(bootstrap, timeout_s=2.0, security=_security(settings)):
            return True
        time.sleep(0.3)
    return False


def _log_tail(settings: Settings) -> str:
    try:
        lines = [ln for ln in _log_file(settings).read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return "no broker log"
    errors = [ln for ln in lines if "ERROR" in ln or "Exception" in ln]
    return (errors or lines or ["empty broker log"])[-1][:300]


def stop_broker(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop our broker by its PID (SIGTERM, then SIGKILL). Returns whether one was running."""
    pid = _read_pid(settings)
    if pid is None:
        _pid_file(settings).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _is_our_broker(pid, settings):
        _reap(pid)
        time.sleep(0.2)
    if _is_our_broker(pid, settings):
        os.kill(pid, signal.SIGKILL)
        while _is_our_broker(pid, settings):
            _reap(pid)
            time.sleep(0.1)
    _reap(pid)
    _pid_file(settings).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status when the broker is our own child (avoids a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def running_bootstrap(settings: Settings) -> str:
    """Bootstrap address of the broker of this state directory (its config wins over settings)."""
    try:
        props = (_kafka_dir(settings) / "server.properties").read_text().splitlines()
    except FileNotFoundError:
        return bootstrap_address(settings)
    for line in props:
        if line.startswith(("advertised.listeners=PLAINTEXT://", "advertised.listeners=SASL_PLAINTEXT://")):
            return line.split("//", 1)[1].strip()
    return bootstrap_address(settings)


def broker_status(settings: Settings) -> BrokerStatus:
    bootstrap = running_bootstrap(settings)
    pid = _read_pid(settings)
    if pid is None:
        return BrokerStatus(False, None, bootstrap, False, "not running")
    ready = broker_ready(bootstrap, security=_security(settings))
    return BrokerStatus(True, pid, bootstrap, ready, "ready" if ready else "starting or unhealthy")
