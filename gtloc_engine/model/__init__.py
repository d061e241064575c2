"""The GT-Loc model: config (data), encoders, the GTLoc module, and safetensors checkpoints."""

from gtloc_engine.model.checkpoint import load_checkpoint, read_header, save_checkpoint
from gtloc_engine.model.config import BackboneConfig, ModelConfig, RFFConfig, preset
from gtloc_engine.model.gtloc import GTLoc

__all__ = [
    "BackboneConfig", "GTLoc", "ModelConfig", "RFFConfig", "load_checkpoint", "preset", "read_header",
    "save_checkpoint",
]
