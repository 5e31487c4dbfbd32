# Entry points; see README.md.
PYTHON ?= python
export PYTHONPATH := $(CURDIR)

.PHONY: setup test demo figures
setup:  ## install the pinned dependencies (torch CPU build first)
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -r requirements.txt

test:  ## the offline test suite on the planted model
	$(PYTHON) -m pytest -q tests

demo:  ## every script on the planted model, fully offline
	HF_HUB_OFFLINE=1 $(PYTHON) characterize_head.py --model planted

figures:  ## every script on real gpt2-small
	$(PYTHON) characterize_head.py --model gpt2-small
