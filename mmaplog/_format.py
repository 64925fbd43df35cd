"""The mmaplog byte formats: records, chunks, blocks and the cache image.

Pure functions over bytes: nothing here opens a file, maps memory or reads the
clock. ``docs/format.md`` is the normative description; ``tests/test_format.py``
checks these constants against it.

Layers, innermost first::

    record   <I q B B H Q> text_len, time_us, level, kind, name_len, thread
             + logger name + UTF-8 text               (version 1: <I q B B> + text)
    chunk    <I I>     body_len, crc32(body, seed) + body        (stream form only)
    block    64-byte header [+ extension] + payload
    cache    4096-byte cache header + N slots, each: commit area + block header + chunks

A block's payload is either in *stream form* (a sequence of chunks, one per
record, as written into the cache: mmaplog writes them uncompressed; caches of
earlier versions hold the per-record flushes of one compressor stream) or in
*whole form* (all records of the block compressed at once, as the flusher
writes them into the log file). A whole-form block with ``FLAG_COLUMNS`` holds
its records as columns (times, lengths, levels, kinds, then the texts), which
compresses better than records back to back.

Version 2 (what this module writes) added the logger name and thread to every
record, and the recipient key's fingerprint to encrypted blocks; version 1 is
still read (:data:`READ_VERSIONS`): a block's version says how its records are
laid out.
"""

from __future__ import annotations

import operator
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import TYPE_CHECKING, NamedTuple

from .exceptions import CorruptionError, UnsupportedVersionError

if TYPE_CHECKING:
    import mmap

    Buffer = bytes | mmap.mmap
    View = bytes | mmap.mmap | memoryview

__all__ = [
    "BLOCK_HEADER",
    "BLOCK_MAGIC",
    "CACHE_HEADER",
    "CACHE_HEADER_SIZE",
    "CACHE_MAGIC",
    "CHUNK_HEADER",
    "COMMIT",
    "FORMAT_VERSION",
    "READ_VERSIONS",
    "RECORD_HEADER",
    "RECORD_HEADER_V1",
    "BlockHeader",
    "CacheInfo",
    "Damage",
    "RawRecord",
    "ScannedBlock",
]

# -- limits: every length read from disk is checked against these before use --
MAX_RECORD_TEXT = 16 * 1024 * 1024
"""Largest text a record may carry; the handler truncates longer ones with a marker."""
MAX_BLOCK_PAYLOAD = 64 * 1024 * 1024
"""Largest payload a block may have on disk."""
MAX_BLOCK_RAW = 80 * 1024 * 1024
"""Largest decompressed size of one block (bounds the decoder's memory)."""
MAX_HEADER_EXTENSION = 256
MAX_LOGGER_NAME = 1024
"""Longest logger name a record may carry (bytes); writers cut longer ones."""

FORMAT_VERSION = 2
"""The version of everything this mmaplog writes (block and cache headers)."""
READ_VERSIONS = frozenset({1, 2})
"""The versions this mmaplog reads."""
_READ_TEXT = "versions 1 and 2"

# -- record (version 2) -----------------------------------------------------------
#   0  u32 text_len   4  i64 time (µs since the epoch)   12 u8 level   13 u8 kind
#  14  u16 name_len  16  u64 thread                      24 logger name (name_len bytes)
#  24 + name_len     text (text_len bytes)
# A record's *head* is everything before its text: the 24 fixed bytes and the name.
RECORD_HEADER = struct.Struct("<IqBBHQ")
# -- record (version 1) -----------------------------------------------------------
#   0  u32 text_len   4  i64 time (µs since the epoch)   12 u8 level   13 u8 kind
#  14  text (text_len bytes)
RECORD_HEADER_V1 = struct.Struct("<IqBB")
KIND_TEXT = 0
"""A rendered log line."""
KIND_JSON = 1
"""A JSON object rendered by a structured logger."""
KIND_NOTE = 2
"""A line written by mmaplog itself (for example a count of dropped records)."""
_KINDS = frozenset((KIND_TEXT, KIND_JSON, KIND_NOTE))

# -- chunk (stream form) --------------------------------------------------------
#   0  u32 body_len   4  u32 crc32(body, seed)   8  body
CHUNK_HEADER = struct.Struct("<II")

# -- block header ---------------------------------------------------------------
#    0 4s magic "MMLB"     4 u8  version      5 u8  flags      6 u16 header_len
#    8 8s session id      16 u64 seq         24 u32 pid        28 u32 payload_len
#   32 i64 first_time µs  40 i64 last_time µs
#   48 u32 count          52 u32 raw_len     56 u32 payload_crc 60 u32 header_crc
#   64 extension (header_len - 64 bytes), when encrypted: the ephemeral public key
#      (32 bytes), then (version 2) the recipient key's fingerprint (8 bytes)
# header_crc = crc32(bytes 0..60 + extension)
BLOCK_MAGIC = b"MMLB"
BLOCK_HEADER = struct.Struct("<4sBBH8sQIIqqIIII")
BLOCK_HEADER_SIZE = BLOCK_HEADER.size
assert BLOCK_HEADER_SIZE == 64

