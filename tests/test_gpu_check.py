"""bench/gpu_check.py runs (on the CPU, tiny) so that it cannot rot before a GPU machine is lent, and it needs
nothing but PyTorch, NumPy and OpenCV from the checkout (what the measuring machine has)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what the measuring machine has (PyTorch pulls in a few of its own dependencies), and our package
ALLOWED = {"torch", "numpy", "cv2", "instseg_core", "typing_extensions", "sympy", "mpmath", "filelock",
           "fsspec", "jinja2", "markupsafe", "networkx", "tqdm", "torchgen", "yaml", "packaging", "mkl"}


def test_gpu_check_runs_tiny_on_cpu_with_only_torch_numpy_opencv(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "AMENT_", "INSTSEG_", "PYTHONPATH"))}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--size",
                           "256x128", "--repeats", "1", "--objects", "6", "--train-batch", "1", "--train-steps", "1",
                           "--train-crop", "256x128", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"spatial_embeddings", "box2pix", "dcme"}
    for name, result in report["models"].items():
        assert result["weights"].startswith("models/") or (name == "dcme" and result["weights"] == "random"), result
        rows = [row for section in ("network", "decoding", "end_to_end", "training")
                for row in result[section].values()]
        assert rows and all("error" not in row for row in rows), (name, result)
        assert all(row["median_ms"] > 0 for row in rows)
        # the drawn objects are decoded (DCME's shipped voting defaults need 500 votes: only the big ones at 256x128)
        assert result["decoding"]["NumPy on the CPU"]["instances"] >= (1 if name == "dcme" else 4)
        assert result["training"]["fp32"]["images_per_s"] > 0
    assert set(report["imported"]) <= ALLOWED, sorted(set(report["imported"]) - ALLOWED)
    assert "| network" in done.stdout and "wrote" in done.stdout
