"""Which record path is active: the C one (``mmaplog._native``) or the pure-Python one.

The C path is an optional extension, built at install time where a C compiler and
the Python headers are at hand. Where it was not built, or does not load, or
``MMAPLOG_PURE=1`` is set in the environment, the pure path runs. Both write the same
bytes. :data:`EMIT_PATH` says which path runs, and :data:`REASON` why the pure one.

The C path seals encrypted records with ChaCha20-Poly1305 from the system's OpenSSL
libcrypto (Linux only: macOS's own libcrypto must not be loaded by applications),
checked against RFC 8439's test vector when it is loaded; where that fails it calls
the Sealer, as the pure path does. :data:`SEAL_IN_C` says which.

Imports nothing of mmaplog: the cache asks this module, never the other way round.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import sys
from typing import Any

__all__ = [
    "EMIT_PATH",
    "REASON",
    "SEAL_IN_C",
    "column_records",
    "native_aead",
    "set_formatter",
    "writer_type",
]

PURE_ENV = "MMAPLOG_PURE"
"""Set to 1 to force the pure-Python path (read once, at import)."""


def _load() -> tuple[Any, str]:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"{PURE_ENV} is set"
    if importlib.util.find_spec(f"{__package__}._native") is None:
        return None, (
            f"the C extension is not in {os.path.dirname(os.path.abspath(__file__))}: it "
            "is built when mmaplog is installed, where a C compiler and the Python headers "
            "are at hand (a source checkout first on sys.path also hides an installed one)"
        )
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"the C extension does not load ({exc})"
    return _native, ""


def _load_crypto(native: Any) -> bool:
    if native is None or not sys.platform.startswith("linux"):
        return False
    found = ctypes.util.find_library("crypto")
    for name in dict.fromkeys(["libcrypto.so.3", *([found] if found else [])]):
        try:
            native.load_crypto(name)
        except OSError:
            continue
        return True
    return False


_NATIVE, REASON = _load()
SEAL_IN_C = _load_crypto(_NATIVE)
"""True when the C path seals records itself (libcrypto loaded and checked)."""
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


def native_aead(key: bytes) -> Any:
    """The C path's ChaCha20-Poly1305 for ``key`` (32 bytes), or None where the C path
    does not seal (see :data:`SEAL_IN_C`)."""
    return _NATIVE.ChaCha20Poly1305(key) if SEAL_IN_C else None


def column_records() -> Any:
    """The reader's C builder of a column-form block's records (the tuples that
    ``mmaplog._reader`` builds in Python), or None on the pure path."""
    return _NATIVE.column_records if _NATIVE is not None else None
