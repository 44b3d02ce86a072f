"""The version of the telemetry job's checkpointed state layout.

A Flink checkpoint can only be restored by a job whose stateful operators
match it: same stages, same state names and coders, same key types. When a
change breaks that (keyed state moved to other keys, a stage split or merged,
a timer added), restoring an old checkpoint does not fail cleanly: on this
runner a restored timer fired into another stage's DoFn and the job restarted
in a loop (seen when dedup moved from per-event keys to buckets, see
docs/decisions/0003-bucketed-keyed-state.md).

So checkpoints are kept per layout (runners.stack.flink.job_checkpoint_dir):
bump ``STATE_LAYOUT`` with any such change, and the next start of the job
finds no checkpoint of its layout and starts from the consumer group's
committed offsets instead (committed when a checkpoint completes, so nothing
is skipped; records since the last commit are read again and QuestDB's DEDUP
keys absorb them). Dedup and alarm state start empty (see the decision note
for what that means for open alarm episodes).
"""

from __future__ import annotations

__all__ = ["STATE_LAYOUT"]

# 1: dedup keyed per event_id, alarms per sensor. 2: both per bucket of keys (0003).
# 3: bundles finish before each checkpoint, which then holds no buffered stage output
#    (a layout-2 checkpoint with such a buffer restored it into the wrong stage).
# 4: dedup and alarms in one stage keyed by sensor bucket (transforms/sensor_state.py, 0004).
# 5: a no-data timer per bucket and no-data fields in each sensor's alarm state (issue 16).
STATE_LAYOUT = 5
