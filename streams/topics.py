"""The pipeline's topics: their names and their Kafka configs, defined here once.

Every topic is keyed by the clip id. A topic's real name is `settings.topic(Topic.X)`
(`<topic_prefix>.<name>`). Creating them is `streams/admin.py`'s job; this module has no Kafka
client, so the Kafka-free steps can name their output topics.
"""

from __future__ import annotations

from enum import StrEnum

from streams.settings import Settings

DAY_MS = 24 * 3600 * 1000
# Decoded clips carry JPEG frames (~33 KB each at 568x320): max_frames=120 is ~4 MB. Dead letters
# carry the original message, so they get room for the largest decoded clip and its envelope.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
RESULT_TABLE = "results"


class Topic(StrEnum):
    REQUESTS = "requests"  # clip requests from VMSs and the HTTP API
    DECODED = "decoded"  # sampled frames, from the decode step to the classify step
    PROGRESS = "progress"  # "video done, classify pending": feeds the result table only
    RESULTS = "results"  # final results, for alarm routers and the result table
    DEADLETTER = "deadletter"  # what failed, with the original bytes and the reason


INTAKE = "intake"  # <prefix>.intake.<tenant>: a VMS's clip requests, written by its principal only


def intake_topics(settings: Settings) -> dict[str, str]:
    """Real topic name -> tenant, for the tenants whose VMSs publish on Kafka."""
    return {settings.topic(f"{INTAKE}.{tenant}"): tenant for tenant in settings.kafka_tenants}


def retention_ms(settings: Settings) -> str:
    """Results (their topic and the table's changelog) are kept as long as the setting says."""
    return str(int(settings.result_retention_s * 1000))


def topic_configs(settings: Settings) -> dict[Topic, dict[str, str]]:
    """Per-topic configs; retention follows what each topic is for."""
    return {
        Topic.REQUESTS: {"retention.ms": str(7 * DAY_MS)},
        Topic.DECODED: {
            "retention.ms": str(1 * DAY_MS),
            "max.message.bytes": str(MAX_MESSAGE_BYTES),
        },
        Topic.PROGRESS: {"retention.ms": str(1 * DAY_MS)},
        Topic.RESULTS: {"retention.ms": retention_ms(settings)},
        Topic.DEADLETTER: {
            "retention.ms": str(30 * DAY_MS),
            "max.message.bytes": str(MAX_MESSAGE_BYTES + 64 * 1024),
        },
    }


def changelog_config(settings: Settings) -> dict[str, str]:
    """The result table's changelog: latest value per id, gone after the result retention."""
    return {"cleanup.policy": "compact,delete", "retention.ms": retention_ms(settings)}
