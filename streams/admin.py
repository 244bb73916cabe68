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
from streams.topics import topic_configs

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise ConfigError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} (CLIPGUARD_KAFKA_BOOTSTRAP): {exc}"
        ) from exc
    try:
        configs = topic_configs(settings)
        names = {settings.topic(name): name for name in configs}
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
