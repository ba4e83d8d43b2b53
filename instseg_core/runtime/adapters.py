"""The model registry: what the runtime needs to know about each network (files, input, decoding).

Adding a model is one `ModelAdapter` subclass and one entry in `MODELS`. An adapter is built from the model's
config (the ONNX manifest's `model_config`, or the PyTorch checkpoint's) and knows how to
- build the PyTorch module from a checkpoint (`load_torch`),
- turn an RGB uint8 image into the network input (`preprocess`),
- decode the raw network output into `Instances` at network resolution (`decode`), on NumPy arrays or, for
  GPU backends, on torch tensors.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from instseg_core.base.classes import label_ids
from instseg_core.base.instances import Instances
from instseg_core.base.model_files import ModelFileError
from instseg_core.base.network_input import rgb_to_unit_nchw


class ModelAdapter:
    """Base class; see the module docstring."""

    name = ""
    onnx_file = ""
    torch_file = ""
    int8_onnx_file = ""  # static int8 QDQ graph, derived from onnx_file at set-up (training/derive_models.py)
    input_multiple = 8  # network input height and width must be multiples of this
    min_input_side = 8  # and at least this many pixels

    def __init__(self, config: dict) -> None:
        self.config = config
        self.classes: tuple[str, ...] = tuple(config["classes"])
        self.label_ids = np.array(label_ids(self.classes), np.int64)

    @classmethod
    def load_torch(cls, path: str | os.PathLike) -> tuple[object, dict]:
        raise NotImplementedError

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, raw: Any, params: dict) -> Instances:
        raise NotImplementedError

    @staticmethod
    def decode_parameters() -> tuple[str, ...]:
        """Names of the decoding parameters `decode` accepts in `params`."""
        raise NotImplementedError

    def _decoding(self, params_type: type, key: str, params: dict) -> Any:
        """`params_type` (a dataclass) from the defaults tuned at export (model_config.extra[key], see the
        manifest) overridden by `params`; names the dataclass does not have are ignored."""
        known = {f.name for f in fields(params_type)}
        defaults = self.config.get("extra", {}).get(key, {})
        return params_type(**{k: v for k, v in {**defaults, **params}.items() if k in known})

    @classmethod
    def read_manifest(cls, onnx_path: str | os.PathLike) -> dict:
        """The `model_config` of the JSON manifest next to an ONNX file; ModelFileError naming the manifest
        when it is missing, not JSON, of another model, or without a model_config object."""
        manifest_path = Path(onnx_path).with_suffix(".json")
        if not manifest_path.is_file():
            raise ModelFileError(f"model manifest not found: {manifest_path} (written by the export command "
                                 "next to the .onnx file)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"model manifest {manifest_path} is not JSON: {exc}") from exc
        if not isinstance(manifest, dict):
            raise ModelFileError(f"model manifest {manifest_path} must be a JSON object")
        if manifest.get("model") != cls.name:
            raise ModelFileError(f"{manifest_path} describes a {manifest.get('model')!r} model, not {cls.name!r}")
        config = manifest.get("model_config")
        if not isinstance(config, dict) or not isinstance(config.get("classes"), list):
            raise ModelFileError(f"model manifest {manifest_path} has no model_config with a class list")
        return config


class SpatialEmbeddingsAdapter(ModelAdapter):
    """Spatial Embeddings (instseg_core.networks.spatial_embeddings); decode = seed clustering, with the
    thresholds stored in the model's config (model_config.extra.clustering) unless overridden."""

    name = "spatial_embeddings"
    onnx_file = "spatial_embeddings.onnx"
    torch_file = "spatial_embeddings.pt"
    int8_onnx_file = "spatial_embeddings_int8.onnx"
    input_multiple = 8

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        if config.get("backbone") == "espnetv2":
            self.input_multiple = 16  # ESPNetv2 down-samples four times
            self.min_input_side = 32  # its pyramid pooling needs a 1/16 map of at least 2x2

    @classmethod
    def load_torch(cls, path: str | os.PathLike) -> tuple[object, dict]:
        from instseg_core.networks.spatial_embeddings import model_from_checkpoint

        return load_checkpoint(path, model_from_checkpoint)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return rgb_to_unit_nchw(rgb)

    def decode(self, raw: Any, params: dict) -> Instances:
        from instseg_core.postprocess.seed_clustering import ClusteringParams, cluster_seeds, cluster_seeds_torch

        clustering = self._decoding(ClusteringParams, "clustering", params)
        n_sigma = int(self.config["n_sigma"])
        if isinstance(raw, np.ndarray):
            return cluster_seeds(raw[0], n_sigma, clustering)
        return cluster_seeds_torch(raw[0], n_sigma, clustering)

    @staticmethod
    def decode_parameters() -> tuple[str, ...]:
        from instseg_core.postprocess.seed_clustering import ClusteringParams

        return tuple(f.name for f in fields(ClusteringParams))


