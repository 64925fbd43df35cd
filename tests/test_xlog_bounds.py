"""format="xlog" blocks stay within what xlog itself writes, on every path that makes one.

Tencent's Python decoders (``decode_mars_nocrypt_log_file.py``,
``decode_mars_crypt_log_file.py``) read a zstd block with
``read_from(reader, 100000, 1000000)``: a payload over 100,000 bytes overruns their
reader and a block decoding to more than 1,000,000 bytes is cut. xlog never writes
such blocks (a 150 KiB buffer moved at a third, lines cut at 16 KiB less 130 bytes).
The paths that make an xlog block: the flusher's move of a cache block, recovery of a
cache block, a direct block (sync mode, a line no slot can take, a line after close),
and the drop note (in a cache block, or direct at close).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import zstandard

import mmaplog
from mmaplog import _cache
from mmaplog import _format as fmt
from mmaplog import _xlog as xlog
from mmaplog._blocks import BlockSession, build_xlog_block
from mmaplog.recover import recover_image

PRIVATE, PUBLIC = xlog.generate_xlog_keypair()
KEY = xlog.load_xlog_private_key(PRIVATE)
CRYPT = pytest.mark.parametrize("crypt", [False, True], ids=["nocrypt", "crypt"])
COMPRESSION = pytest.mark.parametrize("compression", ["zlib", "zstd"])

LONG = "é" + "x" * 199_999  # 200,000 characters, 200,001 bytes
SAME = "the same words over and over " * 70  # about 2 KB that compresses 100 to 1


class _TencentReader:
    """The reader Tencent's decoders give ``read_from``: the whole payload on each read."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def read(self, size: int) -> bytes:
        return self.payload


def _tencent_zstd(payload: bytes) -> bytes:
    # decode_mars_*_log_file.py: next(decompressor.read_from(reader, 100000, 1000000)).
    # Only called on payloads within 100,000 bytes: a longer one corrupts the heap.
    assert len(payload) <= 100_000
    return next(zstandard.ZstdDecompressor().read_to_iter(_TencentReader(payload), 100000, 1000000))


def xlog_blocks(data: bytes) -> list[xlog.XlogBlock]:
    damage: list[xlog.XlogDamage] = []
    blocks = list(xlog.iter_blocks(data, damage.append))
    assert damage == []
    return blocks


def assert_within_bounds(data: bytes) -> list[str]:
    """Check every block of an .xlog image against xlog's own bounds; return its lines."""
    lines: list[str] = []
    blocks = xlog_blocks(data)
    assert blocks
    for b in blocks:
        text = xlog.decode_block(b, KEY).encode()
        assert b.length <= xlog.XLOG_MAX_PAYLOAD
        assert len(text) <= xlog.XLOG_MAX_DECODED
        if b.seq == 0 or b.magic in (xlog.MAGIC_SYNC_ZSTD, xlog.MAGIC_SYNC_NO_CRYPT_ZSTD):
            assert len(text) <= xlog.XLOG_MAX_LINE + 1  # a sync block holds one line
        else:
            # Within half of xlog's buffer, compressed or not.
            assert b.length <= xlog.XLOG_BUFFER // 2
            assert len(text) <= xlog.XLOG_BUFFER // 2
        if b.magic in (xlog.MAGIC_ASYNC_ZSTD, xlog.MAGIC_ASYNC_NO_CRYPT_ZSTD):
            payload = b.payload
            if b.encrypted:
                payload = xlog.tea_decrypt(payload, KEY.tea_key(b.client_pubkey))
            assert _tencent_zstd(payload) == text  # whole: nothing cut
        lines.extend(text.decode().split("\n")[:-1])
    return lines


def read_xlogs(folder: str) -> bytes:
    out = b""
    for name in sorted(os.listdir(folder)):
        if name.endswith(".xlog"):
            with open(os.path.join(folder, name), "rb") as f:
                out += f.read()
    return out


def handler(log_dir: str, **kwargs: object) -> mmaplog.MmapHandler:
    h = mmaplog.MmapHandler(log_dir, "app", format="xlog", **kwargs)  # type: ignore[arg-type]
    h.setFormatter(logging.Formatter("%(message)s"))
    return h


def log(h: logging.Handler, text: str) -> None:
    h.handle(logging.LogRecord("w", logging.INFO, "w.py", 1, text, None, None))


def messages(n_same: int = 1500, n_random: int = 1500) -> Iterator[str]:
    """Lines that compress very well, then lines that hardly compress (bounded counts)."""
    for i in range(n_same):
        yield f"{i} {SAME}"
    for i in range(n_random):
        yield f"{i} " + os.urandom(60).hex()


def assert_cut(line: str) -> None:
    """The 200,000-character line, cut where xlog cuts it and marked as cut."""
    assert line.startswith("éxxx") and line.endswith(" [truncated: 200001 bytes]")
    assert len(line.encode()) == xlog.XLOG_MAX_LINE == 16 * 1024 - 130


# -- the flusher's moves of cache blocks -------------------------------------------------------


@COMPRESSION
@CRYPT
def test_cache_blocks_stay_within_xlogs_bounds_whatever_buffer_size(log_dir, compression, crypt):
    """A 200,000-character line and thousands of lines with a 1 MiB buffer_size give blocks
    of at most half of xlog's 150 KiB buffer, compressed and decoded, all readable whole."""
    h = handler(
        log_dir,
        compression=compression,
        buffer_size=1024 * 1024,
        xlog_public_key=PUBLIC if crypt else None,
    )
    expected = list(messages())
    log(h, LONG)
    for m in expected:
        log(h, m)
    h.close()
    lines = assert_within_bounds(read_xlogs(log_dir))
    assert_cut(lines[0])
    assert lines[1:] == expected
    assert len(xlog_blocks(read_xlogs(log_dir))) > 10  # sealed on the lines' own size


