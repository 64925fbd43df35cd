"""Properties of the pure byte format in mmaplog._format (records, chunks, headers, cache)."""

from __future__ import annotations

import dataclasses
import itertools
import re
import struct
import tracemalloc
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmaplog import _format as fmt
from mmaplog._codec import StreamDecompressor, decompress_whole
from mmaplog.exceptions import CorruptionError, MmapLogError, UnsupportedVersionError

from .strategies import (
    CODECS,
    I64,
    KINDS,
    Rec,
    as_tuple,
    build_log,
    codecs,
    decode,
    forms,
    logger_names,
    new_key,
    record_lists,
    records,
    seqs,
    sessions,
    split_records,
    stream_chunks,
    template,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"

u32 = st.integers(0, 2**32 - 1)


def raw_header(
    *,
    magic: bytes = fmt.BLOCK_MAGIC,
    version: int = fmt.FORMAT_VERSION,
    flags: int = fmt.COMP_NONE,
    header_len: int | None = None,
    session: bytes = b"S" * 8,
    seq: int = 1,
    pid: int = 2,
    payload_len: int = 0,
    first: int = 3,
    last: int = 4,
    count: int = 0,
    raw_len: int = 0,
    payload_crc: int = 0,
    extension: bytes = b"",
) -> bytes:
    """A block header with any field values and a header checksum that holds."""
    if header_len is None:
        header_len = fmt.BLOCK_HEADER_SIZE + len(extension)
    fixed = fmt.BLOCK_HEADER.pack(
        magic, version, flags, header_len, session, seq, pid, payload_len,
        first, last, count, raw_len, payload_crc, 0,
    )  # fmt: skip
    crc = zlib.crc32(extension, zlib.crc32(fixed[:60]))
    return fixed[:60] + crc.to_bytes(4, "little") + extension


@st.composite
def block_headers(draw: st.DrawFn) -> fmt.BlockHeader:
    """Any block header the format accepts."""
    encrypted = draw(st.booleans())
    flags = (
        draw(st.sampled_from(CODECS))
        | (fmt.FLAG_ENCRYPTED if encrypted else 0)
        | draw(st.sampled_from([0, fmt.FLAG_STREAM]))
        | draw(st.sampled_from([0, fmt.FLAG_RECOVERED]))
    )
    return fmt.BlockHeader(
        flags=flags,
        session=draw(sessions),
        seq=draw(seqs),
        pid=draw(u32),
        payload_len=draw(st.integers(0, fmt.MAX_BLOCK_PAYLOAD)),
        first_time_us=draw(st.integers(*I64)),
        last_time_us=draw(st.integers(*I64)),
        count=draw(u32),
        raw_len=draw(st.integers(0, fmt.MAX_BLOCK_RAW)),
        payload_crc=draw(u32),
        extension=draw(st.binary(min_size=40, max_size=40)) if encrypted else b"",
    )


# -- records -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(record_lists)
def test_record_round_trip(recs: list[Rec]) -> None:
    """Records packed back to back come out of iter_records unchanged and in order."""
    raw = b"".join(r.raw for r in recs)
    got = list(fmt.iter_records(raw))
    assert [(g.time_us, g.level, g.kind, g.text, g.name, g.thread) for g in got] == [
        (r.time_us, r.level, r.kind, r.text.encode(), r.name.encode(), r.thread) for r in recs
    ]


@settings(max_examples=100, deadline=None)
@given(record_lists)
def test_version_1_records_read_as_version_1(recs: list[Rec]) -> None:
    """Records in version 1's layout (no name, no thread) read back with version=1."""
    raw = b"".join(
        fmt.RECORD_HEADER_V1.pack(len(t), r.time_us, r.level, r.kind) + t
        for r in recs
        for t in [r.text.encode()]
    )
    got = list(fmt.iter_records(raw, version=1))
    assert got == [fmt.RawRecord(r.time_us, r.level, r.kind, r.text.encode()) for r in recs]


def test_record_head_is_the_header_then_the_name() -> None:
    """A record's head is the fixed header (its name_len the name's length), then the name."""
    head = fmt.record_head(7, 20, fmt.KIND_TEXT, b"text", b"shop.orders", 99)
    assert head == fmt.RECORD_HEADER.pack(4, 7, 20, fmt.KIND_TEXT, 11, 99) + b"shop.orders"
    assert fmt.encode_record(7, 20, fmt.KIND_TEXT, b"text", b"shop.orders", 99) == head + b"text"
    fmt.record_head(7, 20, fmt.KIND_TEXT, b"", bytes(fmt.MAX_LOGGER_NAME))
    with pytest.raises(ValueError, match="logger name of 1025 bytes"):
        fmt.record_head(7, 20, fmt.KIND_TEXT, b"", bytes(fmt.MAX_LOGGER_NAME + 1))


def test_encode_record_clamps_level_to_a_byte() -> None:
    """A level outside 0..255 is stored as its low byte rather than failing."""
    (r,) = fmt.iter_records(fmt.encode_record(0, 0x1FF, fmt.KIND_TEXT, b"x"))
    assert r.level == 0xFF


def test_iter_records_rejects_bad_framing() -> None:
    """A short header, unknown kind or overlong text is a CorruptionError after the good records."""
    good = fmt.encode_record(1, 20, fmt.KIND_TEXT, b"ok")
    cases = [
        good + fmt.encode_record(2, 20, fmt.KIND_TEXT, b"abc")[:10],
        good + fmt.encode_record(2, 20, 7, b"abc"),
        good + fmt.RECORD_HEADER.pack(100, 2, 20, fmt.KIND_TEXT, 0, 0) + b"short",
        good + fmt.RECORD_HEADER.pack(fmt.MAX_RECORD_TEXT + 1, 2, 20, fmt.KIND_TEXT, 0, 0),
        good + fmt.RECORD_HEADER.pack(0, 2, 20, fmt.KIND_TEXT, 9, 0) + b"name",  # name cut
        good
        + fmt.RECORD_HEADER.pack(0, 2, 20, fmt.KIND_TEXT, fmt.MAX_LOGGER_NAME + 1, 0)
        + bytes(fmt.MAX_LOGGER_NAME + 1),
    ]
    for raw in cases:
        seen = []
        with pytest.raises(CorruptionError) as exc:
            for r in fmt.iter_records(raw):
                seen.append(r.text)
        assert seen == [b"ok"]
        assert exc.value.offset == len(good)


# -- columns -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(record_lists)
def test_columns_round_trip(recs: list[Rec]) -> None:
    """Records in column form decode to the same records, and the form is as long as the raw."""
    raw = b"".join(r.raw for r in recs)
    columns = fmt.encode_columns(*fmt.split_records([r.raw for r in recs]))
    times = [r.time_us for r in recs]
    steps = [b - a for a, b in zip([0, *times], times, strict=False)]
    if not all(-(2**63) <= d < 2**63 for d in steps):
        assert columns is None  # the steps do not fit an i64: the records stay back to back
        return
    assert columns is not None and len(columns) == len(raw)
    assert fmt.decode_columns(columns, len(recs)) == list(fmt.iter_records(raw))


def _reference_columns(recs: list[Rec]) -> bytes:
    """The column form of ``recs`` built field by field, as docs/format.md lays it out."""
    n = len(recs)

    def planes(values: list[int], code: str, width: int) -> bytes:
        packed = struct.pack(f"<{n}{code}", *values)
        return b"".join(packed[k::width] for k in range(width))

    times = [r.time_us for r in recs]
    names = [r.name.encode() for r in recs]
    texts = [r.text.encode() for r in recs]
    return b"".join(
        [
            planes([b - a for a, b in zip([0, *times], times, strict=False)], "q", 8),
            planes([len(t) for t in texts], "I", 4),
            bytes(r.level for r in recs),
            bytes(r.kind for r in recs),
            planes([len(m) for m in names], "H", 2),
            planes([r.thread for r in recs], "Q", 8),
            *names,
            *texts,
        ]
    )


_ONE_LOGGER = st.tuples(st.lists(records, min_size=1, max_size=12), logger_names).map(
    lambda t: [dataclasses.replace(r, name=t[1]) for r in t[0]]
)
"""A block of one logger: names of one length (the columns are taken by stride)."""

_SAME_LENGTH_NAMES = st.lists(
    st.builds(
        Rec,
        time_us=st.integers(0, 4_102_444_800_000_000),
        level=st.integers(0, 255),
        kind=st.sampled_from(KINDS),
        text=st.text(max_size=20),
        name=st.sampled_from(["api", "web", "db1"]),
        thread=st.integers(0, 2**64 - 1),
    ),
    min_size=1,
    max_size=12,
)
"""Different names of one length (still by stride); record_lists has any names (a walk)."""


@settings(max_examples=150, deadline=None)
@given(st.one_of(_ONE_LOGGER, _SAME_LENGTH_NAMES, record_lists))
def test_columns_are_the_documented_layout(recs: list[Rec]) -> None:
    """encode_columns lays out exactly the documented columns, whether the block's logger
    names have one length (taken by stride) or not (the heads walked)."""
    times = [r.time_us for r in recs]
    steps = [b - a for a, b in zip([0, *times], times, strict=False)]
    columns = fmt.encode_columns(*fmt.split_records([r.raw for r in recs]))
    if not all(-(2**63) <= d < 2**63 for d in steps):
        assert columns is None
        return
    assert columns == _reference_columns(recs)
    got = fmt.decode_columns(columns, len(recs))
    assert got == [
        fmt.RawRecord(r.time_us, r.level, r.kind, r.text.encode(), r.name.encode(), r.thread)
        for r in recs
    ]


@pytest.mark.parametrize("second_name", [b"api", b"db"], ids=["same-length", "other-length"])
def test_columns_lay_out_every_field_then_names_then_texts(second_name: bytes) -> None:
    """The column form is time steps and lengths as byte planes, levels, kinds, name
    lengths and threads as byte planes, the logger names, then the texts."""
    columns = fmt.encode_columns(
        fmt.record_head(0x0102, 20, fmt.KIND_TEXT, b"ab", b"app", 0x0A0B)
        + fmt.record_head(0x0103, 40, 2, b"c", second_name, 0x0C),
        [b"ab", b"c"],
    )
    times = bytes([0x02, 0x01, 0x01, 0x00]) + bytes(12)  # steps 0x0102 and 1, planes 0 .. 7
    lengths = bytes([2, 1]) + bytes(6)
    name_lengths = bytes([3, len(second_name)]) + bytes(2)
    threads = bytes([0x0B, 0x0C, 0x0A, 0x00]) + bytes(12)
    assert columns == (
        times + lengths + bytes([20, 40]) + bytes([0, 2]) + name_lengths + threads
        + b"app" + second_name + b"abc"
    )  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(record_lists)
def test_version_1_columns_read_as_version_1(recs: list[Rec]) -> None:
    """Columns in version 1's layout (no name or thread columns) read back with version=1."""
    n = len(recs)
    times = [r.time_us for r in recs]
    steps = [b - a for a, b in zip([0, *times], times, strict=False)]
    if not all(-(2**63) <= d < 2**63 for d in steps):
        return
    texts = [r.text.encode() for r in recs]

    def planes(values: list[int], fmt_char: str, width: int) -> bytes:
        packed = struct.pack(f"<{n}{fmt_char}", *values)
        return b"".join(packed[k::width] for k in range(width))

    data = (
        planes(steps, "q", 8) + planes([len(t) for t in texts], "I", 4)
        + bytes(r.level for r in recs) + bytes(r.kind for r in recs) + b"".join(texts)
    )  # fmt: skip
    got = fmt.decode_columns(data, n, version=1)
    assert got == [fmt.RawRecord(r.time_us, r.level, r.kind, r.text.encode()) for r in recs]


def test_columns_of_no_records_are_empty() -> None:
    """An empty block has an empty column form, which decodes to no records."""
    assert fmt.encode_columns(b"", []) == b""
    assert fmt.decode_columns(b"", 0) == []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c, n: (c[:-1], n), "add up to"),  # a text cut short
        (lambda c, n: (c + b"x", n), "add up to"),  # a byte too many
        (lambda c, n: (c, n + 1), "unknown kind|add up to"),  # one record more than there is
        (lambda c, n: (c[:20], n), "need"),  # the columns themselves cut short
        (lambda c, n: (c[: 13 * n] + bytes([9]) + c[13 * n + 1 :], n), "unknown kind 9"),
        (lambda c, n: (c[: 8 * n] + b"\xff" * 4 * n + c[12 * n :], n), "add up to"),
        (lambda c, n: (c[: 14 * n] + bytes([9]) + c[14 * n + 1 :], n), "add up to"),
        (lambda c, n: (c[: 15 * n] + bytes([0x10]) + c[15 * n + 1 :], n), "name length 4"),
    ],
)
def test_decode_columns_rejects_columns_that_do_not_fit(mutate: Any, message: str) -> None:
    """Columns that disagree with the data or hold a bad kind are a CorruptionError, not records."""
    columns = fmt.encode_columns(
        *fmt.split_records(
            [
                fmt.encode_record(1000 + i, 20, fmt.KIND_TEXT, b"rec%d" % i, b"app", 5)
                for i in range(4)
            ]
        )
    )
    assert columns is not None
    data, count = mutate(columns, 4)
    with pytest.raises(CorruptionError, match=message):
        fmt.decode_columns(data, count, where="blk")


