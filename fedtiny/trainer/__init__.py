"""The on-device trainer (C) from Python: model files, the trainer, int8 kernels, and the
update codec (``codec``) with the shape of an update (``updates``).

Layer 2 (trainer): may import errors.
"""

from fedtiny.trainer.model_format import LayerSpec, ModelSpec, from_bytes, to_bytes, validate
from fedtiny.trainer.runtime import EpochStats, EvalResult, LayerUpdate, Model, Plan, TrainConfig, Trainer, plan

__all__ = [
    "EpochStats", "EvalResult", "LayerSpec", "LayerUpdate", "Model", "ModelSpec", "Plan", "TrainConfig", "Trainer",
    "from_bytes", "plan", "to_bytes", "validate",
]
