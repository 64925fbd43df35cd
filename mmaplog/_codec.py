"""Compression for mmaplog: whole-block frames, and per-record stream flushes.

The flusher compresses a full block at once with :func:`compress_whole`. mmaplog's
caches hold their records uncompressed; :class:`StreamCompressor` (one stream per
block, flushed after every record so the block decodes after any record) is the
stream form that caches and recovered blocks of earlier versions used.
Readers use :class:`StreamDecompressor` and :func:`decompress_whole`; both bound
their output, so a crafted block cannot make the reader allocate without limit.
"""

from __future__ import annotations

import io
import os
import threading
import zlib
from collections.abc import Callable
from typing import Any

import zstandard

from ._format import COMP_NONE, COMP_ZLIB, COMP_ZSTD
from .exceptions import CorruptionError

DEFAULT_LEVELS = {COMP_NONE: 0, COMP_ZLIB: 5, COMP_ZSTD: 1}
"""Levels of a :class:`StreamCompressor` (a per-record stream: fast ones)."""
WHOLE_LEVELS = {COMP_NONE: 0, COMP_ZLIB: 9, COMP_ZSTD: 9}
"""Default levels of the whole-block re-compression on the flusher thread.

zstd's default is tuned for blocks of log lines: level 9 with matches of 5 bytes
or more (level 9 alone takes 4), sized for blocks up to 256 KiB. On the
benchmark's records that is about 3 % smaller than level 9 and 3.5 % smaller
than level 6, at about 135 MB/s on the flusher thread, off the emit path.
"""
_PREPARE_SIZE = 256 * 1024
_TUNED_WHOLE = zstandard.ZstdCompressionParameters.from_level(
    WHOLE_LEVELS[COMP_ZSTD], source_size=_PREPARE_SIZE, min_match=5, write_content_size=1
)

# Input is fed to a decompressor in slices this large, so one call's output is
# bounded (zstd expands at most ~32768:1, deflate ~1032:1).
_FEED = 256


def compress_bound(n: int) -> int:
    """An upper bound on the bytes one flushed record of ``n`` raw bytes can take."""
    return n + (n >> 7) + 64


class StreamCompressor:
    """Compress records one by one into a single stream, flushed after each record."""

    __slots__ = ("_compress", "_flush", "_mode")

    _compress: Callable[[bytes], bytes]
    _flush: Callable[[Any], bytes]

    def __init__(
        self,
        codec: int,
        level: int | None = None,
        *,
        context: zstandard.ZstdCompressor | None = None,
    ) -> None:
        lvl = DEFAULT_LEVELS[codec] if level is None else level
        if codec == COMP_ZSTD:
            # A reused context only resets (a few µs); a new one allocates (~60 µs).
            ctx = context if context is not None else zstandard.ZstdCompressor(level=lvl)
            obj = ctx.compressobj()
            self._compress = obj.compress
            self._flush = obj.flush
            self._mode: Any = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        elif codec == COMP_ZLIB:
            zobj = zlib.compressobj(lvl, zlib.DEFLATED, -15)
            self._compress = zobj.compress
            self._flush = zobj.flush
            self._mode = zlib.Z_SYNC_FLUSH
        else:
            self._compress = bytes
            self._flush = _empty
            self._mode = None

    def chunk(self, raw: bytes) -> bytes:
        """Return the stream bytes that carry ``raw``, complete and decodable."""
        return self._compress(raw) + self._flush(self._mode)

    def steps(self) -> tuple[Callable[[bytes], bytes], Callable[[Any], bytes], Any]:
        """``(compress, flush, mode)``: ``compress(raw) + flush(mode)`` is :meth:`chunk`.

        For a caller that inlines the chunk on its hot path.
        """
        return self._compress, self._flush, self._mode


def _empty(_mode: int | None = None) -> bytes:
    return b""


# Whole-block compression contexts, one per level (None: the tuned default), shared by
# every thread under one lock. A context holds megabytes of tables: one per thread
# that ever moved a block (an application thread calling flush(), say) would keep
# that much alive per thread. Compressing releases the GIL, so the lock costs other
# threads nothing but the wait for a block's compression (about a millisecond).
_whole_lock = threading.Lock()
_whole_contexts: dict[int | None, zstandard.ZstdCompressor] = {}


def _reset_whole_lock() -> None:
    # A fork while another thread compressed would leave the child a lock that is
    # never released.
    global _whole_lock
    _whole_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_whole_lock)


