"""The mmap cache: the one module that maps memory.

A cache file is a header page and two block slots, pre-allocated and mapped with
``MAP_SHARED``, so what is written into it belongs to the kernel's page cache and
outlives the process. The writer fills one slot with a block (template header,
then one chunk per record, then the commit store); a full slot is *sealed* and
handed to the flusher, which appends it to the log file and only then *releases*
the slot. See ``docs/design.md`` for why a kill at any step loses nothing.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import threading
import time
import zlib
from _thread import allocate_lock as _allocate_lock
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _emitpath
from . import _format as fmt
from ._blocks import BlockSession
from ._crypto import TAG_SIZE
from ._faults import point
from ._logfile import day_bounds, open_no_follow
from ._xlog import XLOG_BUFFER, XlogBlockWriter, note_line

PAGE = mmap.PAGESIZE
NSLOTS = 2
MIN_BUFFER = 16 * 1024
MAX_BUFFER = 64 * 1024 * 1024

EMPTY, OPEN, SEALED, MOVING = range(4)

APPENDED, DROPPED, OVERSIZE, CLOSED = range(4)
NOT_HANDLED = -1
"""From the C path's emit: the record takes the pure path (nothing was stored)."""

# While records are dropped at once (both slots wait for the disk), the flusher is
# woken this often to try again, so a disk with room again is seen within this time.
_STARVED_RETRY = 0.1

_CHUNK_OVERHEAD = 64 + fmt.CHUNK_HEADER.size + TAG_SIZE
_NOTE_NAME = b"mmaplog"  # the logger name of mmaplog's own notes
_pack_chunk_header = fmt.CHUNK_HEADER.pack
_pack_commit = fmt.COMMIT.pack_into
_crc32 = zlib.crc32


class PyWriter:
    """The block being written into a cache slot, and its record path, in Python.

    The reference for ``mmaplog._native.Writer`` (``mmaplog/_native.c``), which has
    the same fields and writes the same bytes. The cache sets the fields when it opens
    a block and reads them when it seals one; :meth:`write` runs under the cache's
    lock, after the cache made room. An xlog cache keeps the chunk bodies in ``raw``
    (its blocks are moved from them); mmaplog's keep the records as columns (``heads``
    back to back, ``texts``).
    """

    __slots__ = (
        "_compress",
        "_flush",
        "_mode",
        "_xlog",
        "aad",
        "acquire",
        "aead",
        "buf",
        "commit_at",
        "count",
        "day_end",
        "day_start",
        "heads",
        "last_us",
        "limit",
        "make_room",
        "payload_start",
        "pos",
        "raw",
        "raw_cap",
        "raw_len",
        "raw_seal",
        "release",
        "seal",
        "seal_at",
        "seed",
        "seq",
        "states",
        "texts",
    )

    buf: mmap.mmap | bytearray
    states: list[int]
    acquire: Callable[[], Any]
    release: Callable[[], Any]
    make_room: Callable[[int, int, int, float], int]
    seal: Callable[[int, int, bytes, bytes], bytes] | None
    aead: Any
    """The C path seals with this (``Sealer.native_aead``) where it is set; the pure
    path always calls ``seal``."""
    aad: bytes
    heads: bytearray
    texts: list[bytes]
    raw: list[bytes]
    pos: int
    limit: int
    payload_start: int
    commit_at: int
    seal_at: int
    day_start: int
    day_end: int
    last_us: int
    seq: int
    seed: int
    count: int
    raw_len: int
    """The uncompressed bytes (headers and texts) of the block's records so far."""
    raw_cap: int
    """The most uncompressed bytes a block may hold (what its reader takes)."""
    raw_seal: int
    """Past this many uncompressed bytes, the block is sealed (as past ``seal_at``)."""

    def __init__(self, xlog: XlogBlockWriter | None) -> None:
        self._xlog = xlog
        self._compress: Callable[[bytes], bytes] = bytes
        self._flush: Callable[[Any], bytes] = _no_flush
        self._mode: Any = None
        self.raw = []

    def reset_stream(self) -> None:
        """Begin the block's stream: xlog's compressed lines, or records as they are."""
        if self._xlog is not None:
            self._compress, self._flush, self._mode = (
                self._xlog.line_stream().chunk,
                _no_flush,
                None,
            )
        else:
            self._compress, self._flush, self._mode = bytes, _no_flush, None
        self.raw = []

    def write(self, head: bytes, text: bytes, time_us: int) -> None:
        """Write one record as a chunk, then its commit store."""
        try:
            self._write(head, text, time_us)
        except BaseException:
            # The stream may have taken this record while the block has not (a sealer
            # that failed, a KeyboardInterrupt between two steps): the stream must not
            # go on. The next record seals this block and opens one with a new stream.
            self.limit = self.pos
            raise

    def _write(self, head: bytes, text: bytes, time_us: int) -> None:
        body = self._compress(head + text) + self._flush(self._mode)
        seal = self.seal
        if seal is not None:
            # The nonce (seq, index): seq from the session's one counter, index the
            # chunk's place in the block, so it never repeats (see _blocks).
            body = seal(self.seq, self.count, body, self.aad)
            # The tags do not count toward sealing: an encrypted block holds as many
            # records as a plain one, so it compresses as well when it is moved.
            self.seal_at += TAG_SIZE
        pos = self.pos
        end = pos + 8 + len(body)
        buf = self.buf
        buf[pos:end] = _pack_chunk_header(len(body), _crc32(body, self.seed)) + body
        self.count += 1
        self.raw_len += len(head) + len(text)
        if time_us > self.last_us:
            self.last_us = time_us
        # The commit store: one small write after the chunk is complete.
        _pack_commit(buf, self.commit_at, end - self.payload_start, self.count, self.last_us)
        self.pos = end
        if self._xlog is not None:
            self.raw.append(body)
        else:
            self.heads += head
            self.texts.append(text)


