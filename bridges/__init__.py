"""Evidence → language: the text bridge, and learnable bridges into a language model's embeddings.

>>> from bridges import create_bridge
>>> create_bridge("mlp", in_dim=1280, lm_dim=576, num_tokens=4).config["kind"]
'mlp'
"""

from bridges.bridged_lm import BridgedLM
from bridges.projector import LinearProjector, MLPProjector
from bridges.query import QueryBridge
from bridges.registry import create_bridge
from bridges.text import BridgeOptions, render
from bridges.training import TrainResult, train_bridge

__all__ = [
    "BridgeOptions",
    "BridgedLM",
    "LinearProjector",
    "MLPProjector",
    "QueryBridge",
    "TrainResult",
    "create_bridge",
    "render",
    "train_bridge",
]