def _whole_context(level: int | None) -> zstandard.ZstdCompressor:
    # Under _whole_lock.
    ctx = _whole_contexts.get(level)
    if ctx is None:
        ctx = _whole_contexts[level] = (
            zstandard.ZstdCompressor(compression_params=_TUNED_WHOLE)
            if level is None
            else zstandard.ZstdCompressor(level=level, write_content_size=True)
        )
    return ctx


def prepare_whole(codec: int, level: int | None = None) -> None:
    """Make the whole-block context now, and its tables (a handler's start), so that
    the first block moved allocates nothing: memory is taken up front, not mid-flight."""
    if codec == COMP_ZSTD:
        with _whole_lock:
            # zstd sizes its tables by the input: a block's worth of zeros makes them
            # full size (about 1 ms, once per process and level).
            _whole_context(level).compress(bytes(_PREPARE_SIZE))


def compress_whole(codec: int, raw: bytes, level: int | None = None) -> bytes:
    """Compress a whole block at once (``level`` None: the default of ``WHOLE_LEVELS``)."""
    if codec == COMP_ZSTD:
        with _whole_lock:
            return _whole_context(level).compress(raw)
    lvl = WHOLE_LEVELS[codec] if level is None else level
    if codec == COMP_ZLIB:
        obj = zlib.compressobj(lvl, zlib.DEFLATED, -15)
        return obj.compress(raw) + obj.flush()
    return raw


def decompress_whole(codec: int, payload: bytes, raw_len: int, *, where: str) -> bytes:
    """Decompress a whole-form payload that must yield exactly ``raw_len`` bytes."""
    try:
        if codec == COMP_ZSTD:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload))
            out = reader.read(raw_len + 1)
        elif codec == COMP_ZLIB:
            out = zlib.decompressobj(-15).decompress(payload, raw_len + 1)
        else:
            out = payload
    except (zstandard.ZstdError, zlib.error) as exc:
        raise CorruptionError(f"{where}: cannot decompress: {exc}") from None
    if len(out) != raw_len:
        raise CorruptionError(
            f"{where}: decompressed to {len(out)}{'+' if len(out) > raw_len else ''} bytes, "
            f"expected {raw_len}"
        )
    return out


class StreamDecompressor:
    """Decompress the chunks of one stream-form block, chunk by chunk, with a bound."""

    __slots__ = ("_codec", "_fed", "_feed_limit", "_limit", "_obj", "_total")

    def __init__(self, codec: int, limit: int, *, per_feed: int | None = None) -> None:
        self._codec = codec
        self._limit = limit
        self._feed_limit = limit if per_feed is None else per_feed
        self._fed = 0
        self._total = 0
        self._obj: zstandard.ZstdDecompressionObj | zlib._Decompress | None
        if codec == COMP_ZSTD:
            self._obj = zstandard.ZstdDecompressor().decompressobj()
        elif codec == COMP_ZLIB:
            self._obj = zlib.decompressobj(-15)
        else:
            self._obj = None

    def feed(self, body: bytes | memoryview, *, where: str) -> bytes:
        """Return the raw bytes carried by the next chunk."""
        self._fed = 0
        if self._obj is None:
            out = bytes(body)
            self._count(len(out), where)
            return out
        parts = []
        try:
            if self._codec == COMP_ZLIB:
                z = self._obj
                assert isinstance(z, type(zlib.decompressobj()))
                data = bytes(body)
                while data:
                    room = min(self._limit - self._total, self._feed_limit - self._fed)
                    part = z.decompress(data, room + 1)
                    self._count(len(part), where)
                    parts.append(part)
                    data = z.unconsumed_tail
            else:
                zs = self._obj
                view = memoryview(body)
                for i in range(0, len(view), _FEED):
                    part = zs.decompress(view[i : i + _FEED])
                    self._count(len(part), where)
                    parts.append(part)
        except (zstandard.ZstdError, zlib.error) as exc:
            raise CorruptionError(f"{where}: cannot decompress: {exc}") from None
        return b"".join(parts)

    def _count(self, n: int, where: str) -> None:
        self._total += n
        self._fed += n
        if self._total > self._limit or self._fed > self._feed_limit:
            raise CorruptionError(
                f"{where}: decompresses past the limit of "
                f"{min(self._limit, self._feed_limit)} bytes"
            )