@pytest.mark.parametrize(
    "records",
    [
        [b"short"],
        [fmt.encode_record(1, 20, 0, b"abc")[:-1]],
        [fmt.encode_record(1, 20, 0, b"") + b"x"],
        [fmt.encode_record(1, 20, 0, b"", b"name")[:-2]],
        [fmt.encode_record(1, 20, 0, b"", b"ab"), fmt.encode_record(2, 20, 0, b"")[:20]],
    ],
)
def test_encode_columns_refuses_records_that_are_not_encoded_records(records: list[bytes]) -> None:
    """A record shorter than its header, or whose text is not its header's length, is refused."""
    with pytest.raises(ValueError, match="records: "):
        fmt.encode_columns(*fmt.split_records(records))


@settings(max_examples=100, deadline=None)
@given(record_lists)
def test_split_then_join_records_gives_the_records_back(recs: list[Rec]) -> None:
    """Records split into headers and texts join back to the same bytes."""
    raws = [r.raw for r in recs]
    heads, texts = fmt.split_records(raws)
    assert len(heads) == sum(fmt.RECORD_HEADER.size + len(r.name.encode()) for r in recs)
    assert texts == [r.text.encode() for r in recs]
    assert fmt.join_records(heads, texts) == b"".join(raws)


def test_compressed_whole_blocks_hold_columns_and_plain_ones_do_not() -> None:
    """The flusher writes columns in zlib and zstd blocks, plain records without compression."""
    recs = [Rec(1_700_000_000_000_000 + i, 20, fmt.KIND_TEXT, f"line {i}") for i in range(5)]
    for codec in CODECS:
        (block,) = fmt.scan_blocks(build_log([recs], form="whole", codec=codec)[0])
        assert isinstance(block, fmt.ScannedBlock)
        assert bool(block.header.flags & fmt.FLAG_COLUMNS) == (codec != fmt.COMP_NONE)


