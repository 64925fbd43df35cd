"""mmaplog: crash-safe, compressed and encrypted logging through a file-backed mmap cache.

A Python take on Tencent Mars xlog: :class:`MmapHandler` keeps every record in a
``MAP_SHARED`` cache file until it is in the log, so a ``kill -9`` loses nothing.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from ._emitpath import EMIT_PATH
from ._reader import Record, read_records
from ._recovery import recover
from ._ship import ShipReport, ship
from .exceptions import (
    CacheLockedError,
    ConfigError,
    CorruptionError,
    DecryptionError,
    KeyMismatchError,
    MissingDependencyError,
    MmapLogError,
    NeedKeyError,
    StorageError,
    UnsupportedVersionError,
)
from .handler import MmapHandler, XlogFormatter

try:
    __version__: str = _metadata.version("mmaplog")
except _metadata.PackageNotFoundError:  # imported from a checkout that is not installed
    __version__ = "0+unknown"

__all__ = [
    "EMIT_PATH",
    "CacheLockedError",
    "ConfigError",
    "CorruptionError",
    "DecryptionError",
    "KeyMismatchError",
    "MissingDependencyError",
    "MmapHandler",
    "MmapLogError",
    "NeedKeyError",
    "Record",
    "ShipReport",
    "StorageError",
    "UnsupportedVersionError",
    "XlogFormatter",
    "__version__",
    "generate_keypair",
    "read_records",
    "recover",
    "ship",
]


def generate_keypair() -> tuple[str, str]:
    """Return a new ``(private_key_pem, public_key_base64)`` pair for encrypted logs.

    Give the public key to :class:`MmapHandler` (``public_key=``); keep the private
    key off the device: only it can decode the logs.
    """
    from ._crypto import generate_keypair as _generate

    return _generate()
