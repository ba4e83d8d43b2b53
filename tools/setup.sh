#!/usr/bin/env bash
# `make setup`: create .venv with every pinned dependency and our ROS 2 interfaces. Idempotent.
# Needs only Python 3.11 (with venv), cmake, gcc/g++ and make; everything else comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=$VENV/bin/python
PYTHON=${PYTHON:-python3}

step() { printf '\n== %s\n' "$*"; }
for tool in cmake g++ make "$PYTHON"; do
  command -v "$tool" >/dev/null || { echo "setup: '$tool' not found (Debian: apt-get install cmake g++ make python3-venv)" >&2; exit 1; }
done

# The studio's browser tests drive Debian's chromium through its chromedriver (no browser download at run time).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing chromium and chromium-driver (Debian) for the studio's browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: chromium/chromedriver missing; the studio's browser test will fail until you run" \
         "'sudo apt-get install chromium chromium-driver'" >&2
  fi
fi

if [ ! -x "$PY" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Dependency groups (PEP 735) from pyproject.toml; pip learns --group in the bootstrap step.
group() { "$PY" -c 'import sys,tomllib; print("\n".join(tomllib.load(open("pyproject.toml","rb"))["dependency-groups"][sys.argv[1]]))' "$1"; }
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

step "pip bootstrap: $(group bootstrap | tr '\n' ' ')"
# shellcheck disable=SC2046
pip_install $(group bootstrap)
step "torch first, alone and pinned (an unpinned torch would pull GBs of CUDA packages)"
pip_install --group pyproject.toml:torch
step "ROS 2 Kilted wheels, runtime libraries, test tools"
pip_install --group pyproject.toml:ros --group pyproject.toml:runtime --group pyproject.toml:dev
"$PY" -c 'import torch; v=torch.__version__; assert v.startswith("2.13.0"), v; assert not torch.version.cuda, "CUDA torch installed"'

step "photographs of the real evaluation sets: $(group photos | tr '\n' ' ')(downloaded into data/photos, not installed)"
mkdir -p "$ROOT/data/photos"
# labelme as its source archive: its examples (photographs with their polygons) are not in its wheel
# shellcheck disable=SC2046
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary labelme --dest "$ROOT/data/photos" \
  $(group photos)

step "repairing the ROS wheels' cmake exports"
"$PY" tools/repair_ros_cmake_exports.py "$VENV"

step "building ros2_ws/src/instseg_interfaces into .venv"
export VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH CMAKE_PREFIX_PATH=$VENV AMENT_PREFIX_PATH=$VENV
BUILD=$ROOT/build/instseg_interfaces
mkdir -p "$ROOT/build"
cmake -S ros2_ws/src/instseg_interfaces -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release >"$ROOT/build/interfaces-cmake.log" 2>&1 \
  || { tail -30 "$ROOT/build/interfaces-cmake.log"; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" >>"$ROOT/build/interfaces-cmake.log" 2>&1 \
  || { tail -30 "$ROOT/build/interfaces-cmake.log"; exit 1; }
cmake --install "$BUILD" >>"$ROOT/build/interfaces-cmake.log" 2>&1 \
  || { tail -30 "$ROOT/build/interfaces-cmake.log"; exit 1; }

step "deriving model files from the shipped ones (ONNX float32 and int8; skipped when up to date)"
# Before the install: setup.py copies models/ into share/instseg_ros/models.
"$PY" -m training.derive_models 2> >(grep -v -i "warning" >&2)

step "installing instseg_ros (editable) with its console scripts"
# Lenient editable mode: new modules under instseg_core/ and instseg_ros/ are importable at once.
pip_install --no-deps --no-build-isolation -e .

step "checking the environment"
"$PY" -c 'import rclpy, cv2, onnxruntime, rosbags, numpy; from instseg_interfaces.msg import InstanceArray; from instseg_interfaces.srv import SegmentObject; print("ok: rclpy, instseg_interfaces, onnxruntime", onnxruntime.__version__, "opencv", cv2.__version__, "numpy", numpy.__version__)'
