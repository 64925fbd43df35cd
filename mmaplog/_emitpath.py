"""Which record path is active: the C one (``mmaplog._native``) or the pure-Python one.

The C path is an optional extension, built at install time where a C compiler and
the Python headers are at hand. Where it was not built, or does not load, or
``MMAPLOG_PURE=1`` is set in the environment, the pure path runs. Both write the same
bytes. :data:`EMIT_PATH` says which path runs, and :data:`REASON` why the pure one.

Imports nothing of mmaplog: the cache asks this module, never the other way round.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

__all__ = ["EMIT_PATH", "REASON", "set_formatter", "writer_type"]

PURE_ENV = "MMAPLOG_PURE"
"""Set to 1 to force the pure-Python path (read once, at import)."""


def _load() -> tuple[Any, str]:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"{PURE_ENV} is set"
    if importlib.util.find_spec(f"{__package__}._native") is None:
        return None, (
            "the C extension was not built when mmaplog was installed (a C compiler and "
            "the Python headers are needed then)"
        )
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"the C extension does not load ({exc})"
    return _native, ""


_NATIVE, REASON = _load()
_WRITER = _NATIVE.Writer if _NATIVE is not None else None
EMIT_PATH = "native" if _NATIVE is not None else "pure"
"""``"native"`` when records are written by the C extension, else ``"pure"``."""


def writer_type() -> Any:
    """The C writer's type, or None on the pure path."""
    return _WRITER


def set_formatter(cls: type) -> None:
    """Tell the C path which formatter class it renders lines for (XlogFormatter)."""
    if _NATIVE is not None:
        _NATIVE.set_formatter(cls)