def new_writer(xlog: XlogBlockWriter | None) -> PyWriter:
    """The record path for a cache: the C one where it is active and the cache is
    mmaplog's own format (records as they are), else :class:`PyWriter`."""
    native = _emitpath.writer_type()
    if native is not None and xlog is None:
        w: PyWriter = native()
        return w
    return PyWriter(xlog)


def _no_flush(_mode: Any = None) -> bytes:
    return b""


def geometry(buffer_size: int) -> tuple[int, int]:
    """Return ``(slot_size, file_size)`` for a buffer of ``buffer_size`` bytes."""
    slot = -(-(buffer_size // NSLOTS) // PAGE) * PAGE
    return slot, fmt.CACHE_HEADER_SIZE + NSLOTS * slot


def cache_names(prefix: str, limit: int = 64) -> list[str]:
    """The cache file names a prefix may use, in the order they are tried."""
    return [f"{prefix}.mmap"] + [f"{prefix}.{i}.mmap" for i in range(1, limit)]


def try_lock(fd: int) -> bool:
    """Take the exclusive lock of a cache file without waiting."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def open_locked(path: str, file_mode: int, *, create: bool) -> int | None:
    """Open and lock a cache file; None when a live process holds it."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    fd = open_no_follow(path, flags, file_mode)
    try:
        if not try_lock(fd):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_image(fd: int) -> bytes:
    """Read a whole cache file without mapping it (a reader never risks SIGBUS)."""
    size = os.fstat(fd).st_size
    parts = []
    pos = 0
    while pos < size:
        part = os.pread(fd, min(size - pos, 1 << 20), pos)
        if not part:
            break
        parts.append(part)
        pos += len(part)
    return b"".join(parts)


def _preallocate(fd: int, size: int) -> None:
    # Every page of the mapping must have disk blocks behind it before it is touched:
    # a store into a hole on a full disk is a SIGBUS, which Python cannot survive.
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:  # macOS: write the zeros for real
        zeros = bytes(1 << 16)
        pos = 0
        while pos < size:
            pos += os.pwrite(fd, zeros[: min(len(zeros), size - pos)], pos)
        os.fsync(fd)


@dataclass(slots=True)
class SealedBlock:
    """A block the writer has finished with, waiting to be moved into the log.

    ``heads`` and ``texts`` hold the records (their headers back to back, and their
    texts), or for an xlog block (``FLAG_XLOG``) ``raw`` holds the chunk bodies, so
    the flusher never reads the cache back. ``data`` keeps the log-file bytes once
    the flusher has built them: a move that failed is retried with the same bytes,
    never sealed a second time.
    """

    slot: int
    template: fmt.BlockHeader
    count: int
    last_time_us: int
    raw: list[bytes] = field(default_factory=list)
    heads: bytes | bytearray = b""
    texts: list[bytes] = field(default_factory=list)
    data: bytes = b""


class Cache:
    """An open, locked, mapped cache file and the writer that fills its slots.

    All writer state is guarded by ``lock``; the flusher takes sealed blocks with
    :meth:`take_sealed` and gives slots back with :meth:`release`. Blocks are
    numbered and sealed by ``blocks``, the session's one owner of block identity.
    """

    def __init__(
        self,
        path: str,
        fd: int,
        *,
        buffer_size: int,
        log_dir: str,
        prefix: str,
        blocks: BlockSession,
        wake: Callable[[], None],
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.blocks = blocks
        self.xlog = xlog = blocks.xlog
        self.fd = fd
        sealer = blocks.sealer
        self._wake = wake
        self._warn = warn
        self.slot_size, self.file_size = geometry(buffer_size)
        self.threshold = max(1, buffer_size // 3)
        # What one block's records may add up to uncompressed (``raw``, headers and texts,
        # as its reader decompresses them), and past what it is sealed. An mmaplog block
        # stops at what its reader takes (MAX_BLOCK_RAW): compressed records can hold far
        # more text than their slot. An xlog block stays within xlog's own buffer, measured
        # on the lines themselves: moved at a third of it, as xlog moves its buffer, and
        # never more than one slot's half of it, compressed or not, whatever buffer_size
        # says (Tencent's decoders take no more than 100,000 bytes of payload).
        raw_cap = raw_seal = fmt.MAX_BLOCK_RAW
        self._budget = self.slot_size
        if xlog is not None:
            size = min(buffer_size, XLOG_BUFFER)
            self.threshold = max(1, size // 3)
            raw_cap = self._budget = size // NSLOTS
            raw_seal = self.threshold
        # An RLock for its owner, not for re-entry (a thread never takes it twice): after
        # an interrupt, _relock and append know whether this thread holds it.
        self.lock = threading.RLock()
        self._acquire = self.lock.acquire
        self._release = self.lock.release
        self._owned = self.lock._is_owned  # type: ignore[attr-defined]
        self._waiters: list[Any] = []  # writers waiting for a slot (see _wait)
        self.pid = blocks.pid
        self.closed = False  # set under the lock by shut(): no store into the slots after it
        self.mapped = False
        self._header = b""  # the header page's bytes, written again if the file shrinks
        self._unlinked = False  # the cache file was deleted underneath (warned once)
        self.warning: str | None = None
        self._states = [EMPTY] * NSLOTS
        self._waiting = 0  # writers in _make_room waiting for a free slot (under the lock)
        self._day = (0, 0)  # the local day of the last block opened, [start, end) in µs
        # Sealed blocks, oldest first. The writer appends under the lock; the flusher
        # pops without it (deque appends and pops are thread-safe): a flusher that
        # waited for the lock the writer holds would cost the writer a GIL hand-over.
        self._sealed: deque[SealedBlock] = deque()
        self._moving: SealedBlock | None = None  # taken by the flusher, not yet released
        self._active = -1
        self.dropped = 0  # dropped since the last note in the log
        self.dropped_total = 0  # dropped over the cache's life, for the report at close
        # Set when a wait for a slot timed out, cleared when a move frees a slot: until
        # then records are dropped at once, not after another block_timeout each.
        self._starved = False
        self._starved_wake = 0.0
        self._drop_first_us = 0
        self._drop_last_us = 0
        self._buf: mmap.mmap | bytearray = self._map(fd, log_dir, prefix)
        # The state of the block being written, and the record path: in C where it is
        # built (the same bytes), else in Python. It writes under this cache's lock, and
        # calls _make_room for what is not its fast path.
        w = self._w = new_writer(xlog)
        w.buf = self._buf
        w.raw_cap, w.raw_seal = raw_cap, raw_seal
        w.states = self._states
        w.acquire = self._acquire
        w.release = self._release
        w.make_room = self._make_room
        w.seal = sealer.seal if sealer is not None else None
        w.aead = sealer.native_aead if sealer is not None else None
        # emit(record, formatter, limit, timeout): the handler's C path for records an
        # XlogFormatter renders (see _native.c for what it returns); None on the pure path.
        self.native_emit: Callable[[Any, Any, int, float], Any] | None = None
        if not isinstance(w, PyWriter):
            self.append = w.append  # type: ignore[method-assign,unused-ignore]
            self.native_emit = w.emit
        self._reset_block_state()

    # -- mapping -----------------------------------------------------------------

    def _map(self, fd: int, log_dir: str, prefix: str) -> mmap.mmap | bytearray:
        size = self.file_size
        header = fmt.pack_cache_header(
            fmt.CacheInfo(
                version=fmt.FORMAT_VERSION,
                nslots=NSLOTS,
                header_size=fmt.CACHE_HEADER_SIZE,
                slot_size=self.slot_size,
                created_us=time.time_ns() // 1000,
                pid=self.pid,
                log_dir=log_dir,
                prefix=prefix,
            )
        )
        if fd < 0:  # no cache file at all: the handler has said so
            buf = bytearray(size)
            buf[: len(header)] = header
            return buf
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", self.path)
            if st.st_size != size:
                os.ftruncate(fd, size)
            _preallocate(fd, size)
            if os.fstat(fd).st_size < size:  # never map past the end of the file
                raise OSError(errno.EIO, "cache file shorter than its mapping", self.path)
            # Start from zeros: a previous run's data was moved out before this.
            zeros = bytes(self.slot_size)
            for i in range(NSLOTS):
                os.pwrite(fd, zeros, fmt.CACHE_HEADER_SIZE + i * self.slot_size)
            os.pwrite(fd, header, 0)
            self._header = header
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as exc:
            self.warning = (
                f"mmaplog: cannot map the cache {self.path} ({exc}); records are kept in "
                "memory and are lost if the process dies before they are flushed"
            )
            buf = bytearray(size)
            buf[: len(header)] = header
            return buf
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
            try:
                mm.madvise(mmap.MADV_WILLNEED)
            except OSError:
                pass
        self.mapped = True
        return mm

    # -- the writer (under self.lock) ---------------------------------------------

    def _reset_block_state(self) -> None:
        self._active = -1
        self._template: fmt.BlockHeader | None = None
        w = self._w
        w.pos = w.limit = w.payload_start = w.commit_at = w.seal_at = 0
        w.day_start = w.day_end = w.last_us = 0
        w.count = w.seq = w.seed = w.raw_len = 0
        w.aad = b""
        # The records of the open block, kept as the columns the flusher writes: no
        # per-record objects for it to make (and free) while the application logs.
        w.heads = bytearray()
        w.texts = []
        if isinstance(w, PyWriter):
            w.raw = []

    def _free_slot(self) -> int:
        for i, state in enumerate(self._states):
            if state == EMPTY:
                return i
        return -1

    def _open_block(self, slot: int, time_us: int) -> None:
        if self.mapped:
            self._check_size()  # one fstat per block: never a syscall per record
        template = self.blocks.open_block(time_us)
        seq = template.seq
        base = fmt.CACHE_HEADER_SIZE + slot * self.slot_size
        hdr = fmt.pack_header(template)
        buf = self._buf
        fmt.COMMIT.pack_into(buf, base, 0, 0, 0)
        buf[base + fmt.SLOT_BLOCK_OFFSET : base + fmt.SLOT_BLOCK_OFFSET + len(hdr)] = hdr
        self._states[slot] = OPEN
        self._active = slot
        self._template = template
        day = self._day
        if not day[0] <= time_us < day[1]:
            day = self._day = day_bounds(time_us)  # once a day, not once a block
        w = self._w
        w.commit_at = base
        w.payload_start = w.pos = base + fmt.SLOT_BLOCK_OFFSET + len(hdr)
        w.limit = min(base + self.slot_size, w.payload_start + self._budget)
        w.raw_len = 0
        w.count = 0
        w.last_us = time_us
        w.day_start, w.day_end = day
        w.heads = bytearray()
        w.texts = []
        w.seed = fmt.chunk_seed(template.session, seq)
        w.seq = seq
        w.seal_at = w.payload_start + self.threshold
        w.aad = fmt.block_aad(template.session, seq, template.flags, template.key_fingerprint)
        w.reset_stream()

    def _seal_active(self) -> bool:
        """Seal the open block; True if it held records (the flusher has work)."""
        slot = self._active
        if slot < 0:
            return False
        w = self._w
        sealed = w.count > 0
        if not sealed:
            self._zero_slot(slot)
            self._states[slot] = EMPTY
        else:
            assert self._template is not None
            self._states[slot] = SEALED
            self._sealed.append(
                SealedBlock(
                    slot,
                    self._template,
                    w.count,
                    w.last_us,
                    w.raw if isinstance(w, PyWriter) else [],
                    w.heads,  # not copied: the next block gets a new bytearray
                    w.texts,
                )
            )
        self._reset_block_state()
        return sealed

    @property
    def capacity(self) -> int:
        """The largest chunk a block can take."""
        ext = len(self.blocks.extension)
        room = self.slot_size - fmt.SLOT_BLOCK_OFFSET - fmt.BLOCK_HEADER_SIZE - ext
        return min(room, self._budget)

    def append(self, head: bytes, text: bytes, time_us: int, timeout: float) -> int:
        """Write one record into the cache; return APPENDED, DROPPED, OVERSIZE or CLOSED.

        ``head`` is everything of the record before its text (``fmt.RECORD_HEADER``
        and the logger name, as :func:`fmt.record_head` makes it) and ``text`` its
        text; in an xlog cache ``head`` is empty and ``text`` is the line.
        Waits up to ``timeout`` seconds for a free slot when both are full.
        """
        # Room for the worst case: compression overhead, chunk header, AEAD tag.
        size = len(head) + len(text)
        need = size + (size >> 7) + _CHUNK_OVERHEAD
        w = self._w
        # acquire/release rather than `with`: this is the hot path, and it is cheaper.
        try:
            if not self._acquire(False):
                self._lock_contended()
            # Past the threshold, the slow path seals the block, unless no slot is free
            # to go on in: then records keep filling it, on the fast path.
            if not (
                w.pos + need <= w.limit
                and w.raw_len + size <= w.raw_cap
                and w.day_start <= time_us < w.day_end
                and ((w.pos < w.seal_at and w.raw_len < w.raw_seal) or EMPTY not in self._states)
            ):
                status = self._make_room(need, size, time_us, timeout)
                if status != APPENDED:
                    return status
            w.write(head, text, time_us)
        finally:
            # Released only if held: an interrupt (KeyboardInterrupt) may have come
            # before this thread got it, and releasing would free another thread's.
            if self._owned():
                self._release()
        return APPENDED

    def _wait(self, timeout: float) -> bool:
        """Wait for a slot to be freed (``_notify_all``) at most ``timeout`` seconds,
        the lock released meanwhile; True if woken.

        Unlike ``Condition.wait``, this thread holds the lock again when it returns or
        raises, even when a signal handler raises (KeyboardInterrupt) while it waits or
        takes the lock back: ``Condition.wait`` could raise without the lock, and the
        caller's release then freed another thread's lock (two writers in the block).
        """
        waiter = _allocate_lock()
        waiter.acquire()
        self._waiters.append(waiter)
        self._release()
        woken = False
        try:
            woken = waiter.acquire(True, timeout)
        finally:
            self._relock()
            if not woken:
                try:
                    self._waiters.remove(waiter)
                except ValueError:  # notified just as the wait ended
                    woken = True
        return woken

    def _relock(self) -> None:
        """Take the lock back, whatever is raised meanwhile: an interrupt is raised once
        the lock is held again (the first one; later ones are dropped)."""
        pending: BaseException | None = None
        while not self._owned():
            try:
                if not self._acquire(False):
                    time.sleep(0)
            except BaseException as exc:
                if pending is None:
                    pending = exc
        if pending is not None:
            raise pending

    def _notify_all(self) -> None:
        """Wake every writer waiting in ``_wait`` (under the lock)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.release()

    def _lock_contended(self) -> None:
        """Take the lock that another thread holds, without ever blocking on it.

        A writer that blocked on the lock would get it while the GIL is released, and
        then hold it while it waits for the GIL: every other writer would block on it in
        turn, and the threads would queue on each other for every record (a lock
        convoy). So the lock is only tried, and the GIL given away in between (as the
        C path does, see ``_native.c``).
        """
        tries = 0
        while not self._acquire(False):
            time.sleep(0 if tries < 64 else 50e-6)
            tries += 1

    def _make_room(self, need: int, size: int, time_us: int, timeout: float) -> int:
        """The slow path of append: seal a block past its threshold, open one that can
        take ``need`` more bytes (``size`` uncompressed), or wait for a free slot.

        A block past its threshold is sealed by the next record, in the same call that
        opens the block this record goes into: one slow record per block, not two
        (sealing wakes the flusher, opening builds a header and a compressor). With
        no free slot to go on in, records keep filling the block while they fit.
        """
        if self.closed:
            return CLOSED
        w = self._w
        if need > self.capacity or size > w.raw_cap:
            return OVERSIZE
        sealed = False
        if (
            self._active >= 0
            and (w.pos >= w.seal_at or w.raw_len >= w.raw_seal)
            and self._free_slot() >= 0
        ):
            sealed = self._seal_active()
        deadline = 0.0
        while not (
            self._active >= 0
            and w.pos + need <= w.limit
            and w.raw_len + size <= w.raw_cap
            and w.day_start <= time_us < w.day_end
        ):
            if self.closed:  # shut() while this writer waited for a slot
                return CLOSED
            sealed = self._seal_active() or sealed
            slot = self._free_slot()
            if slot >= 0:
                self._open_block(slot, time_us)
                if self.dropped:
                    self._write_drop_note(time_us)
                continue
            if timeout < 0:  # the caller (the flusher) writes it another way: not a drop
                return DROPPED
            if self._starved:  # a wait already timed out and no move has succeeded since
                self._count_drop(time_us)
                if time.monotonic() >= self._starved_wake:  # a retry now, not after back-off
                    self._starved_wake = time.monotonic() + _STARVED_RETRY
                    self._wake()
                return DROPPED
            # Both slots wait for the flusher: wait for one (or for another thread's block).
            self._wake()
            sealed = False
            now = time.monotonic()
            if not deadline:
                deadline = now + timeout
            # Say so before looking again: release() frees a slot without the lock, then
            # takes the lock to notify only if someone waits (see release).
            self._waiting += 1
            try:
                if self._free_slot() >= 0:
                    continue
                timed_out = now >= deadline or not self._wait(deadline - now)
            finally:
                self._waiting -= 1
            if timed_out and self._active < 0 and self._free_slot() < 0:
                self._starved = True
                self._count_drop(time_us)
                return DROPPED
        if sealed:
            self._wake()
        return APPENDED

    def _count_drop(self, time_us: int) -> None:
        if not self.dropped:
            self._drop_first_us = time_us
        self.dropped += 1
        self.dropped_total += 1
        self._drop_last_us = time_us

    def _write_drop_note(self, time_us: int) -> None:
        head, text = self.drop_note(time_us)
        self._w.write(head, text, time_us)

    def drop_note(self, time_us: int) -> tuple[bytes, bytes]:
        """The note record (header and text, or an xlog line) saying how many records
        were dropped since the last note, and when; the count starts again from 0."""
        first = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._drop_first_us / 1e6))
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._drop_last_us / 1e6))
        text = (
            f"mmaplog: {self.dropped} record{'s' if self.dropped > 1 else ''} dropped "
            f"between {first} and {last}: "
            "the cache was full because the log files could not be written"
        ).encode()
        self.dropped = 0
        if self.xlog is not None:
            return b"", note_line(time_us, self.pid, text)
        return fmt.record_head(time_us, 40, fmt.KIND_NOTE, text, _NOTE_NAME), text

    def seal(self, timeout: float = -1) -> bool:
        """Seal the block being written, if it holds anything; False if the lock could
        not be had within ``timeout`` seconds (-1: wait)."""
        if not self.lock.acquire(timeout=timeout):
            return False
        try:
            if not self.closed:
                self._seal_active()
        finally:
            self.lock.release()
        return True

    def shut(self) -> None:
        """Seal the open block and take no record after it: ``append`` returns CLOSED.

        Under the lock, so a writer is either done with its record or has not begun
        it: the mapping can then be unmapped once the sealed blocks are moved.
        """
        with self.lock:
            if not self.closed:
                self._seal_active()
                self.closed = True
            self._notify_all()

    def pending_records(self) -> int:
        """How many records are in blocks not yet moved into the log."""
        with self.lock:
            return self._w.count + sum(b.count for b in self._sealed)

    def has_pending(self) -> bool:
        with self.lock:
            return self._w.count > 0 or bool(self._sealed)

    # -- the flusher's side ----------------------------------------------------------

    def take_sealed(self) -> SealedBlock | None:
        """Hand the oldest sealed block to the flusher (the slot stays reserved).

        Does not take the lock: only the flusher takes blocks, and the writer only
        tells an EMPTY slot from the others.
        """
        try:
            block = self._sealed[0]
        except IndexError:
            return None
        # Known before it leaves the queue: an interrupt at any step here leaves it
        # either queued or findable by give_back_moving.
        self._moving = block
        self._states[block.slot] = MOVING
        self._sealed.popleft()
        return block

    def give_back(self, block: SealedBlock) -> None:
        """Return a block the flusher could not write; it is retried first next time.

        Only while its slot is still being moved: a move interrupted after the slot was
        released (by a KeyboardInterrupt) has nothing to give back.
        """
        with self.lock:
            if self._states[block.slot] != MOVING:
                return
            self._states[block.slot] = SEALED
            if not (self._sealed and self._sealed[0] is block):
                self._sealed.appendleft(block)
            self._moving = None

    def give_back_moving(self) -> None:
        """Give back the block being moved, if any (a move ended by an interrupt)."""
        block = self._moving
        if block is not None:
            self.give_back(block)

    def release(self, block: SealedBlock) -> None:
        """Free the slot of a block that is now safely in the log file.

        Without the lock unless a writer waits for a slot: the writer holds the lock
        for every record, and each wait for it costs the writer a GIL hand-over. The
        order makes this safe: a waiting writer counts itself in ``_waiting`` and then
        looks at the slots, all under the lock; here the slot is marked EMPTY and then
        ``_waiting`` read. Either the writer sees the free slot, or this sees the
        writer and notifies it (taking the lock, so after its ``wait`` began).
        Zeroing the slot stores into the mapping, so the file's size is checked first.
        """
        self.check_file()
        self._zero_slot(block.slot)
        self._states[block.slot] = EMPTY
        self._moving = None
        self._starved = False
        if self._waiting:
            with self.lock:
                self._notify_all()

    def _zero_slot(self, slot: int) -> None:
        base = fmt.CACHE_HEADER_SIZE + slot * self.slot_size
        buf = self._buf
        magic_at = base + fmt.SLOT_BLOCK_OFFSET
        buf[magic_at : magic_at + 4] = b"\0\0\0\0"  # empty from here on, for recovery
        point("mid_release")
        buf[base : base + self.slot_size] = bytes(self.slot_size)

    # -- the cache file shrunk underneath ------------------------------------------------

    def check_file(self) -> None:
        """Extend the cache file again if another program shrank it (the flusher's tick).

        One ``fstat``; the lock is taken only when the file did shrink.
        """
        if self.mapped and self._shrunk():
            with self.lock:
                self._check_size()

    def _shrunk(self) -> bool:
        try:
            st = os.fstat(self.fd)
        except OSError:
            return False
        if st.st_nlink == 0 and not self._unlinked:
            # Deleted (its folder removed, say): the pages still work, but nothing can
            # recover them after a crash. Said once; a new start makes a new cache.
            self._unlinked = True
            if self._warn is not None:
                self._warn(
                    f"mmaplog: the cache file {self.path} was deleted while in use; records "
                    "are still moved into the log, but those not yet moved would be lost if "
                    "the process were killed: restart the handler (or the process)"
                )
        return st.st_size < self.file_size

    def _check_size(self) -> None:
        """Under the lock: if the file is shorter than the mapping, extend it again.

        A store into a page past the end of a mapped file is a SIGBUS, which Python
        cannot survive; ``logrotate copytruncate`` or a cleanup script over the log
        folder can shrink the cache. The pages that were cut off are zeros when the
        file is extended: the records of the blocks still to be moved are kept in
        memory (``SealedBlock``), so they are still moved, but until then they would
        not survive a crash. The open block lost its header: it is sealed, so the next
        record opens a block with a header again. If the file cannot be extended, the
        cache goes on in memory.
        """
        if not self.mapped or not self._shrunk():
            return
        size = os.fstat(self.fd).st_size
        try:
            os.ftruncate(self.fd, self.file_size)
            _preallocate(self.fd, self.file_size)
            os.pwrite(self.fd, self._header, 0)
        except OSError as exc:
            # Never store into the mapping again: its pages may have no disk behind them.
            # The old mapping is not closed here: the flusher may be zeroing a slot in it.
            self._buf = bytearray(self.file_size)
            self._buf[: len(self._header)] = self._header
            self._w.buf = self._buf
            self.mapped = False
            message = (
                f"mmaplog: the cache file {self.path} was shrunk to {size} bytes by another "
                f"program and cannot be extended again ({exc}); records are kept in memory "
                "and are lost if the process dies before they are moved"
            )
        else:
            message = (
                f"mmaplog: the cache file {self.path} was shrunk to {size} bytes by another "
                "program (a log rotation or clean-up reaching the cache?); it was extended "
                "again and records not yet moved are moved from memory. Keep the cache out of "
                "reach of such tools (cache_dir): a record written while it is shrunk kills "
                "the process (SIGBUS)"
            )
        if self._active >= 0:
            self._seal_active()
            self._wake()
        if self._warn is not None:
            self._warn(message)

    def msync(self) -> None:
        """Write the mapped pages to the disk (``durable=True``); nothing once shut."""
        with self.lock:
            if not self.closed and isinstance(self._buf, mmap.mmap):
                self._buf.flush()

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Unmap and unlock. Pending blocks must have been moved out before."""
        self.closed = True
        buf = self._buf
        if isinstance(buf, mmap.mmap) and not buf.closed:
            buf.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def abandon(self) -> None:
        """Forget the cache without touching it (in a forked child: it is the parent's)."""
        self.closed = True
        buf = self._buf
        if isinstance(buf, mmap.mmap) and not buf.closed:
            buf.close()  # unmaps only this process's view
        if self.fd >= 0:
            os.close(self.fd)  # the parent's descriptor keeps the lock
            self.fd = -1
        self._sealed = deque()