COMP_NONE = 0
COMP_ZLIB = 1
COMP_ZSTD = 2
FLAG_COMPRESSION_MASK = 0x03
FLAG_ENCRYPTED = 0x04
FLAG_STREAM = 0x08
FLAG_RECOVERED = 0x10
FLAG_XLOG = 0x20
"""Cache templates only (with FLAG_STREAM): the chunks hold a Mars xlog payload, not records."""
FLAG_COLUMNS = 0x40
"""Whole form only: the raw bytes are the records' columns (:func:`encode_columns`)."""
_FLAGS_KNOWN = (
    FLAG_COMPRESSION_MASK | FLAG_ENCRYPTED | FLAG_STREAM | FLAG_RECOVERED | FLAG_XLOG | FLAG_COLUMNS
)
_AAD_FLAGS = FLAG_COMPRESSION_MASK | FLAG_ENCRYPTED | FLAG_STREAM | FLAG_COLUMNS
EPHEMERAL_KEY_SIZE = 32
KEY_FINGERPRINT_SIZE = 8
ENCRYPTION_EXTENSION = EPHEMERAL_KEY_SIZE + KEY_FINGERPRINT_SIZE
"""Version 2: the writer's ephemeral X25519 public key, then the recipient key's fingerprint."""
ENCRYPTION_EXTENSION_V1 = EPHEMERAL_KEY_SIZE
"""Version 1: the ephemeral public key alone."""
XLOG_EXTENSION = 64
"""FLAG_XLOG with FLAG_ENCRYPTED: the extension is xlog's 64-byte client public key."""

WHOLE_BLOCK_INDEX = 0xFFFFFFFF
"""The chunk index under which a whole-form payload is sealed (chunks use 0, 1, ...)."""

COMPRESSION_NAMES = {COMP_NONE: None, COMP_ZLIB: "zlib", COMP_ZSTD: "zstd"}
COMPRESSION_CODES = {v: k for k, v in COMPRESSION_NAMES.items()}

# -- cache image ------------------------------------------------------------------
#    0 4s magic "MMLC"   4 u8 version    5 u8 nslots     6 u16 reserved
#    8 u32 header_size  12 u32 slot_size 16 i64 created µs 24 u32 pid
#   28 u16 log_dir_len  30 u16 prefix_len 32 u32 crc32(bytes 0..32 + strings)
#   36 log_dir (UTF-8) + prefix (UTF-8); the rest of the page is zero
# slot i starts at header_size + i * slot_size:
#    0 COMMIT <I I q> payload_len, count, last_time µs   (the commit store)
#   16 block header template (dynamic fields zero) + chunks
CACHE_MAGIC = b"MMLC"
CACHE_HEADER = struct.Struct("<4sBBHIIqIHHI")
CACHE_HEADER_SIZE = 4096
COMMIT = struct.Struct("<IIq")
SLOT_BLOCK_OFFSET = 16
MAX_CACHE_STRINGS = CACHE_HEADER_SIZE - CACHE_HEADER.size
MAX_SLOTS = 8


class RawRecord(NamedTuple):
    """One record as stored: time in µs since the epoch, level, kind, text bytes, and
    (version 2) the logger name's bytes and the thread id; ``b""`` and 0 when not stored.

    A named tuple rather than a dataclass: readers make one per record, and a tuple
    is several times cheaper to build.
    """

    time_us: int
    level: int
    kind: int
    text: bytes
    name: bytes = b""
    thread: int = 0


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """The fields of a block header."""

    flags: int
    session: bytes
    seq: int
    pid: int
    payload_len: int
    first_time_us: int
    last_time_us: int
    count: int
    raw_len: int
    payload_crc: int
    extension: bytes = b""
    version: int = FORMAT_VERSION

    @property
    def header_len(self) -> int:
        return BLOCK_HEADER_SIZE + len(self.extension)

    @property
    def compression(self) -> int:
        return self.flags & FLAG_COMPRESSION_MASK

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)

    @property
    def stream(self) -> bool:
        return bool(self.flags & FLAG_STREAM)

    @property
    def recovered(self) -> bool:
        return bool(self.flags & FLAG_RECOVERED)

    @property
    def ephemeral_key(self) -> bytes:
        """The writer session's ephemeral X25519 public key (encrypted mmaplog blocks)."""
        if self.flags & FLAG_XLOG:
            return b""
        return self.extension[:EPHEMERAL_KEY_SIZE]

    @property
    def key_fingerprint(self) -> bytes:
        """The fingerprint of the public key the block was encrypted to (version 2), or b""."""
        if self.flags & FLAG_XLOG:
            return b""
        return self.extension[EPHEMERAL_KEY_SIZE:]


