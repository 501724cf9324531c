"""``python -m sipdialer`` runs the command line."""

import sys

from sipdialer.cli import main

sys.exit(main())
