"""The Chameleon transformer and VQGAN as plain PyTorch modules, and checkpoint loading/writing (HF and Meta)."""
from .config import ChameleonConfig, CheckpointError, VQConfig
from .loading import LoadedCheckpoint, detect_format, load_checkpoint, save_hf
from .meta_format import save_meta
from .transformer import Transformer
from .vqgan import VQModel

__all__ = [
    "ChameleonConfig",
    "CheckpointError",
    "LoadedCheckpoint",
    "Transformer",
    "VQConfig",
    "VQModel",
    "detect_format",
    "load_checkpoint",
    "save_hf",
    "save_meta",
]
