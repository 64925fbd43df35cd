"""``python -m mmaplog.decode FILE... [-o OUT]``: print the records of log files.

The same as ``mmaplog decode``; see ``mmaplog decode --help`` for the options
and exit status.
"""

from __future__ import annotations

import sys

from ._cli import decode_main

__all__ = ["main"]

main = decode_main

if __name__ == "__main__":
    sys.exit(decode_main())