def test_column_blocks_decode_bad_utf8_as_stream_blocks_do() -> None:
    """Texts that are not UTF-8 read back with replacement characters in either form."""
    from mmaplog._blocks import encode_whole_block as build_block

    from .strategies import template

    raws = [
        fmt.encode_record(10, 20, 0, b"ok \xff\xfe end"),
        fmt.encode_record(11, 20, 0, b"plain"),
    ]
    t = template(10, codec=fmt.COMP_ZSTD, session=b"sessbad8", seq=0)
    whole = build_block(t, *fmt.split_records(raws), 11, level=None, sealer=None)
    assert fmt.parse_header(whole).flags & fmt.FLAG_COLUMNS
    got, damages = decode(whole)
    assert damages == []
    assert [r.text for r in got] == ["ok \ufffd\ufffd end", "plain"]


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 70_001])
def test_crc32_in_pieces_is_zlibs_crc32(size: int) -> None:
    """The block checksum taken in 4 KiB pieces equals zlib.crc32 of the whole payload."""
    data = bytes((i * 131 + 7) % 256 for i in range(size))
    assert fmt.crc32_holding_gil(data) == zlib.crc32(data)


# -- blocks: the same records however they are written -------------------------------------


_KEY, _SEALER = new_key()


@settings(max_examples=80, deadline=None)
@given(split_records(), forms, codecs, st.booleans(), sessions)
def test_same_records_however_split_and_encoded(
    blocks: list[list[Rec]], form: str, codec: int, encrypted: bool, session: bytes
) -> None:
    """Records read back identical whatever the block boundaries, form, codec or encryption."""
    sealer = _SEALER if encrypted else None
    data, _spans = build_log(blocks, form=form, codec=codec, session=session, sealer=sealer)
    got, damages = decode(data, _KEY if encrypted else None)
    assert damages == []
    assert [as_tuple(g) for g in got] == [as_tuple(r) for b in blocks for r in b]
    assert [g.seq for g in got] == [seq for seq, b in enumerate(blocks) for _ in b]
    assert all(g.session == session.hex() for g in got)


@settings(max_examples=30, deadline=None)
@given(record_lists, codecs)
def test_stream_and_whole_form_carry_the_same_raw_bytes(recs: list[Rec], codec: int) -> None:
    """The stream-form chunks of a block decompress to the raw bytes its whole form holds.

    A compressed whole form holds them as columns of the same length.
    """
    raw = b"".join(r.raw for r in recs)
    (whole,) = (b for b in fmt.scan_blocks(build_log([recs], form="whole", codec=codec)[0]))
    assert isinstance(whole, fmt.ScannedBlock)
    assert not whole.header.stream and whole.header.raw_len == len(raw)
    held = decompress_whole(codec, whole.payload, len(raw), where="t")
    if whole.header.flags & fmt.FLAG_COLUMNS:
        assert codec != fmt.COMP_NONE
        assert held == fmt.encode_columns(*fmt.split_records([r.raw for r in recs]))
        assert fmt.decode_columns(held, len(recs)) == list(fmt.iter_records(raw))
    else:
        assert held == raw
    (stream,) = (b for b in fmt.scan_blocks(build_log([recs], form="stream", codec=codec)[0]))
    assert isinstance(stream, fmt.ScannedBlock)
    assert stream.header.stream and stream.header.recovered
    h = stream.header
    bodies, end = fmt.walk_chunks(stream.payload, fmt.chunk_seed(h.session, h.seq))
    assert end == len(stream.payload) and len(bodies) == len(recs) == h.count
    dec = StreamDecompressor(codec, fmt.MAX_BLOCK_RAW)
    assert [dec.feed(b, where="t") for b in bodies] == [r.raw for r in recs]


