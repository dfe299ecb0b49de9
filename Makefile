# The two commands of the README's Quick start, and the desktop bundle (docs/packaging.md).
.PHONY: run test bench bundle bundle-test

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
TARBALL := dist/infini-reader-$(VERSION)-linux-$(shell uname -m).tar.gz

run:
	@scripts/setup.sh
	.venv/bin/infini-reader

test:
	@scripts/setup.sh test
	QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest $(PYTEST_ARGS)

bench:
	@scripts/setup.sh
	.venv/bin/python -m lab.bench

# dist/infini-reader/ (the executables infini-reader and infini, one folder of shared libraries)
# and its tarball, then the smoke test. PyInstaller comes from the `bundle` extra.
bundle:
	@scripts/setup.sh bundle
	@start=$$(date +%s); \
	.venv/bin/python -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
		packaging/infini-reader.spec && \
	echo "bundle built in $$(( $$(date +%s) - start )) s"
	tar -C dist -czf $(TARBALL) infini-reader
	@du -sh dist/infini-reader $(TARBALL)
	$(MAKE) bundle-test

# the bundled infini reads a small book and answers a question; the bundled window opens offscreen
bundle-test:
	.venv/bin/python packaging/smoke_test.py dist/infini-reader
