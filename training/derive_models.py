"""`python -m training.derive_models [--models DIR] [--force]`: make the model files that are derived from the
shipped ones, during `make setup`.

The repository ships each network once (see models/README.md):
- `spatial_embeddings.pt`, `box2pix.pt`, `dcme.pt`: PyTorch checkpoints with float16 weights (model_config
  inside);
- `extreme_unet.fp16.onnx`: the extreme-point network as ONNX whose float weights are stored as float16, each
  followed by a Cast to float32 (a valid model, half the size).

Derived here, deterministically (same inputs, same pinned torch and onnxruntime -> the same bytes; the tests
re-derive and compare):
- `<model>.onnx` (float32) of each checkpoint, exported with the training code's `export_onnx`;
- `<model>_int8.onnx` of each streaming model (Spatial Embeddings, Box2Pix, DCME): static int8 QDQ quantisation
  (per-channel int8 weights, uint8 activations), calibrated on the first `calibration_images` training images
  of the synthetic generator (`instseg-synth --seed 0`, split train) at the manifest's calibration size, and
  `<model>_int8.json`: the float manifest with `precision` and the int8 evaluation recorded in the float
  manifest's `int8` entry;
- `extreme_unet.onnx` (float32): the Casts folded back into float32 initializers;
- `extreme_unet_int8.onnx`, the annotation default, and its manifest: static int8 QDQ quantisation of
  `extreme_unet.onnx` like the streaming models', calibrated on EXTREME_CALIBRATION domain-randomised object
  crops (instseg_core.data.randomised_objects, rendered in memory in a few seconds, cut with the manifest's
  crop_relax as the pipeline cuts them); its held-out figures come
  from the float manifest's `int8` entry.

`python -m training.derive_models --evaluate-int8 DATA` scores the float32 and int8 graphs of each streaming
model on DATA's val split with the official evaluator (same run, same settings) and records both in the float
manifest's `int8` entry (committed), from which the next derivation copies them into `<model>_int8.json`.

`models/.derived.json` records the sha256 of each derived file's source and of the file itself; a file whose
source and recipe are unchanged is not made again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instseg_core.base.atomic_files import atomic_path, write_text_atomically
from instseg_core.base.command_exit import EXIT_DONE, add_debug_argument, debug_requested, run_command

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
STAMP = ".derived.json"
RECIPE_VERSION = 3  # bump when a recipe below changes what it writes
DEFAULT_CALIBRATION = {"images": 16, "width": 1024, "height": 512, "seed": 0, "split": "train"}
EXTREME_CALIBRATION = {"randomised_crops": 256, "seed": 7}
# Layers kept in float32 in the int8 graphs (regular expressions searched in ONNX node names), and why:
# - Spatial Embeddings: the two output convolutions and their concatenation. One uint8 scale for all output
#   channels (offsets in [-1, 1], sigmas, seed logits) leaves the pixel embeddings ~8 px coarse at 1024 wide
#   and the clustering falls apart (AP50 0.138 -> 0.029 with everything quantised).
# - DCME: its last deconvolution and what follows (vectors scaled to pixels, the foreground sigmoid), for the same
#   reason: the votes need the vectors to the pixel.
# - Spatial Embeddings on ESPNetv2 (instseg_core.networks.espnetv2_embeddings): the whole ESPNetv2 branch (base_net,
#   bu_dec_*, merge_enc_dec_*, bu_br_*), its output convolution and the ops of its own forward (normalisation, the
#   seeds' softmax x sigmoid as logits, the final upsampling). Quantised, the ESPNetv2 branch moved seeds by up to
#   0.95 (AP50 0.105 -> 0.019 on synthetic val) and ran slower (325 against 223 ms at 1024x512: its 109 grouped and
#   depth-wise convolutions have no fast int8 kernels here); only the instance head's convolutions are int8.
KEEP_FLOAT = {"spatial_embeddings": ("output_conv", "^/network/Concat$", "^/network/output/",
                                     r"^/network/(Sub|Div|Softmax|Sigmoid|Mul|Clip|Log|Log1p|Neg|Concat|Resize|"
                                     r"Gather|Slice|Shape|Add)(_\d+)?$",
                                     "^/network/(base_net|bu_dec_l|merge_enc_dec|bu_br)"),
              "box2pix": (),
              "dcme": ("output_conv", r"^/(Mul|Sigmoid|Concat|Slice|Softmax)(_\d+)?$")}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_checkpoint(model: str, source: Path, out: Path) -> None:
    """Float32 ONNX of a shipped checkpoint, with the graph the training command exports."""
    import torch

    from instseg_core.runtime.adapters import load_checkpoint

    torch.manual_seed(0)
    if model == "spatial_embeddings":
        from instseg_core.networks.spatial_embeddings import model_from_checkpoint
        from training.spatial_embeddings import export_onnx
    elif model == "box2pix":
        from instseg_core.networks.box2pix import model_from_checkpoint  # type: ignore[no-redef]
        from training.box2pix import export_onnx  # type: ignore[no-redef]
    elif model == "dcme":
        from instseg_core.networks.dcme import model_from_checkpoint  # type: ignore[no-redef]
        from training.dcme import export_onnx  # type: ignore[no-redef]
    else:
        raise ValueError(f"no export recipe for {model!r}")
    network, _ = load_checkpoint(source, model_from_checkpoint)
    with atomic_path(out) as temporary:
        export_onnx(network, temporary)


def calibration_frames(settings: dict) -> list[np.ndarray]:
    """The RGB (H, W, 3) uint8 training images the int8 models are calibrated on (rendered in memory, the same
    pixels `instseg-synth OUT --seed S --splits train=N` writes at that size)."""
    from instseg_core.data.street_layout import make_scene
    from instseg_core.data.synth_cli import image_seed
    from instseg_core.data.synthetic import render

    return [render(make_scene(image_seed(settings["seed"], settings["split"], index), settings["width"],
                              settings["height"])).rgb for index in range(settings["images"])]


def quantize_onnx(source: Path, out: Path, inputs: list[np.ndarray], input_name: str = "image",
                  keep_float: tuple[str, ...] = ()) -> None:
    """Static int8 QDQ quantisation of the float32 ONNX `source` (per-channel int8 weights, uint8 activations,
    MinMax calibration on `inputs`, each a (1, C, H, W) float32 network input). Nodes whose name matches one of
    the regular expressions `keep_float` (re.search) stay float32. Deterministic."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Inputs(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(inputs)

        def get_next(self) -> dict | None:
            value = next(self.remaining, None)
            return None if value is None else {input_name: value}

    source = Path(source).resolve()
    # the quantisation tools write scratch files into the working directory: give them a private one
    with atomic_path(out) as temporary, tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        excluded = [node.name for node in onnx.load(str(prepared)).graph.node
                    if any(re.search(pattern, node.name) for pattern in keep_float)]
        quantize_static(str(prepared), str(Path(temporary).resolve()), Inputs(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded)


def quantize_streaming_model(model: str, source: Path, out: Path, frames: list[np.ndarray] | None = None) -> None:
    """`<model>_int8.onnx` and its manifest from the float32 ONNX `source` (see the module docstring); `frames`
    ((H, W, 3) uint8 RGB, sides multiples of the model's input multiple): calibrate on these instead (a fine-tune
    on one's own data, training/studio_finetune.py)."""
    from instseg_core.runtime.adapters import model_adapter

    manifest = json.loads(source.with_suffix(".json").read_text())
    int8_entry = manifest.get("int8", {})
    settings = {**DEFAULT_CALIBRATION, **int8_entry.get("calibration", {})} if frames is None else \
        {"images": len(frames), "source": "the fine-tune's own training frames"}
    adapter = model_adapter(model)(manifest["model_config"])
    quantize_onnx(source, out, [adapter.preprocess(rgb) for rgb in (calibration_frames(settings) if frames is None
                                                                     else frames)],
                  keep_float=KEEP_FLOAT[model])
    int8_manifest = {**manifest, "precision": "int8",
                     "quantisation": {"source": source.name, "format": "static QDQ, per-channel int8 weights, "
                                      "uint8 activations, MinMax calibration", "calibration": settings,
                                      "kept_float": list(KEEP_FLOAT[model]),
                                      "derived_by": "python -m training.derive_models"},
                     "evaluation": int8_entry.get("evaluation", {}),
                     "evaluation_fp32": manifest.get("evaluation", {})}
    int8_manifest.pop("int8", None)
    int8_manifest.pop("learning_curve", None)
    write_text_atomically(out.with_suffix(".json"), json.dumps(int8_manifest, indent=1))


def quantize_extreme_model(source: Path, out: Path) -> None:
    """`extreme_unet_int8.onnx` and its manifest from the float32 `extreme_unet.onnx` (see the module docstring)."""
    from instseg_core.annotate.encoding import encode
    from instseg_core.annotate.segmenter import manifest_crop_relax, manifest_prior_foreground
    from training.extreme_point_crops import randomised_crops

    manifest = json.loads(source.with_suffix(".json").read_text())
    int8_entry = manifest.get("int8", {})
    settings = {**EXTREME_CALIBRATION, **int8_entry.get("calibration", {})}
    relax = manifest_crop_relax(source)  # cut and encoded as the pipeline will cut and encode them
    prior_foreground = manifest_prior_foreground(source)
    images, _, points = randomised_crops(settings["seed"], 0, settings["randomised_crops"], relax=(relax, relax))
    channels = int(manifest["input"][1])  # 4, or 5 with the colour prior
    inputs = [encode(image, point, channels=channels, prior_foreground=prior_foreground)[None]
              for image, point in zip(images, points, strict=True)]
    quantize_onnx(source, out, inputs, input_name="input")
    int8_manifest = {**manifest, "precision": "int8",
                     "quantisation": {"source": source.name, "format": "static QDQ, per-channel int8 weights, "
                                      "uint8 activations, MinMax calibration",
                                      "calibration": {**settings, "crop_relax": relax,
                                                      "colour_prior_foreground": prior_foreground},
                                      "derived_by": "python -m training.derive_models"},
                     **{key: value for key, value in int8_entry.items() if key != "calibration"}}
    int8_manifest.pop("int8", None)
    write_text_atomically(out.with_suffix(".json"), json.dumps(int8_manifest, indent=1))


def fold_weight_casts(source: Path, out: Path) -> None:
    """The float32 model of an ONNX file whose weights are float16 initializers followed by Cast(to=FLOAT):
    each such Cast is removed and its output becomes a float32 initializer (exact: float16 -> float32)."""
    import onnx
    from onnx import numpy_helper

    graph_model = onnx.load(str(source))
    graph = graph_model.graph
    initializers = {init.name: init for init in graph.initializer}
    kept_nodes = []
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in initializers and \
                initializers[node.input[0]].data_type == onnx.TensorProto.FLOAT16:
            weights = numpy_helper.to_array(initializers.pop(node.input[0])).astype(np.float32)
            initializers[node.output[0]] = numpy_helper.from_array(weights, node.output[0])
        else:
            kept_nodes.append(node)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(sorted(initializers.values(), key=lambda init: init.name))
    onnx.checker.check_model(graph_model)
    with atomic_path(out) as temporary:
        onnx.save(graph_model, str(temporary))


def store_weights_as_float16(source: Path, out: Path) -> None:
    """The inverse of `fold_weight_casts`, used once to make the shipped file: every float32 initializer of
    `source` becomes a float16 initializer '<name>.fp16' followed by a Cast to float32 named '<name>'."""
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(source))
    graph = graph_model.graph
    casts, initializers = [], []
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            half = numpy_helper.to_array(init).astype(np.float16)
            initializers.append(numpy_helper.from_array(half, init.name + ".fp16"))
            casts.append(helper.make_node("Cast", [init.name + ".fp16"], [init.name], to=onnx.TensorProto.FLOAT,
                                          name=f"cast_{init.name}"))
        else:
            initializers.append(init)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.checker.check_model(graph_model)
    with atomic_path(out) as temporary:
        onnx.save(graph_model, str(temporary))


