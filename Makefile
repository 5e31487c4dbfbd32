# Entry points; see README.md.
PYTHON ?= python
export PYTHONPATH := $(CURDIR)
POST_STEPS := characterize_head,component_ablation

.PHONY: setup test demo figures bench check-real
setup:  ## install the pinned dependencies (torch CPU build first)
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -r requirements.txt

test:  ## the offline test suite on the planted model
	$(PYTHON) -m pytest -q -n 2 --dist loadfile tests

# Needs genuine gpt2-small (HF cache, or L1H5_REAL_MODEL=/path/to/folder); skipped with the reason otherwise.
check-real:  ## this install against numbers measured on genuine gpt2-small elsewhere (common/real_checks.py)
	$(PYTHON) -m pytest -q -rs -m real_model tests/test_real_model.py


# The post-protocol runs (figures/*/post/) first: the report of the main run compares them with the
# published numbers and shows our protocol's beside them (common/protocol.py).
demo:  ## every script on the planted model, fully offline (figures/demo/)
	HF_HUB_OFFLINE=1 $(PYTHON) run_all.py --model planted --protocol post --only $(POST_STEPS) $(ARGS)
	HF_HUB_OFFLINE=1 $(PYTHON) run_all.py --model planted $(ARGS)

# Offline with a populated HF cache: HF_HUB_OFFLINE=1 make figures ARGS="--text wiki.train.raw --sae-path sae_dir/"
figures:  ## every script on real gpt2-small (figures/)
	$(PYTHON) run_all.py --model gpt2-small --protocol post --only $(POST_STEPS) $(ARGS)
	$(PYTHON) run_all.py --model gpt2-small $(ARGS)

# Before/after profile at gpt2-small size (bench/RESULTS.md): make bench ARGS="--before <git ref>"
bench:  ## per-script wall, CPU and peak RSS at gpt2-small size, written to bench/RESULTS.md
	HF_HUB_OFFLINE=1 $(PYTHON) bench/run_bench.py $(ARGS)