class Box2PixAdapter(ModelAdapter):
    """Box2Pix (instseg_core.networks.box2pix); decode = NMS + pixel-to-box assignment
    (instseg_core.postprocess.box_assignment) with the defaults stored in model_config.extra.assignment unless
    overridden. Raw output: (detections (1, P, 4 + n + 1), semantic (1, H, W) uint8, offsets (1, 2, H, W))."""

    name = "box2pix"
    onnx_file = "box2pix.onnx"
    torch_file = "box2pix.pt"
    int8_onnx_file = "box2pix_int8.onnx"
    input_multiple = 128

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self._priors: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def load_torch(cls, path: str | os.PathLike) -> tuple[object, dict]:
        from instseg_core.networks.box2pix import Box2PixInference, model_from_checkpoint

        module, config = load_checkpoint(path, model_from_checkpoint)
        return Box2PixInference(module), config

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return rgb_to_unit_nchw(rgb)

    def priors(self, height: int, width: int) -> np.ndarray:
        if (height, width) not in self._priors:
            from instseg_core.networks.box_priors import assign_priors, prior_boxes

            sizes = [(int(w), int(h)) for w, h in self.config["prior_sizes"]]
            self._priors[(height, width)] = prior_boxes(height, width, assign_priors(sizes))
        return self._priors[(height, width)]

    def decode(self, raw: Any, params: dict) -> Instances:
        from instseg_core.postprocess.box_assignment import (
            AssignmentParams,
            assign_pixels_torch,
            decode_box2pix,
            decode_detections,
            instances_from_assignment,
        )

        assignment = self._decoding(AssignmentParams, "assignment", params)
        detections, semantic, offsets = raw
        height, width = semantic.shape[-2:]
        priors = self.priors(height, width)
        if isinstance(semantic, np.ndarray):
            return decode_box2pix(detections[0], semantic[0], offsets[0], priors, assignment)
        boxes = decode_detections(detections[0].float().cpu().numpy(), priors, height, width, assignment)
        flat = assign_pixels_torch(semantic[0], offsets[0].float(), boxes, assignment).cpu().numpy().ravel()
        foreground = np.flatnonzero(flat >= 0)
        return instances_from_assignment(foreground, flat[foreground], height, width, boxes, assignment.min_pixels)

    @staticmethod
    def decode_parameters() -> tuple[str, ...]:
        from instseg_core.postprocess.box_assignment import AssignmentParams

        return tuple(f.name for f in fields(AssignmentParams))


class DcmeAdapter(ModelAdapter):
    """DCME (instseg_core.networks.dcme); decode = centre voting + block classes (instseg_core.postprocess.
    dcme_voting) with the defaults stored in model_config.extra.voting unless overridden. Raw output: (dense
    (1, 3, H, W): dx, dy pixels and foreground probability; classes (1, n + 1, H/16, W/16) probabilities)."""

    name = "dcme"
    onnx_file = "dcme.onnx"
    torch_file = "dcme.pt"
    int8_onnx_file = "dcme_int8.onnx"
    input_multiple = 16

    @classmethod
    def load_torch(cls, path: str | os.PathLike) -> tuple[object, dict]:
        from instseg_core.networks.dcme import DcmeInference, model_from_checkpoint

        module, config = load_checkpoint(path, model_from_checkpoint)
        return DcmeInference(module), config

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return rgb_to_unit_nchw(rgb)

    def voting(self, params: dict | None = None) -> Any:
        """The VotingParams decode uses: the model's tuned defaults (model_config.extra.voting) overridden by
        `params`."""
        from instseg_core.postprocess.dcme_voting import VotingParams

        return self._decoding(VotingParams, "voting", params or {})

    def decode(self, raw: Any, params: dict) -> Instances:
        from instseg_core.postprocess.dcme_voting import decode_dcme, decode_dcme_torch

        voting = self.voting(params)
        dense, classes = raw
        if isinstance(dense, np.ndarray):
            return decode_dcme(dense[0], classes[0], voting)
        return decode_dcme_torch(dense[0], classes[0], voting)

    @staticmethod
    def decode_parameters() -> tuple[str, ...]:
        from instseg_core.postprocess.dcme_voting import VotingParams

        return tuple(f.name for f in fields(VotingParams))


def load_checkpoint(path: str | os.PathLike, build: Any) -> tuple[Any, dict]:
    """(module, model_config) of a PyTorch checkpoint {'model': state dict, 'model_config': dict}, built by
    `build(checkpoint)`; ModelFileError naming the file for anything else (random bytes, a truncated file, an
    ONNX graph, a checkpoint of another architecture)."""
    import torch

    try:
        checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise ModelFileError(f"cannot load PyTorch checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model_config"), dict) \
            or "model" not in checkpoint:
        raise ModelFileError(f"{path} is not an instseg checkpoint (a dict with 'model' and 'model_config')")
    try:
        return build(checkpoint), checkpoint["model_config"]
    except Exception as exc:  # missing keys, wrong shapes, a config of another model
        raise ModelFileError(f"checkpoint {path} does not fit the network: {type(exc).__name__}: "
                             f"{str(exc)[:300]}") from exc


MODELS: dict[str, type[ModelAdapter]] = {
    SpatialEmbeddingsAdapter.name: SpatialEmbeddingsAdapter,
    Box2PixAdapter.name: Box2PixAdapter,
    DcmeAdapter.name: DcmeAdapter,
}


def model_adapter(name: str) -> type[ModelAdapter]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[name]
