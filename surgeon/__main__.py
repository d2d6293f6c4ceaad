"""``python -m surgeon``: the command line (see :mod:`surgeon.cli`)."""

from .cli import main

raise SystemExit(main())
