# The two commands of the README's Quick start.
.PHONY: run test bench

run:
	@scripts/setup.sh
	.venv/bin/infini-reader

test:
	@scripts/setup.sh test
	QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest $(PYTEST_ARGS)

bench:
	@scripts/setup.sh
	.venv/bin/python -m lab.bench
