"""Create the pipeline's topics with explicit partitions and configs (auto-creation is off).

Faust creates only its own internal topics (table changelogs, the assignor's); the source topics
are ours. Every topic must have `settings.partitions` partitions: lookups find a clip's owner by
hashing its id over that count, so an existing topic with another count is refused, not used.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from streams.errors import ConfigError
from streams.settings import Settings

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
# Decoded clips carry JPEG frames (~33 KB each at 568x320): max_frames=120 is ~4 MB. Dead letters
# carry the original message, so they get room for the largest decoded clip and its envelope.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# Per-topic configs; retention follows what each topic is for.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    "requests": {"retention.ms": str(7 * DAY_MS)},
    "decoded": {"retention.ms": str(1 * DAY_MS), "max.message.bytes": str(MAX_MESSAGE_BYTES)},
    "progress": {"retention.ms": str(1 * DAY_MS)},
    "results": {"retention.ms": str(7 * DAY_MS)},
    "deadletter": {
        "retention.ms": str(30 * DAY_MS),
        "max.message.bytes": str(MAX_MESSAGE_BYTES + 64 * 1024),
    },
}


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise ConfigError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} (CLIPGUARD_KAFKA_BOOTSTRAP): {exc}"
        ) from exc
    try:
        names = {settings.topic(name): name for name in TOPIC_CONFIGS}
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
                topic_configs=TOPIC_CONFIGS[name],
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
