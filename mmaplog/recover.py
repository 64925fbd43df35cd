"""``python -m mmaplog.recover PATH [--log-dir DIR]``: the same as ``mmaplog recover``.

Only an entry point: the library function is :func:`mmaplog.recover` and the
work is done in ``mmaplog._recovery``. Nothing in the package imports this
module, so running it with ``-m`` finds it not yet imported. The names below
stay importable from here for code written against earlier versions.
"""

from __future__ import annotations

import sys
import types

from ._cli import recover_main
from ._recovery import (
    RecoveryReport,
    _slots_of,
    clear_slots,
    recover,
    recover_image,
    recovered_block,
    recovered_xlog_block,
)

__all__ = [
    "RecoveryReport",
    "_slots_of",
    "clear_slots",
    "main",
    "recover",
    "recover_image",
    "recovered_block",
    "recovered_xlog_block",
]

main = recover_main


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`mmaplog.recover`.

    Importing ``mmaplog.recover`` sets the package's ``recover`` attribute to this
    module, hiding the function of the same name; being callable keeps
    ``mmaplog.recover(path)`` working after such an import.
    """

    def __call__(self, path: str, log_dir: str | None = None) -> int:
        return recover(path, log_dir)


if __name__ == "__main__":
    sys.exit(recover_main())
else:
    sys.modules[__name__].__class__ = _CallableModule
