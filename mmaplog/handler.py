"""``MmapHandler``: a ``logging.Handler`` whose records survive ``kill -9``.

Each record is formatted on the caller's thread, compressed (and sealed) into
the mmap cache under a short lock, and moved into the dated log files by the
flusher thread. See ``docs/design.md`` for the protocol.
"""

from __future__ import annotations

import _thread
import errno
import logging
import os
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast, overload

from . import _emitpath
from . import _format as fmt
from ._blocks import BlockSession
from ._cache import (
    APPENDED,
    CLOSED,
    DROPPED,
    NOT_HANDLED,
    OVERSIZE,
    Cache,
    cache_names,
    open_locked,
)
from ._codec import prepare_whole
from ._flusher import Flusher
from ._logfile import SUFFIX, XLOG_SUFFIX, LogFiles
from ._options import HandlerOptions
from ._recovery import recover_fd
from ._xlog import XlogBlockWriter
from .exceptions import ConfigError, UnsupportedVersionError

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

    Safe to share between threads without a lock: the date cache is one
    ``(second, stamp)`` tuple, read once and replaced whole, so a thread never pairs
    one record's second with another's stamp; a call-site entry is a pure function
    of its key, so a lost or cleared entry is only rendered again.
    """

    _MAX_PLACES = 4096

    def __init__(self) -> None:
        super().__init__()
        self._clock: tuple[int, str] = (-1, "")
        self._places: dict[tuple[Any, ...], str] = {}

    def format(self, record: logging.LogRecord, message: Any = None) -> str:
        """The record's line. ``message`` is ``record.getMessage()`` when the caller made
        it already (the C path hands a record over with it), so it is made once."""
        second = int(record.created)
        # One read of one attribute: two attributes could be read between another
        # thread's two writes and give this record that thread's second.
        cached, stamp = self._clock
        if second != cached:
            stamp = time.strftime("%Y-%m-%d %z %H:%M:%S", time.localtime(second))
            self._clock = (second, stamp)
        msg = record.getMessage() if message is None else message
        letter = _LETTERS.get(record.levelno) or level_letter(record.levelno)
        key = (
            record.process,
            record.thread,
            record.name,
            record.filename,
            record.lineno,
            record.funcName,
        )
        try:
            place = self._places.get(key)
            keep = True
        except TypeError:  # an attribute set to something unhashable: rendered, not kept
            place, keep = None, False
        if place is None:
            place = (
                f"][{record.process}, {record.thread}][{record.name}]"
                f"[{record.filename}:{record.lineno}, {record.funcName}]["
            )
            if keep:
                if len(self._places) >= self._MAX_PLACES:
                    self._places.clear()
                self._places[key] = place
        ms = int(record.msecs)
        millis = _MILLIS[ms] if 0 <= ms < 1000 else f"{ms:03d}"
        s = f"[{letter}][{stamp}.{millis}{place}{msg}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            s = f"{s}\n{record.exc_text}"
        if record.stack_info:
            s = f"{s}\n{self.formatStack(record.stack_info)}"
        return s


_MILLIS = [f"{ms:03d}" for ms in range(1000)]
_DEFAULT_FORMATTER = XlogFormatter()
_emitpath.set_formatter(XlogFormatter)
_MAX_NAMES = 1024  # logger names kept encoded per handler; the dict is emptied past it
_pack_header = fmt.RECORD_HEADER.pack


def _encode_name(name: object) -> bytes:
    """A logger name as a record stores it: UTF-8, at most ``fmt.MAX_LOGGER_NAME`` bytes
    (cut on a character boundary); no name (None) is empty."""
    text = name if isinstance(name, str) else "" if name is None else str(name)
    data = text.encode("utf-8", "backslashreplace")
    if len(data) > fmt.MAX_LOGGER_NAME:
        keep = fmt.MAX_LOGGER_NAME
        while keep > 0 and (data[keep] & 0xC0) == 0x80:
            keep -= 1
        data = data[:keep]
    return data


def _head_packer(name: bytes) -> tuple[Callable[..., bytes], bytes]:
    """A packer of ``fmt.RECORD_HEADER`` followed by ``name``, and ``name``."""
    return struct.Struct(f"{fmt.RECORD_HEADER.format}{len(name)}s").pack, name


def _thread_id(thread: object) -> int:
    """A thread id as a record stores it: a u64, 0 when unknown (``logThreads`` off)."""
    return thread if isinstance(thread, int) and 0 <= thread < 1 << 64 else 0


T = TypeVar("T")


class _Option(Generic[T]):
    """A handler attribute that reads its checked option: fixed once the handler is made."""

    def __init__(self, source: str | None = None) -> None:
        self.source = source  # the field of HandlerOptions, when not the same name

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.source = self.source or name

    @overload
    def __get__(self, instance: None, owner: type) -> _Option[T]: ...
    @overload
    def __get__(self, instance: MmapHandler, owner: type) -> T: ...
    def __get__(self, instance: MmapHandler | None, owner: type) -> T | _Option[T]:
        if instance is None:
            return self
        value: T = getattr(instance.options, self.source or self.name)
        return value

    def __set__(self, instance: MmapHandler, value: object) -> None:
        raise AttributeError(
            f"{self.name} is fixed when the handler is made (options are checked once); "
            "make a new handler to change it"
        )


_live: weakref.WeakSet[MmapHandler] = weakref.WeakSet()
_CLOSE_WAIT = 2.0  # seconds close() waits for a closer held up by the caller's own lock
_FLUSH_WAIT = 5.0  # seconds flush() waits for a lock another thread holds
_get_ident = threading.get_ident


def _before_fork() -> None:
    # Until the child's hook below has run, a record logged in the child (by a
    # finalizer the at-fork machinery of another module triggers) must not take the
    # fast path into the parent's cache: it goes the slow path, which asks the pid.
    for handler in list(_live):
        handler._forking = True
        handler._fast = None


def _after_fork_in_parent() -> None:
    for handler in list(_live):
        handler._forking = False
        handler._update_fast()


# Errors creating a cache file that come from its folder, not its name: every other
# name would fail the same way, so the search stops at the first.
_FOLDER_ERRORS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOENT, errno.ENOTDIR})
_CANNOT_WRITE = "mmaplog: cannot write the log file"


def _after_fork_in_child() -> None:
    # Runs after threading's at-fork hook (a thread started before it would be lost)
    # and after mmaplog's own modules have made their locks anew.
    for handler in list(_live):
        handler._become_child()
        handler._forking = False
        early, handler._early = handler._early, []
        for head, text, time_us in early:
            try:
                handler._direct(head, text, time_us)
            except Exception as exc:
                handler._warn(f"mmaplog: a record logged during fork was lost: {exc}")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


class MmapHandler(logging.Handler):
    """A ``logging.Handler`` that keeps records in a file-backed mmap cache until they
    are in the log, so that a ``kill -9`` loses nothing.

    Log files are ``<log_dir>/<prefix>_<YYYYMMDD>.mmlog`` (``.xlog`` with
    ``format="xlog"``), by the local date of their first record. The cache is
    ``<cache_dir>/<prefix>.mmap``, or the next free ``<prefix>.N.mmap`` (N up to 63)
    when a live process holds it. On start, whatever dead processes left in this
    prefix's caches is recovered into the log (:attr:`recovered` counts it).

    Args:
        log_dir (str | os.PathLike): folder of the log files; made (mode 0700) if
            missing; made absolute once, so a later ``os.chdir`` changes nothing.
        prefix (str): start of the file names; default ``"app"``; a plain name part
            (no ``/``, not starting with ``.``).
        cache_dir (str | os.PathLike | None): folder of the cache file; default
            ``log_dir``. A folder that log rotation and clean-up tools never touch is
            safest (a cache shrunk underneath is detected at the next block, but a
            record written before that kills the process with SIGBUS).
        buffer_size (int): bytes of cache, split into two block slots; default
            ``512 * 1024``; from 16 KiB to 64 MiB. The cache holds its records
            uncompressed and moves a block when it reaches a third of this (about 170 KiB
            by default), compressed whole on the way. With ``format="xlog"`` it is
            xlog's buffer, at most xlog's 150 KiB: a block is moved when its lines
            reach a third of it, uncompressed, and holds at most half of it.
        compression (str | None): per-record and per-block compression: ``"zstd"``
            (default), ``"zlib"`` (raw deflate, as xlog) or ``None``.
        compress_level (int | None): level of the whole-block compression of the log
            files; default None (zstd 9, tuned; zlib 9); zstd -7..22, zlib 1..9.
        mode (str): ``"async"`` (default) or ``"sync"``: each record is in the log
            file before ``emit`` returns (no cache, no thread).
        flush_interval (float): seconds between moves of a partly filled block;
            default 5.0; > 0.
        level (int | str): the handler's level, as for any handler; default NOTSET.
        max_record_size (int): longer records (UTF-8 bytes) are cut and end in
            ``[truncated: N bytes]``; default 0 (16 MiB; with xlog at most 16,254
            bytes and the newline, where xlog cuts its lines).
        block_timeout (float): seconds ``emit`` waits when both slots wait for the
            disk, then drops the record (counted, and noted in the log); after one such
            wait, records are dropped at once until a block is moved; default 1.0.
        public_key (str | bytes | None): X25519 public key (base64, 32 raw bytes or
            PEM): encrypt every record to it (``docs/security.md``); default None.
        file_mode (int): permission bits of the cache and log files; default 0o600.
        durable (bool): ``msync`` the cache after each record and ``fsync`` the log
            after each move, to survive power loss too; default False (much slower).
        max_file_size (int): split a day's log into ``_1``, ``_2``, … parts past this
            many bytes; default 0 (never).
        max_age_days (int): delete this prefix's log files older than this many days,
            at start and daily; default 10; 0 never deletes.
        on_full (str): ``"block"`` (default: wait ``block_timeout``) or ``"drop"``.
        format (str): ``"mmaplog"`` (default) or ``"xlog"``: Tencent Mars xlog files
            (``docs/xlog.md``).
        xlog_public_key (str | None): with ``format="xlog"``: xlog's own (weak)
            secp256k1 + TEA encryption, 128 hex characters (X||Y); default None.

    Raises:
        ConfigError: for any invalid option, before the handler is registered with
            ``logging`` (a failed construction leaves nothing for shutdown).

    Once made it never raises into the application: failures go to
    :meth:`handleError` or, for its own troubles, one line on stderr. Options are
    read-only attributes of the same names (``log_format`` for ``format``), held in
    :attr:`options`.
    """

    _closed: bool  # logging.Handler's own flag, set by its __init__ and close()

    log_dir = _Option[str]()
    prefix = _Option[str]()
    cache_dir = _Option[str]()
    buffer_size = _Option[int]()
    compression = _Option["str | None"]()
    mode = _Option[str]()
    flush_interval = _Option[float]()
    max_record_size = _Option[int]()
    block_timeout = _Option[float]()
    file_mode = _Option[int]()
    durable = _Option[bool]()
    max_file_size = _Option[int]()
    max_age_days = _Option[int]()
    on_full = _Option[str]()
    log_format = _Option[str]()
    compress_level = _Option["int | None"]()
    xlog_public_key = _Option["str | None"]("xlog_key")
    public_key = _Option["bytes | None"]("recipient")
    """The raw X25519 public key records are encrypted to (None: not encrypted)."""

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        prefix: str = "app",
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        buffer_size: int = 512 * 1024,
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
        # Everything is checked before logging.Handler.__init__ registers the handler
        # for shutdown: a handler whose construction failed leaves nothing behind.
        options = HandlerOptions.check(
            log_dir=log_dir,
            prefix=prefix,
            cache_dir=cache_dir,
            buffer_size=buffer_size,
            compression=compression,
            compress_level=compress_level,
            mode=mode,
            flush_interval=flush_interval,
            max_record_size=max_record_size,
            block_timeout=block_timeout,
            public_key=public_key,
            file_mode=file_mode,
            durable=durable,
            max_file_size=max_file_size,
            max_age_days=max_age_days,
            on_full=on_full,
            format=format,
            xlog_public_key=xlog_public_key,
        )
        self.options = options
        """The checked options (:class:`HandlerOptions`, frozen)."""
        self._wait = options.wait
        self._limit = options.limit
        self._codec = options.codec
        self._level_whole = options.compress_level
        self._xlog_key = options.xlog_key
        self._recipient = options.recipient
        self._durable = options.durable
        self._xlog: XlogBlockWriter | None = None
        try:
            for d in {options.log_dir, options.cache_dir}:
                os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the log folder {exc.filename}: {exc.strerror}"
            ) from None
        super().__init__(level)
        self.recovered = 0
        """How many records of dead processes were recovered when this handler started."""
        self._forked = False
        self._forking = False
        self._pid = os.getpid()
        self._early: list[tuple[bytes, bytes, int]] = []  # see _store
        # Logger names, encoded once each, with a packer of the record head that ends in
        # the name's bytes (one call builds the head on the hot path).
        self._names: dict[object, tuple[Callable[..., bytes], bytes]] = {}
        self._direct_writes = 0  # blocks written past the cache (see _shut)
        self._new_locks()
        self._cache: Cache | None = None
        self._fast: Cache | None = None  # the cache while records may take the fast path
        # The handler renders with its formatter (not a subclass's own format()), so the
        # C path may render the line in its stead.
        self._plain_format = type(self).format is MmapHandler.format
        self._flusher: Flusher | None = None
        self._warned: set[str] = set()
        self._quiet_log_error = False
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
            on_warning=self._warn,
        )

    def _new_xlog_writer(self) -> XlogBlockWriter:
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

    # -- start-up -----------------------------------------------------------------------

    def _new_session(self) -> None:
        """Make this process's block session: a new id, counter and key."""
        # One ephemeral client key per start, as xlog makes one per appender.
        self._xlog = self._new_xlog_writer() if self.log_format == "xlog" else None
        # Every block of this start, on every path, is numbered and sealed by this one
        # session: a new key and a new counter per start (and per forked child).
        self._blocks = BlockSession(
            codec=self._codec,
            level=self._level_whole,
            recipient=self._recipient,
            xlog=self._xlog,
        )

    def _start(self) -> None:
        self._new_session()
        if self.mode == "sync":
            self._recover_free_caches(None)
            return
        try:
            path, fd = self._claim_cache()
        except (OSError, ConfigError) as exc:
            # No cache file at all: keep logging in memory rather than not at all. One
            # warning: if the log files cannot be written either, their first failure
            # is the same news from the same folder, so it is not printed again.
            self._quiet_log_error = self.cache_dir == self.log_dir
            self._warn(
                f"mmaplog: no cache file can be made in {self.cache_dir} ({exc}); records "
                "are kept in memory until they are written to the log files, and are lost "
                "if the process dies first"
            )
            path, fd = os.path.join(self.cache_dir, f"{self.prefix}.mmap"), -1
        self._recover_free_caches(path)
        flusher_box: list[Flusher] = []
        cache = Cache(
            path,
            fd,
            buffer_size=self.buffer_size,
            log_dir=os.path.abspath(self.log_dir),
            prefix=self.prefix,
            blocks=self._blocks,
            wake=lambda: flusher_box[0].wake(),
            warn=self._warn,
        )
        if cache.warning:
            self._warn(cache.warning)
        flusher = Flusher(
            cache,
            self._logs,
            interval=self.flush_interval,
            on_error=self._on_flusher_error,
            file_lock=self._file_lock,
            inside=self._inside,
            after_round=self._flusher_round,
            daily=self.remove_old_logs,
            sweep=lambda: self._recover_free_caches(path),
        )
        flusher_box.append(flusher)
        self._cache = cache
        self._flusher = flusher
        self._update_fast()
        if self._xlog is None:
            prepare_whole(self._codec, self._level_whole)
        flusher.start()

    def _claim_cache(self) -> tuple[str, int]:
        """Open and lock the first free cache name, recovering what it holds.

        Names that cannot be opened are passed over quietly; if a later one is used,
        one warning names the first that failed. Raises ``ConfigError`` if none can be.
        """
        last_error: OSError | None = None
        first_failure = ""
        for name in cache_names(self.prefix):
            path = os.path.join(self.cache_dir, name)
            try:
                fd = open_locked(path, self.file_mode, create=True)
            except OSError as exc:
                if last_error is None:
                    first_failure = f"mmaplog: cannot use the cache {path}: {exc.strerror or exc}"
                last_error = exc
                if exc.errno in _FOLDER_ERRORS:
                    break
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
            if first_failure:
                self._warn(first_failure)
            return path, fd
        if last_error is not None:
            raise ConfigError(last_error.strerror or str(last_error))
        raise ConfigError("every cache name is taken")

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

    def _on_flusher_error(self, message: str) -> None:
        if self._quiet_log_error and message.startswith(_CANNOT_WRITE):
            # Said already by the start-up warning; flush() repeats the flusher's last
            # error, so mark it as said.
            self._quiet_log_error = False
            self._warned.add(message)
            return
        self._warn(message)

    def _report_losses(self, cache: Cache) -> None:
        """At close, say on stderr what never reached the log, and note in the log the
        drops no block has noted yet (a note is otherwise written when a block opens)."""
        if cache.dropped and not cache.has_pending():
            time_us = time.time_ns() // 1000
            with cache.lock:
                note = cache.drop_note(time_us) if cache.dropped else None
            if note is not None:
                try:
                    self._direct(note[0], note[1], time_us)
                except OSError:
                    pass
        pending = cache.pending_records()
        if pending and not cache.mapped:
            self._warn(
                f"mmaplog: {pending} record{'s' if pending > 1 else ''} could not be written "
                f"to the log files in {self.log_dir} and {'are' if pending > 1 else 'is'} "
                "lost (they were kept in memory: no cache file could be used)"
            )
        elif pending:
            self._warn(
                f"mmaplog: {pending} record{'s are' if pending > 1 else ' is'} left in the "
                f"cache {cache.path}: the next start on this folder, or "
                "`python -m mmaplog.recover`, moves them into the log"
            )
        if cache.dropped_total:
            n = cache.dropped_total
            self._warn(
                f"mmaplog: {n} record{'s were' if n > 1 else ' was'} dropped because the cache "
                f"was full while the log files in {self.log_dir} could not be written"
            )

    def _update_fast(self) -> None:
        cache = self._cache
        ok = cache is not None and not (self.durable or self._forked or self._forking)
        self._fast = cache if ok else None

    def _new_locks(self) -> None:
        """The handler's own locks and re-entry state (at start, and in a forked child)."""
        # The one lock of the log files: the flusher's moves and the direct writes.
        # An RLock for its owner (see Flusher.drain), not for re-entry.
        self._file_lock = threading.RLock()
        self._close_lock = threading.Lock()
        # Threads inside a log call (or a flush, close or move) of this handler, and
        # what they logged meanwhile from a signal handler, finalizer or formatter.
        self._inside: set[int] = set()
        self._deferred: dict[int, list[tuple[Any, ...]]] = {}
        # Threads storing a record logged inside another record's call (see
        # _may_store_nested): one level only, deeper ones are queued.
        self._nested: set[int] = set()
        # Threads writing what they queued: what they log meanwhile is queued behind it;
        # and threads writing one of those records now (it is not queued again).
        self._replaying: set[int] = set()
        self._replaying_one: dict[int, object] = {}

    def _become_child(self) -> None:
        """In a forked child, at once: nothing of the parent's is used again.

        Another thread of the parent may have held any lock at the fork, and in the
        child nobody would ever release it: every one is made anew. The parent's
        cache is let go (an inherited descriptor would keep its lock after the parent
        dies) and a new session means a new key. Runs once per process.
        """
        pid = os.getpid()
        if self._pid == pid:
            return
        self._pid = pid
        self._forked = True
        self._fast = None
        self._new_locks()
        self.createLock()
        cache = self._cache
        if cache is not None:
            try:
                cache.abandon()
            except Exception:
                pass
        self._new_session()

    def _after_fork(self) -> None:
        # In a forked child, at its first record after fork: start anew (a cache and a
        # flusher of its own), or, closed, write directly with the child's session.
        self._forked = False
        self._cache = None
        self._flusher = None
        self._logs.close()
        self._logs = self._new_logs()
        if not self._closed:  # closed: records are written directly, with the new session
            self._start()
            self._close_at_child_exit()

    def _close_at_child_exit(self) -> None:
        # A multiprocessing child ends with os._exit, after its finalizers: close there,
        # so that its records are in the log when the parent has joined it.
        util = sys.modules.get("multiprocessing.util")
        if util is not None:
            util.Finalize(self, self.close, exitpriority=0)

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

    def __setattr__(self, name: str, value: object) -> None:
        # ``format`` is logging's method, so not an _Option: refuse the option's name here.
        if name == "format":
            raise AttributeError(
                "format is fixed when the handler is made (the log_format attribute); "
                "to change how records are rendered, use setFormatter()"
            )
        super().__setattr__(name, value)

    # Re-entry. A log call can be re-entered on its own thread: a signal handler, a
    # finalizer run by the garbage collector, a formatter or filter that logs. The
    # locks are never taken twice by one thread. A record logged while the outer call
    # is only formatting its own record (a message's __str__, a formatter that logs, a
    # finalizer or signal handler run then) is stored at once, before the outer one,
    # so that its call returns with it in the cache, as any call does. Anywhere else
    # (the outer call in the cache's steps or holding its lock, a flush, a close, the
    # flusher's move, or a record logged by one logged this way) the record is queued,
    # and the outer call writes it as soon as it is done, right after its own record.

    def emit(self, record: logging.LogRecord) -> None:
        """Put one record into the cache; on failure, call :meth:`handleError`."""
        ident = _get_ident()
        inside = self._inside
        nested = False
        if ident in inside and self._really_inside(ident):
            if not self._store_nested_now(ident, record):
                self._defer(ident, ("emit", record))
                return
            nested = True  # stored now, inside the outer call (see _may_store_nested)
        elif self._deferred and self._queued_first(ident, ("emit", record)):
            return
        try:
            if nested:
                self._nested.add(ident)
            else:
                inside.add(ident)  # inside the try: an interrupt here is undone
            cache = self._fast
            message = None
            if cache is not None and cache.native_emit is not None and self._plain_format:
                # The C path renders an XlogFormatter line and stores it in one call.
                status = cache.native_emit(
                    record, self.formatter or _DEFAULT_FORMATTER, self._limit, self._wait
                )
                if status in (APPENDED, DROPPED):  # (a tuple is neither)
                    return
                if status != NOT_HANDLED:
                    if status[0] != NOT_HANDLED:  # rendered, but no slot took it, or closed
                        self._not_appended(*status)
                        return
                    message = status[1]  # the pure path goes on with the message made
            # The hot path: _render and _frame inlined for mmaplog's own format.
            if message is not None:
                # The C path hands a message over only for an XlogFormatter.
                line = cast(XlogFormatter, self.formatter or _DEFAULT_FORMATTER).format(
                    record, message
                )
            elif self._plain_format:
                line = (self.formatter or _DEFAULT_FORMATTER).format(record)
            else:
                line = self.format(record)  # a subclass's own format()
            text = line.encode("utf-8", "backslashreplace")
            if self._xlog is not None:  # an xlog line: no record head
                head, text, time_us = self._frame(
                    text, record.created, record.levelno, fmt.KIND_TEXT, b"", 0
                )
            elif len(text) > self._limit:
                head, text, time_us = self._frame(
                    text,
                    record.created,
                    record.levelno,
                    fmt.KIND_TEXT,
                    self._name_of(record.name),
                    _thread_id(record.thread),
                )
            else:
                time_us = int(record.created * 1e6)
                levelno = record.levelno
                if not 0 <= levelno <= 255:
                    levelno = min(max(levelno, 0), 255)
                try:
                    entry = self._names.get(record.name)
                except TypeError:  # a name set to something unhashable
                    entry = None
                if entry is None:
                    entry = self._name_entry(record.name)
                pack, name = entry
                try:
                    head = pack(len(text), time_us, levelno, 0, len(name), record.thread, name)
                except struct.error:  # no thread id (logThreads off), or not a u64: unknown
                    head = pack(len(text), time_us, levelno, 0, len(name), 0, name)
            cache = self._fast
            if cache is None:
                self._store(head, text, time_us)
            else:
                status = cache.append(head, text, time_us, self._wait)
                if status != APPENDED:
                    self._not_appended(status, head, text, time_us)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
        finally:
            if nested:
                self._nested.discard(ident)
            else:
                inside.discard(ident)
                if self._deferred:
                    self._run_deferred(ident)

    def _render(self, record: logging.LogRecord) -> tuple[bytes, bytes, int]:
        """The record's head, text (or xlog line, with no head) and time in µs."""
        text = self.format(record).encode("utf-8", "backslashreplace")
        return self._frame(
            text,
            record.created,
            record.levelno,
            fmt.KIND_TEXT,
            self._name_of(record.name),
            _thread_id(record.thread),
        )

    def _name_of(self, name: object) -> bytes:
        """The stored bytes of a logger name."""
        return self._name_entry(name)[1]

    def _name_entry(self, name: object) -> tuple[Callable[..., bytes], bytes]:
        """The packer of the record head for a logger name, and the name's stored bytes,
        made once per name (at most ``_MAX_NAMES`` are kept: the dict is emptied when
        full). The packer takes the header's fields and the name: ``fmt.RECORD_HEADER``
        followed by the name, as ``fmt.record_head`` makes it."""
        names = self._names
        try:
            entry = names.get(name)
        except TypeError:  # an unhashable name, set by hand
            return _head_packer(_encode_name(name))
        if entry is None:
            entry = _head_packer(_encode_name(name))
            if len(names) >= _MAX_NAMES:
                names.clear()
            names[name] = entry
        return entry

    def _frame(
        self, text: bytes, created: float, levelno: int, kind: int, name: bytes, thread: int
    ) -> tuple[bytes, bytes, int]:
        if len(text) > self._limit:
            text = _truncate(text, self._limit)
        time_us = int(created * 1e6)
        if self._xlog is not None:
            return b"", text if text.endswith(b"\n") else text + b"\n", time_us
        if not 0 <= levelno <= 255:
            levelno = min(max(levelno, 0), 255)
        return (
            _pack_header(len(text), time_us, levelno, kind, len(name), thread) + name,
            text,
            time_us,
        )

    def write(
        self,
        text: bytes,
        created: float,
        levelno: int,
        kind: int = fmt.KIND_TEXT,
        logger: str | None = None,
    ) -> None:
        """Store one rendered record (the path of structured loggers, such as structlog's).

        ``text`` is the rendered record (UTF-8), ``created`` its time in seconds since
        the epoch, ``levelno`` a ``logging`` level, ``kind`` ``KIND_TEXT`` or
        ``KIND_JSON``, ``logger`` the logger's name if it has one. The record's thread
        is the calling thread. Raises what storing raises; the caller reports it.
        """
        ident = _get_ident()
        entry = self._names.get(logger)
        name = entry[1] if entry is not None else self._name_of(logger)
        self._write(text, created, levelno, kind, name, ident, ident)

    def _write(
        self,
        text: bytes,
        created: float,
        levelno: int,
        kind: int,
        name: bytes,
        thread: int,
        ident: int,
    ) -> None:
        inside = self._inside
        nested = False
        if ident in inside and self._really_inside(ident):
            if not self._store_nested_now(ident, text):
                self._defer(ident, ("write", text, created, levelno, kind, name, thread))
                return
            nested = True  # stored now, inside the outer call (see _may_store_nested)
        elif self._deferred and self._queued_first(
            ident, ("write", text, created, levelno, kind, name, thread)
        ):
            return
        try:
            if nested:
                self._nested.add(ident)
            else:
                inside.add(ident)  # inside the try: an interrupt here is undone
            self._store(*self._frame(text, created, levelno, kind, name, thread))
        finally:
            if nested:
                self._nested.discard(ident)
            else:
                inside.discard(ident)
                if self._deferred:
                    self._run_deferred(ident)

    def _really_inside(self, ident: int) -> bool:
        """Whether this thread, marked inside a call of this handler, still is.

        Only the main thread can be left marked by mistake: a signal handler that raises
        (Ctrl-C's KeyboardInterrupt) can interrupt a log call between two steps of its
        clean-up. Its mark is then stale: the frames on its stack say whether one of
        this handler's guarded calls is under way. Other threads' marks are right.
        """
        if ident != threading.main_thread().ident:
            return True
        frame: Any = sys._getframe(1)
        # The call being made now (emit, or write and _write) is no evidence: skip it.
        while frame is not None and frame.f_code in _GUARDED and frame.f_locals.get("self") is self:
            frame = frame.f_back
        while frame is not None:
            if frame.f_code in _GUARDED and frame.f_locals.get("self") is self:
                return True
            frame = frame.f_back
        # Stale: the thread is not inside; what it queued meanwhile is written next.
        self._inside.discard(ident)
        return False

    def _may_store_nested(self, ident: int) -> bool:
        """Whether a record logged on a thread inside a call of this handler can be
        stored now, rather than queued until the outer call ends (where a kill of the
        process would lose it although its own call had returned).

        Only when the outer call is a record's (``emit``, ``write``) and is formatting
        its record: between it and this call the stack holds no step of mmaplog's but
        the formatter's (a message's ``__str__``, a filter or formatter that logs, a
        finalizer or signal handler run meanwhile), so no lock of the handler or of the
        cache is held and no block is half written; only one level deep; and not while
        the thread writes records it queued (they were logged first).
        """
        if ident in self._nested or ident in self._replaying:
            return False
        cache = self._cache
        if cache is not None and cache._owned():
            return False
        frame: Any = sys._getframe(2)  # past this and the call being made (emit, _write)
        while frame is not None and frame.f_code in _GUARDED and frame.f_locals.get("self") is self:
            frame = frame.f_back  # write() calls _write()
        while frame is not None:
            code = frame.f_code
            if code in _GUARDED and frame.f_locals.get("self") is self:
                return code in _RECORD_CALLS
            if (
                code.co_filename.startswith(_PACKAGE_DIR)
                and code not in _FORMATTING
                and code.co_filename != _STRUCTLOG_FILE  # a structured record's way in
            ):
                return False
            frame = frame.f_back
        return False

    def _store_nested_now(self, ident: int, key: object) -> bool:
        """Whether the record ``key`` (a LogRecord, or a structured record's text),
        logged on a thread inside a call of this handler, is stored now: a record it
        had queued and writes now, or one that _may_store_nested allows, after what the
        thread queued before (written first, here, as those were logged first)."""
        if self._replaying_one.get(ident) is key:
            del self._replaying_one[ident]
            return True
        if not self._may_store_nested(ident):
            return False
        pending = self._deferred.get(ident)
        if pending:
            if any(item[0] == "close" for item in pending):
                return False  # a close() waits for the outer call: behind it
            self._run_deferred(ident)
            return not self._deferred.get(ident)
        return True

    def _queued_first(self, ident: int, item: tuple[Any, ...]) -> bool:
        """Before a record of a thread that has records queued (a signal handler that
        logs between the end of a log call and the writing of what it queued): those
        were logged first, so they are written first; or, while this thread writes
        them, ``item`` is queued behind them. True if ``item`` was queued."""
        if ident in self._replaying:
            if self._replaying_one.get(ident) is item[1]:  # the queued record itself
                del self._replaying_one[ident]
                return False
            self._defer(ident, item)
            return True
        if self._deferred.get(ident):
            self._run_deferred(ident)
        return False

    def _defer(self, ident: int, item: tuple[Any, ...]) -> None:
        self._deferred.setdefault(ident, []).append(item)

    def _run_deferred(self, ident: int, *, direct: bool = False) -> None:
        """Write what this thread logged while it was inside a call of this handler.

        ``direct``: on the flusher (or closer) thread, which stays inside meanwhile: into
        the cache if a slot has room now, else as a block of its own (the flusher must
        not wait for a slot only it can free).
        """
        if not direct:
            # What this thread logs while these are written is queued behind them, in
            # the order the calls were made (see _may_store_nested).
            if ident in self._replaying:
                return
            try:
                self._replaying.add(ident)  # inside the try: an interrupt here is undone
                self._replay(ident, direct)
            finally:
                self._replaying.discard(ident)
                if not self._deferred.get(ident, True):  # emptied, not removed (interrupted)
                    del self._deferred[ident]
            return
        self._replay(ident, direct)

    def _replay(self, ident: int, direct: bool) -> None:
        # Every record queued before this began is written; of those queued meanwhile
        # (by the ones being written), at most _MAX_REPLAYED.
        budget = len(self._deferred.get(ident) or ()) + _MAX_REPLAYED
        written = 0
        while True:
            items = self._deferred.get(ident)
            if not items:
                self._deferred.pop(ident, None)
                return
            if written >= budget:
                # Each record written queued another: a formatter or filter that logs
                # every record it sees (the stdlib's handlers end such a chain with a
                # RecursionError in the application). Ended here, and said once.
                self._warn(
                    "mmaplog: a formatter, filter or finalizer logs every record it "
                    "handles; the records it kept logging were dropped"
                )
                self._deferred.pop(ident, None)
                return
            written += 1
            # One at a time, taken off first (a failure does not write it twice): the
            # rest stay queued, so what this thread logs meanwhile goes behind them.
            item = items.pop(0)
            what = item[0]
            if what == "close":
                inside = direct and ident in self._inside
                if inside:
                    self._inside.discard(ident)
                try:
                    self.close()
                finally:
                    if inside:
                        self._inside.add(ident)
                continue
            if not direct:
                try:
                    self._replaying_one[ident] = item[1]  # its call is not queued again
                    if what == "emit":
                        self.emit(item[1])
                    else:
                        self._write_safely(*item[1:])
                finally:
                    self._replaying_one.pop(ident, None)
                continue
            try:
                if what == "emit":
                    head, text, time_us = self._render(item[1])
                else:
                    head, text, time_us = self._frame(*item[1:])
                cache = self._fast
                if cache is None or cache.append(head, text, time_us, -1.0) != APPENDED:
                    self._direct(head, text, time_us)
            except Exception:
                if what == "emit":
                    self.handleError(item[1])
                else:
                    self._warn("mmaplog: a record logged during a move was lost")

    def _write_safely(
        self, text: bytes, created: float, levelno: int, kind: int, name: bytes, thread: int
    ) -> None:
        """Store a structured record deferred on this thread; never raises."""
        try:
            self._write(text, created, levelno, kind, name, thread, _get_ident())
        except Exception as exc:
            self._warn(f"mmaplog: a structured record could not be stored: {exc}")

    def _flusher_round(self, ident: int) -> None:
        if self._deferred:
            self._run_deferred(ident, direct=True)

    def _store(self, head: bytes, text: bytes, time_us: int) -> None:
        """Put a record (header and text; or an xlog line, with no header) into the cache,
        or straight into the log."""
        if self._forking and os.getpid() != self._pid:
            # In a forked child whose at-fork hook has not run yet (a finalizer run while
            # another module's hook tidied up after the fork logged): no lock or library
            # state inherited from the parent is safe yet, so the record waits for the
            # hook, which writes it as soon as everything is made anew (within fork()).
            self._early.append((head, text, time_us))
            return
        if self._forked:
            self._after_fork()
        cache = self._cache
        if cache is None:
            self._direct(head, text, time_us)
            return
        status = cache.append(head, text, time_us, self._wait)
        if status == APPENDED:
            if self._durable:
                cache.msync()
        else:
            self._not_appended(status, head, text, time_us)

    def _not_appended(self, status: int, head: bytes, text: bytes, time_us: int) -> None:
        if status == OVERSIZE:
            # A record no slot can take: after what the cache holds, as a block of its own.
            self._flush()
            self._direct(head, text, time_us)
        elif status == CLOSED:  # close() ran meanwhile: the documented path after it
            self._direct(head, text, time_us)
        # DROPPED: counted by the cache, noted in the log when a slot is free again

    def _direct(self, head: bytes, text: bytes, time_us: int) -> None:
        """Append a block holding just this record (or xlog line) straight to the log:
        sync mode, a record too large for a slot, a record logged after ``close()``."""
        block = self._blocks.direct_block(head, text, time_us)
        with self._file_lock:  # in order with the flusher's moves
            self._logs.append(block, time_us)
        self._direct_writes += 1  # progress a waiting close() can see

    def flush(self) -> None:
        """Move every record emitted so far into the log file before returning.

        Also recovers the caches that other processes of this prefix left when they
        died (forked workers killed or ended with ``os._exit``). Called from inside a
        log call on the same thread (a signal handler that interrupted one), it
        returns at once: that thread holds the locks a move needs. It waits at most 5
        seconds for a move that another thread has under way (that thread may be held
        up by a finalizer waiting for logging's own lock, which ``dictConfig`` holds
        while it flushes and closes handlers); what it leaves, the flusher moves.

        If the log files cannot be written (a full disk, a read-only or missing
        folder), it makes one attempt and returns without raising: the records stay in
        the cache (in memory, if no cache file could be made), the flusher keeps
        retrying them, and stderr has said so once. Records still unwritten at
        :meth:`close` are left in the cache file for recovery, or, when they were in
        memory, counted as lost on stderr.
        """
        ident = _get_ident()
        inside = self._inside
        if ident in inside and self._really_inside(ident):
            return
        try:
            inside.add(ident)  # inside the try: an interrupt here is undone
            self._flush()
            if self._cache is not None and not self._forked:
                self._recover_free_caches(self._cache.path)
        finally:
            inside.discard(ident)
            if self._deferred:
                self._run_deferred(ident)

    def _flush(self) -> None:
        if self._forked:
            return
        cache, flusher = self._cache, self._flusher
        if cache is None or flusher is None:
            return
        # Bounded waits: flush() is called under logging's own lock by dictConfig and
        # logging.shutdown, and another thread inside a move may be held up by a
        # finalizer waiting for that very lock. Past the wait, the flusher moves it.
        if cache.seal(_FLUSH_WAIT) and not flusher.drain(_FLUSH_WAIT) and flusher.last_error:
            self._warn(flusher.last_error)

    def close(self) -> None:
        """Flush, stop the flusher, unmap the cache. Calling it again does nothing.

        Safe while other threads log: a record whose ``emit`` had begun is in the
        cache and moved, or written directly; records logged after ``close()`` are
        written directly into the log file, one block each.
        """
        ident = _get_ident()
        # From a signal handler inside a log call: right after it.
        if ident in self._inside and self._really_inside(ident):
            self._defer(ident, ("close",))
            return
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._inside.add(ident)  # inside the try: an interrupt here is undone
            self._shut()
        except Exception as exc:
            self._warn(f"mmaplog: closing {self.prefix}: {exc}")
        finally:
            self._inside.discard(ident)
            super().close()
            if self._deferred:
                self._run_deferred(ident)

    def _shut(self) -> None:
        """Close the cache and the flusher, waiting at most ``_CLOSE_WAIT`` seconds.

        The work runs on a closer thread that this one waits for. Usually it is done in
        milliseconds. It can be held up by a lock the caller holds: ``dictConfig``
        closes handlers under logging's own lock, and a finalizer that logs on the
        flusher thread (or any thread inside a move) waits for that lock. Waiting for
        ever would hang the application; instead the closer finishes once the caller
        lets go, and records logged meanwhile are written directly.
        """
        if self._forked:
            self._finish_shut(None, None)  # the parent's cache: never touched by the child
            return
        cache = self._cache
        if cache is not None:
            cache.shut()  # from here on appends return CLOSED: those records go direct
        self._fast = None
        done = threading.Event()
        flusher = self._flusher

        def closer() -> None:
            try:
                self._finish_shut(cache, flusher)
            finally:
                done.set()

        # A plain thread, started without waiting for it to begin (see Flusher.start).
        try:
            _thread.start_new_thread(closer, ())
        except RuntimeError:  # no new thread at interpreter shutdown (3.12+)
            closer()
            return
        # Wait while the work goes on (blocks being moved); give up only when nothing
        # moved for _CLOSE_WAIT seconds: the closer is then held up by a lock.
        moved = -1
        while not done.wait(_CLOSE_WAIT):
            now = (flusher.moved if flusher is not None else 0) + self._direct_writes
            if now == moved:
                return
            moved = now

    def _finish_shut(self, cache: Cache | None, flusher: Flusher | None) -> None:
        me = _get_ident()
        try:
            self._inside.add(me)  # inside the try: an interrupt here is undone
            self._finish_shut_inside(cache, flusher)
        except Exception as exc:
            self._warn(f"mmaplog: closing {self.prefix}: {exc}")
        finally:
            try:
                if self._deferred:
                    self._run_deferred(me, direct=True)
            finally:
                self._inside.discard(me)

    def _finish_shut_inside(self, cache: Cache | None, flusher: Flusher | None) -> None:
        if flusher is not None:
            flusher.stop()  # the thread moves what is sealed, then ends
            if not flusher.drain() and flusher.last_error:
                self._warn(flusher.last_error)
        if cache is not None:
            self._report_losses(cache)
        with self._file_lock:  # no move or direct write is under way
            if cache is not None:
                if not cache.has_pending():
                    cache.close()
                else:  # the log cannot be written: leave it for recovery
                    cache.abandon()
            self._cache = None
            self._fast = None
            self._flusher = None
            self._logs.close()

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<{type(self).__name__} {self.log_dir}/{self.prefix} ({level})>"


