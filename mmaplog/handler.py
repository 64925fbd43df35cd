"""``MmapHandler``: a ``logging.Handler`` whose records survive ``kill -9``.

Each record is formatted on the caller's thread, compressed (and sealed) into
the mmap cache under a short lock, and moved into the dated log files by the
flusher thread. See ``docs/design.md`` for the protocol.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from . import _format as fmt
from ._cache import (
    APPENDED,
    MAX_BUFFER,
    MIN_BUFFER,
    OVERSIZE,
    Cache,
    SealerProtocol,
    cache_names,
    open_locked,
)
from ._codec import prepare_whole
from ._flusher import Flusher, build_block, local_hour
from ._logfile import SUFFIX, XLOG_SUFFIX, LogFiles
from ._recovery import recover_fd
from .exceptions import ConfigError, UnsupportedVersionError

if TYPE_CHECKING:
    from ._xlog import XlogBlockWriter

__all__ = ["MmapHandler", "XlogFormatter"]

_LETTERS = {
    logging.DEBUG: "D",
    logging.INFO: "I",
    logging.WARNING: "W",
    logging.ERROR: "E",
    logging.CRITICAL: "F",
}


def level_letter(levelno: int) -> str:
    """xlog's one-letter level: V(erbose), D, I, W, E, F(atal)."""
    letter = _LETTERS.get(levelno)
    if letter is not None:
        return letter
    if levelno < logging.DEBUG:
        return "V"
    for lvl in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno > lvl:
            return _LETTERS[lvl]
    return "D"


class XlogFormatter(logging.Formatter):
    """Renders records as xlog does:
    ``[W][2026-11-23 +0000 19:40:00.123][pid, tid][logger][file:line, func][message``.

    The date part is rendered once per second and reused; the part from the pid
    to the function is rendered once per thread and call site and reused (at most
    ``_MAX_PLACES`` of them are kept).
    """

    _MAX_PLACES = 4096

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""
        self._places: dict[tuple[Any, ...], str] = {}

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %z %H:%M:%S", time.localtime(second))
            self._second = second
        msg = record.getMessage()
        letter = _LETTERS.get(record.levelno) or level_letter(record.levelno)
        key = (
            record.process,
            record.thread,
            record.name,
            record.pathname,
            record.lineno,
            record.funcName,
        )
        place = self._places.get(key)
        if place is None:
            place = (
                f"][{record.process}, {record.thread}][{record.name}]"
                f"[{record.filename}:{record.lineno}, {record.funcName}]["
            )
            if len(self._places) >= self._MAX_PLACES:
                self._places.clear()
            self._places[key] = place
        ms = int(record.msecs)
        millis = _MILLIS[ms] if 0 <= ms < 1000 else f"{ms:03d}"
        s = f"[{letter}][{self._stamp}.{millis}{place}{msg}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            s = f"{s}\n{record.exc_text}"
        if record.stack_info:
            s = f"{s}\n{self.formatStack(record.stack_info)}"
        return s


