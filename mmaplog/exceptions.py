"""The one error hierarchy of mmaplog.

Every error raised by mmaplog's public API derives from :class:`MmapLogError`.
Errors about bytes that are not what the format says also derive from
:class:`ValueError`, so code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "CacheLockedError",
    "ConfigError",
    "CorruptionError",
    "DecryptionError",
    "KeyMismatchError",
    "MissingDependencyError",
    "MmapLogError",
    "NeedKeyError",
    "StorageError",
    "UnsupportedVersionError",
]


class MmapLogError(Exception):
    """Base class of every error mmaplog raises."""


class ConfigError(MmapLogError, ValueError):
    """An option given to mmaplog is invalid (a bad path, level, key or size)."""


class CorruptionError(MmapLogError, ValueError):
    """Bytes that should be mmaplog data are damaged.

    ``offset`` is where in the input the damage was found (``None`` when not known).
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class UnsupportedVersionError(CorruptionError):
    """A block or cache was written by a newer, unknown format version."""


class DecryptionError(MmapLogError, ValueError):
    """An encrypted block could not be opened."""


class NeedKeyError(DecryptionError):
    """The input is encrypted and no private key was given."""


class KeyMismatchError(DecryptionError):
    """The private key given is not the one the block was encrypted for."""


class CacheLockedError(MmapLogError):
    """A cache file is held by a live process, so it must not be touched."""


class StorageError(MmapLogError):
    """Object storage refused a request or could not be reached.

    ``transient`` is True when the storage was unreachable or busy for longer than
    the retries allowed (worth trying again later), False when it refused (bad
    credentials, a missing bucket).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class MissingDependencyError(MmapLogError, ImportError):
    """An optional package that this feature needs is not installed."""