@dataclass(frozen=True)
class Derivation:
    """`output` is made from `source` (file names in the models folder) by `make(source path, output path)`."""

    output: str
    source: str
    make: Callable[[Path, Path], None]


DERIVATIONS = (
    Derivation("spatial_embeddings.onnx", "spatial_embeddings.pt",
               lambda s, o: export_checkpoint("spatial_embeddings", s, o)),
    Derivation("spatial_embeddings_int8.onnx", "spatial_embeddings.onnx",
               lambda s, o: quantize_streaming_model("spatial_embeddings", s, o)),
    Derivation("box2pix.onnx", "box2pix.pt", lambda s, o: export_checkpoint("box2pix", s, o)),
    Derivation("box2pix_int8.onnx", "box2pix.onnx", lambda s, o: quantize_streaming_model("box2pix", s, o)),
    Derivation("extreme_unet.onnx", "extreme_unet.fp16.onnx", fold_weight_casts),
    Derivation("extreme_unet_int8.onnx", "extreme_unet.onnx", quantize_extreme_model),
    Derivation("dcme.onnx", "dcme.pt", lambda s, o: export_checkpoint("dcme", s, o)),
    Derivation("dcme_int8.onnx", "dcme.onnx", lambda s, o: quantize_streaming_model("dcme", s, o)),
)


