"""`python -m shared.cli`: the `facelib` command."""

import sys

from shared.cli import main

sys.exit(main())
