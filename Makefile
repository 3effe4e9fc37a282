# The two commands: `make demo` (closed loop on the simulated robot) and `make test`.
SHELL := /bin/bash
ENV := source scripts/env.sh
EPISODES ?= 2
# Which simulated robot `make demo` runs: pusht (the default) or so101 (the arm, docs/arms.md).
ROBOT ?= pusht
ifeq ($(ROBOT),pusht)
DEMO_LAUNCH :=
EPISODE_STEPS ?= 300
DEMO_OUT ?= outputs/demo
# The best camera policy today: the block pose read from the camera by the shipped pose estimator,
# and the flow policy on that pose (48 of 50 unseen Push-T starts through the graph; docs/closed_loop.md,
# rung 3a). `make demo DEMO_POLICY=` runs the launch file's default instead.
DEMO_POLICY ?= policy_checkpoint:=builtin:sim-pusht-policy-block-state encoder_model:=builtin:sim-pusht-pose-cnn execute_steps:=3
else ifeq ($(ROBOT),so101)
DEMO_LAUNCH := --launch-file launch/sim_arm_policy.launch.xml
EPISODE_STEPS ?= 150
DEMO_OUT ?= outputs/demo_so101
# The camera rung: the shipped cube estimator reads the cube and zone from the front camera, the learned
# cube-state policy acts on them (docs/arms.md, "Learned policies on the arm"). `make demo ROBOT=so101
# DEMO_POLICY=` runs the launch file's default instead: the scripted expert on the sim's cube state.
DEMO_POLICY ?= observation:=camera encoder_model:=builtin:sim-so101-cube-cnn policy_checkpoint:=builtin:sim-so101-policy-cube-state execute_steps:=2 blend_time:=0 run_wrist_encoder:=true
else
$(error ROBOT must be pusht or so101, not '$(ROBOT)')
endif

.PHONY: setup demo lint test clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	@$(ENV) && python -m rla_wm_ros.demo $(DEMO_LAUNCH) --episodes $(EPISODES) --episode-steps $(EPISODE_STEPS) --output $(DEMO_OUT) $(DEMO_POLICY)

# Lint (ruff: rules and formatting, whole repository) and types (mypy over the rla_wm library).
lint: setup
	@$(ENV) && ruff check . && ruff format --check . && (cd models && python -m mypy)

test: lint
	@$(ENV) && python -m pytest

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/log ros2_ws/colcon_build.log .venv/.stamps/colcon