def derive(models: Path = MODELS_DIR, force: bool = False, only: tuple[str, ...] = ()) -> list[str]:
    """Make every derived file of `models` (in DERIVATIONS order) whose source, recipe or output changed;
    returns the names made. Sources that are missing are an error (a broken checkout)."""
    stamp_path = models / STAMP
    stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
    made = []
    for derivation in DERIVATIONS:
        if only and derivation.output not in only:
            continue
        source, output = models / derivation.source, models / derivation.output
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: cannot derive {derivation.output}")
        # the manifest of the source is an input too (int8 calibration settings, decoding defaults)
        source_manifest = source.with_suffix(".json") if derivation.source.endswith(".onnx") else None
        key = {"source": sha256(source), "recipe": RECIPE_VERSION,
               "manifest": sha256(source_manifest) if source_manifest and source_manifest.exists() else None}
        record = stamp.get(derivation.output)
        if not force and output.is_file() and record and record["key"] == key and record["sha256"] == sha256(output):
            continue
        print(f"deriving {derivation.output} from {derivation.source}", flush=True)
        derivation.make(source, output)
        stamp[derivation.output] = {"key": key, "sha256": sha256(output)}
        write_text_atomically(stamp_path, json.dumps(stamp, indent=1))
        made.append(derivation.output)
    return made


