"""A single-node Apache Kafka broker (KRaft) that the project starts by itself.

ClipGuard runs on real Apache Kafka (docs/kafka.md says why no lighter broker will do). No
tarball is downloaded: `dev/kafka/pom.xml` names the broker's jars, Maven fetches them once
into `dev/kafka/libs/`, and `Broker` runs `java -cp 'libs/*' kafka.Kafka` detached, with its
configuration, pid file, log file and data in one data directory. Stdlib only, so it works
before anything else of the project is importable.

    broker = Broker(Path(".clipguard/kafka"))
    bootstrap = broker.start()   # "127.0.0.1:9092" once the broker answers a metadata request
    broker.stop()
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streams.errors import BrokerError
from streams.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

KAFKA_DIR = PROJECT_ROOT / "dev" / "kafka"
LIBS_DIR = KAFKA_DIR / "libs"
DEFAULT_DATA_DIR = PROJECT_ROOT / ".clipguard" / "kafka"
DEFAULT_PORT = 9092
# The machine has 2 cores shared with decoders and inference. A broker with a few small topics
# lives well in this heap; the serial collector needs no GC threads; C1-only JIT halved start-up
# here (5.9-7.4 s -> 2.0-3.7 s) and Kafka is not the bottleneck of a video pipeline.
JVM_OPTS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# Written next to the jars: when pom.xml changes, libs/ no longer matches it and is fetched again.
_POM_STAMP = ".pom.sha256"
_LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    # The broker answered a metadata request and lists itself: clients can use it.
    ready: bool
    bootstrap: str
    cluster_id: str | None
    data_dir: Path

    def __str__(self) -> str:
        if not self.running:
            return f"stopped (data dir {self.data_dir})"
        state = "ready" if self.ready else "starting or not answering"
        return (
            f"running, pid {self.pid}, {state}, bootstrap {self.bootstrap}, "
            f"cluster {self.cluster_id or '?'} (data dir {self.data_dir})"
        )


class Broker:
    """One Kafka process that is both KRaft controller and broker, data in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        controller_port: int | None = None,
        *,
        sasl: bool | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.controller_port = port + 1 if controller_port is None else controller_port
        # SASL/SCRAM with ACLs unless asked otherwise (plaintext: nothing but this machine
        # may reach the broker); None: as the data dir was set up, else SASL.
        marker = self.data_dir / "security"
        if sasl is None:
            sasl = not (marker.exists() and marker.read_text().strip() == "plaintext")
        self.sasl = sasl
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def credentials_file(self) -> Path:
        """Passwords of the broker's SCRAM users (admin and those devtools/kafka_acl.py adds)."""
        return self.data_dir / "credentials.json"

    def credentials(self) -> dict[str, str]:
        try:
            users = json.loads(self.credentials_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise BrokerError(f"{self.credentials_file} is not valid JSON: {exc}") from exc
        if not isinstance(users, dict):
            raise BrokerError(f"{self.credentials_file} must be a JSON object of passwords")
        return {str(k): str(v) for k, v in users.items()}

    def save_credentials(self, users: dict[str, str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _write_private(self.credentials_file, json.dumps(users, indent=2) + "\n")

    @property
    def admin_password(self) -> str:
        users = self.credentials()
        if "admin" not in users:
            users["admin"] = secrets.token_urlsafe(24)
            self.save_credentials(users)
        return users["admin"]

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        """Kafka's own `log.dirs`: the topic partitions and the KRaft metadata log."""
        return self.data_dir / "logs"

    # -- jars ---------------------------------------------------------------------------

    @staticmethod
    def ensure_jars() -> Path:
        """Fetch the broker's jars with Maven unless libs/ already matches pom.xml."""
        pom = KAFKA_DIR / "pom.xml"
        want = hashlib.sha256(pom.read_bytes()).hexdigest()
        stamp = LIBS_DIR / _POM_STAMP
        if stamp.is_file() and stamp.read_text().strip() == want:
            return LIBS_DIR
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                "Maven (mvn) is not on PATH; it fetches the Kafka jars once into "
                f"{LIBS_DIR} (Debian: apt-get install maven)"
            )
        # Fetch into a fresh folder and swap it in whole, so an interrupted download never
        # leaves a libs/ that looks complete.
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=KAFKA_DIR))
        try:
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
            ]
            log.info("fetching Kafka jars: %s", " ".join(cmd))
            done = subprocess.run(
                cmd,
                cwd=KAFKA_DIR,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
                output = (done.stdout + done.stderr).strip().splitlines()
                raise BrokerError(
                    f"mvn could not fetch the Kafka jars (exit {done.returncode}); "
                    "last lines:\n" + "\n".join(output[-_LOG_TAIL_LINES:])
                )
            (staging / _POM_STAMP).write_text(want + "\n")
            if LIBS_DIR.exists():
                shutil.rmtree(LIBS_DIR)
            staging.rename(LIBS_DIR)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return LIBS_DIR

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout_s: float = 90) -> str:
        """Start the broker (formatting its storage the first time) and return the bootstrap
        address once it answers a metadata request. A broker already running from this data
        dir is reused."""
        pid = self._running_pid()
        if pid is not None:
            log.info("broker already running from %s (pid %d)", self.data_dir, pid)
            self._wait_ready(pid, timeout_s)
            return self.bootstrap

        java = _java()
        libs = self.ensure_jars()
        for port in (self.port, self.controller_port):
            _check_port_free(self.host, port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.log_dir / "meta.properties").exists():
            self._format(java, libs)

        if self.log_file.exists():
            self.log_file.replace(self.log_file.with_name("broker.log.1"))
        cmd = [
            java,
            *JVM_OPTS,
            *self._log_opts(),
            "-cp",
            str(libs / "*"),
            "kafka.Kafka",
            str(self.config_file),
        ]
        with self.log_file.open("ab") as out:
            # Own session: a Ctrl-C in the terminal that ran `clipguard broker start` must not
            # reach the broker, which lives on after this process exits.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        started = time.monotonic()
        try:
            self._wait_ready(self._proc.pid, timeout_s)
        except BrokerError:
            self._terminate(self._proc.pid, 10)
            raise
        log.info(
            "Kafka broker ready at %s in %.1f s (pid %d, data %s)",
            self.bootstrap,
            time.monotonic() - started,
            self._proc.pid,
            self.data_dir,
        )
        return self.bootstrap

    def stop(self, timeout_s: float = 30) -> bool:
        """SIGTERM the broker, SIGKILL it after `timeout_s`; False if none was running."""
        pid = self._running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._terminate(pid, timeout_s)
        return True

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        cluster_id = None
        if pid is not None:
            with contextlib.suppress(OSError, ValueError):
                cluster_id = self._probe()
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            ready=cluster_id is not None,
            bootstrap=self.bootstrap,
            cluster_id=cluster_id,
            data_dir=self.data_dir,
        )

    # -- internals ----------------------------------------------------------------------

    def _write_config(self) -> None:
        fields = {
            "host": self.host,
            "port": self.port,
            "controller_port": self.controller_port,
            "log_dir": self.log_dir,
            "admin_password": self.admin_password if self.sasl else "",
        }
        listeners = "sasl" if self.sasl else "plaintext"
        listener_config = string.Template(
            (KAFKA_DIR / f"{listeners}.properties.template").read_text()
        ).substitute(fields)
        template = string.Template((KAFKA_DIR / "server.properties.template").read_text())
        # Holds the admin password: private, like the credentials file.
        _write_private(
            self.config_file, template.substitute(fields, listener_config=listener_config)
        )
        self._check_security_matches()

    def _check_security_matches(self) -> None:
        """A data dir formatted for one listener setup cannot start with the other."""
        marker = self.data_dir / "security"
        wanted = "sasl" if self.sasl else "plaintext"
        if (self.log_dir / "meta.properties").exists() and marker.exists():
            found = marker.read_text().strip()
            if found != wanted:
                raise BrokerError(
                    f"the broker in {self.data_dir} was formatted for {found}, not {wanted}: "
                    "start it as before, or remove the data dir to start afresh"
                )
        marker.write_text(wanted + "\n")

    def _log_opts(self) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
        ]

    def _format(self, java: str, libs: Path) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        cmd = [
            java,
            *JVM_OPTS,
            *self._log_opts(),
            "-cp",
            str(libs / "*"),
            "kafka.tools.StorageTool",
            "format",
            # One argument: a base64 id starting with "-" (1 in 64) would read as an option.
            f"--cluster-id={cluster_id}",
            "--config",
            str(self.config_file),
        ]
        if self.sasl:  # the super user must exist before the broker first talks to itself
            cmd += ["--add-scram", f"SCRAM-SHA-256=[name=admin,password={self.admin_password}]"]
        done = subprocess.run(
            cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
        )
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines()
            raise BrokerError(
                f"formatting Kafka storage in {self.log_dir} failed (exit {done.returncode}); "
                "last lines:\n" + "\n".join(lines[-_LOG_TAIL_LINES:])
            )
        log.info("formatted Kafka storage in %s, cluster id %s", self.log_dir, cluster_id)

    def _wait_ready(self, pid: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self._alive(pid):
                raise BrokerError(
                    f"the Kafka broker (pid {pid}) exited while starting; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}"
                )
            try:
                if self._probe() is not None:
                    return
            except (OSError, ValueError):
                pass  # not listening yet, or closed the connection while starting
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the Kafka broker (pid {pid}) did not answer on {self.bootstrap} within "
                    f"{timeout_s:.0f} s; last lines of {self.log_file}:\n{self._log_tail()}"
                )
            time.sleep(0.2)

    def _probe(self) -> str | None:
        plain = ("admin", self.admin_password) if self.sasl else None
        return probe_metadata(self.host, self.port, timeout_s=2.0, plain=plain)

    def _terminate(self, pid: int, timeout_s: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout_s):
            log.warning(
                "Kafka broker pid %d ignored SIGTERM for %.0f s; killing it", pid, timeout_s
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_exit(pid, 10):
                raise BrokerError(f"the Kafka broker (pid {pid}) survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        self._proc = None

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _alive(self, pid: int) -> bool:
        # A child of this process stays a zombie (and "alive" to kill -0) until it is reaped.
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return _pid_alive(pid)

    def _running_pid(self) -> int | None:
        """The pid in the pid file if that process is still our broker (pids get reused)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not self._alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if b"kafka.Kafka" not in cmdline or str(self.config_file).encode() not in cmdline:
            return None
        return pid

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])


def _java() -> str:
    # JAVA_HOME first, as Kafka's own kafka-run-class.sh does, then PATH.
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "Java is not installed (no java on PATH, no JAVA_HOME); Kafka 4 needs Java 17 or "
            "newer (Debian: apt-get install openjdk-17-jre-headless)"
        )
    return java


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # Field 3 of /proc/PID/stat is the state; Z is a zombie waiting for its parent.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Java's server sockets use SO_REUSEADDR, so a port in TIME_WAIT is free for Kafka.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BrokerError(
                f"port {port} on {host} is already in use ({exc.strerror}); another Kafka or "
                "another program holds it: stop it or choose other ports (--port N uses N and "
                "N+1)"
            ) from exc


def probe_metadata(
    host: str, port: int, timeout_s: float = 2.0, plain: tuple[str, str] | None = None
) -> str | None:
    """Send one Kafka Metadata request (v4, no topics) and return the cluster id once the
    broker lists at least one live broker, else None. Raises OSError if nothing answers.

    `plain`: (user, password) to authenticate first with SASL/PLAIN (a SASL listener)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        if plain is not None:
            _sasl_plain(sock, *plain)
        # Metadata v4 is the oldest version Kafka 4 still serves (KIP-896) and is not yet a
        # "flexible" version, so it is plain fixed-width fields.
        body = struct.pack(">ib", 0, 0)  # empty topic list; allow_auto_topic_creation=false
        data = _call(sock, api_key=3, api_version=4, correlation_id=1, body=body)
    reader = _Reader(data)
    if reader.int32() != 1:  # the correlation id of the metadata request
        raise ValueError("metadata response for another request")
    reader.int32()  # throttle_time_ms
    brokers = reader.int32()
    for _ in range(brokers):
        reader.int32()  # node_id
        reader.string()  # host
        reader.int32()  # port
        reader.string()  # rack
    cluster_id = reader.string()
    return cluster_id if brokers > 0 and cluster_id else None


def _call(
    sock: socket.socket, *, api_key: int, api_version: int, correlation_id: int, body: bytes
) -> bytes:
    """One request with a v1 (non-flexible) header; the response without its size."""
    client_id = b"clipguard-probe"
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id))
    request = header + client_id + body
    sock.sendall(struct.pack(">i", len(request)) + request)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    return _recv_exact(sock, size)


