"""``python -m torture``: see :mod:`torture.run`."""

import sys

from .run import main

sys.exit(main())