_MILLIS = [f"{ms:03d}" for ms in range(1000)]
_DEFAULT_FORMATTER = XlogFormatter()
_pack_record = fmt.RECORD_HEADER.pack
_COMPRESSIONS = {
    "zstd": fmt.COMP_ZSTD,
    "zlib": fmt.COMP_ZLIB,
    None: fmt.COMP_NONE,
    "none": fmt.COMP_NONE,
}
_live: weakref.WeakSet[MmapHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_live):
        handler._forked = True
        cache = handler._cache
        if cache is not None:
            # Let go of the parent's cache at once: the child must never write into it,
            # and an inherited descriptor would keep the parent's lock after it dies.
            try:
                cache.abandon()
            except Exception:
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class MmapHandler(logging.Handler):
    """A handler that keeps records in a file-backed mmap cache until they are in the log.

    ``log_dir`` and ``prefix`` name the log files ``<log_dir>/<prefix>_<YYYYMMDD>.mmlog``;
    the cache is ``<cache_dir>/<prefix>.mmap`` (``cache_dir`` defaults to ``log_dir``;
    when another live process holds that cache, the next free ``<prefix>.N.mmap``).
    On start, whatever a dead process left in this prefix's caches is recovered.

    ``format="xlog"`` writes Tencent Mars xlog files (``<prefix>_<YYYYMMDD>.xlog``)
    instead, optionally encrypted with xlog's weak scheme to ``xlog_public_key``
    (see ``docs/xlog.md``); the cache and its crash safety are the same.

    Raises :class:`~mmaplog.ConfigError` for invalid options. Once constructed it
    never raises into the application: failures go to :meth:`handleError`.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        prefix: str = "app",
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        buffer_size: int = 150 * 1024,
        compression: str | None = "zstd",
        compress_level: int | None = None,
        mode: str = "async",
        flush_interval: float = 5.0,
        level: int | str = logging.NOTSET,
        max_record_size: int = 0,
        block_timeout: float = 1.0,
        public_key: str | bytes | None = None,
        file_mode: int = 0o600,
        durable: bool = False,
        max_file_size: int = 0,
        max_age_days: int = 10,
        on_full: str = "block",
        format: str = "mmaplog",
        xlog_public_key: str | None = None,
    ) -> None:
        super().__init__(level)
        self.log_dir = os.fspath(log_dir)
        self.prefix = prefix
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else self.log_dir
        self.mode = mode
        self.max_record_size = max_record_size
        self.block_timeout = block_timeout
        self.durable = durable
        self.file_mode = file_mode
        self.flush_interval = flush_interval
        self.buffer_size = buffer_size
        self._validate(
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
        if not isinstance(file_mode, int) or not 0 <= file_mode <= 0o7777:
            raise ConfigError(f"file_mode must be a permission mode like 0o600, got {file_mode!r}")
        self.max_file_size = max_file_size
        self.max_age_days = max_age_days
        self.on_full = on_full
        self._wait = float(block_timeout) if on_full == "block" else 0.0
        self._limit = max_record_size or fmt.MAX_RECORD_TEXT
        self.compression = compression
        self._codec = _COMPRESSIONS[compression]
        self._level_whole = compress_level
        self.log_format = format
        """``"mmaplog"`` or ``"xlog"``: the format of the log files."""
        self._xlog_key = self._validate_xlog(
            format, compression, compress_level, public_key, xlog_public_key
        )
        if format == "xlog":
            # Within what xlog itself writes, or Tencent's decoders fail: lines cut at
            # 16 KiB and xlog's 150 KiB buffer, so a block moves at about 50 KB.
            from ._xlog import XLOG_BUFFER, XLOG_MAX_LINE

            self._limit = min(self._limit, XLOG_MAX_LINE - 1)  # and its "\n"
            self.buffer_size = min(self.buffer_size, XLOG_BUFFER)
        self._xlog: XlogBlockWriter | None = None
        self._recipient: bytes | None = None
        if public_key is not None:
            from ._crypto import load_public_key

            self._recipient = load_public_key(public_key)
        self.recovered = 0
        """How many records of dead processes were recovered when this handler started."""
        self._closed = False
        self._forked = False
        self._io_lock = threading.Lock()
        self._cache: Cache | None = None
        self._flusher: Flusher | None = None
        self._warned: set[str] = set()
        try:
            for d in {self.log_dir, self.cache_dir}:
                os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the log folder {exc.filename}: {exc.strerror}"
            ) from None
        self._logs = self._new_logs()
        self.remove_old_logs()
        self._start()
        _live.add(self)

    def _new_logs(self) -> LogFiles:
        return LogFiles(
            self.log_dir,
            self.prefix,
            file_mode=self.file_mode,
            durable=self.durable,
            max_file_size=self.max_file_size,
            suffix=XLOG_SUFFIX if self.log_format == "xlog" else SUFFIX,
        )

    @staticmethod
    def _validate_xlog(
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
            raise ConfigError(
                f"format='xlog' needs compression 'zlib' or 'zstd', got {compression!r}"
            )
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
        from ._xlog import XlogBlockWriter

        XlogBlockWriter("async", "zlib", xlog_public_key)
        return xlog_public_key

    def _new_xlog_writer(self) -> XlogBlockWriter:
        from ._xlog import XlogBlockWriter

        level = self._level_whole
        return XlogBlockWriter(
            "sync" if self.mode == "sync" else "async",
            "zstd" if self.compression == "zstd" else "zlib",
            self._xlog_key,
            zstd_level=level if level is not None and self.compression == "zstd" else 6,
            zlib_level=level if level is not None and self.compression == "zlib" else 9,
        )

    def remove_old_logs(self, now: float | None = None) -> list[str]:
        """Delete this prefix's log files older than ``max_age_days`` (done at start and daily)."""
        try:
            removed = self._logs.remove_old(self.max_age_days, time.time() if now is None else now)
        except OSError as exc:
            self._warn(f"mmaplog: removing old logs in {self.log_dir}: {exc}")
            return []
        if removed:
            # Deleting is the default (max_age_days=10): never do it silently.
            n = len(removed)
            self._warn(
                f"mmaplog: deleted {n} log file{'s' if n != 1 else ''} of prefix "
                f"{self.prefix!r} older than {self.max_age_days} days in {self.log_dir} "
                "(max_age_days)"
            )
        return removed

    @staticmethod
    def _validate(
        prefix: str,
        buffer_size: int,
        compression: str | None,
        compress_level: int | None,
        mode: str,
        flush_interval: float,
        max_record_size: int,
        block_timeout: float,
    ) -> None:
        if not prefix or "/" in prefix or prefix.startswith(".") or "\0" in prefix:
            raise ConfigError(f"prefix must be a plain file name part, got {prefix!r}")
        if not isinstance(buffer_size, int) or not MIN_BUFFER <= buffer_size <= MAX_BUFFER:
            raise ConfigError(
                f"buffer_size must be an int from {MIN_BUFFER} to {MAX_BUFFER}, got {buffer_size!r}"
            )
        if compression not in _COMPRESSIONS:
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
        if not isinstance(flush_interval, (int, float)) or not flush_interval > 0:
            raise ConfigError(
                f"flush_interval must be a number of seconds > 0, got {flush_interval!r}"
            )
        if not isinstance(max_record_size, int) or max_record_size < 0:
            raise ConfigError(f"max_record_size must be an int >= 0, got {max_record_size!r}")
        if not isinstance(block_timeout, (int, float)) or block_timeout < 0:
            raise ConfigError(
                f"block_timeout must be a number of seconds >= 0, got {block_timeout!r}"
            )

    # -- start-up -----------------------------------------------------------------------

    def _new_sealer(self) -> SealerProtocol | None:
        if self._recipient is None:
            return None
        from ._crypto import Sealer

        return Sealer(self._recipient)

    def _start(self) -> None:
        self._sealer = self._new_sealer()
        # One ephemeral client key per start, as xlog makes one per appender.
        self._xlog = self._new_xlog_writer() if self.log_format == "xlog" else None
        self._session = os.urandom(8)
        self._seq = 0
        self._pid = os.getpid()
        if self.mode == "sync":
            self._recover_free_caches(None)
            return
        try:
            path, fd = self._claim_cache()
        except (OSError, ConfigError) as exc:
            # No cache file at all: keep logging in memory rather than not at all.
            self._warn(f"mmaplog: no cache file can be used in {self.cache_dir}: {exc}")
            path, fd = os.path.join(self.cache_dir, f"{self.prefix}.mmap"), -1
        self._recover_free_caches(path)
        flusher_box: list[Flusher] = []
        cache = Cache(
            path,
            fd,
            buffer_size=self.buffer_size,
            log_dir=os.path.abspath(self.log_dir),
            prefix=self.prefix,
            codec=self._codec,
            level=None,
            sealer=self._sealer,
            wake=lambda: flusher_box[0].wake(),
            xlog=self._xlog,
        )
        if cache.warning:
            self._warn(cache.warning)
        flusher = Flusher(
            cache,
            self._logs,
            interval=self.flush_interval,
            level=self._level_whole,
            on_error=self._warn,
            daily=self.remove_old_logs,
        )
        flusher_box.append(flusher)
        self._cache = cache
        self._flusher = flusher
        if self._xlog is None:
            prepare_whole(self._codec, self._level_whole)
        flusher.start()

    def _claim_cache(self) -> tuple[str, int]:
        """Open and lock the first free cache name, recovering what it holds."""
        last_error: Exception | None = None
        for name in cache_names(self.prefix):
            path = os.path.join(self.cache_dir, name)
            try:
                fd = open_locked(path, self.file_mode, create=True)
            except OSError as exc:
                self._warn(f"mmaplog: cannot use the cache {path}: {exc.strerror or exc}")
                last_error = exc
                continue
            if fd is None:
                continue
            try:
                report = recover_fd(
                    fd, path, log_dir=None, file_mode=self.file_mode, durable=self.durable
                )
            except UnsupportedVersionError as exc:
                os.close(fd)
                self._warn(f"mmaplog: {path}: {exc}; left untouched")
                continue
            except OSError as exc:
                os.close(fd)
                self._warn(f"mmaplog: recovering {path}: {exc}; left for a later recovery")
                last_error = exc
                continue
            self._report_recovery(path, report)
            if report.quarantined:
                os.close(fd)
                fd = open_locked(path, self.file_mode, create=True) or -1
                if fd < 0:
                    continue
            return path, fd
        raise ConfigError(f"no usable cache file in {self.cache_dir}: {last_error}")

    def _recover_free_caches(self, own: str | None) -> None:
        """Recover every other cache of this prefix whose owner is dead."""
        for name in cache_names(self.prefix):
            path = os.path.join(self.cache_dir, name)
            if path == own or not os.path.isfile(path) or os.path.islink(path):
                continue
            try:
                fd = open_locked(path, self.file_mode, create=False)
            except OSError:
                continue
            if fd is None:
                continue
            try:
                report = recover_fd(
                    fd, path, log_dir=None, file_mode=self.file_mode, durable=self.durable
                )
            except UnsupportedVersionError as exc:
                self._warn(f"mmaplog: {path}: {exc}; left untouched")
                continue
            finally:
                os.close(fd)
            self._report_recovery(path, report)

    def _report_recovery(self, path: str, report: Any) -> None:
        self.recovered += report.records
        for problem in report.problems:
            self._warn(f"mmaplog: recovering {path}: {problem}")
        for dest in report.quarantined:
            self._warn(f"mmaplog: the damaged cache {path} was moved to {dest}")

    def _warn(self, message: str) -> None:
        # Like logging.lastResort: straight to stderr, never through logging itself.
        if message in self._warned:
            return
        self._warned.add(message)
        if logging.raiseExceptions:
            try:
                sys.stderr.write(message + "\n")
            except Exception:
                pass

    def _after_fork(self) -> None:
        # In a forked child: the parent's cache, lock, key and flusher are not ours.
        self._forked = False
        self._io_lock = threading.Lock()
        self.createLock()
        if self._cache is not None:
            self._cache.abandon()
        self._cache = None
        self._flusher = None
        self._logs.close()
        self._logs = self._new_logs()
        if not self._closed:
            self._start()

    # -- the logging.Handler contract ---------------------------------------------------

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter and emit ``record``, without ``Handler.handle``'s lock (the cache has its own)."""
        if self.filters:
            rv = self.filter(record)
            if not rv:
                return rv
            if isinstance(rv, logging.LogRecord):
                record = rv
        self.emit(record)
        return True

    def format(self, record: logging.LogRecord) -> str:
        return (self.formatter or _DEFAULT_FORMATTER).format(record)

    def emit(self, record: logging.LogRecord) -> None:
        """Put one record into the cache; on failure, call :meth:`handleError`."""
        # The hot path: what write() does, without its extra call.
        try:
            text = (
                (self.formatter or _DEFAULT_FORMATTER)
                .format(record)
                .encode("utf-8", "backslashreplace")
            )
            if len(text) > self._limit:
                text = _truncate(text, self._limit)
            time_us = int(record.created * 1e6)
            if self._xlog is not None:
                self._store_line(text, time_us)
                return
            levelno = record.levelno
            if not 0 <= levelno <= 255:
                levelno = min(max(levelno, 0), 255)
            head = _pack_record(len(text), time_us, levelno, 0)
            cache = self._cache
            if cache is None or self._forked or self.durable:
                self._store(head, text, time_us)
            elif cache.append(head, text, time_us, self._wait) == OVERSIZE:
                self._store_oversize(head, text, time_us)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write(self, text: bytes, created: float, levelno: int, kind: int = fmt.KIND_TEXT) -> None:
        """Store one rendered record (the path shared by ``emit`` and structured loggers).

        Raises what storing raises; ``emit`` turns that into :meth:`handleError`.
        """
        if len(text) > self._limit:
            text = _truncate(text, self._limit)
        time_us = int(created * 1e6)
        if self._xlog is not None:
            self._store_line(text, time_us)
            return
        head = _pack_record(len(text), time_us, min(max(levelno, 0), 255), kind)
        self._store(head, text, time_us)

    def _store(self, head: bytes, text: bytes, time_us: int) -> None:
        """Put a record (header and text; or an xlog line, with no header) into the cache,
        or straight into the log."""
        if self._forked:
            self._after_fork()
        cache = self._cache
        if cache is None:
            self._direct(head, text, time_us)
            return
        status = cache.append(head, text, time_us, self._wait)
        if status == APPENDED:
            if self.durable:
                cache.msync()
        elif status == OVERSIZE:
            self._store_oversize(head, text, time_us)

    def _store_oversize(self, head: bytes, text: bytes, time_us: int) -> None:
        """A record no slot can take: after what the cache holds, as a block of its own."""
        self.flush()
        self._direct(head, text, time_us)

    def _direct(self, head: bytes, text: bytes, time_us: int) -> None:
        if self._xlog is not None:
            self._write_xlog_direct(text, time_us)
        else:
            self._write_direct(head, text, time_us)

    def _store_line(self, text: bytes, time_us: int) -> None:
        """Store one xlog line (``\\n`` added if missing, as xlog's formatter does)."""
        self._store(b"", text if text.endswith(b"\n") else text + b"\n", time_us)

    def _write_xlog_direct(self, line: bytes, time_us: int) -> None:
        """Append one xlog block holding just this line: a sync block in sync mode,
        else an async block (a line too large for the cache, or one logged after close)."""
        xlog = self._xlog
        if xlog is None:
            return
        hour = local_hour(time_us)
        with self._io_lock:
            if xlog.mode == "sync":
                seq = 0
            else:
                from ._xlog import xlog_seq_of

                cache = self._cache
                if cache is not None:
                    n = cache.take_seq()
                else:
                    n = self._seq
                    self._seq += 1
                seq = xlog_seq_of(n)
            block = xlog.encode_block([line], seq, hour, hour)
            if self._flusher is not None:
                self._flusher.write_direct(block, time_us)
            else:
                self._logs.append(block, time_us)

    def _write_direct(self, head: bytes, text: bytes, time_us: int) -> None:
        """Append a block holding just this record straight to the log (sync mode, big records)."""
        with self._io_lock:
            seq = self._seq
            self._seq += 1
            flags = self._codec | (fmt.FLAG_ENCRYPTED if self._sealer else 0)
            template = fmt.BlockHeader(
                flags=flags,
                session=self._session,
                seq=seq,
                pid=self._pid,
                payload_len=0,
                first_time_us=time_us,
                last_time_us=time_us,
                count=1,
                raw_len=0,
                payload_crc=0,
                extension=self._sealer.ephemeral_public if self._sealer else b"",
            )
            block = build_block(
                template, head, [text], time_us, level=self._level_whole, sealer=self._sealer
            )
            if self._flusher is not None:
                self._flusher.write_direct(block, time_us)
            else:
                self._logs.append(block, time_us)

    def flush(self) -> None:
        """Move every record emitted so far into the log file before returning."""
        if self._forked:
            return
        cache, flusher = self._cache, self._flusher
        if cache is None or flusher is None:
            return
        cache.seal()
        if not flusher.drain() and flusher.last_error:
            self._warn(flusher.last_error)

    def close(self) -> None:
        """Flush, stop the flusher, unmap the cache. Calling it again does nothing."""
        with self._io_lock:
            if self._closed:
                return
            self._closed = True
        try:
            if not self._forked:
                self.flush()
                if self._flusher is not None:
                    self._flusher.stop()
                if self._cache is not None:
                    if not self._cache.has_pending():
                        self._cache.close()
                    else:  # the log cannot be written: leave it for recovery
                        self._cache.abandon()
            self._logs.close()
        except Exception as exc:
            self._warn(f"mmaplog: closing {self.prefix}: {exc}")
        finally:
            self._cache = None
            self._flusher = None
            _live.discard(self)
            super().close()

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<{type(self).__name__} {self.log_dir}/{self.prefix} ({level})>"


def _truncate(text: bytes, limit: int) -> bytes:
    marker = f" [truncated: {len(text)} bytes]".encode()
    keep = max(0, limit - len(marker))
    # Cut on a UTF-8 character boundary.
    while keep > 0 and (text[keep] & 0xC0) == 0x80:
        keep -= 1
    return text[:keep] + marker
