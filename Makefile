# instseg: the README's commands. Every target that starts rclpy runs inside a loopback-only network
# namespace with its own ROS_DOMAIN_ID (instseg_ros/isolation.py), so no DDS traffic leaves this machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.instseg-setup-stamp
ISOLATED := $(PY) -m instseg_ros.isolation --
SETUP_INPUTS := pyproject.toml setup.py setup.cfg package.xml tools/setup.sh tools/repair_ros_cmake_exports.py \
	$(wildcard ros2_ws/src/instseg_interfaces/*.txt ros2_ws/src/instseg_interfaces/*.xml \
	           ros2_ws/src/instseg_interfaces/msg/* ros2_ws/src/instseg_interfaces/srv/*)

.PHONY: help setup test lint pytest demo bench data train-extreme colcon clean distclean

help:
	@echo "make setup   create .venv: pinned deps, ROS 2 wheels, instseg_interfaces (idempotent)"
	@echo "make demo    set up, then run the main job on the embedded default (see README)"
	@echo "make test    set up, then ruff and the whole test suite"
	@echo "make bench   set up, then the benchmarks in bench/"
	@echo "make data    set up, then write a synthetic Cityscapes-format tree to data/synthetic (DATA_ARGS=...)"
	@echo "make train-extreme  data, training (extreme points + box-only), export to models/, ablation table"
	@echo "make colcon  build ros2_ws/ with colcon against .venv (as on a full ROS 2 install)"

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	bash tools/setup.sh
	@touch $@

lint: setup
	$(VENV)/bin/ruff check .

# pytest isolates itself (tests/conftest.py enters a loopback-only namespace before any test runs).
pytest: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint pytest

# Until the streaming node lands (issue: real-time streaming), the demo is the DDS image-transport job:
# 2048x1024 frames published through the codec into a subscriber process, over real Fast DDS.
demo: setup
	$(ISOLATED) $(PY) bench/dds_image_stream.py

bench: setup
	$(PY) bench/bench_image_codec.py
	$(ISOLATED) $(PY) bench/dds_image_stream.py
	$(PY) bench/bench_data.py
	$(ISOLATED) $(PY) bench/bench_annotate.py

DATA_ARGS ?= --splits train=200,val=50 --jobs 2
data: setup
	$(VENV)/bin/instseg-synth data/synthetic $(DATA_ARGS)

# The shipped extreme-point model: synthetic data (train seed 0, held-out val seed 1), 10 epochs each for the
# extreme-point U-Net and the box-only baseline on CPU (~25 min each on 2 cores), export, ablation table.
EXTREME_DATA := data/extreme_points
EXTREME_EPOCHS ?= 10
TRAIN_EXTREME := $(PY) -m training.extreme_points
train-extreme: setup
	$(VENV)/bin/instseg-synth $(EXTREME_DATA) --splits train=240 --seed 0 --jobs 2
	$(VENV)/bin/instseg-synth $(EXTREME_DATA) --splits val=60 --seed 1 --jobs 2
	$(TRAIN_EXTREME) prepare --data $(EXTREME_DATA) --out $(EXTREME_DATA)_crops
	$(TRAIN_EXTREME) train --crops $(EXTREME_DATA)_crops --out data/runs/extreme --variant extreme \
		--epochs $(EXTREME_EPOCHS) --resume
	$(TRAIN_EXTREME) train --crops $(EXTREME_DATA)_crops --out data/runs/box --variant box \
		--epochs $(EXTREME_EPOCHS) --resume
	$(TRAIN_EXTREME) export --run data/runs/extreme --out models/extreme_unet.onnx \
		--data-note "instseg-synth 1024x512: train=240 images seed 0, val=60 images seed 1 (held out)"
	$(TRAIN_EXTREME) quantize --model models/extreme_unet.onnx --crops $(EXTREME_DATA)_crops \
		--out models/extreme_unet_int8.onnx
	$(TRAIN_EXTREME) ablation --runs data/runs/extreme data/runs/box --crops $(EXTREME_DATA)_crops \
		--markdown docs/extreme_points_ablation.md

colcon: setup
	cd ros2_ws && CMAKE_PREFIX_PATH=$(CURDIR)/$(VENV) AMENT_PREFIX_PATH=$(CURDIR)/$(VENV) \
		PATH=$(CURDIR)/$(VENV)/bin:$$PATH ../$(VENV)/bin/colcon build --event-handlers console_cohesion+

clean:
	rm -rf build ros2_ws/build ros2_ws/install ros2_ws/log *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -not -path './.venv/*' -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
