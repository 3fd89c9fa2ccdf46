"""``python -m btu_twisted.cli``: the ``btu`` command without its script."""

import sys

from btu_twisted.cli import main

sys.exit(main())