def _sasl_plain(sock: socket.socket, user: str, password: str) -> None:
    """SaslHandshake v1 (PLAIN), then SaslAuthenticate v0; ValueError when refused."""
    mechanism = b"PLAIN"
    reply = _call(
        sock,
        api_key=17,
        api_version=1,
        correlation_id=101,
        body=struct.pack(">h", len(mechanism)) + mechanism,
    )
    if struct.unpack_from(">h", reply, 4)[0] != 0:
        raise ValueError("the broker does not take SASL/PLAIN")
    token = b"\0" + user.encode() + b"\0" + password.encode()
    reply = _call(
        sock,
        api_key=36,
        api_version=0,
        correlation_id=102,
        body=struct.pack(">i", len(token)) + token,
    )
    if struct.unpack_from(">h", reply, 4)[0] != 0:
        raise ValueError("the broker refused the probe's SASL/PLAIN login")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it holds a password)."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temp, path)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("Kafka closed the connection mid-response")
        chunks += chunk
    return bytes(chunks)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> str | None:
        (length,) = struct.unpack_from(">h", self.data, self.pos)
        self.pos += 2
        if length < 0:
            return None
        value = self.data[self.pos : self.pos + length].decode()
        self.pos += length
        return value


def _configured_port(data_dir: Path) -> int | None:
    """The PLAINTEXT port the broker in `data_dir` was last started with."""
    try:
        lines = (data_dir / "server.properties").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("advertised.listeners="):
            with contextlib.suppress(ValueError):
                return int(line.rsplit(":", 1)[1])
    return None