_GUARDED = frozenset(
    f.__code__
    for f in (
        MmapHandler.emit,
        MmapHandler.write,
        MmapHandler._write,
        MmapHandler.flush,
        MmapHandler.close,
        MmapHandler._finish_shut,
        MmapHandler._run_deferred,
    )
)
"""The code of the calls that mark a thread inside the handler (see _really_inside)."""
_MAX_REPLAYED = 1000
"""Records one thread writes from its queue in one go (see _replay)."""
_RECORD_CALLS = frozenset(f.__code__ for f in (MmapHandler.emit, MmapHandler.write))
"""The guarded calls of a record, inside which another record may be stored at once."""
_FORMATTING = frozenset(
    f.__code__
    for f in (MmapHandler.handle, MmapHandler.format, *vars(XlogFormatter).values())
    if hasattr(f, "__code__")
)
"""mmaplog's steps that hold no lock and write nothing (a record's way in, formatting):
a record logged inside them is stored at once (see _may_store_nested)."""
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STRUCTLOG_FILE = _PACKAGE_DIR + "structlog.py"


def _truncate(text: bytes, limit: int) -> bytes:
    marker = f" [truncated: {len(text)} bytes]".encode()
    keep = max(0, limit - len(marker))
    # Cut on a UTF-8 character boundary.
    while keep > 0 and (text[keep] & 0xC0) == 0x80:
        keep -= 1
    return text[:keep] + marker
