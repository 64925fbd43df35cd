"""The options of :class:`~mmaplog.MmapHandler`, checked once into an immutable value.

Every option is validated when the handler is made, before it is registered with
``logging`` for shutdown; afterwards the handler reads its options from one frozen
:class:`HandlerOptions`, so no option can half-apply by being changed on a running
handler. ``docs/guide.md`` ("Options") is the user's description of each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import _format as fmt
from ._cache import MAX_BUFFER, MIN_BUFFER
from ._crypto import load_public_key
from ._xlog import XLOG_BUFFER, XLOG_MAX_LINE, XlogBlockWriter
from .exceptions import ConfigError

_DAY = 86400.0
_MAX_WAIT = 60.0  # seconds: the longest block_timeout, so a log call never waits for good
_MIN_RECORD = 64  # bytes: a cut record keeps its " [truncated: N bytes]" marker whole

COMPRESSIONS = {
    "zstd": fmt.COMP_ZSTD,
    "zlib": fmt.COMP_ZLIB,
    None: fmt.COMP_NONE,
    "none": fmt.COMP_NONE,
}


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    """The checked options of one handler (see :class:`~mmaplog.MmapHandler`).

    Paths are absolute (resolved once, as ``FileHandler`` does). ``codec``,
    ``wait``, ``limit``, ``recipient`` and ``xlog_key`` are derived: the record
    codec, the seconds ``emit`` may wait for a slot, the longest record text in
    bytes, the raw X25519 public key, and the xlog public key.
    """

    log_dir: str
    prefix: str
    cache_dir: str
    buffer_size: int
    compression: str | None
    compress_level: int | None
    mode: str
    flush_interval: float
    max_record_size: int
    block_timeout: float
    file_mode: int
    durable: bool
    max_file_size: int
    max_age_days: int
    on_full: str
    log_format: str
    codec: int
    wait: float
    limit: int
    recipient: bytes | None
    xlog_key: str | None

    @classmethod
    def check(
        cls,
        *,
        log_dir: str | os.PathLike[str],
        prefix: str,
        cache_dir: str | os.PathLike[str] | None,
        buffer_size: int,
        compression: str | None,
        compress_level: int | None,
        mode: str,
        flush_interval: float,
        max_record_size: int,
        block_timeout: float,
        public_key: str | bytes | None,
        file_mode: int,
        durable: bool,
        max_file_size: int,
        max_age_days: int,
        on_full: str,
        format: str,
        xlog_public_key: str | None,
    ) -> HandlerOptions:
        """Check every option; return them as one value. Raises ``ConfigError``."""
        _check_basic(
            prefix,
            buffer_size,
            compression,
            compress_level,
            mode,
            flush_interval,
            max_record_size,
            block_timeout,
        )
        for name, value in (("max_file_size", max_file_size), ("max_age_days", max_age_days)):
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
        if on_full not in ("block", "drop"):
            raise ConfigError(f"on_full must be 'block' or 'drop', got {on_full!r}")
        if not isinstance(file_mode, int) or not 0 <= file_mode <= 0o777:
            raise ConfigError(
                f"file_mode must be permission bits from 0 to 0o777 (no setuid, setgid or "
                f"sticky bit), like 0o600, got {file_mode!r}"
            )
        xlog_key = _check_xlog(format, compression, compress_level, public_key, xlog_public_key)
        limit = max_record_size or fmt.MAX_RECORD_TEXT
        if format == "xlog":
            # Within what xlog itself writes, or Tencent's decoders fail: lines cut where
            # xlog's formatter cuts them, and xlog's 150 KiB buffer (the cache bounds each
            # block's text by it too, see Cache).
            limit = min(limit, XLOG_MAX_LINE)
            buffer_size = min(buffer_size, XLOG_BUFFER)
        log_path = os.path.abspath(os.fspath(log_dir))
        return cls(
            log_dir=log_path,
            prefix=prefix,
            cache_dir=os.path.abspath(os.fspath(cache_dir)) if cache_dir is not None else log_path,
            buffer_size=buffer_size,
            compression=compression,
            compress_level=compress_level,
            mode=mode,
            flush_interval=flush_interval,
            max_record_size=max_record_size,
            block_timeout=block_timeout,
            file_mode=file_mode,
            durable=bool(durable),
            max_file_size=max_file_size,
            max_age_days=max_age_days,
            on_full=on_full,
            log_format=format,
            codec=COMPRESSIONS[compression],
            wait=float(block_timeout) if on_full == "block" else 0.0,
            limit=limit,
            recipient=load_public_key(public_key) if public_key is not None else None,
            xlog_key=xlog_key,
        )


def _check_basic(
    prefix: str,
    buffer_size: int,
    compression: str | None,
    compress_level: int | None,
    mode: str,
    flush_interval: float,
    max_record_size: int,
    block_timeout: float,
) -> None:
    if (
        not isinstance(prefix, str)
        or not prefix
        or "/" in prefix
        or prefix.startswith(".")
        or "\0" in prefix
    ):
        raise ConfigError(f"prefix must be a plain file name part, got {prefix!r}")
    if not isinstance(buffer_size, int) or not MIN_BUFFER <= buffer_size <= MAX_BUFFER:
        raise ConfigError(
            f"buffer_size must be an int from {MIN_BUFFER} to {MAX_BUFFER}, got {buffer_size!r}"
        )
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression must be 'zstd', 'zlib' or None, got {compression!r}")
    if compress_level is not None:
        lo, hi = (1, 9) if compression == "zlib" else (-7, 22)
        if not isinstance(compress_level, int) or not lo <= compress_level <= hi:
            raise ConfigError(
                f"compress_level for {compression} must be from {lo} to {hi}, "
                f"got {compress_level!r}"
            )
    if mode not in ("async", "sync"):
        raise ConfigError(f"mode must be 'async' or 'sync', got {mode!r}")
    if not isinstance(flush_interval, (int, float)) or not 0 < flush_interval <= _DAY:
        raise ConfigError(
            f"flush_interval must be a number of seconds > 0 and <= {_DAY}, got {flush_interval!r}"
        )
    if not isinstance(max_record_size, int) or not (
        max_record_size == 0 or max_record_size >= _MIN_RECORD
    ):
        raise ConfigError(
            f"max_record_size must be 0 (no limit but 16 MiB) or an int >= {_MIN_RECORD} "
            f"(room for the truncation marker), got {max_record_size!r}"
        )
    # A log call must never wait for good: the wait for a slot is bounded.
    if not isinstance(block_timeout, (int, float)) or not 0 <= block_timeout <= _MAX_WAIT:
        raise ConfigError(
            f"block_timeout must be a number of seconds from 0 to {_MAX_WAIT}, "
            f"got {block_timeout!r}"
        )


def _check_xlog(
    format: str,
    compression: str | None,
    compress_level: int | None,
    public_key: object,
    xlog_public_key: object,
) -> str | None:
    """Check the xlog options; return the xlog public key."""
    if format not in ("mmaplog", "xlog"):
        raise ConfigError(f"format must be 'mmaplog' or 'xlog', got {format!r}")
    if format == "mmaplog":
        if xlog_public_key is not None:
            raise ConfigError(
                "xlog_public_key is only for format='xlog'; mmaplog's own format "
                "encrypts to an X25519 key given as public_key="
            )
        return None
    if public_key is not None:
        raise ConfigError(
            "public_key (X25519) cannot be used with format='xlog': xlog files can only "
            "use xlog's own scheme (secp256k1 + TEA); give xlog_public_key= (128 hex "
            "characters, X||Y, as xlog's gen_key prints), or use format='mmaplog'"
        )
    if compression not in ("zlib", "zstd"):
        raise ConfigError(f"format='xlog' needs compression 'zlib' or 'zstd', got {compression!r}")
    if compress_level is not None and compression == "zstd" and compress_level < 1:
        raise ConfigError(
            f"compress_level for xlog's zstd must be from 1 to 22, got {compress_level!r}"
        )
    if xlog_public_key is not None and not isinstance(xlog_public_key, str):
        raise ConfigError(
            "xlog_public_key must be a str of 128 hex characters (X||Y), got "
            f"{type(xlog_public_key).__name__}"
        )
    # Parse it once now so a bad key fails here, not at the first record.
    XlogBlockWriter("async", "zlib", xlog_public_key)
    return xlog_public_key