def cli(argv: Sequence[str]) -> int:
    """`clipguard broker start|stop|status [--port N] [--data-dir D]`."""
    parser = argparse.ArgumentParser(
        prog="clipguard broker",
        description="Run the local single-node Apache Kafka broker (KRaft) of ClipGuard.",
    )
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"client port (default {DEFAULT_PORT}, or for stop/status the port "
        "the data dir was last started with); the controller uses PORT+1",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="configuration, log and data of the broker (default %(default)s)",
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        help="no authentication (SASL/SCRAM and ACLs are on by default); only for a broker "
        "nothing but this machine can reach",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="seconds to wait for the broker to answer (default %(default)s)",
    )
    args = parser.parse_args(list(argv))

    port = args.port
    if port is None:
        port = DEFAULT_PORT if args.action == "start" else _configured_port(args.data_dir)
    sasl = False if args.plaintext else None  # None: as the data dir was set up, else SASL
    broker = Broker(args.data_dir, port=port or DEFAULT_PORT, sasl=sasl)
    try:
        if args.action == "start":
            print(broker.start(timeout_s=args.timeout))
            return 0
        if args.action == "stop":
            print("stopped" if broker.stop() else "not running")
            return 0
        status = broker.status()
        print(status)
        # LSB convention: 3 means "not running".
        return 0 if status.ready else (1 if status.running else 3)
    except BrokerError as exc:
        print(f"clipguard broker {args.action}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(cli(sys.argv[1:]))
