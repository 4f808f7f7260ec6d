"""``python -m misentry`` runs the command line."""

import sys

from misentry.cli import main

sys.exit(main())
