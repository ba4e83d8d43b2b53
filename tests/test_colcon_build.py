"""`colcon build` in ros2_ws/ gives a standard ROS 2 overlay (as on a full ROS 2 install)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
IGNORED = shutil.ignore_patterns(".venv", ".git", "build", "install", "log", "__pycache__", "*.egg-info",
                                 ".pytest_cache", ".ruff_cache", "out")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repo built with colcon against .venv (our stand-in for /opt/ros/kilted)."""
    if shutil.which("colcon", path=str(VENV / "bin")) is None:
        pytest.fail("colcon is not installed in the venv; run `make setup`")
    copy = tmp_path_factory.mktemp("colcon") / "repo"
    shutil.copytree(REPO, copy, symlinks=True, ignore=IGNORED)
    workspace = copy / "ros2_ws"
    env = dict(os.environ, CMAKE_PREFIX_PATH=str(VENV), AMENT_PREFIX_PATH=str(VENV),
               PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run([str(VENV / "bin" / "colcon"), "build", "--event-handlers", "console_direct-"],
                            cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "2 packages finished" in result.stdout
    return workspace / "install"


def test_workspace_links_repo_root() -> None:
    link = REPO / "ros2_ws" / "src" / "instseg_ros"
    assert link.is_symlink() and link.resolve() == REPO
    assert (REPO / "ros2_ws" / "src" / "instseg_interfaces" / "package.xml").is_file()


def test_colcon_installs_both_packages(colcon_install: Path) -> None:
    interfaces = colcon_install / "instseg_interfaces"
    assert (interfaces / "share" / "instseg_interfaces" / "msg" / "InstanceArray.msg").is_file()
    assert list((interfaces / "lib").glob("libinstseg_interfaces__rosidl_typesupport_c.so"))
    ros = colcon_install / "instseg_ros"
    assert (ros / "share" / "ament_index" / "resource_index" / "packages" / "instseg_ros").is_file()
    assert (ros / "share" / "instseg_ros" / "package.xml").is_file()
    # `ros2 run instseg_ros <name>` looks for executables in lib/<package>.
    assert os.access(ros / "lib" / "instseg_ros" / "instseg-isolated", os.X_OK)


def test_sourced_overlay_imports_from_install(colcon_install: Path) -> None:
    """After `source install/setup.bash`, Python finds our packages in the overlay, not the checkout."""
    code = ("import instseg_interfaces.msg as m, instseg_ros, instseg_core;"
            "from instseg_interfaces.srv import SegmentObject;"
            "print(m.__file__); print(instseg_ros.__file__); print(SegmentObject.Response.IMAGE_TOO_LARGE)")
    script = f". {colcon_install}/local_setup.bash && cd / && {sys.executable} -c '{code}'"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    msg_path, ros_path, code_value = result.stdout.split()
    assert msg_path.startswith(str(colcon_install / "instseg_interfaces"))
    assert ros_path.startswith(str(colcon_install / "instseg_ros"))
    assert code_value == "5"


OVERLAY_PROBE = """
import json, sys
if sys.argv[1] == "without-source":  # drop the finder of the editable install: only the overlay can provide us
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                        and "__editable__" not in type(f).__module__]
import numpy as np
import instseg_core
from instseg_core.annotate.segmenter import create_annotation_segmenter
from instseg_core.runtime import create_segmenter

segmenter = create_segmenter("spatial_embeddings", input_size=(256, 128))
result = segmenter(np.zeros((128, 256, 3), np.uint8))
annotation = create_annotation_segmenter()
image = np.zeros((100, 120, 3), np.uint8)
image[30:70, 40:90] = 200
mask = annotation.segment(image, [[40, 50], [65, 30], [89, 50], [65, 69]]).mask
print(json.dumps({"core": instseg_core.__file__, "model": str(segmenter.model_file),
                  "annotation_model": str(annotation.backend.path), "crop_relax": annotation.relax[0],
                  "instances": len(result.instances),
                  "mask_shape": list(mask.shape)}))
"""


@pytest.mark.parametrize("source", ["without-source", "with-source"])
def test_overlay_finds_its_models_from_anywhere(colcon_install: Path, source: str, tmp_path: Path) -> None:
    """Installed in a colcon overlay, the library finds the shipped models (and their manifests) in
    share/instseg_ros/models, from a different working directory, with the source checkout importable (first on the
    path) or not at all."""
    pythonpath = f"PYTHONPATH={REPO}:$PYTHONPATH " if source == "with-source" else ""
    probe = tmp_path / "probe.py"
    probe.write_text(OVERLAY_PROBE)
    script = f". {colcon_install}/local_setup.bash && cd / && {pythonpath}{sys.executable} {probe} {source}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "INSTSEG_MODEL_DIR")}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    share = colcon_install / "instseg_ros" / "share" / "instseg_ros" / "models"
    if source == "without-source":
        assert found["core"].startswith(str(colcon_install / "instseg_ros")), found
    else:
        assert found["core"].startswith(str(REPO)), found
    # AMENT_PREFIX_PATH names the overlay, whose share directory comes before the source tree either way
    assert found["model"] == str(share / "spatial_embeddings.onnx")
    assert found["annotation_model"] == str(share / "extreme_unet_int8.onnx")
    # the manifest is installed beside the graph, so the installed pipeline crops with the model's own margin
    assert found["crop_relax"] == json.loads((share / "extreme_unet_int8.json").read_text())["crop_relax"] == 0.25
    assert found["mask_shape"] == [100, 120]