def test_a_block_is_moved_at_a_third_of_the_buffer_counted_uncompressed(log_dir):
    """Lines that compress 100 to 1 are moved at about 50 KiB of text, as xlog moves its buffer
    (a third of 150 KiB), not when their compressed bytes reach it."""
    h = handler(log_dir, compression="zstd")
    for i in range(600):  # 1.2 MB of text, a few KB compressed
        log(h, f"{i} {SAME}")
    h.close()
    blocks = xlog_blocks(read_xlogs(log_dir))
    sizes = [len(xlog.decode_block(b).encode()) for b in blocks]
    assert len(blocks) >= 10
    # At a third, or past it while the other slot was still being moved, up to half.
    assert all(xlog.XLOG_BUFFER // 3 <= size <= xlog.XLOG_BUFFER // 2 for size in sizes[:-1])


# -- the cache filled while no slot is free, recovery, and the drop note ----------------------


def xlog_cache(folder: str, crypt: bool, buffer_size: int = 1024 * 1024) -> _cache.Cache:
    writer = xlog.XlogBlockWriter("async", "zstd", PUBLIC if crypt else None)
    path = os.path.join(folder, "app.mmap")
    fd = _cache.open_locked(path, 0o600, create=True)
    assert fd is not None
    return _cache.Cache(
        path,
        fd,
        buffer_size=buffer_size,
        log_dir=folder,
        prefix="app",
        blocks=BlockSession(codec=fmt.COMP_ZSTD, xlog=writer),
        wake=lambda: None,
    )


@CRYPT
def test_a_block_filled_while_no_slot_is_free_stays_within_bounds(tmp_path, crypt):
    """With both slots waiting for the disk, the open block keeps taking lines only up to
    half of xlog's buffer; its move, its recovery and the drop note after it stay in bounds."""
    folder = str(tmp_path)
    cache = xlog_cache(folder, crypt)
    line = f"{SAME}\n".encode()
    status, n = _cache.APPENDED, 0
    while status == _cache.APPENDED:
        assert n < 10_000  # bounded: the cache must refuse long before
        status = cache.append(b"", line, 1_000_000 * (1_800_000_000 + n), 0.0)
        n += 1
    assert status == _cache.DROPPED
    assert n - 1 <= xlog.XLOG_BUFFER // len(line)  # both blocks, uncompressed, within the buffer
    # Recovery of the image as a crash would leave it: both blocks, built without a key.
    with open(cache.path, "rb") as f:
        image = f.read()
    report = recover_image(image, cache.path)
    assert report.records == n - 1
    assert_within_bounds(read_xlogs(folder))
    # The flusher's move of the first block, then the drop note opening the next block.
    first = cache.take_sealed()
    assert first is not None
    data = build_xlog_block(first.template, first.raw, first.last_time_us)
    assert data in read_xlogs(folder)  # the bytes recovery built for it
    cache.release(first)
    assert cache.append(b"", line, 1_000_000 * 1_900_000_000, 0.0) == _cache.APPENDED
    cache.shut()
    blocks = [b for b in iter(cache.take_sealed, None)]
    opened = blocks[-1]
    note = build_xlog_block(opened.template, opened.raw, opened.last_time_us)
    lines = assert_within_bounds(note)
    assert "record dropped" in lines[0] and lines[1] == SAME
    for b in blocks:
        cache.release(b)
    cache.close()


# -- direct blocks: sync mode, a line no slot takes, lines after close, the note at close -----


@COMPRESSION
@CRYPT
def test_sync_blocks_hold_one_cut_line(log_dir, compression, crypt):
    """In sync mode the 200,000-character line is one sync block, cut and marked."""
    h = handler(
        log_dir, compression=compression, mode="sync", xlog_public_key=PUBLIC if crypt else None
    )
    log(h, LONG)
    log(h, "after")
    h.close()
    lines = assert_within_bounds(read_xlogs(log_dir))
    assert_cut(lines[0])
    assert lines[1:] == ["after"]


@CRYPT
def test_direct_async_blocks_stay_within_bounds(log_dir, crypt):
    """A line no 16 KiB cache slot can take, and lines after close(), are blocks of their own."""
    h = handler(
        log_dir,
        compression="zstd",
        buffer_size=16 * 1024,
        xlog_public_key=PUBLIC if crypt else None,
    )
    big = os.urandom(8000).hex()  # 16,000 bytes that do not compress: no slot takes them
    log(h, "before")
    log(h, big)
    log(h, LONG)
    h.close()
    log(h, "after close")
    lines = assert_within_bounds(read_xlogs(log_dir))
    assert lines[:2] == ["before", big]
    assert_cut(lines[2])
    assert lines[3:] == ["after close"]


def test_constants_are_xlogs_and_tencents():
    """The bounds are the numbers of Tencent's sources, and half the buffer fits them."""
    assert xlog.XLOG_BUFFER == 150 * 1024  # appender.cc kBufferBlockLength
    assert xlog.XLOG_MAX_LINE == 16 * 1024 - 130  # appender.cc temp[16 * 1024], formater.cc
    assert xlog.XLOG_BUFFER // 2 <= xlog.XLOG_MAX_PAYLOAD <= xlog.XLOG_MAX_DECODED
