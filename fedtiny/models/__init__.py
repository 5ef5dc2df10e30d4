"""PyTorch backbones, pretraining on vendor data, and int8 export to the trainer's format.

Layer 3 (config, data, models): may import errors, trainer, config, data.
"""

from fedtiny.models.export import export_int8
from fedtiny.models.nets import build_net
from fedtiny.models.pretrain import Backbone, get_backbone

__all__ = ["Backbone", "build_net", "export_int8", "get_backbone"]
