"""The chaos profile: environment overrides that give ``make chaos`` a stack of its own.

Every port is shifted by 10,000 (or into 1xxxx), the run directory is
``.run-chaos`` (pid files, health files, logs, Kafka/QuestDB/Mosquitto data and
Flink checkpoints all live under it), and the per-stack names (bridge client id
and share group, the pipeline's consumer group) differ from the standard
stack's, so both stacks run side by side without touching each other. Values
already set in the environment win, so an operator can shift them again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping

__all__ = ["CHAOS_PROFILE", "apply_profile", "profile_environ"]

_LOGGER = logging.getLogger(__name__)

CHAOS_PROFILE: dict[str, str] = {
    "DCMMS_STACK_RUN_DIR": ".run-chaos",
    "DCMMS_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092",
    "DCMMS_KAFKA_CONTROLLER_PORT": "19093",
    "DCMMS_SCHEMA_REGISTRY_PORT": "18081",
    "DCMMS_SCHEMA_REGISTRY_URL": "http://127.0.0.1:18081",
    "DCMMS_QUESTDB_HTTP_PORT": "19000",
    "DCMMS_QUESTDB_PG_PORT": "18812",
    "DCMMS_QUESTDB_ILP_TCP_PORT": "19009",
    "DCMMS_QUESTDB_MIN_HTTP_PORT": "19003",
    "DCMMS_MQTT_PORT": "11883",
    "DCMMS_MQTT_BRIDGE_CLIENT_ID": "dcmms-chaos-bridge-1",
    "DCMMS_MQTT_BRIDGE_SHARE_GROUP": "dcmms-chaos-bridge",
    "DCMMS_FLINK_JOB_PORT": "18099",
    "DCMMS_FLINK_ARTIFACT_PORT": "18098",
    "DCMMS_FLINK_EXPANSION_PORT": "18097",
    "DCMMS_FLINK_WEB_UI_PORT": "18082",
    "DCMMS_FLINK_WORKER_POOL_PORT": "15000",
    # The checkpoint interval stays at the default (60 s): with 10 s a job restored onto a
    # backlog checkpointed before its asset side input was ready and failed every time
    # (docs/reliability.md, "Known defects").
    "DCMMS_API_PORT": "13000",
    "DCMMS_PIPELINE_CONSUMER_GROUP": "dcmms-chaos-pipeline",
}


def profile_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) with the chaos profile added where not already set."""
    env = dict(os.environ if base is None else base)
    for name, value in CHAOS_PROFILE.items():
        env.setdefault(name, value)
    return env


def apply_profile(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put the profile into ``environ`` (default os.environ); return the values in force."""
    target = os.environ if environ is None else environ
    for name, value in CHAOS_PROFILE.items():
        target.setdefault(name, value)
    return {name: target[name] for name in CHAOS_PROFILE}
