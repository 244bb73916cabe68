"""`clipguard run` (what `make run` starts): the local broker, a development key and a worker."""

from __future__ import annotations

import dataclasses

from devtools import kafka_acl
from devtools.broker import Broker
from streams.settings import PROJECT_ROOT, Settings
from streams.wiring import add_api_key, run_worker

DEV_TENANT = "dev"


def run(settings: Settings) -> int:
    host, _, port = settings.kafka_bootstrap.rpartition(":")
    if host in ("127.0.0.1", "localhost", ""):
        settings = _local_broker(settings, int(port))
    else:  # an existing cluster: nothing to start
        print(f"Kafka: using {settings.kafka_bootstrap} (CLIPGUARD_KAFKA_BOOTSTRAP)")
    for path in (settings.upload_dir, *settings.media_roots):
        path.mkdir(parents=True, exist_ok=True)
    key_note = ""
    if not settings.api_keys_file.exists():
        key = add_api_key(settings.api_keys_file, DEV_TENANT)
        key_note = f"Created a development API key for tenant '{DEV_TENANT}': {key}\n"
    else:
        key = "<a key from " + str(settings.api_keys_file) + ">"
    base = f"http://{settings.web_host}:{settings.web_port}"
    clip = PROJECT_ROOT / "tests" / "fixtures" / "clips" / "people_h264.mp4"
    print(
        f"{key_note}API: {base}  (keys in {settings.api_keys_file})\n"
        f"Try:\n  curl -s -H 'Authorization: Bearer {key}' -F video=@{clip} "
        f"'{base}/api/classify?sync=true'\n",
        flush=True,
    )
    return run_worker(settings)


def _local_broker(settings: Settings, port: int) -> Settings:
    """Start the project's broker; with SASL (the default), its users and ACLs for this
    deployment, and the worker's credentials in the settings it runs with."""
    sasl = settings.kafka_security_protocol.upper() != "PLAINTEXT"
    broker = Broker(PROJECT_ROOT / ".clipguard" / "kafka", port=port, sasl=sasl)
    print(
        f"Kafka broker: {broker.start()} (data in {broker.data_dir}; stop: clipguard broker stop)"
    )
    if not sasl:
        print("Kafka: PLAINTEXT (CLIPGUARD_KAFKA_SECURITY_PROTOCOL): no authentication")
        return settings
    tenants = settings.kafka_tenants or (DEV_TENANT,)
    kafka_acl.prepare(broker, settings.topic_prefix, settings.app_id, tenants)
    users = broker.credentials()
    print(
        f"Kafka: SASL/SCRAM-SHA-256 with ACLs; passwords in {broker.credentials_file}\n"
        + "".join(
            f"  VMS of tenant {t}: user {kafka_acl.vms(t)}, writes {settings.topic(f'intake.{t}')}\n"
            for t in tenants
        )
        + f"  alarm router: user {kafka_acl.ROUTER}, reads {settings.topic('results')}"
    )
    return dataclasses.replace(
        settings,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_username=kafka_acl.WORKER,
        kafka_password=users[kafka_acl.WORKER],
        kafka_tenants=tenants,
    )
