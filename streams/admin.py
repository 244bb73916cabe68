"""Kafka clients' connection options, and the pipeline's topics.

The topics are created with explicit partitions and configs (auto-creation is off).

Faust creates only its own internal topics (table changelogs, the assignor's); the source topics
are ours. Every topic must have `settings.partitions` partitions: lookups find a clip's owner by
hashing its id over that count, so an existing topic with another count is refused, not used.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streams.errors import ConfigError
from streams.settings import Settings
from streams.topics import Topic, intake_topics, topic_configs

log = logging.getLogger(__name__)

PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka's connection options for the settings (ConfigError when they do not add up)."""
    protocol = settings.kafka_security_protocol.upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"CLIPGUARD_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol!r}: "
            f"use one of {', '.join(PROTOCOLS)}"
        )
    if protocol == "PLAINTEXT":
        return {"security_protocol": "PLAINTEXT"}
    if settings.kafka_sasl_mechanism not in MECHANISMS:
        raise ConfigError(
            f"CLIPGUARD_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism!r}: "
            f"use one of {', '.join(MECHANISMS)}"
        )
    if not settings.kafka_username or not settings.kafka_password:
        raise ConfigError(
            f"Kafka needs {protocol} credentials: set CLIPGUARD_KAFKA_USERNAME and "
            "CLIPGUARD_KAFKA_PASSWORD (or CLIPGUARD_KAFKA_SECURITY_PROTOCOL=PLAINTEXT for a "
            "broker nothing else can reach)"
        )
    options: dict[str, Any] = {
        "security_protocol": protocol,
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_username,
        "sasl_plain_password": settings.kafka_password,
    }
    if protocol == "SASL_SSL":
        cafile = None if settings.kafka_ssl_cafile is None else str(settings.kafka_ssl_cafile)
        options["ssl_context"] = ssl.create_default_context(cafile=cafile)
    return options


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **client_options(settings)
    )
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise ConfigError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} (CLIPGUARD_KAFKA_BOOTSTRAP): {exc}"
        ) from exc
    except KafkaError as exc:  # e.g. a refused SASL login
        raise ConfigError(
            f"Kafka at {settings.kafka_bootstrap} refused the worker "
            f"(user {settings.kafka_username!r}): {exc}"
        ) from exc
    try:
        configs = topic_configs(settings)
        names = {settings.topic(name): name for name in configs}
        names |= dict.fromkeys(intake_topics(settings), Topic.REQUESTS)  # configs of requests
        existing = await admin.describe_topics(list(names))
        known = {t["topic"]: len(t["partitions"]) for t in existing if t["error_code"] == 0}
        for topic, count in known.items():
            if count != settings.partitions:
                raise ConfigError(
                    f"topic {topic} has {count} partitions, settings say {settings.partitions} "
                    "(CLIPGUARD_PARTITIONS); every pipeline topic needs the same count"
                )
        missing = [
            NewTopic(
                topic,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=configs[name],
            )
            for topic, name in names.items()
            if topic not in known
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:  # another worker created them at the same moment
                pass
            log.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()
