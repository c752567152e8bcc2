"""``python -m mobilenets`` (and ``torchrun -m mobilenets``) runs the command line."""

import sys

from mobilenets.cli.main import main

sys.exit(main())
