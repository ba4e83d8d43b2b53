"""The official Cityscapes instance-level evaluator (AP, AP50 per class), run as installed.

`cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling` is used as installed, not forked. Four
of its habits are contained here:

- it writes `matches.json` into the current directory and caches the ground truth in
  `gtInstances.json` next to its own source file (inside site-packages), and silently reuses that
  cache for the next, unrelated evaluation;
- it calls `np.in1d`, removed in numpy 2.4;
- its JSON writer cannot serialise numpy integers;
- it crashes (IndexError) on a class whose predictions all fall on ignored regions while all its ground
  truth is missed; that line alone is patched to give the class AP 0.

So it runs in a child process (`python -m instseg_core.eval.cityscapes_instances RUNFILE`) whose
current directory is the chosen output directory. Its ground-truth cache and results file are pointed
there, and any stale cache is deleted first. The child process alone gets `np.in1d = np.isin` where
it is missing, and a JSON writer that turns numpy scalars into Python numbers. Nothing is written
outside the output directory.

Predictions use the evaluator's results format (see `write_predictions`): per image a text file
`<city>_<seq>_<frame>_pred.txt` with lines `<relative mask png> <label id> <confidence>`, and one binary
mask PNG per instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

RESULT_FILE = "resultInstanceLevelSemanticLabeling.json"
GT_CACHE_FILE = "gtInstances.json"


@dataclass(frozen=True)
class InstanceEvaluation:
    """Official Cityscapes instance-level results.

    ap, ap50: mean over classes with ground truth (the evaluator's allAp / allAp50%);
    per_class: class name -> {'ap', 'ap50'} (NaN for a class absent from ground truth and predictions);
    raw: the evaluator's whole JSON.
    """

    ap: float
    ap50: float
    per_class: dict[str, dict[str, float]]
    raw: dict


def write_predictions(pred_dir: str | os.PathLike, stem: str, masks: np.ndarray, label_ids: Sequence[int],
                      scores: Sequence[float]) -> Path:
    """Write one image's instances in the Cityscapes results format; returns the .txt path.

    `stem` is the image's '{city}_{seq:06d}_{frame:06d}'; `masks` (N, H, W) bool at the image's
    resolution; `label_ids` Cityscapes label ids (e.g. 26 for car); `scores` in [0, 1].
    """
    pred_dir = Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    if not len(masks) == len(label_ids) == len(scores):
        raise ValueError(f"{len(masks)} masks, {len(label_ids)} label ids, {len(scores)} scores")
    lines = []
    for index, (mask, label_id, score) in enumerate(zip(masks, label_ids, scores, strict=True)):
        name = f"{stem}_pred_{index:03d}.png"
        if not cv2.imwrite(str(pred_dir / name), mask.astype(np.uint8) * 255):
            raise OSError(f"cannot write {pred_dir / name}")
        lines.append(f"{name} {int(label_id)} {float(score):.6f}\n")
    text_path = pred_dir / f"{stem}_pred.txt"
    text_path.write_text("".join(lines))
    return text_path


def evaluate_instances(gt_instance_files: Sequence[str | os.PathLike], pred_dir: str | os.PathLike,
                       out_dir: str | os.PathLike, *, timeout_s: float = 3600.0) -> InstanceEvaluation:
    """Evaluate predictions in `pred_dir` against the given *_gtFine_instanceIds.png files.

    Every ground-truth image needs a prediction file (possibly empty). Results, the evaluator's
    matches.json and its ground-truth cache are written into `out_dir`.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / GT_CACHE_FILE).unlink(missing_ok=True)
    run_file = out / "evaluation_run.json"
    run_file.write_text(json.dumps({
        "gt": [str(Path(p).resolve()) for p in gt_instance_files],
        "pred_dir": str(Path(pred_dir).resolve()),
        "out_dir": str(out),
    }))
    env = {k: v for k, v in os.environ.items() if k not in ("CITYSCAPES_DATASET", "CITYSCAPES_RESULTS")}
    result = subprocess.run([sys.executable, "-m", "instseg_core.eval.cityscapes_instances", str(run_file)],
                            cwd=out, env=env, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"Cityscapes evaluator failed (exit {result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    raw = json.loads((out / RESULT_FILE).read_text())
    averages = raw["averages"]
    per_class = {name: {"ap": float(values["ap"]), "ap50": float(values["ap50%"])}
                 for name, values in averages["classes"].items()}
    return InstanceEvaluation(float(averages["allAp"]), float(averages["allAp50%"]), per_class, raw)


def _numpy_safe_json_writer(data: dict, file_name: str) -> None:
    def convert(value: object) -> object:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        return value.__dict__

    with open(file_name, "w") as handle:
        handle.write(json.dumps(data, default=convert, sort_keys=True, indent=4))


def _patch_empty_class_crash(official: Any) -> None:
    """evaluateMatches raises IndexError (`yTrueSortedCumsum[-1]` of an empty array) for a class that has
    ground truth and predictions of which none counts (every GT missed, every prediction on ignored
    regions). That class has no true positive, so its AP is 0: the one line is patched to say so, the rest
    of the official function runs unchanged."""
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(official.evaluateMatches))
    crash = "nbTrueExamples = yTrueSortedCumsum[-1]"
    if crash not in source:
        return  # a fixed upstream version
    source = source.replace(crash, "nbTrueExamples = yTrueSortedCumsum[-1] if len(yTrueSortedCumsum) else 0")
    exec(compile(source, inspect.getsourcefile(official.evaluateMatches) or "<cityscapesscripts>", "exec"),
         official.__dict__)


def _run_in_child(run_file: str) -> None:
    """Child-process entry: adapt the environment minimally, then call the official evaluator."""
    if not hasattr(np, "in1d"):
        np.in1d = lambda a, b, **kw: np.isin(np.ravel(a), b, **kw)  # type: ignore[attr-defined]  # gone in 2.4
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as official  # noqa: N813

    run = json.loads(Path(run_file).read_text())
    out = Path(run["out_dir"])
    if Path.cwd().resolve() != out:
        sys.exit(f"evaluator must run inside its output directory {out}")
    official.writeDict2JSON = _numpy_safe_json_writer
    _patch_empty_class_crash(official)
    args = official.args
    args.predictionPath = run["pred_dir"]
    args.predictionWalk = None
    args.gtInstancesFile = str(out / GT_CACHE_FILE)
    args.exportFile = str(out / RESULT_FILE)
    args.JSONOutput = True
    args.quiet = True
    args.colorized = False
    gt = run["gt"]
    predictions = [official.getPrediction(path, args) for path in gt]
    official.evaluateImgLists(predictions, gt, args)


__all__ = ["InstanceEvaluation", "evaluate_instances", "write_predictions"]

if __name__ == "__main__":
    _run_in_child(sys.argv[1])
