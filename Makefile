# `make demo` and `make test` set up .venv on first use (idempotent, fast afterwards).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed first, only when the venv has no torch. Without an NVIDIA GPU (no nvidia-smi)
# it comes from PyTorch's CPU index, so a CPU machine never pulls the multi-GB CUDA build; when that
# index cannot be reached, from the default index. With a GPU, the default index's (CUDA) build.
TORCH_CPU := torch==2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: setup browser demo test test-fast lint bench mutation clean results-crafter results-crafter-all results-crafter-open results-babyai results-rl

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || { \
		if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet $(TORCH_CPU); \
		else $(PY) -m pip install --quiet --retries 1 --timeout 30 --index-url $(TORCH_CPU_INDEX) $(TORCH_CPU) \
			|| { echo "PyTorch's CPU index could not be used: installing $(TORCH_CPU) from the default index"; \
				$(PY) -m pip install --quiet $(TORCH_CPU); }; fi; }
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/instructcraft demo --out outputs/demo

# The attention viewer's test drives Debian's Chromium (playwright only speaks to it).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium (needs root and Debian): the browser test will fail"

test: $(STAMP) browser
	$(PY) -m pytest -n 2 --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow" tests

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

bench: $(STAMP)
	for what in env policy bc attention rl; do $(VENV)/bin/instructcraft bench $$what --json; done

# Mutation testing (slow, not part of `make test`): every module, or one with MODULE=store.
# Modules and their tests: tools/mutation.py; scores: docs/development.md.
MODULE ?=
MUTATION_CHILDREN ?= 2

mutation: $(STAMP)
	$(PY) tools/mutation.py --max-children $(MUTATION_CHILDREN) $(MODULE)

clean:
	rm -rf $(VENV) outputs mutants

# Learning results reported in the README (CPU: collection minutes, training about 5-25 minutes each).
CRAFTER_TASKS := collect_wood collect_sapling collect_drink eat_cow place_table make_wood_pickaxe make_wood_sword place_plant collect_stone place_stone
RESULTS := outputs/results

results-crafter: $(STAMP)
	$(VENV)/bin/instructcraft collect --env instructcraft/Crafter-Instruct-v0 --episodes 4000 --seed 0 --workers 2 \
		--only-success --noise 0.25 --tasks $(CRAFTER_TASKS) --out $(RESULTS)/crafter_demos
	$(VENV)/bin/instructcraft bc --config configs/bc_crafter.yaml --data $(RESULTS)/crafter_demos --out $(RESULTS)/bc_crafter
	$(VENV)/bin/instructcraft eval --checkpoint $(RESULTS)/bc_crafter/checkpoint --env instructcraft/Crafter-Instruct-v0 \
		--episodes 200 --tasks $(CRAFTER_TASKS) --sensitivity --workers 2
	$(VENV)/bin/instructcraft dagger --config configs/bc_crafter.yaml --data $(RESULTS)/crafter_demos \
		--env instructcraft/Crafter-Instruct-v0 --tasks $(CRAFTER_TASKS) --init $(RESULTS)/bc_crafter/checkpoint \
		--rounds 3 --episodes 500 --beta 0.3 --beta-decay 0.5 --steps-per-round 1200 --eval-episodes 0 \
		--workers 2 --out $(RESULTS)/dagger_crafter
	$(VENV)/bin/instructcraft eval --checkpoint $(RESULTS)/dagger_crafter/checkpoint --env instructcraft/Crafter-Instruct-v0 \
		--episodes 200 --tasks $(CRAFTER_TASKS) --sensitivity --workers 2

# All 22 tasks, wood to diamond (docs/results.md, "Crafter-Instruct, 22 tasks", E22): 600 demonstration
# attempts a task (DART noise, successful ones kept), BC for 18,000 steps, then 20 evaluation episodes
# a task and instruction mode. End to end on 2 CPU cores: 48 min with bf16 BC on a fast machine (collect 19 min,
# BC 27, evaluation 3; docs/results.md, E26); the config's fp32 BC took 32 min there (E27); on a slower
# machine the stages summed to about 2 h 15 min.
# DAgger rounds on top did not add at this data size (E20, E23), so the recipe has none.
# Twice these demonstrations (26,400 attempts, BC for 36,000 steps) did not add either (E29: 0.657).
# TIME="/usr/bin/time -f '%e s wall, %U s user, %S s sys'" prints each stage's cost.
CRAFTER_ALL_TASKS := $(CRAFTER_TASKS) collect_coal collect_iron collect_diamond place_furnace make_stone_pickaxe \
	make_stone_sword make_iron_pickaxe make_iron_sword defeat_zombie defeat_skeleton eat_plant wake_up
