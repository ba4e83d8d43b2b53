"""Runtime: one Segmenter interface over every model (registry) and backend (torch, onnxruntime, tensorrt)."""

from instseg_core.runtime.adapters import MODELS, ModelAdapter, model_adapter
from instseg_core.runtime.backends import BackendUnavailableError, ModelFileError
from instseg_core.runtime.segmenter import BACKENDS, SegmentationResult, Segmenter, create_segmenter

__all__ = ["BACKENDS", "MODELS", "BackendUnavailableError", "ModelAdapter", "ModelFileError", "SegmentationResult",
           "Segmenter", "create_segmenter", "model_adapter"]
