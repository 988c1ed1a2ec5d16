"""`python -m longlive ...`: see longlive/cli.py."""
from __future__ import annotations

import sys

from longlive.cli import main

sys.exit(main())