@dataclass(frozen=True, slots=True)
class Damage:
    """A byte range ``[start, end)`` of an input that could not be read, and why."""

    start: int
    end: int
    reason: str


@dataclass(frozen=True, slots=True)
class ScannedBlock:
    """A block found in a log file whose header and payload checksums hold."""

    offset: int
    header: BlockHeader
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + self.header.header_len + self.header.payload_len


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """The header of a cache file."""

    version: int
    nslots: int
    header_size: int
    slot_size: int
    created_us: int
    pid: int
    log_dir: str
    prefix: str


# -- records -----------------------------------------------------------------------


def record_head(
    time_us: int, level: int, kind: int, text: bytes, name: bytes = b"", thread: int = 0
) -> bytes:
    """Return the head of one record: everything before its text (header and logger name).

    ``name`` is the logger name's UTF-8 bytes (at most :data:`MAX_LOGGER_NAME`),
    ``thread`` the writing thread's id (0: unknown). Raises ``ValueError`` for a
    longer name (readers would take the record for damage) and ``struct.error`` for
    values that do not fit their fields.
    """
    if len(name) > MAX_LOGGER_NAME:
        raise ValueError(f"logger name of {len(name)} bytes, at most {MAX_LOGGER_NAME}")
    return RECORD_HEADER.pack(len(text), time_us, level & 0xFF, kind, len(name), thread) + name


def encode_record(
    time_us: int, level: int, kind: int, text: bytes, name: bytes = b"", thread: int = 0
) -> bytes:
    """Return the stored form of one record (its head, then its text)."""
    return record_head(time_us, level, kind, text, name, thread) + text


def iter_records(
    raw: bytes | memoryview, *, where: str = "records", version: int = FORMAT_VERSION
) -> Iterator[RawRecord]:
    """Yield the records packed in ``raw``, laid out as format ``version`` lays them out.

    Raises :class:`CorruptionError` at the first record whose framing is wrong; the
    records before it have been yielded.
    """
    view = raw if isinstance(raw, bytes) else bytes(raw)
    if version == 1:
        yield from _iter_records_v1(view, where)
        return
    size = len(view)
    pos = 0
    hsize = RECORD_HEADER.size
    unpack = RECORD_HEADER.unpack_from
    kinds = _KINDS
    new = tuple.__new__
    while pos < size:
        if size - pos < hsize:
            raise CorruptionError(
                f"{where}: record at offset {pos}: {size - pos} bytes left, "
                f"a record header needs {hsize}",
                pos,
            )
        text_len, time_us, level, kind, name_len, thread = unpack(view, pos)
        if kind not in kinds:
            raise CorruptionError(f"{where}: record at offset {pos}: unknown kind {kind}", pos)
        if name_len > MAX_LOGGER_NAME:
            raise CorruptionError(
                f"{where}: record at offset {pos}: logger name length {name_len} over the "
                f"limit ({MAX_LOGGER_NAME})",
                pos,
            )
        name_end = pos + hsize + name_len
        end = name_end + text_len
        if text_len > MAX_RECORD_TEXT or end > size:
            raise CorruptionError(
                f"{where}: record at offset {pos}: name and text lengths {name_len} + "
                f"{text_len} run past the end ({size - pos - hsize} bytes left)",
                pos,
            )
        # tuple.__new__ skips the named tuple's Python-level __new__: this runs per record.
        yield new(
            RawRecord,
            (time_us, level, kind, view[name_end:end], view[pos + hsize : name_end], thread),
        )
        pos = end


def _iter_records_v1(view: bytes, where: str) -> Iterator[RawRecord]:
    size = len(view)
    pos = 0
    hsize = RECORD_HEADER_V1.size
    unpack = RECORD_HEADER_V1.unpack_from
    kinds = _KINDS
    new = tuple.__new__
    while pos < size:
        if size - pos < hsize:
            raise CorruptionError(
                f"{where}: record at offset {pos}: {size - pos} bytes left, "
                f"a record header needs {hsize}",
                pos,
            )
        text_len, time_us, level, kind = unpack(view, pos)
        if kind not in kinds:
            raise CorruptionError(f"{where}: record at offset {pos}: unknown kind {kind}", pos)
        end = pos + hsize + text_len
        if text_len > MAX_RECORD_TEXT or end > size:
            raise CorruptionError(
                f"{where}: record at offset {pos}: text length {text_len} runs past "
                f"the end ({size - pos - hsize} bytes left)",
                pos,
            )
        yield new(RawRecord, (time_us, level, kind, view[pos + hsize : end], b"", 0))
        pos = end


