"""The decoding engine: token-masked mixed-modal decoding with continuous batching.

`Engine` owns the model on one thread; callers `submit` a `GenerationRequest` and read its events.
"""
from .engine import Engine, EngineClosed, EngineConfig, EngineStats, ModelInfo, QueueFull
from .events import Error, Event, Finished, ImageDone, ImageProgress, ImageStarted, TextDelta, TokenLogprob, Usage
from .params import CFGMode, GenerationRequest, ImageParams, InvalidRequest, OutputMode, SamplingParams
from .sequence import RequestHandle

__all__ = [
    "CFGMode", "Engine", "EngineClosed", "EngineConfig", "EngineStats", "Error", "Event", "Finished",
    "GenerationRequest", "ImageDone", "ImageParams", "ImageProgress", "ImageStarted", "InvalidRequest",
    "ModelInfo", "OutputMode", "QueueFull", "RequestHandle", "SamplingParams", "TextDelta", "TokenLogprob", "Usage",
]
