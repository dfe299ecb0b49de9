"""`python -m infini_reader.app ...`: the command line, the same as `infini ...`."""

import sys

from infini_reader.app.cli import main

sys.exit(main())
