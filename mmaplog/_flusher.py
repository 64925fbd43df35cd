"""Moving sealed blocks from the cache into the log files.

The :class:`Flusher` is a daemon thread, shaped like ``QueueListener``: it waits
on an event, woken when a block is sealed, every ``interval`` seconds, and by
``flush()``/``close()``. Each move is: re-compress the block whole (and seal it
once when encrypted), append it with one ``write()``, and only then release its
slot. A failed write leaves the block in the cache and is retried with back-off.
"""

from __future__ import annotations

import _thread
import queue
import threading
import time
from collections.abc import Callable

from . import _format as fmt
from ._blocks import build_xlog_block
from ._cache import Cache, SealedBlock
from ._faults import point
from ._logfile import LogFiles

_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 5.0
_DAY = 86400.0
_SWEEP = 30.0  # seconds between looks for caches that dead processes left


class Flusher:
    """Moves sealed blocks of one cache into its log files."""

    def __init__(
        self,
        cache: Cache,
        logs: LogFiles,
        *,
        interval: float,
        on_error: Callable[[str], None],
        file_lock: threading.RLock,
        inside: set[int],
        after_round: Callable[[int], None],
        daily: Callable[[], object] | None = None,
        sweep: Callable[[], object] | None = None,
    ) -> None:
        """``file_lock`` is the one lock of the log files (shared with the handler's
        direct writes); ``inside`` the handler's set of threads inside a log call, which
        the flusher thread joins while it works so that a finalizer logging on it is
        deferred, not deadlocked; ``after_round(ident)`` writes what was deferred."""
        self.cache = cache
        self.logs = logs
        self.interval = interval
        self._on_error = on_error
        self._daily = daily
        self._sweep = sweep
        self._inside = inside
        self._after_round = after_round
        # Wake-ups: a SimpleQueue, not an Event, so that waking up takes no Python-level
        # lock the writer might hold (each wait for one is a GIL hand-over it pays for).
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        # One writer of the log files at a time: moves and blocks written directly.
        self._move_lock = file_lock
        self._stopping = False
        self._thread_ident: int | None = None
        self.moved = 0  # blocks moved: a closer that waits sees the work go on
        self._ended = threading.Event()
        self._failing = False
        self.last_error: str | None = None

    def start(self) -> None:
        """Start the thread without waiting for it to run.

        ``threading.Thread.start`` waits until the new thread has begun, and a
        finalizer the new thread runs as it begins may wait for logging's own lock,
        which ``dictConfig`` holds while it makes this handler: that wait would never
        end. The thread is a plain one (as daemon threads are, it is not waited for
        at exit; ``close()`` stops it), and says when it has ended.
        """
        self._stopping = False
        self._ended = threading.Event()
        self._thread_ident = _thread.start_new_thread(self._run_then_end, ())

    def _run_then_end(self) -> None:
        try:
            self._run()
        finally:
            self._ended.set()

    @property
    def alive(self) -> bool:
        return self._thread_ident is not None and not self._ended.is_set()

    def wake(self) -> None:
        self._wakeups.put(None)

    def stop(self) -> None:
        """Stop the thread after it has moved what is sealed (waits for it to end)."""
        self._stopping = True
        self._wakeups.put(None)
        if self._thread_ident is not None and self._thread_ident != threading.get_ident():
            self._ended.wait()
        self._thread_ident = None

    def _run(self) -> None:
        me = threading.get_ident()
        inside = self._inside
        inside.add(me)
        try:
            self._loop(me)
        finally:
            try:
                self._after_round(me)
            finally:
                inside.discard(me)

    def _loop(self, me: int) -> None:
        backoff = _BACKOFF_MIN
        next_tick = time.monotonic() + self.interval
        next_day = time.monotonic() + _DAY
        next_sweep = time.monotonic() + _SWEEP
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
                self.cache.check_file()  # a shrunk cache file is extended before any store
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
            if self._sweep is not None and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + _SWEEP
                self._sweep()
            self._after_round(me)  # records deferred on this thread (finalizers) go in now

    def drain(self, timeout: float = -1) -> bool:
        """Move every sealed block, oldest first; False if a write failed, or if another
        thread's move held the log files for longer than ``timeout`` seconds (-1: wait)."""
        lock = self._move_lock
        try:
            # Inside the try, and released only if held: an interrupt (KeyboardInterrupt
            # from a signal handler, in a flush() on the main thread) may come anywhere.
            if not lock.acquire(timeout=timeout):
                return False
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
        except BaseException:
            # Interrupted: the block being moved goes back, to be moved again (its
            # bytes, if written already, are written again and read once).
            self.cache.give_back_moving()
            raise
        finally:
            if lock._is_owned():  # type: ignore[attr-defined]
                lock.release()

    def _move(self, block: SealedBlock) -> None:
        data = block.data
        if not data:
            if block.template.flags & fmt.FLAG_XLOG:
                data = build_xlog_block(block.template, block.raw, block.last_time_us)
            else:
                data = self.cache.blocks.whole_block(
                    block.template, block.heads, block.texts, block.last_time_us
                )
            block.data = data  # a retry writes these bytes: sealed once, never twice
        self.logs.append(data, block.template.first_time_us)
        self.moved += 1
        point("after_append")
        self.cache.release(block)
        point("after_release")

    def write_direct(self, block: bytes, first_time_us: int) -> None:
        """Append a block built elsewhere (an oversize record), in order with the moves."""
        with self._move_lock:
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
