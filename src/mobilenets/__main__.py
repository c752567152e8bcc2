"""``python -m mobilenets`` (and ``torchrun -m mobilenets``) runs the command line."""

import sys

from mobilenets.cli import main

sys.exit(main())
