# The two commands of the README: `make demo` and `make test`. Each sets up .venv first.
.PHONY: setup demo test lint

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/python -m jobs.demo $(ARGS)

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q $(ARGS)

lint: setup
	.venv/bin/ruff check .