# -- columns (whole form with FLAG_COLUMNS) -------------------------------------------
# Version 2, for n records:
#   n x i64 time steps, as 8 byte planes   (the first step is from 0)
#   n x u32 text lengths, as 4 byte planes
#   n x u8 levels, n x u8 kinds
#   n x u16 logger name lengths, as 2 byte planes
#   n x u64 thread ids, as 8 byte planes
#   the logger names back to back, then the texts back to back
# Version 1 had the first four columns, then the texts.
# Byte plane k of n little-endian w-byte integers is byte k of each, in order: the
# high planes of small steps and short lengths are runs of zeros, and a thread's id
# repeats, so they compress to almost nothing. The column form has exactly the size
# of the records back to back.
_COLUMN_FIXED = RECORD_HEADER.size
_COLUMN_FIXED_V1 = RECORD_HEADER_V1.size
_BIG_ENDIAN = sys.byteorder == "big"


def _planes(packed: bytes | bytearray, stride: int, first: int, width: int) -> bytes:
    """Byte planes ``first .. first + width - 1`` of items ``stride`` bytes long."""
    return b"".join([packed[first + k :: stride] for k in range(width)])


def _from_planes(planes: bytes | memoryview, n: int, width: int) -> bytearray:
    out = bytearray(n * width)
    for k in range(width):
        out[k::width] = planes[k * n : (k + 1) * n]
    return out


def _head_len(record: bytes | bytearray, pos: int = 0) -> int:
    """The length of the record head (header and logger name) starting at ``pos``."""
    return RECORD_HEADER.size + (record[pos + 14] | record[pos + 15] << 8)


