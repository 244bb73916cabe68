# The commands the README gives. Everything bootstraps itself on a fresh machine.
PY := .venv/bin/python

.PHONY: bootstrap jars run test test-fast chaos eval bench lint clean

bootstrap:
	@bash dev/bootstrap.sh

jars: bootstrap
	@$(PY) -c "from devtools.broker import Broker; Broker.ensure_jars()"

run: jars
	$(PY) -m streams.cli run

test: jars
	$(PY) -m pytest

chaos: jars
	CHAOS=long $(PY) -m pytest -m chaos -s

test-fast: bootstrap
	$(PY) -m pytest -m "not kafka and not slow"

eval: bootstrap
	$(PY) -m eval.run_eval

bench: jars
	$(PY) -m bench.run $(BENCH_ARGS)

lint: bootstrap
	$(PY) -m ruff check streams api devtools tests bench eval
	$(PY) -m ruff format --check streams api devtools
	$(PY) -m mypy

clean:
	-$(PY) -m streams.cli broker stop
	rm -rf .clipguard