# -- block headers ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(block_headers())
def test_header_round_trip(h: fmt.BlockHeader) -> None:
    """parse_header(pack_header(h)) gives h back, at any offset of a larger buffer."""
    packed = fmt.pack_header(h)
    assert len(packed) == h.header_len
    assert fmt.parse_header(packed) == h
    assert fmt.parse_header(b"junk" + packed + b"tail", 4) == h


@pytest.mark.parametrize("encrypted", [False, True])
def test_every_header_bit_flip_is_detected(encrypted: bool) -> None:
    """Flipping any single bit of a block header (extension included) makes it a CorruptionError."""
    ext = bytes(range(40)) if encrypted else b""
    flags = fmt.COMP_ZSTD | fmt.FLAG_STREAM | (fmt.FLAG_ENCRYPTED if encrypted else 0)
    good = raw_header(flags=flags, extension=ext, payload_len=10, count=3)
    fmt.parse_header(good)
    for bit in range(len(good) * 8):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptionError) as exc:
            fmt.parse_header(bytes(bad))
        # A flipped version byte is damage, not a newer format.
        assert type(exc.value) is CorruptionError, bit
        assert exc.value.offset == 0


@pytest.mark.parametrize("version", [0, 3, 255])
def test_parse_header_rejects_unknown_version(version: int) -> None:
    """A well-formed header of another format version raises UnsupportedVersionError."""
    with pytest.raises(UnsupportedVersionError, match=f"version {version} is not supported"):
        fmt.parse_header(raw_header(version=version))


@pytest.mark.parametrize(("version", "ext_len"), [(1, 32), (2, 40)])
def test_encrypted_headers_of_each_version_have_their_extension(version: int, ext_len: int) -> None:
    """Version 1 encrypted headers carry the ephemeral key, version 2 its key fingerprint too;
    each version refuses the other's length."""
    ext = bytes(range(ext_len))
    h = fmt.parse_header(
        raw_header(version=version, flags=fmt.FLAG_ENCRYPTED | fmt.FLAG_STREAM, extension=ext)
    )
    assert h.version == version
    assert h.ephemeral_key == ext[:32]
    assert h.key_fingerprint == ext[32:]
    other = bytes(72 - ext_len)
    with pytest.raises(CorruptionError, match="does not fit its flags"):
        fmt.parse_header(raw_header(version=version, flags=fmt.FLAG_ENCRYPTED, extension=other))


@pytest.mark.parametrize(
    "flags", [0x03, 0x20, 0x80, 0xE0, 0x08 | 0x03, 0xFF & ~0x04, 0x40 | 0x08, 0x40 | 0x20 | 0x08]
)
def test_parse_header_rejects_unknown_flags(flags: int) -> None:
    """Reserved flag bits, compression code 3 and columns in stream form make a header corrupt."""
    with pytest.raises(CorruptionError, match="unknown flags") as exc:
        fmt.parse_header(raw_header(flags=flags))
    assert not isinstance(exc.value, UnsupportedVersionError)


@pytest.mark.parametrize(
    ("flags", "header_len", "ext"),
    [
        (0, 0, b""),
        (0, 63, b""),
        pytest.param(0, 65, b"x", id="plain-ext-1"),
        pytest.param(0, 64 + 256, bytes(256), id="plain-ext-256"),
        (0, 96, bytes(32)),  # an extension without the encrypted flag
        (fmt.FLAG_ENCRYPTED, 64, b""),  # the encrypted flag without a key
        (fmt.FLAG_ENCRYPTED, 95, bytes(31)),
        (fmt.FLAG_ENCRYPTED, 96, bytes(32)),  # version 1's extension in a version 2 header
        (0, 64 + fmt.MAX_HEADER_EXTENSION + 1, bytes(fmt.MAX_HEADER_EXTENSION + 1)),
        (0, 0xFFFF, b""),  # runs past the end of the input
        (fmt.FLAG_ENCRYPTED, 96, b""),  # the extension is missing
    ],
)
def test_parse_header_rejects_bad_header_lengths(flags: int, header_len: int, ext: bytes) -> None:
    """A header_len under 64, over the limit, past the input or not fitting the flags is corrupt."""
    with pytest.raises(CorruptionError, match="header length"):
        fmt.parse_header(raw_header(flags=flags, header_len=header_len, extension=ext))


def test_parse_header_needs_64_bytes() -> None:
    """Every prefix of a header shorter than 64 bytes is rejected, not read past its end."""
    good = raw_header()
    for n in range(fmt.BLOCK_HEADER_SIZE):
        with pytest.raises(CorruptionError, match="header needs 64 bytes"):
            fmt.parse_header(good[:n])


