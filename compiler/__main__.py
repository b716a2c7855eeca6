"""``python -m segc``."""

import sys

from segc.cli import main

sys.exit(main())
