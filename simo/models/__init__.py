"""Models: a timm ViT encoder that returns block features, dense heads, and the multi-head model."""
from simo.models.encoder import Encoder, build_encoder, load_encoder_weights
from simo.models.heads import build_head
from simo.models.model import MultiTaskModel, build_model

__all__ = ["Encoder", "build_encoder", "load_encoder_weights", "build_head", "MultiTaskModel",
           "build_model"]
