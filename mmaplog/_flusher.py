"""Moving sealed blocks from the cache into the log files.

The :class:`Flusher` is a daemon thread, shaped like ``QueueListener``: it waits
on an event, woken when a block is sealed, every ``interval`` seconds, and by
``flush()``/``close()``. Each move is: re-compress the block whole (and seal it
once when encrypted), append it with one ``write()``, and only then release its
slot. A failed write leaves the block in the cache and is retried with back-off.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from . import _format as fmt
from . import _testing
from ._cache import Cache, SealedBlock, SealerProtocol
from ._codec import compress_whole
from ._logfile import LogFiles

_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 5.0
_DAY = 86400.0


def build_block(
    template: fmt.BlockHeader,
    heads: bytes | bytearray,
    texts: Sequence[bytes],
    last_time_us: int,
    *,
    level: int | None,
    sealer: SealerProtocol | None,
) -> bytes:
    """Return the whole-form block for the records with headers ``heads`` and ``texts``.

    Compressed blocks hold their records as columns (``FLAG_COLUMNS``): about 10 %
    fewer bytes than the records back to back, for the same raw length.
    """
    flags = template.flags & ~fmt.FLAG_STREAM
    columns = fmt.encode_columns(heads, texts) if template.compression != fmt.COMP_NONE else None
    if columns is not None:
        raw = columns
        flags |= fmt.FLAG_COLUMNS
    else:
        raw = fmt.join_records(heads, texts)
    payload = compress_whole(template.compression, raw, level)
    if sealer is not None:
        aad = fmt.block_aad(template.session, template.seq, flags)
        payload = sealer.seal(template.seq, fmt.WHOLE_BLOCK_INDEX, payload, aad)
    header = replace(
        template, flags=flags, last_time_us=last_time_us, count=len(texts), raw_len=len(raw)
    )
    return fmt.encode_block(header, payload)


def local_hour(time_us: int) -> int:
    """The local hour (0-23) of a time in µs, as xlog's header hours are."""
    return time.localtime(time_us // 1_000_000).tm_hour


def build_xlog_block(
    template: fmt.BlockHeader, bodies: Iterable[bytes | memoryview], last_time_us: int
) -> bytes:
    """Return the Mars xlog async block for an xlog cache block's chunk bodies.

    Start magic from the template's compression and encryption, seq from its sequence
    number (1..65535, wrapping), begin/end hour from the first/last record time, the
    client key from its extension (zeros without encryption), the payload joined from
    the chunk bodies, then the end magic. The flusher and recovery both call this, so
    a block moved before a crash and recovered after it have the same bytes.
    Raises ``CorruptionError`` for chunk bodies that cannot be an xlog payload.
    """
    from ._xlog import pack_xlog_block, xlog_magic, xlog_payload, xlog_seq_of

    compression = fmt.COMPRESSION_NAMES[template.compression] or "none"
    encrypted = template.encrypted
    payload = xlog_payload(bodies, encrypted)
    return pack_xlog_block(
        xlog_magic("async", compression, encrypted),
        xlog_seq_of(template.seq),
        local_hour(template.first_time_us),
        local_hour(max(last_time_us, template.first_time_us)),
        template.extension if encrypted else bytes(fmt.XLOG_EXTENSION),
        payload,
    )


class Flusher:
    """Moves sealed blocks of one cache into its log files."""

    def __init__(
        self,
        cache: Cache,
        logs: LogFiles,
        *,
        interval: float,
        level: int | None,
        on_error: Callable[[str], None],
        daily: Callable[[], object] | None = None,
    ) -> None:
        self.cache = cache
        self.logs = logs
        self.interval = interval
        self.level = level
        self._on_error = on_error
        self._daily = daily
        # Wake-ups: a SimpleQueue, not an Event, so that waking up takes no Python-level
        # lock the writer might hold (each wait for one is a GIL hand-over it pays for).
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._io_lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing = False
        self.last_error: str | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mmaplog-flusher", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        self._wakeups.put(None)

    def stop(self) -> None:
        """Stop the thread after it has moved what is sealed."""
        self._stopping = True
        self._wakeups.put(None)
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
        self._thread = None

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        next_tick = time.monotonic() + self.interval
        next_day = time.monotonic() + _DAY
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            if self._failing:
                timeout = min(timeout, backoff)
            try:
                self._wakeups.get(timeout=timeout)
                while True:  # wake-ups that came meanwhile are served by this round
                    self._wakeups.get_nowait()
            except queue.Empty:
                pass
            if time.monotonic() >= next_tick:
                self.cache.seal()
                next_tick = time.monotonic() + self.interval
            if self.drain():
                backoff = _BACKOFF_MIN
            else:
                backoff = min(_BACKOFF_MAX, backoff * 2)
            if self._stopping:
                return
            if self._daily is not None and time.monotonic() >= next_day:
                next_day = time.monotonic() + _DAY
                self._daily()

    def drain(self) -> bool:
        """Move every sealed block, oldest first; False if a write failed."""
        with self._io_lock:
            while True:
                block = self.cache.take_sealed()
                if block is None:
                    self._set_ok()
                    return True
                try:
                    self._move(block)
                except Exception as exc:
                    self.cache.give_back(block)
                    self._set_failing(exc)
                    return False

    def _move(self, block: SealedBlock) -> None:
        if block.template.flags & fmt.FLAG_XLOG:
            data = build_xlog_block(block.template, block.raw, block.last_time_us)
        else:
            data = build_block(
                block.template,
                block.heads,
                block.texts,
                block.last_time_us,
                level=self.level,
                sealer=self.cache.sealer,
            )
        self.logs.append(data, block.template.first_time_us)
        _testing.point("after_append")
        self.cache.release(block)
        _testing.point("after_release")

    def write_direct(self, block: bytes, first_time_us: int) -> None:
        """Append a block built elsewhere (an oversize record), in order with the moves."""
        with self._io_lock:
            self.logs.append(block, first_time_us)

    def _set_failing(self, exc: Exception) -> None:
        msg = (
            f"mmaplog: cannot write the log file ({exc}); blocks stay in the cache and are retried"
        )
        self.last_error = msg
        if not self._failing:
            self._failing = True
            self._on_error(msg)

    def _set_ok(self) -> None:
        if self._failing:
            self._failing = False
            self._on_error("mmaplog: the log file can be written again; the cache is moving")
