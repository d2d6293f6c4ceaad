"""Models that do not fit in memory: plan a model on the meta device from its checkpoint folder
(:func:`surgeon.plan` with ``weights=``), apply a plan shard by shard from one checkpoint folder
to a new one (:func:`apply_checkpoint`, ``surgeon apply``), calibrate the ``activation``
criterion one decoder layer at a time."""

from .apply import Written, apply_checkpoint, meta_model
from .files import Checkpoint, CheckpointError

__all__ = ["apply_checkpoint", "meta_model", "Checkpoint", "CheckpointError", "Written"]