TIME ?=

results-crafter-all: $(STAMP)
	$(TIME) $(VENV)/bin/instructcraft collect --env instructcraft/Crafter-Instruct-v0 --episodes 13200 --seed 0 --workers 2 \
		--only-success --noise 0.25 --tasks $(CRAFTER_ALL_TASKS) --out $(RESULTS)/crafter_all_demos
	$(TIME) $(VENV)/bin/instructcraft bc --config configs/bc_crafter_all.yaml --data $(RESULTS)/crafter_all_demos \
		--out $(RESULTS)/bc_crafter_all
	$(TIME) $(VENV)/bin/instructcraft eval --checkpoint $(RESULTS)/bc_crafter_all/checkpoint \
		--env instructcraft/Crafter-Instruct-v0 --episodes 440 --tasks $(CRAFTER_ALL_TASKS) --sensitivity --workers 2 \
		--out $(RESULTS)/eval_crafter_all

# The open-ended game (docs/plans.md): results-crafter-all's agent given the shipped tech-tree plan,
# and the same agent given only the open-ended instruction; crafter's score over whole games.
results-crafter-open: $(STAMP)
	$(TIME) $(VENV)/bin/instructcraft eval --checkpoint $(RESULTS)/bc_crafter_all/checkpoint \
		--env instructcraft/Crafter-OpenEnded-v0 --plan configs/plans/tech_tree.yaml --episodes 100 --workers 2 \
		--out $(RESULTS)/open_plan
	$(TIME) $(VENV)/bin/instructcraft eval --checkpoint $(RESULTS)/bc_crafter_all/checkpoint \
		--env instructcraft/Crafter-OpenEnded-v0 --episodes 100 --workers 2 --out $(RESULTS)/open_instruction

results-babyai: $(STAMP)
	$(VENV)/bin/instructcraft collect --env instructcraft/BabyAI-GoToLocal-v0 --episodes 40000 --seed 0 --workers 2 \
		--only-success --out $(RESULTS)/gotolocal_demos
	$(VENV)/bin/instructcraft bc --config configs/bc_babyai.yaml --data $(RESULTS)/gotolocal_demos --out $(RESULTS)/bc_babyai
	$(VENV)/bin/instructcraft eval --checkpoint $(RESULTS)/bc_babyai/checkpoint --env instructcraft/BabyAI-GoToLocal-v0 \
		--episodes 200 --sensitivity --workers 2

# PPO from scratch and from the BC checkpoint of results-crafter (same env steps), then the
# open-ended game. About 25 CPU-minutes per 80k PPO steps on 2 cores.
results-rl: $(STAMP)
	$(VENV)/bin/instructcraft rl --config configs/rl_crafter.yaml --env instructcraft/Crafter-Instruct-v0 --steps 80000 \
		--init $(RESULTS)/bc_crafter/checkpoint --set rl.lr=1e-4 --set rl.kl_coef=0.1 --set rl.kl_decay=0.98 \
		--out $(RESULTS)/bc_ppo
	$(VENV)/bin/instructcraft eval --checkpoint $(RESULTS)/bc_ppo/checkpoint --env instructcraft/Crafter-Instruct-v0 \
		--episodes 100 --sensitivity --workers 2
	$(VENV)/bin/instructcraft rl --config configs/rl_crafter.yaml --env instructcraft/Crafter-Instruct-v0 --steps 80000 \
		--out $(RESULTS)/ppo
	$(VENV)/bin/instructcraft eval --checkpoint $(RESULTS)/ppo/checkpoint --env instructcraft/Crafter-Instruct-v0 \
		--episodes 100 --sensitivity --workers 2
	$(VENV)/bin/instructcraft rl --config configs/rl_crafter.yaml --env instructcraft/Crafter-OpenEnded-v0 --steps 60000 \
		--out $(RESULTS)/ppo_open
	$(VENV)/bin/instructcraft eval --checkpoint $(RESULTS)/ppo_open/checkpoint --env instructcraft/Crafter-OpenEnded-v0 \
		--episodes 30 --workers 2
