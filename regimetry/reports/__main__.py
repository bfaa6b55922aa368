"""``python -m regimetry.reports`` (see :mod:`regimetry.reports.cli`)."""

import sys

from regimetry.reports.cli import main

sys.exit(main())
