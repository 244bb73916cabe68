"""Users and ACLs of the project's broker: who may write and read what (docs/security.md).

Kafka's StandardAuthorizer denies everything no ACL allows. The principals of a deployment:
- the worker (`clipguard-worker`): everything on its own topics and consumer group;
- a VMS of tenant T (`vms-T`): write its tenant's intake topic only;
- an alarm router (`router`): read the results topic, in groups named `router...`.

aiokafka has no admin calls for SCRAM users or ACLs, so this development tooling uses
confluent-kafka (librdkafka), connected as the broker's super user.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from devtools.broker import Broker
from streams.errors import BrokerError

WORKER = "clipguard-worker"
ROUTER = "router"
TIMEOUT_S = 30


def vms(tenant: str) -> str:
    return f"vms-{tenant}"


@dataclass(frozen=True)
class Grant:
    principal: str
    resource: ResourceType
    name: str
    operations: tuple[AclOperation, ...]
    pattern: ResourcePatternType = ResourcePatternType.LITERAL


def worker_grants(prefix: str, app_id: str, principal: str = WORKER) -> list[Grant]:
    """The worker's topics (`<prefix>.`, Faust's `<app_id>-` changelogs) and its group."""
    everything = (AclOperation.ALL,)
    return [
        Grant(
            principal, ResourceType.TOPIC, f"{prefix}.", everything, ResourcePatternType.PREFIXED
        ),
        Grant(
            principal, ResourceType.TOPIC, f"{app_id}-", everything, ResourcePatternType.PREFIXED
        ),
        Grant(principal, ResourceType.GROUP, app_id, everything, ResourcePatternType.PREFIXED),
        Grant(principal, ResourceType.BROKER, "kafka-cluster", (AclOperation.DESCRIBE,)),
    ]


def vms_grants(prefix: str, tenant: str) -> list[Grant]:
    topic = f"{prefix}.intake.{tenant}"
    return [
        Grant(vms(tenant), ResourceType.TOPIC, topic, (AclOperation.WRITE, AclOperation.DESCRIBE))
    ]


def router_grants(prefix: str) -> list[Grant]:
    return [
        Grant(
            ROUTER,
            ResourceType.TOPIC,
            f"{prefix}.results",
            (AclOperation.READ, AclOperation.DESCRIBE),
        ),
        Grant(
            ROUTER, ResourceType.GROUP, ROUTER, (AclOperation.READ,), ResourcePatternType.PREFIXED
        ),
    ]


def admin_client(broker: Broker) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": broker.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": "admin",
            "sasl.password": broker.admin_password,
        }
    )


def add_users(broker: Broker, names: Iterable[str]) -> dict[str, str]:
    """SCRAM-SHA-256 users with new random passwords (kept ones keep theirs); all passwords."""
    users = broker.credentials()
    new = {name: secrets.token_urlsafe(18) for name in names if name not in users}
    if new:
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192)
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(name, info, password.encode())
            for name, password in new.items()
        ]
        client = admin_client(broker)  # held: futures fail once their client is collected
        futures = client.alter_user_scram_credentials(upserts)
        for name, future in futures.items():
            try:
                future.result(TIMEOUT_S)
            except Exception as exc:  # confluent-kafka raises KafkaException
                raise BrokerError(f"could not create Kafka user {name}: {exc}") from exc
        users |= new
        broker.save_credentials(users)
    return users


def grant(broker: Broker, grants: Iterable[Grant]) -> None:
    bindings = [
        AclBinding(
            g.resource,
            g.name,
            g.pattern,
            f"User:{g.principal}",
            "*",
            operation,
            AclPermissionType.ALLOW,
        )
        for g in grants
        for operation in g.operations
    ]
    if not bindings:
        return
    client = admin_client(broker)  # held: futures fail once their client is collected
    for binding, future in client.create_acls(bindings).items():
        try:
            future.result(TIMEOUT_S)
        except Exception as exc:
            raise BrokerError(f"could not create the ACL {binding}: {exc}") from exc


def aiokafka_options(broker: Broker, user: str = "admin") -> dict[str, str]:
    """How an aiokafka client connects to `broker` as `user` (nothing for a plaintext one)."""
    if not broker.sasl:
        return {}
    password = broker.admin_password if user == "admin" else broker.credentials()[user]
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }


def worker_settings(broker: Broker, user: str = WORKER) -> dict[str, str]:
    """The worker's CLIPGUARD_KAFKA_* settings for `broker` (environment variable form)."""
    if not broker.sasl:
        return {"CLIPGUARD_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    return {
        "CLIPGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CLIPGUARD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "CLIPGUARD_KAFKA_USERNAME": user,
        "CLIPGUARD_KAFKA_PASSWORD": broker.credentials()[user],
    }


def prepare(broker: Broker, prefix: str, app_id: str, tenants: Iterable[str] = ()) -> None:
    """Users and ACLs of one deployment: the worker, a VMS per tenant, an alarm router."""
    if not broker.sasl:
        return
    tenants = list(tenants)
    add_users(broker, [WORKER, ROUTER, *(vms(t) for t in tenants)])
    grants = worker_grants(prefix, app_id) + router_grants(prefix)
    for tenant in tenants:
        grants += vms_grants(prefix, tenant)
    grant(broker, grants)
