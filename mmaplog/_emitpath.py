"""Which record path is active: the C one (``mmaplog._native``) or the pure-Python one.

The C path is an optional extension, built at install time where a C compiler and
the Python headers are at hand. It compresses with the zstd library that the
``zstandard`` package itself uses, so both paths write the same bytes; where that
library cannot be found (or has another version), or the extension was not built,
or ``MMAPLOG_PURE=1`` is set in the environment, the pure path runs.
:data:`EMIT_PATH` says which, and :data:`REASON` why the pure one.

Imports nothing of mmaplog: the cache asks this module, never the other way round.
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib.util
import os
from typing import Any

__all__ = ["EMIT_PATH", "NATIVE_CODECS", "REASON", "set_formatter", "writer_type"]

NATIVE_CODECS = frozenset((0, 2))
"""The compressions the C path writes (none and zstd; zlib takes the pure path)."""

PURE_ENV = "MMAPLOG_PURE"
"""Set to 1 to force the pure-Python path (read once, at import)."""


def _zstd_candidates() -> list[str]:
    """Shared libraries that export zstd's API: the one inside the ``zstandard``
    package first (its CFFI backend's module exports it), then the system's."""
    import zstandard

    here = os.path.dirname(zstandard.__file__)
    found = sorted(glob.glob(os.path.join(here, "_cffi*.so")))
    found += sorted(glob.glob(os.path.join(here, "backend_c*.so")))
    system = ctypes.util.find_library("zstd")
    if system:
        found.append(system)
    return found


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
    import zstandard

    major, minor, patch = zstandard.ZSTD_VERSION[:3]
    want = major * 10000 + minor * 100 + patch
    refused = []
    for path in _zstd_candidates():
        try:
            _native.load_zstd(path, want)
        except OSError as exc:
            refused.append(str(exc))
            continue
        return _native, ""
    return None, (
        f"no zstd library of the zstandard package's version ({want}) could be loaded"
        + (f": {'; '.join(refused)}" if refused else "")
    )


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