@pytest.mark.parametrize(
    ("payload_len", "raw_len"),
    [
        (fmt.MAX_BLOCK_PAYLOAD + 1, 0),
        (2**32 - 1, 0),
        (0, fmt.MAX_BLOCK_RAW + 1),
        (0, 2**32 - 1),
    ],
)
def test_parse_header_rejects_over_limit_lengths_without_allocating(
    payload_len: int, raw_len: int
) -> None:
    """Lengths over the limits are rejected from the header alone, allocating nothing like them."""
    data = raw_header(payload_len=payload_len, raw_len=raw_len)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptionError, match="over the limit"):
            fmt.parse_header(data)
        items = list(fmt.scan_blocks(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert len(items) == 1 and isinstance(items[0], fmt.Damage)
    assert (items[0].start, items[0].end) == (0, len(data))


def test_payload_past_the_end_is_a_torn_tail_without_allocating() -> None:
    """A header whose payload (up to the 64 MiB limit) runs past the data is one torn tail."""
    data = raw_header(payload_len=fmt.MAX_BLOCK_PAYLOAD) + b"x" * 100
    tracemalloc.start()
    try:
        items = list(fmt.scan_blocks(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    (d,) = items
    assert isinstance(d, fmt.Damage) and (d.start, d.end) == (0, len(data))
    assert "torn tail" in d.reason


# -- chunks -----------------------------------------------------------------------------------


def _chunks(recs: list[Rec], codec: int, session: bytes, seq: int) -> tuple[bytes, list[int]]:
    """The chunks of a block and where each chunk ends."""
    t = template(0, codec=codec, session=session, seq=seq)
    payload = stream_chunks(recs, t)
    ends = []
    pos = 0
    while pos < len(payload):
        (n, _crc) = fmt.CHUNK_HEADER.unpack_from(payload, pos)
        pos += fmt.CHUNK_HEADER.size + n
        ends.append(pos)
    assert pos == len(payload)
    return payload, ends


@settings(max_examples=15, deadline=None)
@given(st.lists(records, min_size=1, max_size=5), codecs, sessions, seqs)
def test_walk_chunks_stops_at_a_torn_chunk(
    recs: list[Rec], codec: int, session: bytes, seq: int
) -> None:
    """Cut at any byte, the walk keeps exactly the chunks that are complete."""
    payload, ends = _chunks(recs, codec, session, seq)
    seed = fmt.chunk_seed(session, seq)
    full, _ = fmt.walk_chunks(payload, seed)
    for cut in range(len(payload) + 1):
        bodies, end = fmt.walk_chunks(payload[:cut], seed)
        whole = [e for e in ends if e <= cut]
        assert len(bodies) == len(whole)
        assert end == (whole[-1] if whole else 0)
        # Zeros after the cut (unwritten cache space) never make up a chunk that was
        # not written; they can only complete a torn chunk whose missing tail was zeros.
        padded, _ = fmt.walk_chunks(payload[:cut] + bytes(64), seed)
        assert [bytes(b) for b in padded] == [bytes(b) for b in full[: len(padded)]]


@settings(max_examples=30, deadline=None)
@given(record_lists, codecs, sessions, seqs, st.integers(1, 4096))
def test_walk_chunks_stops_at_zeros(
    recs: list[Rec], codec: int, session: bytes, seq: int, zeros: int
) -> None:
    """A run of zeros after the chunks ends the walk at the last chunk."""
    payload, _ = _chunks(recs, codec, session, seq)
    bodies, end = fmt.walk_chunks(payload + bytes(zeros), fmt.chunk_seed(session, seq))
    assert (len(bodies), end) == (len(recs), len(payload))
    assert fmt.walk_chunks(bytes(zeros), 0) == ([], 0)


@settings(max_examples=40, deadline=None)
@given(record_lists, record_lists, codecs, sessions, seqs, st.data())
def test_walk_chunks_stops_at_a_stale_chunk(
    recs: list[Rec], old: list[Rec], codec: int, session: bytes, seq: int, data: st.DataObject
) -> None:
    """Intact chunks left by a block of another (session, seq) are not taken as this block's."""
    other_session, other_seq = data.draw(
        st.tuples(sessions, seqs).filter(lambda t: t != (session, seq)), label="stale"
    )
    fresh, _ = _chunks(recs, codec, session, seq)
    stale, _ = _chunks(old, codec, other_session, other_seq)
    seed = fmt.chunk_seed(session, seq)
    if fmt.chunk_seed(other_session, other_seq) == seed:
        return  # a 2**-32 seed collision: nothing the format can do
    bodies, end = fmt.walk_chunks(fresh + stale, seed)
    assert (len(bodies), end) == (len(recs), len(fresh))
    assert fmt.walk_chunks(stale, seed) == ([], 0)


def test_walk_chunks_stops_at_a_damaged_chunk() -> None:
    """A bit flip in a chunk body or header ends the walk before that chunk."""
    recs = [Rec(i, 20, 0, f"record {i}") for i in range(3)]
    payload, ends = _chunks(recs, fmt.COMP_ZLIB, b"s" * 8, 5)
    seed = fmt.chunk_seed(b"s" * 8, 5)
    starts = [0, *ends[:-1]]
    for i in range(len(payload)):
        bad = bytearray(payload)
        bad[i] ^= 0x10
        which = max(k for k, s in enumerate(starts) if s <= i)
        bodies, end = fmt.walk_chunks(bytes(bad), seed)
        assert (len(bodies), end) == (which, starts[which]), i


# -- cache header ------------------------------------------------------------------------------

cache_strings = (
    st.text(max_size=60)
    .map(lambda s: s.encode("utf-8", "surrogatepass"))
    .map(lambda b: b.decode("utf-8", "surrogateescape"))
)


@st.composite
def cache_infos(draw: st.DrawFn) -> fmt.CacheInfo:
    """Any cache header the format accepts."""
    return fmt.CacheInfo(
        version=fmt.FORMAT_VERSION,
        nslots=draw(st.integers(1, fmt.MAX_SLOTS)),
        header_size=fmt.CACHE_HEADER_SIZE,
        slot_size=draw(st.integers(1024, 2**32 - 1)),
        created_us=draw(st.integers(*I64)),
        pid=draw(u32),
        log_dir=draw(st.one_of(cache_strings, st.just("/var/log/é/" + "d" * 2000))),
        prefix=draw(cache_strings),
    )


@settings(max_examples=100, deadline=None)
@given(cache_infos())
def test_cache_header_round_trip(info: fmt.CacheInfo) -> None:
    """parse_cache_header(pack_cache_header(info)) gives info back in one 4096-byte page."""
    page = fmt.pack_cache_header(info)
    assert len(page) == fmt.CACHE_HEADER_SIZE
    assert fmt.parse_cache_header(page) == info


def test_cache_header_refuses_strings_too_long_to_fit() -> None:
    """Packing a log_dir and prefix over the page raises ValueError instead of truncating."""
    info = fmt.CacheInfo(1, 2, 4096, 8192, 0, 0, "d" * 4000, "p" * 61)
    with pytest.raises(ValueError, match="too long"):
        fmt.pack_cache_header(info)


_INFO = fmt.CacheInfo(1, 2, fmt.CACHE_HEADER_SIZE, 8192, 1_700_000_000_000_000, 77, "/logs", "app")


def test_every_cache_header_bit_flip_is_detected() -> None:
    """Flipping any bit of a cache header's fixed fields or strings raises CorruptionError."""
    page = fmt.pack_cache_header(_INFO)
    checked = fmt.CACHE_HEADER.size + len("/logs") + len("app")
    for bit in range(checked * 8):
        bad = bytearray(page)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptionError) as exc:
            fmt.parse_cache_header(bytes(bad))
        assert type(exc.value) is CorruptionError, bit


def _cache_page(**fields: int | bytes) -> bytes:
    """A cache header page with chosen raw fields and a checksum that holds."""
    values = {
        "magic": fmt.CACHE_MAGIC,
        "version": 1,
        "nslots": 2,
        "reserved": 0,
        "header_size": fmt.CACHE_HEADER_SIZE,
        "slot_size": 8192,
        "created": 0,
        "pid": 1,
        "dlen": 0,
        "plen": 0,
    }
    values.update(fields)
    fixed = fmt.CACHE_HEADER.pack(*values.values(), 0)
    crc = zlib.crc32(fixed[:32])
    page = fixed[:32] + crc.to_bytes(4, "little")
    return page + bytes(fmt.CACHE_HEADER_SIZE - len(page))


def test_cache_header_rejects_damage() -> None:
    """Truncation, a bad magic or version, bad geometry and huge string lengths are typed errors."""
    fmt.parse_cache_header(_cache_page())
    page = fmt.pack_cache_header(_INFO)
    for n in range(fmt.CACHE_HEADER.size):
        with pytest.raises(CorruptionError):
            fmt.parse_cache_header(page[:n])
    with pytest.raises(CorruptionError):  # the strings are cut off: checksum fails
        fmt.parse_cache_header(page[: fmt.CACHE_HEADER.size + 2])
    fmt.parse_cache_header(_cache_page(version=1))
    with pytest.raises(UnsupportedVersionError):
        fmt.parse_cache_header(_cache_page(version=3))
    for bad in (
        {"magic": b"MMLB"},
        {"nslots": 0},
        {"nslots": fmt.MAX_SLOTS + 1},
        {"header_size": 8192},
        {"slot_size": 1023},
        {"dlen": 0xFFFF},
        {"dlen": 2030, "plen": 2031},
    ):
        with pytest.raises(CorruptionError) as exc:
            fmt.parse_cache_header(_cache_page(**bad))
        assert type(exc.value) is CorruptionError, bad


# -- cache slots -------------------------------------------------------------------------------

_SLOT_INFO = fmt.CacheInfo(1, 2, fmt.CACHE_HEADER_SIZE, 4096, 0, 0, "", "")
_SESSION = b"cachesss"


def _slot_image(
    slot: int,
    recs: list[Rec],
    *,
    commit: tuple[int, int, int] | None,
    seq: int = 3,
    tail: bytes = b"",
    encrypted: bool = False,
) -> tuple[bytearray, bytes, fmt.BlockHeader]:
    """A two-slot cache image with ``recs`` written into ``slot``, as the writer does."""
    sealer = _SEALER if encrypted else None
    t = template(
        recs[0].time_us if recs else 0, codec=fmt.COMP_ZSTD, session=_SESSION, seq=seq,
        sealer=sealer,
    )  # fmt: skip
    chunks = stream_chunks(recs, t, sealer=sealer)
    image = bytearray(fmt.pack_cache_header(_SLOT_INFO) + bytes(2 * _SLOT_INFO.slot_size))
    base = _SLOT_INFO.header_size + slot * _SLOT_INFO.slot_size
    body = fmt.pack_header(t) + chunks + tail
    image[base + fmt.SLOT_BLOCK_OFFSET : base + fmt.SLOT_BLOCK_OFFSET + len(body)] = body
    if commit is not None:
        fmt.COMMIT.pack_into(image, base, *commit)
    return image, chunks, t


def test_read_slot_of_an_empty_cache() -> None:
    """Zeroed slots, and a slot whose template magic was cleared, read as empty."""
    image = bytearray(fmt.pack_cache_header(_SLOT_INFO) + bytes(2 * 4096))
    assert fmt.read_slot(image, _SLOT_INFO, 0) is None
    assert fmt.read_slot(image, _SLOT_INFO, 1) is None
    recs = [Rec(10, 20, 0, "a")]
    image, _, _ = _slot_image(1, recs, commit=(1, 1, 10))
    base = 4096 + 4096 + fmt.SLOT_BLOCK_OFFSET
    image[base : base + 4] = bytes(4)  # the first store of a release
    assert fmt.read_slot(image, _SLOT_INFO, 1) is None
    # A slot cut off by the end of the image is empty, not an error.
    assert fmt.read_slot(image[: 4096 + 4096 + 40], _SLOT_INFO, 1) is None


_RECS = [Rec(1_000 + i, 20, fmt.KIND_TEXT, f"slot record {i} " + "z" * i) for i in range(4)]


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize(
    ("written", "commit_count", "case"),
    [
        (4, 4, "committed"),
        (4, 0, "commit never stored"),
        (4, 2, "commit behind"),
        (3, 4, "commit ahead of a torn chunk"),
    ],
)
def test_read_slot_the_chunks_decide(
    written: int, commit_count: int, case: str, encrypted: bool
) -> None:
    """Whatever the commit word says, the slot holds exactly the chunks whose checksums hold."""
    recs = _RECS[:written]
    _, chunks, t = _slot_image(0, recs, commit=None, encrypted=encrypted)
    # Whatever was written of the next chunk when the writer died: half of it.
    full_chunks = stream_chunks(_RECS, t, sealer=_SEALER if encrypted else None)
    torn = full_chunks[len(chunks) : len(chunks) + (len(full_chunks) - len(chunks)) // 2]
    image, _, _ = _slot_image(
        0, recs, commit=(len(chunks), commit_count, 2_000), tail=torn, encrypted=encrypted
    )
    content = fmt.read_slot(image, _SLOT_INFO, 0)
    assert content is not None, case
    assert content.template == t
    assert content.payload == chunks
    assert content.count == written
    assert content.committed_len == len(chunks)
    if commit_count == written:
        assert content.last_time_us == 2_000
    else:
        assert content.last_time_us == t.first_time_us
    got, damages = decode(bytes(image), _KEY if encrypted else None)
    assert damages == []
    assert [as_tuple(g) for g in got] == [as_tuple(r) for r in recs]
    assert all(g.seq == 3 for g in got)


def test_read_slot_ignores_stale_chunks_of_an_older_block() -> None:
    """Chunks of a previous block left after the current chunks are not read as this block's."""
    old, _, _ = _slot_image(0, _RECS, commit=(0, 4, 0), seq=2)
    new, chunks, _ = _slot_image(0, _RECS[:1], commit=None, seq=3)
    base = 4096 + fmt.SLOT_BLOCK_OFFSET
    end = base + fmt.BLOCK_HEADER_SIZE + len(chunks)
    old[base:end] = new[base:end]  # the new block overwrote the start of the old one
    content = fmt.read_slot(old, _SLOT_INFO, 0)
    assert content is not None
    assert (content.count, content.payload) == (1, chunks)


def test_read_slot_rejects_a_damaged_template() -> None:
    """A slot whose template header fails its checks raises CorruptionError naming the slot."""
    image, _, _ = _slot_image(1, _RECS, commit=(0, 4, 0))
    image[4096 + 4096 + fmt.SLOT_BLOCK_OFFSET + 20] ^= 1
    with pytest.raises(CorruptionError, match="cache slot 1") as exc:
        fmt.read_slot(image, _SLOT_INFO, 1)
    assert exc.value.offset == 4096 + 4096 + fmt.SLOT_BLOCK_OFFSET
    assert fmt.read_slot(image, _SLOT_INFO, 0) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(records, min_size=1, max_size=6), st.data())
def test_read_slot_keeps_the_complete_chunks(recs: list[Rec], data: st.DataObject) -> None:
    """A slot cut anywhere inside chunk k (the bytes from the cut on still zeros, as a
    kill during its copy leaves them) reads back exactly the records before k; chunk k
    too when its bytes from the cut on were zeros already (then it is whole)."""
    image, chunks, _ = _slot_image(0, recs, commit=(0, 0, 0))
    if len(chunks) + fmt.SLOT_BLOCK_OFFSET + 64 > 4096:
        return  # does not fit in the slot
    _, ends = _chunks(recs, fmt.COMP_ZSTD, _SESSION, 3)
    cut = data.draw(st.integers(0, len(chunks)), label="cut")
    base = 4096 + fmt.SLOT_BLOCK_OFFSET + fmt.BLOCK_HEADER_SIZE
    image[base + cut : base + len(chunks)] = bytes(len(chunks) - cut)
    content = fmt.read_slot(image, _SLOT_INFO, 0)
    assert content is not None
    kept = list(itertools.takewhile(lambda e: e <= cut or not any(chunks[cut:e]), ends))
    assert content.count == len(kept)
    got, _ = decode(bytes(image))
    assert [as_tuple(g) for g in got] == [as_tuple(r) for r in recs[: len(kept)]]


# -- the spec: docs/format.md tables against the struct constants ---------------------------------

_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([\w\[\]]+)\s*\|\s*(\w+)\s*\|\s*$")
_CODES = {"B": "u8", "H": "u16", "I": "u32", "Q": "u64", "q": "i64"}
_TABLES = {
    "Record header": fmt.RECORD_HEADER,
    "Record header, version 1": fmt.RECORD_HEADER_V1,
    "Chunk header": fmt.CHUNK_HEADER,
    "Block header": fmt.BLOCK_HEADER,
    "Cache header": fmt.CACHE_HEADER,
    "Slot": fmt.COMMIT,
}


def _doc_tables() -> dict[str, list[tuple[int, int, str, str]]]:
    """The offset/size/type/field tables of docs/format.md, by the heading above each."""
    tables: dict[str, list[tuple[int, int, str, str]]] = {}
    heading = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            continue
        m = _ROW.match(line)
        if m:
            tables.setdefault(heading, []).append(
                (int(m.group(1)), int(m.group(2)), m.group(3), m.group(4))
            )
    return tables


def _struct_types(s: struct.Struct) -> list[str]:
    """The documented type names of a struct's fields, in order."""
    out = []
    for count, code in re.findall(r"(\d*)([a-zA-Z])", s.format.lstrip("<")):
        if code == "s":
            out.append(f"bytes[{count}]")
        else:
            out.extend([_CODES[code]] * int(count or 1))
    return out


def _field(data: bytes, offset: int, size: int, typ: str) -> int | bytes:
    """Read one documented field from encoder output."""
    raw = data[offset : offset + size]
    if typ.startswith("bytes"):
        return raw
    return int.from_bytes(raw, "little", signed=typ.startswith("i"))


def _encoded_samples() -> dict[str, tuple[bytes, dict[str, int | bytes]]]:
    """Output of the real encoders, with the value each documented field must hold."""
    ext = bytes(range(100, 140))
    h = fmt.BlockHeader(
        flags=fmt.COMP_ZLIB | fmt.FLAG_ENCRYPTED | fmt.FLAG_STREAM,
        session=b"SESSION!",
        seq=0x0102030405060708,
        pid=4321,
        payload_len=5555,
        first_time_us=-7,
        last_time_us=99_999,
        count=12,
        raw_len=6666,
        payload_crc=0xDEADBEEF,
        extension=ext,
    )
    block = fmt.pack_header(h)
    info = fmt.CacheInfo(2, 3, 4096, 12288, -5, 31337, "/var/log", "myapp")
    page = fmt.pack_cache_header(info)
    slot = bytearray(
        fmt.pack_cache_header(_SLOT_INFO) + bytes(2 * 4096)
    )  # commit area placed by the doc's offsets below
    t = template(50, codec=fmt.COMP_NONE, session=_SESSION, seq=3)
    chunks = stream_chunks([Rec(50, 1, 0, "a"), Rec(60, 1, 0, "b")], t)
    hdr = fmt.pack_header(t)
    at = 4096 + fmt.SLOT_BLOCK_OFFSET
    slot[at : at + len(hdr) + len(chunks)] = hdr + chunks
    return {
        "Record header": (
            fmt.encode_record(-123_456_789, 42, fmt.KIND_NOTE, b"hello", b"shop", 2**64 - 3),
            {
                "text_len": 5,
                "time_us": -123_456_789,
                "level": 42,
                "kind": fmt.KIND_NOTE,
                "name_len": 4,
                "thread": 2**64 - 3,
            },
        ),
        "Record header, version 1": (
            fmt.RECORD_HEADER_V1.pack(5, -123_456_789, 42, fmt.KIND_NOTE) + b"hello",
            {"text_len": 5, "time_us": -123_456_789, "level": 42, "kind": fmt.KIND_NOTE},
        ),
        "Chunk header": (
            fmt.encode_chunk(b"body!", 99),
            {"body_len": 5, "body_crc": zlib.crc32(b"body!", 99)},
        ),
        "Block header": (
            block,
            {
                "magic": b"MMLB",
                "version": 2,
                "flags": h.flags,
                "header_len": 104,
                "session": b"SESSION!",
                "seq": h.seq,
                "pid": 4321,
                "payload_len": 5555,
                "first_time_us": -7,
                "last_time_us": 99_999,
                "count": 12,
                "raw_len": 6666,
                "payload_crc": 0xDEADBEEF,
                "header_crc": zlib.crc32(block[:60] + ext),
            },
        ),
        "Cache header": (
            page,
            {
                "magic": b"MMLC",
                "version": 2,
                "nslots": 3,
                "reserved": 0,
                "header_size": 4096,
                "slot_size": 12288,
                "created_us": -5,
                "pid": 31337,
                "log_dir_len": 8,
                "prefix_len": 5,
                "header_crc": zlib.crc32(page[:32] + b"/var/logmyapp"),
            },
        ),
        "Slot": (bytes(slot), {"payload_len": len(chunks), "count": 2, "last_time_us": 60}),
    }


def test_layout_tables_match_the_struct_constants() -> None:
    """docs/format.md's offset/size/type tables match the struct constants, field by field."""
    tables = _doc_tables()
    assert set(_TABLES) <= set(tables), set(tables)
    for name, s in _TABLES.items():
        rows = tables[name]
        offsets = [r[0] for r in rows]
        sizes = [r[1] for r in rows]
        assert offsets == [sum(sizes[:i]) for i in range(len(rows))], name
        assert sum(sizes) == s.size, name
        assert [r[2] for r in rows] == _struct_types(s), name
        for _o, size, typ, _f in rows:
            if not typ.startswith("bytes"):
                assert size == int(typ[1:]) // 8, (name, typ)
    assert fmt.BLOCK_HEADER_SIZE == fmt.BLOCK_HEADER.size == 64
    assert fmt.COMMIT.size == fmt.SLOT_BLOCK_OFFSET


def test_layout_tables_match_the_encoders() -> None:
    """Each documented field sits where the real encoders put it, in the documented order."""
    tables = _doc_tables()
    for name, (data, expected) in _encoded_samples().items():
        rows = tables[name]
        assert [r[3] for r in rows] == list(expected), name
        if name == "Slot":
            # Write the commit area by the doc's layout; read_slot must see it.
            image = bytearray(data)
            for offset, size, typ, field in rows:
                v = expected[field]
                assert isinstance(v, int)
                image[4096 + offset : 4096 + offset + size] = v.to_bytes(
                    size, "little", signed=typ.startswith("i")
                )
            content = fmt.read_slot(image, _SLOT_INFO, 0)
            assert content is not None
            assert (content.committed_len, content.count, content.last_time_us) == tuple(
                expected.values()
            )
            continue
        for offset, size, typ, field in rows:
            assert _field(data, offset, size, typ) == expected[field], (name, field)


def test_the_record_example_of_the_spec_is_what_the_encoder_writes() -> None:
    """The example record's bytes in docs/format.md are encode_record's, byte for byte."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"For example, the record at.*?```\n(.*?)```", text, re.DOTALL)
    assert m is not None
    shown = bytes.fromhex(m.group(1).replace("\n", " "))
    assert shown == fmt.encode_record(
        1_764_000_000_000_000, 30, fmt.KIND_TEXT, b"order 42 failed", b"shop", 7
    )


def test_format_errors_are_mmaplog_value_errors() -> None:
    """Format errors derive from both MmapLogError and ValueError and carry the offset."""
    with pytest.raises(CorruptionError) as exc:
        fmt.parse_header(b"\0" * 10 + raw_header(magic=b"XXXX"), 10)
    assert isinstance(exc.value, MmapLogError) and isinstance(exc.value, ValueError)
    assert exc.value.offset == 10
    assert "bad magic" in str(exc.value)


def test_header_checksum_covers_the_extension() -> None:
    """Changing the ephemeral key of an encrypted header breaks its checksum."""
    h = fmt.BlockHeader(fmt.FLAG_ENCRYPTED, b"s" * 8, 0, 0, 0, 0, 0, 0, 0, 0, bytes(40))
    packed = bytearray(fmt.pack_header(h))
    assert fmt.parse_header(bytes(packed)) == h
    packed[-1] ^= 0x80
    with pytest.raises(CorruptionError, match="header checksum"):
        fmt.parse_header(bytes(packed))
    assert replace(h, extension=b"").header_len == 64


def test_whole_block_compression_is_shared_and_safe_across_threads() -> None:
    """Threads compressing blocks at once share one context per level and get correct frames."""
    import threading

    from mmaplog import _codec

    blocks = [bytes([65 + i]) * 5000 + b"%d" % i * 3000 for i in range(8)]
    out: dict[int, bytes] = {}

    def work(i: int) -> None:
        for _ in range(20):
            out[i] = _codec.compress_whole(fmt.COMP_ZSTD, blocks[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, payload in out.items():
        assert decompress_whole(fmt.COMP_ZSTD, payload, len(blocks[i]), where="t") == blocks[i]
    assert set(_codec._whole_contexts) <= {None, *range(1, 23)}
    assert None in _codec._whole_contexts


def _column_block_of(steps: list[int], texts: list[bytes]) -> bytes:
    """A column-form block whose time column holds ``steps`` as they are (any i64s),
    checksums right: what a crafted or damaged file can hold."""
    n = len(texts)

    def planes(code: str, values: list[int]) -> bytes:
        width = struct.calcsize(code)
        return fmt._planes(struct.pack(f"<{n}{code}", *values), width, 0, width)

    raw = (
        planes("q", steps)
        + planes("I", [len(t) for t in texts])
        + bytes([20] * n)
        + bytes(n)
        + planes("H", [1] * n)
        + planes("Q", [7] * n)
        + b"x" * n
        + b"".join(texts)
    )
    import zstandard

    payload = zstandard.ZstdCompressor().compress(raw)
    h = fmt.BlockHeader(
        flags=fmt.COMP_ZSTD | fmt.FLAG_COLUMNS,
        session=b"S" * 8,
        seq=0,
        pid=1234,
        payload_len=0,
        first_time_us=0,
        last_time_us=0,
        count=n,
        raw_len=len(raw),
        payload_crc=0,
    )
    return fmt.encode_block(h, payload)


@pytest.mark.parametrize("step", [2**63 - 1, -(2**63)])
def test_a_column_block_whose_times_leave_64_bits_is_damage(step: int) -> None:
    """Time steps that add up past a 64-bit count of µs make the block damage (its
    records are not shown), on the C reader as on the pure one; never an exception."""
    got, damages = decode(_column_block_of([step, step], [b"hello", b"world"]))
    assert got == []
    assert len(damages) == 1 and "outside a 64-bit count" in damages[0].reason


def test_a_record_at_the_last_64_bit_time_decodes() -> None:
    """A record at the largest time a record can hold reads back (no date can show it,
    but the reader does not fail on it)."""
    got, damages = decode(_column_block_of([2**63 - 1], [b"far"]))
    assert damages == [] and [r.text for r in got] == ["far"]
    assert got[0].time == (2**63 - 1) / 1e6