def split_records(records: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    """``(heads, texts)`` of encoded records: their heads (header and logger name) back
    to back, and their texts."""
    cuts = [_head_len(r) if len(r) >= 16 else len(r) for r in records]
    return b"".join([r[:c] for r, c in zip(records, cuts, strict=True)]), [
        r[c:] for r, c in zip(records, cuts, strict=True)
    ]


def _split_heads(heads: bytes | bytearray, n: int) -> tuple[bytes | bytearray, int, bytes]:
    """``(fixed, stride, names)`` of ``n`` record heads back to back: the fixed header
    of record ``i`` is ``fixed[i * stride : i * stride + 24]``, and ``names`` are the
    logger names back to back.

    When every head has a name of the same length (a block of one logger, as a rule)
    ``fixed`` is ``heads`` itself and the columns are taken by stride; otherwise the
    heads are walked once. Raises ``ValueError`` when ``heads`` are not ``n`` heads.
    """
    hsize = RECORD_HEADER.size
    size = len(heads)
    if n == 0 or size < hsize:
        if size or n:
            raise ValueError(
                f"records: {n} records need at least {hsize * n} header bytes, got {size}"
            )
        return heads, hsize, b""
    name_len = heads[14] | heads[15] << 8
    stride = hsize + name_len
    # Every record's own name_len field is checked, in order: the stride is exact.
    if (
        size == stride * n
        and heads[14::stride].count(heads[14]) == n
        and heads[15::stride].count(heads[15]) == n
    ):
        names = _from_planes(_planes(heads, stride, hsize, name_len), n, name_len)
        return heads, stride, bytes(names)
    # Names of several lengths: one pass over the heads (about 0.2 µs a record).
    data = bytes(heads)
    fixed: list[bytes] = []
    parts: list[bytes] = []
    add_fixed, add_name = fixed.append, parts.append
    pos = 0
    for _ in range(n):
        at = pos + hsize
        if at > size:
            break
        end = at + (data[pos + 14] | data[pos + 15] << 8)
        add_fixed(data[pos:at])
        add_name(data[at:end])
        pos = end
    if pos != size or len(fixed) != n:
        raise ValueError(f"records: the {size} header bytes are not the heads of {n} records")
    return b"".join(fixed), hsize, b"".join(parts)


def join_records(heads: bytes | bytearray, texts: Sequence[bytes]) -> bytes:
    """The records of ``heads`` and ``texts`` back to back (the raw bytes of a block).

    Raises ``ValueError`` when ``heads`` are not the heads of ``len(texts)`` records.
    """
    out = []
    pos = 0
    size = len(heads)
    for t in texts:
        end = pos + _head_len(heads, pos) if size - pos >= RECORD_HEADER.size else size + 1
        if end > size:
            raise ValueError(f"records: the {size} header bytes are not the heads of the texts")
        out.append(heads[pos:end])
        out.append(t)
        pos = end
    if pos != size:
        raise ValueError(f"records: {size - pos} header bytes left after the last text")
    return b"".join(out)


def encode_columns(heads: bytes | bytearray, texts: Sequence[bytes]) -> bytes | None:
    """Return the column form of the records whose heads are ``heads`` (back to back)
    and whose texts are ``texts``.

    None when a time step between two records does not fit an i64 (times far
    apart at both ends of the range): such records stay back to back. Built from
    slices of whole columns: the flusher runs this for every block while the
    application logs, and makes no object per record but the time steps (and, when
    the block's logger names differ in length, one pass over the heads).
    Raises ``ValueError`` when the heads do not describe the texts.
    """
    n = len(texts)
    buf, stride, names = _split_heads(heads, n)
    # Arrays, not tuples of ints: each int lives only while it is converted.
    times = _array("q", _from_planes(_planes(buf, stride, 4, 8), n, 8))
    try:
        steps = array("q", map(operator.sub, times, _array("q", bytes(8)) + times[:-1]))
    except OverflowError:
        return None
    lengths = _planes(buf, stride, 0, 4)
    if _array("I", _from_planes(lengths, n, 4)) != array("I", map(len, texts)):
        raise ValueError("records: the text lengths in the headers do not match the texts")
    if _BIG_ENDIAN:
        steps.byteswap()
    # One join for the whole column form: a block's texts are copied once.
    return b"".join(
        [
            _planes(steps.tobytes(), 8, 0, 8),
            lengths,
            buf[12::stride],
            buf[13::stride],
            _planes(buf, stride, 14, 2),
            _planes(buf, stride, 16, 8),
            names,
            *texts,
        ]
    )


def _array(typecode: str, little_endian: bytes | bytearray) -> array[int]:
    """An array of the little-endian integers in ``little_endian``."""
    out = array(typecode, little_endian)
    if _BIG_ENDIAN:
        out.byteswap()
    return out


class Columns(NamedTuple):
    """The records of a column-form block, still as columns (see :func:`split_columns`)."""

    times_us: list[int]
    levels: bytes
    kinds: bytes
    starts: list[int]
    """Where each record's text starts in ``texts``; it ends where the next one starts."""
    texts: bytes
    """All texts back to back; ``starts`` has one more entry, ``len(texts)``."""
    threads: Sequence[int] = ()
    """Version 2: each record's thread id (empty for version 1)."""
    name_starts: Sequence[int] = ()
    """Version 2: where each record's logger name starts in ``names`` (one more entry)."""
    names: bytes = b""
    """Version 2: the logger names back to back."""


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def split_columns(
    data: bytes, count: int, *, where: str = "records", version: int = FORMAT_VERSION
) -> Columns:
    """Return the ``count`` records held in column form in ``data``, as columns, laid
    out as format ``version`` lays them out.

    Raises :class:`CorruptionError` when the columns do not fit ``data`` exactly or
    a record is invalid (unknown kind, a text or logger name over the limit).
    """
    n = count
    fixed = n * (_COLUMN_FIXED_V1 if version == 1 else _COLUMN_FIXED)
    if fixed > len(data):
        raise CorruptionError(
            f"{where}: {count} records need {fixed} bytes of columns, {len(data)} there", 0
        )
    view = memoryview(data)
    steps = struct.unpack(f"<{n}q", _from_planes(view[: 8 * n], n, 8))
    lengths = struct.unpack(f"<{n}I", _from_planes(view[8 * n : 12 * n], n, 4))
    levels = data[12 * n : 13 * n]
    kinds = data[13 * n : 14 * n]
    if not set(kinds) <= _KINDS:
        bad = next(i for i, k in enumerate(kinds) if k not in _KINDS)
        raise CorruptionError(f"{where}: record {bad}: unknown kind {kinds[bad]}", fixed)
    names_len = 0
    name_lens: tuple[int, ...] = ()
    threads: tuple[int, ...] = ()
    if version != 1:
        name_lens = struct.unpack(f"<{n}H", _from_planes(view[14 * n : 16 * n], n, 2))
        threads = struct.unpack(f"<{n}Q", _from_planes(view[16 * n : 24 * n], n, 8))
        if n and max(name_lens) > MAX_LOGGER_NAME:
            bad = next(i for i, k in enumerate(name_lens) if k > MAX_LOGGER_NAME)
            raise CorruptionError(
                f"{where}: record {bad}: logger name length {name_lens[bad]} over the limit "
                f"({MAX_LOGGER_NAME})",
                fixed,
            )
        names_len = sum(name_lens)
    if names_len + sum(lengths) != len(data) - fixed or (n and max(lengths) > MAX_RECORD_TEXT):
        what = "the name and text lengths" if version != 1 else "the text lengths"
        raise CorruptionError(
            f"{where}: {what} add up to {names_len + sum(lengths)} bytes, "
            f"{len(data) - fixed} there",
            fixed,
        )
    times = list(accumulate(steps))
    if n and (max(times) > _I64_MAX or min(times) < _I64_MIN):
        bad = next(i for i, t in enumerate(times) if not _I64_MIN <= t <= _I64_MAX)
        raise CorruptionError(
            f"{where}: record {bad}: time {times[bad]} µs is outside a 64-bit count", 0
        )
    texts_at = fixed + names_len
    return Columns(
        times,
        levels,
        kinds,
        list(accumulate(lengths, initial=0)),
        data[texts_at:],
        threads,
        list(accumulate(name_lens, initial=0)) if version != 1 else (),
        data[fixed:texts_at],
    )


def decode_columns(
    data: bytes, count: int, *, where: str = "records", version: int = FORMAT_VERSION
) -> list[RawRecord]:
    """Return the ``count`` records held in column form in ``data``, one by one.

    Raises :class:`CorruptionError` as :func:`split_columns` does.
    """
    c = split_columns(data, count, where=where, version=version)
    texts, starts = c.texts, c.starts
    if version == 1:
        return [
            RawRecord(t, level, kind, texts[a:b])
            for t, level, kind, a, b in zip(
                c.times_us, c.levels, c.kinds, starts, starts[1:], strict=False
            )
        ]
    names, at = c.names, c.name_starts
    return [
        RawRecord(t, level, kind, texts[a:b], names[na:nb], thread)
        for t, level, kind, a, b, na, nb, thread in zip(
            c.times_us, c.levels, c.kinds, starts, starts[1:], at, at[1:], c.threads, strict=False
        )
    ]


# -- chunks ------------------------------------------------------------------------


def chunk_seed(session: bytes, seq: int) -> int:
    """The CRC seed binding a block's chunks to that block (stale chunks fail it)."""
    return zlib.crc32(session + seq.to_bytes(8, "little"))


def block_aad(session: bytes, seq: int, flags: int, key_fingerprint: bytes = b"") -> bytes:
    """The associated data sealed with a block's encrypted chunks or payload.

    It binds them to their session, sequence number and form, so nothing can be
    spliced between blocks; the recovered flag is left out since recovery sets it.
    ``key_fingerprint`` is the header's recipient key fingerprint (version 2; empty
    in version 1), so that header field is authenticated too.
    """
    return session + seq.to_bytes(8, "little") + bytes([flags & _AAD_FLAGS]) + key_fingerprint


def encode_chunk(body: bytes, seed: int) -> bytes:
    """Return ``body`` framed as a chunk."""
    return CHUNK_HEADER.pack(len(body), zlib.crc32(body, seed)) + body


def walk_chunks(payload: bytes | memoryview, seed: int) -> tuple[list[memoryview], int]:
    """Return the valid chunk bodies at the start of ``payload`` and where they end.

    The walk stops at the first chunk that is zero, runs past the end, or fails its
    checksum: in a cache that is the torn or unwritten tail.
    """
    view = memoryview(payload)
    size = len(view)
    pos = 0
    bodies: list[memoryview] = []
    hsize = CHUNK_HEADER.size
    unpack = CHUNK_HEADER.unpack_from
    crc32 = zlib.crc32
    while size - pos >= hsize:
        body_len, crc = unpack(view, pos)
        end = pos + hsize + body_len
        if body_len == 0 or end > size:
            break
        body = view[pos + hsize : end]
        if crc32(body, seed) != crc:
            break
        bodies.append(body)
        pos = end
    return bodies, pos


# -- block headers -------------------------------------------------------------------


def _header_crc(fixed: bytes | memoryview, extension: bytes | memoryview) -> int:
    return zlib.crc32(extension, zlib.crc32(fixed[:60]))


def pack_header(h: BlockHeader) -> bytes:
    """Return the bytes of a block header, checksum included."""
    fixed = BLOCK_HEADER.pack(
        BLOCK_MAGIC,
        h.version,
        h.flags,
        h.header_len,
        h.session,
        h.seq,
        h.pid,
        h.payload_len,
        h.first_time_us,
        h.last_time_us,
        h.count,
        h.raw_len,
        h.payload_crc,
        0,
    )
    crc = _header_crc(fixed, h.extension)
    return fixed[:60] + crc.to_bytes(4, "little") + h.extension


def crc32_holding_gil(data: bytes | memoryview) -> int:
    """``zlib.crc32(data)``, in pieces small enough that CPython keeps the GIL.

    zlib lets go of the GIL for inputs over 5 KiB. On the flusher thread each
    let-go is a hand-over that the logging thread then waits for; a block's
    checksum, tens of KiB in 4 KiB pieces, costs about a microsecond more.
    """
    view = memoryview(data)
    crc = 0
    for at in range(0, len(view), 4096):
        crc = zlib.crc32(view[at : at + 4096], crc)
    return crc


def encode_block(h: BlockHeader, payload: bytes) -> bytes:
    """Return a complete block: ``h`` with its payload length and checksum filled in."""
    full = replace(h, payload_len=len(payload), payload_crc=crc32_holding_gil(payload))
    return pack_header(full) + payload


def parse_header(data: View, offset: int = 0) -> BlockHeader:
    """Parse and check the block header at ``offset``.

    Raises :class:`CorruptionError` when the bytes are not a valid header (an
    :class:`UnsupportedVersionError` for a newer format version).
    """
    avail = len(data) - offset
    if avail < BLOCK_HEADER_SIZE:
        raise CorruptionError(
            f"block at offset {offset}: header needs {BLOCK_HEADER_SIZE} bytes, {avail} left",
            offset,
        )
    (
        magic,
        version,
        flags,
        header_len,
        session,
        seq,
        pid,
        payload_len,
        first,
        last,
        count,
        raw_len,
        payload_crc,
        stored_crc,
    ) = BLOCK_HEADER.unpack_from(data, offset)
    if magic != BLOCK_MAGIC:
        raise CorruptionError(
            f"block at offset {offset}: bad magic (expected {BLOCK_MAGIC!r}, got {magic!r})",
            offset,
        )
    ext_len = header_len - BLOCK_HEADER_SIZE
    if ext_len < 0 or ext_len > MAX_HEADER_EXTENSION or ext_len > avail - BLOCK_HEADER_SIZE:
        raise CorruptionError(f"block at offset {offset}: bad header length {header_len}", offset)
    fixed = data[offset : offset + 60]
    ext = data[offset + BLOCK_HEADER_SIZE : offset + header_len]
    computed = _header_crc(fixed, ext)
    if computed != stored_crc:
        raise CorruptionError(
            f"block at offset {offset}: header checksum mismatch "
            f"(stored 0x{stored_crc:08x}, computed 0x{computed:08x})",
            offset,
        )
    if version not in READ_VERSIONS:
        raise UnsupportedVersionError(
            f"block at offset {offset}: format version {version} is not supported "
            f"(this mmaplog reads {_READ_TEXT})",
            offset,
        )
    xlog = flags & FLAG_XLOG
    if (
        flags & ~_FLAGS_KNOWN
        or (flags & FLAG_COMPRESSION_MASK) not in COMPRESSION_NAMES
        or (xlog and (flags & (FLAG_STREAM | FLAG_RECOVERED) != FLAG_STREAM))
        or (xlog and not flags & FLAG_COMPRESSION_MASK)
        or (flags & FLAG_COLUMNS and flags & (FLAG_STREAM | FLAG_XLOG))
    ):
        raise CorruptionError(f"block at offset {offset}: unknown flags 0x{flags:02x}", offset)
    if xlog:
        key_len = XLOG_EXTENSION
    else:
        key_len = ENCRYPTION_EXTENSION_V1 if version == 1 else ENCRYPTION_EXTENSION
    if ext_len != (key_len if flags & FLAG_ENCRYPTED else 0):
        raise CorruptionError(
            f"block at offset {offset}: header length {header_len} does not fit its flags",
            offset,
        )
    if payload_len > MAX_BLOCK_PAYLOAD or raw_len > MAX_BLOCK_RAW:
        raise CorruptionError(
            f"block at offset {offset}: payload length {payload_len} / raw length "
            f"{raw_len} over the limit",
            offset,
        )
    return BlockHeader(
        flags=flags,
        session=session,
        seq=seq,
        pid=pid,
        payload_len=payload_len,
        first_time_us=first,
        last_time_us=last,
        count=count,
        raw_len=raw_len,
        payload_crc=payload_crc,
        extension=bytes(ext),
        version=version,
    )


def scan_blocks(data: Buffer, start: int = 0) -> Iterator[ScannedBlock | Damage]:
    """Yield every intact block of a log file image, and a :class:`Damage` for each gap.

    ``data`` is ``bytes`` or a read-only ``mmap``. After damage the scan
    resynchronises on the next header whose checksums hold, so every intact block
    is found. A block cut short by the end of the data is reported as a torn tail.
    """
    size = len(data)
    pos = start
    bad_from: int | None = None
    bad_reason = ""
    magic = BLOCK_MAGIC
    while pos < size:
        if data[pos : pos + 4] == magic:
            try:
                h: BlockHeader | None = parse_header(data, pos)
            except CorruptionError as exc:
                h = None
                reason = str(exc)
            if h is not None:
                body_start = pos + h.header_len
                end = body_start + h.payload_len
                if end > size:
                    reason = (
                        f"block at offset {pos}: torn tail (payload needs "
                        f"{h.payload_len} bytes, {size - body_start} left)"
                    )
                else:
                    payload = data[body_start:end]
                    crc = zlib.crc32(payload)
                    if crc == h.payload_crc:
                        if bad_from is not None:
                            yield Damage(bad_from, pos, bad_reason)
                            bad_from = None
                        yield ScannedBlock(pos, h, payload)
                        pos = end
                        continue
                    reason = (
                        f"block at offset {pos}: payload checksum mismatch "
                        f"(stored 0x{h.payload_crc:08x}, computed 0x{crc:08x})"
                    )
        else:
            reason = f"offset {pos}: not a block header"
        if bad_from is None:
            bad_from = pos
            bad_reason = reason
        nxt = data.find(magic, pos + 1)
        pos = size if nxt < 0 else nxt
    if bad_from is not None:
        yield Damage(bad_from, size, bad_reason)


# -- cache image ---------------------------------------------------------------------


def pack_cache_header(info: CacheInfo) -> bytes:
    """Return the cache header page."""
    log_dir = info.log_dir.encode("utf-8", "surrogateescape")
    prefix = info.prefix.encode("utf-8", "surrogateescape")
    if len(log_dir) + len(prefix) > MAX_CACHE_STRINGS:
        raise ValueError("log_dir and prefix are too long to record in the cache header")
    fixed = CACHE_HEADER.pack(
        CACHE_MAGIC,
        info.version,
        info.nslots,
        0,
        info.header_size,
        info.slot_size,
        info.created_us,
        info.pid,
        len(log_dir),
        len(prefix),
        0,
    )
    strings = log_dir + prefix
    crc = zlib.crc32(strings, zlib.crc32(fixed[:32]))
    page = fixed[:32] + crc.to_bytes(4, "little") + strings
    return page + bytes(info.header_size - len(page))


def parse_cache_header(data: bytes | memoryview) -> CacheInfo:
    """Parse and check a cache header; raises :class:`CorruptionError` if it is not one."""
    view = memoryview(data)
    if len(view) < CACHE_HEADER.size:
        raise CorruptionError(
            f"cache header: {len(view)} bytes, expected at least {CACHE_HEADER.size}", 0
        )
    (magic, version, nslots, _r, header_size, slot_size, created, pid, dlen, plen, crc) = (
        CACHE_HEADER.unpack_from(view, 0)
    )
    if magic != CACHE_MAGIC:
        raise CorruptionError(
            f"cache header: bad magic (expected {CACHE_MAGIC!r}, got {bytes(magic)!r})", 0
        )
    if dlen + plen > MAX_CACHE_STRINGS:
        raise CorruptionError(f"cache header: string lengths {dlen}+{plen} over the limit", 0)
    strings = view[CACHE_HEADER.size : CACHE_HEADER.size + dlen + plen]
    computed = zlib.crc32(strings, zlib.crc32(view[:32]))
    if computed != crc:
        raise CorruptionError(
            f"cache header: checksum mismatch (stored 0x{crc:08x}, computed 0x{computed:08x})", 0
        )
    if version not in READ_VERSIONS:
        raise UnsupportedVersionError(
            f"cache header: format version {version} is not supported "
            f"(this mmaplog reads {_READ_TEXT})",
            0,
        )
    if not 1 <= nslots <= MAX_SLOTS or header_size != CACHE_HEADER_SIZE or slot_size < 1024:
        raise CorruptionError(
            f"cache header: bad geometry ({nslots} slots of {slot_size} bytes, "
            f"header {header_size})",
            0,
        )
    text = bytes(strings)
    return CacheInfo(
        version=version,
        nslots=nslots,
        header_size=header_size,
        slot_size=slot_size,
        created_us=created,
        pid=pid,
        log_dir=text[:dlen].decode("utf-8", "surrogateescape"),
        prefix=text[dlen:].decode("utf-8", "surrogateescape"),
    )


@dataclass(frozen=True, slots=True)
class SlotContent:
    """What a cache slot holds: its block header template and the valid chunks."""

    index: int
    template: BlockHeader
    payload: bytes
    count: int
    last_time_us: int
    committed_len: int


def read_slot(image: bytes | memoryview, info: CacheInfo, index: int) -> SlotContent | None:
    """Return the content of slot ``index`` of a cache image, or None when it is empty.

    The chunk walk, not the commit word, decides what is kept: a chunk whose
    checksum holds was written whole, even if the commit store after it was not.
    Raises :class:`CorruptionError` when the slot holds something that is not a
    block template.
    """
    view = memoryview(image)
    base = info.header_size + index * info.slot_size
    end = min(len(view), base + info.slot_size)
    if end - base < SLOT_BLOCK_OFFSET + BLOCK_HEADER_SIZE:
        return None
    slot = view[base:end]
    if bytes(slot[SLOT_BLOCK_OFFSET : SLOT_BLOCK_OFFSET + 4]) != BLOCK_MAGIC:
        return None
    committed, count, last = COMMIT.unpack_from(slot, 0)
    try:
        template = parse_header(slot, SLOT_BLOCK_OFFSET)
    except CorruptionError as exc:
        if committed == 0 and count == 0 and not isinstance(exc, UnsupportedVersionError):
            # The commit word is zeroed before a template is written and no chunk is
            # written before the template is whole: this is a block whose opening was
            # cut short, and it holds nothing.
            return None
        raise CorruptionError(f"cache slot {index}: {exc}", base + SLOT_BLOCK_OFFSET) from None
    body = slot[SLOT_BLOCK_OFFSET + template.header_len :]
    bodies, walked = walk_chunks(body, chunk_seed(template.session, template.seq))
    if count != len(bodies) or last < template.first_time_us:
        # The commit store was torn or is behind the chunks: the chunks decide.
        last = template.first_time_us if count != len(bodies) else last
    return SlotContent(
        index=index,
        template=template,
        payload=bytes(body[:walked]),
        count=len(bodies),
        last_time_us=last,
        committed_len=committed,
    )