def evaluate_int8(data: Path, models: Path = MODELS_DIR, limit: int | None = None,
                  names: tuple[str, ...] = ("spatial_embeddings", "box2pix", "dcme")) -> dict:
    """Official AP/AP50 of `<model>.onnx` and `<model>_int8.onnx` on DATA/val for each streaming model (ONNX
    Runtime, 2 threads, network input = image size, score threshold 0, the manifest's decoding defaults);
    written into each float manifest's `int8` entry. Returns {model: {'fp32': result, 'int8': result}}."""
    from instseg_core.runtime.segmenter import create_segmenter
    from training.evaluation import evaluate_network

    results = {}
    for model in names:
        files = {"fp32": models / f"{model}.onnx", "int8": models / f"{model}_int8.onnx"}
        results[model] = {}
        for precision, path in files.items():
            segmenter = create_segmenter(model, model_file=path, threads=2, score_threshold=0.0)
            result = evaluate_network(segmenter, data, Path("data/runs/int8_evaluation") / model / precision,
                                      limit=limit, multiple=segmenter.adapter.input_multiple)
            results[model][precision] = result
            print(f"{model} {precision}: AP {result['ap']:.4f} AP50 {result['ap50']:.4f} network "
                  f"{result['network_ms']:.0f} ms/image", flush=True)
        manifest_path = files["fp32"].with_suffix(".json")
        manifest = json.loads(manifest_path.read_text())
        earlier = manifest.get("int8", {})
        manifest["int8"] = {**earlier, "calibration": {**DEFAULT_CALIBRATION, **earlier.get("calibration", {})},
                            "evaluation": results[model]["int8"], "evaluation_fp32_onnx": results[model]["fp32"],
                            "evaluated_on": f"{data} val, {results[model]['int8']['images']} images",
                            "reproduce": f"python -m training.derive_models --evaluate-int8 {data}"}
        write_text_atomically(manifest_path, json.dumps(manifest, indent=1))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="the models folder (default: the checkout's)")
    parser.add_argument("--force", action="store_true", help="make every derived file again")
    parser.add_argument("--only", nargs="*", default=(), help="derive only these output file names")
    parser.add_argument("--evaluate-int8", type=Path, metavar="DATA",
                        help="then score fp32 and int8 graphs on DATA/val and record it in the manifests")
    parser.add_argument("--limit", type=int, default=None, help="with --evaluate-int8: the first N val images")
    parser.add_argument("--evaluate-models", nargs="+", default=["spatial_embeddings", "box2pix", "dcme"],
                        help="with --evaluate-int8: these models")
    add_debug_argument(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        made = derive(args.models, args.force, tuple(args.only))
        print(f"derived model files: {', '.join(made) if made else 'all up to date'}")
        if args.evaluate_int8:
            evaluate_int8(args.evaluate_int8, args.models, args.limit, tuple(args.evaluate_models))
            derive(args.models)  # the int8 manifests take the new figures
        return EXIT_DONE

    return run_command("training.derive_models", run, debug=debug_requested(args))


if __name__ == "__main__":
    sys.exit(main())
