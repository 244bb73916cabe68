"""The one settings object of ClipGuard.

Every environment variable the project reads is a field of `Settings`, named
`CLIPGUARD_<FIELD>` in upper case. Settings are read when an app is built
(`Settings.from_env()`), never at import time; explicit keyword arguments win over the
environment. An unknown `CLIPGUARD_*` variable is an error, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streams.errors import ConfigError

ENV_PREFIX = "CLIPGUARD_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, kw_only=True)
class Settings:
    # Kafka and Faust
    kafka_bootstrap: str = "127.0.0.1:9092"
    # How the worker authenticates to Kafka (docs/security.md): SASL_PLAINTEXT or SASL_SSL with
    # a SCRAM user of its own; PLAINTEXT only when asked for, for a broker nobody else reaches.
    kafka_security_protocol: str = "SASL_PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-256"
    kafka_username: str = ""
    kafka_password: str = dataclasses.field(default="", repr=False)
    kafka_ssl_cafile: Path | None = None
    # A worker that dies is out of the group after this, and its partitions move (Kafka's
    # default, 45-60 s, stopped all output that long; docs/kafka.md).
    kafka_session_timeout_s: float = 10.0
    kafka_heartbeat_interval_s: float = 2.0
    # Whether Kafka answers (streams/health.py): a Metadata request every check interval, failed
    # past the timeout. Two failed checks in a row are an outage: /ready answers 503, the log
    # gets one warning, a summary every kafka_outage_summary_s and one line when it ends.
    kafka_check_interval_s: float = 2.0
    kafka_check_timeout_s: float = 2.0
    kafka_outage_summary_s: float = 30.0
    # Tenants whose VMSs publish clip requests on Kafka: each gets its own intake topic
    # (<prefix>.intake.<tenant>) that only its principal may write, and the worker checks that
    # every request there names that tenant.
    kafka_tenants: tuple[str, ...] = ()
    app_id: str = "clipguard"
    topic_prefix: str = "clipguard"
    partitions: int = 4
    replication_factor: int = 1
    store: str = "rocksdb://"
    data_dir: Path = PROJECT_ROOT / ".clipguard" / "worker"

    # HTTP API (served by Faust's web server)
    # web_host:web_port is the URL other workers use to reach this one (Faust's canonical URL);
    # web_bind is the interface to listen on (empty: web_host).
    web_host: str = "127.0.0.1"
    web_bind: str = ""
    web_port: int = 6066
    # Prometheus metrics (docs/metrics.md): GET /metrics on this port, apart from the API, with
    # no key (it shows tenant names, never a clip); 0: not served. metrics_bind: the interface
    # (empty: web_bind, else web_host).
    metrics_port: int = 6068
    metrics_bind: str = ""
    api_keys_file: Path = PROJECT_ROOT / ".clipguard" / "api-keys.json"
    # Shared by the workers of one deployment: they sign lookups they forward to each other with
    # it (api/internal.py) instead of passing on the tenant's key. Created by the first worker.
    internal_secret_file: Path = PROJECT_ROOT / ".clipguard" / "internal-secret"
    sync_timeout_s: float = 30.0
    max_upload_bytes: int = 50 * 1024 * 1024
    # What one tenant's stored uploads may take in all, and its sync=true requests at once
    # (per worker), so one tenant cannot fill the disk or hold every connection.
    tenant_upload_quota_bytes: int = 5 * 1024 * 1024 * 1024
    tenant_sync_limit: int = 8
    # A request body must arrive within this (a slow sender cannot hold an upload open).
    body_timeout_s: float = 60.0
    result_retention_s: float = 7 * 24 * 3600.0
    # Every clip gets a final answer within this: past it, an error result that sends the alarm
    # to a human (a real result arriving later replaces it). streams/ledger.py.
    clip_deadline_s: float = 60.0

    # Where clips may come from. The upload store must not lie under a media root.
    media_roots: tuple[Path, ...] = (PROJECT_ROOT / ".clipguard" / "media",)
    upload_dir: Path = PROJECT_ROOT / ".clipguard" / "uploads"
    http_connect_timeout_s: float = 5.0
    http_read_timeout_s: float = 30.0
    # Hosts (name or address) that http(s) fetches may reach even when they resolve to a
    # loopback, private or link-local address.
    http_allow_hosts: tuple[str, ...] = ()

    # Decode
    sample_fps: float = 3.0
    analysis_height: int = 320
    jpeg_quality: int = 85
    decode_workers: int = 1
    decode_timeout_s: float = 60.0
    max_clip_bytes: int = 50 * 1024 * 1024
    max_duration_s: float = 120.0
    max_width: int = 4096
    max_height: int = 4096
    max_frames: int = 120

    # Classify
    models_dir: Path = PROJECT_ROOT / "models"
    # Clips classified at the same time by one worker, each on `inference_threads` threads.
    # One thread per clip and one clip per core keeps every core busy (docs/performance.md);
    # fewer, wider calls give a single clip lower latency but leave cores idle between calls.
    classify_workers: int = 2
    inference_threads: int = 1
    # JSON file of per-tenant policies (thresholds, risk mapping); empty: built-in defaults.
    policy_file: Path | None = None

    # Logs (streams/logs.py): "text" or "json" (one JSON object a line); ClipGuard's own loggers
    # log at INFO, Faust, aiokafka, mode and the rest at log_level_libraries.
    log_format: str = "text"
    log_level_libraries: str = "WARNING"

    def __post_init__(self) -> None:
        uploads = Path(self.upload_dir).resolve()
        for root in self.media_roots:
            root = Path(root).resolve()
            if uploads == root or root in uploads.parents or uploads in root.parents:
                raise ConfigError(
                    f"the upload store {self.upload_dir} (CLIPGUARD_UPLOAD_DIR) must not overlap "
                    f"the media root {root} (CLIPGUARD_MEDIA_ROOTS): a file:// request could "
                    "then read another tenant's upload"
                )

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: typing.Any
    ) -> Settings:
        """Build settings from `environ` (default: os.environ); `overrides` win."""
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        values: dict[str, typing.Any] = {}
        for var, raw in environ.items():
            if not var.startswith(ENV_PREFIX):
                continue
            name = var[len(ENV_PREFIX) :].lower()
            if name not in fields:
                known = ", ".join(ENV_PREFIX + n.upper() for n in sorted(fields))
                raise ConfigError(f"unknown setting {var}; known settings: {known}")
            values[name] = _parse(var, raw, hints[name])
        unknown = set(overrides) - set(fields)
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}")
        values.update(overrides)
        return cls(**values)


def _parse(var: str, raw: str, hint: typing.Any) -> typing.Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw == "":
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(var, raw, inner)
    if origin is tuple:
        return tuple(_parse(var, part.strip(), args[0]) for part in raw.split(",") if part.strip())
    try:
        if hint is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        return hint(raw)
    except ValueError as exc:
        raise ConfigError(f"setting {var}={raw!r} is not a valid {hint.__name__}") from exc
