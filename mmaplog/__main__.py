"""``python -m mmaplog``: the ``mmaplog`` command line."""

import sys

from ._cli import main

sys.exit(main())
