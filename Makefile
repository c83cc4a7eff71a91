# The two commands of the README: `make demo` and `make test`. Each sets up .venv first.
.PHONY: setup demo test lint

setup:
	./scripts/setup.sh

# The demo replaces its own earlier output in demo_output/ (run it again any time); DEMO_ARGS= turns that off.
DEMO_ARGS ?= --force

demo: setup
	.venv/bin/python -m jobs.demo $(DEMO_ARGS) $(ARGS)

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q $(ARGS)

lint: setup
	.venv/bin/ruff check .
