"""The decoder against damaged input: truncation, bit flips, garbage, bombs and mutations.

Every input is a real log built with the library's writers (see tests/strategies.py),
in both payload forms, with the three codecs, plain and encrypted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import zlib
from dataclasses import replace
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmaplog import _format as fmt
from mmaplog._codec import StreamCompressor, compress_whole
from mmaplog._reader import Record
from mmaplog.exceptions import MmapLogError

from .strategies import CODECS, FORMS, Rec, as_tuple, build, build_log, decode, new_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = [
    pytest.param(form, codec, enc, id=f"{form}-{fmt.COMPRESSION_NAMES[codec] or 'none'}-{tag}")
    for form in FORMS
    for codec in CODECS
    for enc, tag in ((False, "plain"), (True, "sealed"))
]

_T = 140_279_348_460_416  # a thread id
_BLOCKS = [
    [Rec(1_700_000_000_000_000, 20, fmt.KIND_TEXT, "first record", "shop", _T),
     Rec(1_700_000_000_000_001, 30, fmt.KIND_JSON, '{"k": "ünïcode ✓"}', "", _T + 1),
     Rec(1_700_000_000_000_002, 40, fmt.KIND_TEXT, "", "shop.orders", _T)],
    [Rec(1_700_000_000_100_000, 10, fmt.KIND_TEXT, "a longer one " * 20, "ünï", 0)],
    [Rec(1_700_000_000_200_000, 50, fmt.KIND_NOTE, "note", "mmaplog", 0),
     Rec(1_700_000_000_200_001, 255, fmt.KIND_TEXT, "last 🙂", "shop", _T)],
]  # fmt: skip
_KEY, _SEALER = new_key()


@cache
def small_log(form: str, codec: int, encrypted: bool) -> tuple[bytes, list[tuple[int, int]]]:
    """A three-block log file and the ``[start, end)`` of each block."""
    return build_log(_BLOCKS, form=form, codec=codec, sealer=_SEALER if encrypted else None)


def expected(blocks: list[int]) -> list[tuple[float, int, int, str]]:
    """The records of the given block indexes, in order."""
    return [as_tuple(r) for i in blocks for r in _BLOCKS[i]]


def key_for(encrypted: bool) -> object:
    return _KEY if encrypted else None


# -- truncation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("form", "codec", "encrypted"), CONFIGS)
def test_truncation_at_every_offset_yields_the_complete_blocks(
    form: str, codec: int, encrypted: bool
) -> None:
    """Cut anywhere, a log yields exactly its complete blocks' records and one torn-tail report."""
    data, spans = small_log(form, codec, encrypted)
    starts = {s for s, _ in spans}
    for cut in range(len(data) + 1):
        got, damages = decode(data[:cut], _KEY if encrypted else None)
        whole = [i for i, (_s, e) in enumerate(spans) if e <= cut]
        assert [as_tuple(g) for g in got] == expected(whole), cut
        if cut in starts or cut == len(data):
            assert damages == [], cut
        else:
            (d,) = damages
            assert (d.start, d.end) == (max(e for _s, e in [(0, 0), *spans] if e <= cut), cut)


# -- bit flips -------------------------------------------------------------------------------


@pytest.mark.parametrize(("form", "codec", "encrypted"), CONFIGS)
def test_a_bit_flip_loses_only_its_block(form: str, codec: int, encrypted: bool) -> None:
    """A flipped bit loses exactly the block holding it, reported once over that block."""
    data, spans = small_log(form, codec, encrypted)
    rng = random.Random(f"flip-{form}-{codec}-{encrypted}")
    for _ in range(40):
        pos = rng.randrange(len(data))
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        if bad[:4] == fmt.CACHE_MAGIC:
            continue  # MMLB -> MMLC: a known bug, see test_a_log_starting_with_mmlc_*
        hit = next(i for i, (s, e) in enumerate(spans) if s <= pos < e)
        got, damages = decode(bytes(bad), key_for(encrypted))
        assert [as_tuple(g) for g in got] == expected([i for i in range(3) if i != hit]), pos
        (d,) = damages
        assert (d.start, d.end) == spans[hit], pos


@pytest.mark.parametrize("form", FORMS)
def test_tampered_sealed_bytes_never_yield_plaintext(form: str) -> None:
    """Sealed bytes changed under valid checksums fail authentication and yield no plaintext."""
    recs = _BLOCKS[0]
    block = build(recs, form=form, codec=fmt.COMP_ZLIB, seq=7, sealer=_SEALER)
    h = fmt.parse_header(block)
    payload = block[h.header_len :]
    seed = fmt.chunk_seed(h.session, h.seq)
    chunk_starts, off = [], 0
    while off < len(payload):
        chunk_starts.append(off)
        off += fmt.CHUNK_HEADER.size + fmt.CHUNK_HEADER.unpack_from(payload, off)[0]
    rng = random.Random(f"tamper-{form}")
    for _ in range(30):
        p = bytearray(payload)
        if h.stream:
            # Change chunk k's sealed body and fix its CRC: only the AEAD tag can notice.
            keep = rng.randrange(len(chunk_starts))
            s = chunk_starts[keep] + fmt.CHUNK_HEADER.size
            n = fmt.CHUNK_HEADER.unpack_from(p, chunk_starts[keep])[0]
            p[s + rng.randrange(n)] ^= 1 << rng.randrange(8)
            fmt.CHUNK_HEADER.pack_into(
                p, s - fmt.CHUNK_HEADER.size, n, zlib.crc32(p[s : s + n], seed)
            )
        else:
            p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
            keep = 0
        tampered = fmt.encode_block(h, bytes(p))
        got, damages = decode(tampered, _KEY)
        assert [as_tuple(g) for g in got] == [as_tuple(r) for r in recs[:keep]]
        (d,) = damages
        assert "authentication failed" in d.reason or "does not match" in d.reason


@pytest.mark.parametrize("form", FORMS)
def test_a_log_starting_with_mmlc_loses_only_its_first_block(form: str) -> None:
    """Flipping the lowest bit of the first block's magic (MMLB -> MMLC) loses only that block."""
    data, spans = small_log(form, fmt.COMP_ZLIB, False)
    bad = bytearray(data)
    bad[3] ^= 0x01
    assert bad[:4] == fmt.CACHE_MAGIC
    got, damages = decode(bytes(bad))
    assert [as_tuple(g) for g in got] == expected([1, 2])
    assert [(d.start, d.end) for d in damages] == [spans[0]]


def test_wrong_key_yields_nothing_and_says_so() -> None:
    """Decoding with another private key yields no record and reports every block as damage."""
    data, spans = small_log("whole", fmt.COMP_ZSTD, True)
    other, _ = new_key()
    got, damages = decode(data, other)
    assert got == []
    assert [(d.start, d.end) for d in damages] == spans


# -- garbage and zero runs -----------------------------------------------------------------------


def _garbage(rng: random.Random, n: int, data: bytes) -> bytes:
    """``n`` zeros, random bytes, or random bytes salted with magics and block fragments."""
    kind = rng.randrange(3)
    if kind == 0:
        return bytes(n)
    out = bytearray(rng.randbytes(n))
    if kind == 2:
        for _ in range(rng.randrange(1, 6)):
            piece = rng.choice([fmt.BLOCK_MAGIC, data[: rng.randrange(4, 100)]])
            at = rng.randrange(n)
            out[at : at + len(piece)] = piece
        del out[n:]
    return bytes(out)


@pytest.mark.parametrize(("form", "codec", "encrypted"), CONFIGS)
def test_garbage_and_zero_runs_between_blocks_lose_nothing(
    form: str, codec: int, encrypted: bool
) -> None:
    """With 1-70000 garbage or zero bytes between blocks, all records come back in order."""
    data, spans = small_log(form, codec, encrypted)
    rng = random.Random(f"garbage-{form}-{codec}-{encrypted}")
    bounds = [0] + [e for _s, e in spans]
    for _ in range(12):
        where = sorted(rng.sample(bounds, rng.randrange(1, len(bounds) + 1)))
        out = bytearray()
        runs = []
        prev = 0
        for b in where:
            out += data[prev:b]
            n = min(70_000, int(2 ** rng.uniform(0, 16.1)))
            runs.append((len(out), len(out) + n))
            out += _garbage(rng, n, data)
            prev = b
        out += data[prev:]
        got, damages = decode(bytes(out), key_for(encrypted))
        assert [as_tuple(g) for g in got] == expected([0, 1, 2])
        assert [(d.start, d.end) for d in damages] == runs


def test_no_false_resync_in_ten_thousand_garbage_runs() -> None:
    """In 10**4 short garbage runs full of magics the scan never finds a block that is not there."""
    data, spans = small_log("stream", fmt.COMP_NONE, False)
    rng = random.Random("resync")
    for _ in range(10_000):
        cut = rng.choice([0, spans[1][0], len(data)])
        junk = _garbage(rng, rng.randrange(1, 300), data)
        found = [
            (b.offset, b.end)
            for b in fmt.scan_blocks(data[:cut] + junk + data[cut:])
            if isinstance(b, fmt.ScannedBlock)
        ]
        shift = len(junk)
        assert found == [(s + shift * (s >= cut), e + shift * (s >= cut)) for s, e in spans]


# -- bombs and absurd lengths ----------------------------------------------------------------------

_BOMB_CHILD = r"""
import json, resource, sys, time, zlib
from dataclasses import replace
import zstandard
from mmaplog import _format as fmt
from mmaplog._reader import Reader, Record

case, form, raw_claim = sys.argv[1], sys.argv[2], sys.argv[3]
GiB = 1 << 30

def rle_frame(total, declared):
    # FHD 0xC0: 8-byte content size, not single-segment; window 128 KiB.
    out = bytearray(b"\x28\xb5\x2f\xfd\xc0\x38" + declared.to_bytes(8, "little"))
    n = total // (128 << 10)
    for i in range(n):
        last = 1 if i == n - 1 else 0
        out += (last | (1 << 1) | ((128 << 10) << 3)).to_bytes(3, "little") + b"\0"
    return bytes(out)

if case == "zstd-declares-2**40":
    codec, payload = fmt.COMP_ZSTD, rle_frame(128 << 10, 2**40)
elif case == "zstd-1GiB-zeros":
    c = zstandard.ZstdCompressor(level=1).compressobj()
    z = bytes(1 << 20)
    payload = b"".join([c.compress(z) for _ in range(1024)] + [c.flush()])
    codec = fmt.COMP_ZSTD
elif case == "zstd-rle-1GiB":
    codec, payload = fmt.COMP_ZSTD, rle_frame(GiB, GiB)
elif case == "deflate-1GiB-zeros":
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    payload = seg * 1024 + b"\x03\x00"  # 1024 self-contained segments, then a final block
    codec = fmt.COMP_ZLIB
else:
    raise SystemExit(f"unknown case {case}")

raw_len = fmt.MAX_BLOCK_RAW if raw_claim == "max" else 100
session, seq = b"bombbomb", 9
h = fmt.BlockHeader(codec | (fmt.FLAG_STREAM if form == "stream" else 0), session, seq, 1, 0,
                    0, 0, 1, 0 if form == "stream" else raw_len, 0)
if form == "stream":
    payload = fmt.encode_chunk(payload, fmt.chunk_seed(session, seq))
data = fmt.encode_block(h, payload)
damages = []
reader = Reader(None, lambda _s, d: damages.append(d.reason))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cpu = time.process_time()
error = None
try:
    records = sum(isinstance(r, Record) for r in reader.iter_data(data))
except Exception as exc:
    records, error = -1, f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
cpu = time.process_time() - cpu
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"records": records, "error": error, "damages": damages, "cpu": cpu,
                  "grew_mib": grew, "input": len(data)}))
"""

_BOMBS = [
    ("zstd-declares-2**40", "whole", "small"),
    ("zstd-declares-2**40", "stream", "-"),
    ("zstd-1GiB-zeros", "whole", "small"),
    ("zstd-1GiB-zeros", "whole", "max"),
    ("zstd-1GiB-zeros", "stream", "-"),
    ("zstd-rle-1GiB", "whole", "small"),
    ("zstd-rle-1GiB", "stream", "-"),
    ("deflate-1GiB-zeros", "whole", "small"),
    ("deflate-1GiB-zeros", "whole", "max"),
    ("deflate-1GiB-zeros", "stream", "-"),
]


@pytest.fixture(scope="module")
def bomb_results() -> dict[tuple[str, str, str], dict[str, object]]:
    """Each bomb decoded in its own child process (run side by side), with its peak RSS growth."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    procs = {
        case: subprocess.Popen(
            [sys.executable, "-c", _BOMB_CHILD, *case],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        for case in _BOMBS
    }
    results = {}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        results[case] = json.loads(out)
    return results


_BOMB_IDS = ["-".join(c).rstrip("-") for c in _BOMBS]


@pytest.mark.parametrize("case", _BOMBS, ids=_BOMB_IDS)
def test_decompression_bombs_are_reported_within_a_second(
    case: tuple[str, str, str], bomb_results: dict[tuple[str, str, str], dict[str, object]]
) -> None:
    """A block with valid CRCs holding a >1 GiB bomb is one damage report, decoded in under 1 s."""
    r = bomb_results[case]
    assert r["error"] is None and r["records"] == 0
    damages = r["damages"]
    assert isinstance(damages, list) and len(damages) == 1
    assert "decompress" in damages[0]
    assert isinstance(r["cpu"], float) and r["cpu"] < 1.0


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=i) for c, i in zip(_BOMBS, _BOMB_IDS, strict=True)],
)
def test_decompression_bombs_use_bounded_memory(
    case: tuple[str, str, str], bomb_results: dict[tuple[str, str, str], dict[str, object]]
) -> None:
    """Decoding a bomb grows the peak RSS by under 64 MiB (plus the raw size the header claims)."""
    r = bomb_results[case]
    # A whole-form header may honestly claim up to MAX_BLOCK_RAW (80 MiB) of raw bytes,
    # which the reader is allowed to hold; beyond that the plan's 64 MiB applies.
    limit = 64 + (fmt.MAX_BLOCK_RAW / 2**20 if case[2] == "max" else 0)
    assert isinstance(r["grew_mib"], float) and r["grew_mib"] < limit, r


def _block_with(recs_raw: bytes, *, count: int, form: str) -> bytes:
    """A plain block around arbitrary raw record bytes, checksums valid."""
    t = fmt.BlockHeader(
        fmt.FLAG_STREAM if form == "stream" else 0, b"lengths!", 1, 1, 0, 0, 0, 0, 0, 0
    )
    if form == "stream":
        return fmt.encode_block(t, fmt.encode_chunk(recs_raw, fmt.chunk_seed(t.session, t.seq)))
    return fmt.encode_block(replace(t, count=count, raw_len=len(recs_raw)), recs_raw)


@pytest.mark.parametrize(
    "case",
    [
        "text_len 2**32-1",
        "text_len past the block",
        "name_len 2**16-1",
        "name_len past the block",
        "count 2**32-1",
        "count 0",
        "raw_len 0",
        "payload_len 2**32-1",
        "payload_len past EOF",
        "payload_len 0",
        "chunk body_len 2**32-1",
        "chunk body_len 0",
    ],
)
def test_absurd_length_fields_are_reported_not_trusted(case: str) -> None:
    """Length fields of 0, 2**32-1 or past the end are one damage report, with no big allocation."""
    import tracemalloc

    good = fmt.encode_record(5, 20, fmt.KIND_TEXT, b"hello")
    if case == "text_len 2**32-1":
        data = _block_with(
            fmt.RECORD_HEADER.pack(2**32 - 1, 5, 20, 0, 0, 0) + b"x", count=1, form="whole"
        )
    elif case == "text_len past the block":
        data = _block_with(
            fmt.RECORD_HEADER.pack(100, 5, 20, 0, 0, 0) + b"x", count=1, form="stream"
        )
    elif case == "name_len 2**16-1":
        data = _block_with(
            fmt.RECORD_HEADER.pack(0, 5, 20, 0, 2**16 - 1, 0) + b"x", count=1, form="whole"
        )
    elif case == "name_len past the block":
        data = _block_with(
            fmt.RECORD_HEADER.pack(0, 5, 20, 0, 100, 0) + b"x", count=1, form="stream"
        )
    elif case == "count 2**32-1":
        data = _block_with(good, count=2**32 - 1, form="whole")
    elif case == "count 0":
        data = _block_with(good, count=0, form="whole")
    elif case == "raw_len 0":
        data = _block_with(good, count=1, form="whole")
        h = fmt.parse_header(data)
        data = fmt.pack_header(replace(h, raw_len=0)) + data[h.header_len :]
    elif case.startswith("payload_len"):
        block = _block_with(good, count=1, form="whole")
        h = fmt.parse_header(block)
        n = {"payload_len 2**32-1": 2**32 - 1, "payload_len past EOF": h.payload_len + 1,
             "payload_len 0": 0}[case]  # fmt: skip
        data = fmt.pack_header(replace(h, payload_len=n)) + block[h.header_len :]
    else:
        n = 2**32 - 1 if "2**32" in case else 0
        t = fmt.BlockHeader(fmt.FLAG_STREAM, b"lengths!", 1, 1, 0, 0, 0, 0, 0, 0)
        data = fmt.encode_block(t, fmt.CHUNK_HEADER.pack(n, 0) + good)
    tracemalloc.start()
    try:
        got, damages = decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == []
    assert len(damages) == 1, damages
    assert peak < 1 << 20


# -- the mutation property ---------------------------------------------------------------------

# Records of their own: a foreign block whose payload equals one of ours would be made
# whole by a short splice of its header (the payload that follows is the same bytes),
# and a whole block of another session is rightly decoded.
_FOREIGN_BLOCKS = [[dataclasses.replace(r, text=f"other {r.text}") for r in b] for b in _BLOCKS]
_FOREIGN = {
    (form, codec): build_log(_FOREIGN_BLOCKS[::-1], form=form, codec=codec, session=b"foreign!")
    for form in FORMS
    for codec in CODECS
}


def _is_subsequence(got: list[tuple[object, ...]], original: list[tuple[object, ...]]) -> bool:
    it = iter(original)
    return all(any(g == o for o in it) for g in got)


mutation = st.tuples(
    st.sampled_from(["flip", "truncate", "splice", "duplicate", "zero-fill"]),
    st.integers(0, 2**32),
    st.integers(0, 2**32),
    st.integers(0, 7),
)


@settings(max_examples=250, deadline=None)
@given(
    st.sampled_from(FORMS),
    st.sampled_from(CODECS),
    st.booleans(),
    st.lists(mutation, min_size=1, max_size=3),
)
def test_mutated_logs_yield_an_ordered_subsequence(
    form: str, codec: int, encrypted: bool, mutations: list[tuple[str, int, int, int]]
) -> None:
    """After 1-3 byte mutations the output is an ordered subsequence of the original records."""
    data, spans = small_log(form, codec, encrypted)
    # A copy shorter than the smallest block can never hold a whole block: replaying
    # whole blocks is tampering of another kind (see the replay test below).
    # The same holds for a splice from another log: it must not carry a whole foreign block.
    foreign, foreign_spans = _FOREIGN[form, codec]
    max_copy = min(e - s for s, e in [*spans, *foreign_spans]) - 1
    buf = bytearray(data)
    for op, a, b, bit in mutations:
        size = len(buf)
        pos = a % (size + 1)
        n = 1 + b % max_copy
        if op == "flip" and size:
            buf[pos % size] ^= 1 << bit
        elif op == "truncate":
            del buf[pos:]
        elif op == "splice":
            src = b % len(foreign)
            buf[pos:pos] = foreign[src : src + n]
        elif op == "duplicate" and size:
            start = pos % size
            buf[start:start] = buf[start : start + n]
        elif op == "zero-fill":
            buf[pos : pos + n] = bytes(len(buf[pos : pos + n]))
    original = [
        (*as_tuple(r), seq, b"sess0001".hex()) for seq, blk in enumerate(_BLOCKS) for r in blk
    ]
    try:
        got, damages = decode(bytes(buf), key_for(encrypted))
    except MmapLogError:
        return
    out = [(*as_tuple(g), g.seq, g.session) for g in got]
    assert _is_subsequence(out, original)
    if len(out) < len(original) and all(m[0] != "truncate" for m in mutations):
        assert damages  # a loss is always reported (a cut at a block boundary cannot be)


def test_a_replayed_block_is_not_decoded_twice() -> None:
    """An exact copy of a block (a retried write) is skipped quietly: no record twice."""
    data, spans = small_log("whole", fmt.COMP_ZSTD, False)
    s, e = spans[1]
    got, damages = decode(data[:e] + data[s:e] + data[e:])
    assert [as_tuple(g) for g in got] == expected([0, 1, 2])
    assert damages == []


def test_a_block_reusing_a_session_and_seq_with_other_contents_is_damage() -> None:
    """A block with a seen (session, seq) but other contents is reported and skipped."""
    data, spans = small_log("whole", fmt.COMP_ZSTD, False)
    s, _e = spans[1]
    h = fmt.parse_header(data, s)
    other = fmt.encode_block(
        h, data[spans[2][0] + fmt.parse_header(data, spans[2][0]).header_len : spans[2][1]]
    )
    got, damages = decode(data + other)
    assert [as_tuple(g) for g in got] == expected([0, 1, 2])
    assert len(damages) == 1 and "appears twice" in damages[0].reason


def test_records_are_never_garbled_by_damage() -> None:
    """Every record any truncation or flip yields is one of the originals, at its block's seq."""
    for form in FORMS:
        data, _ = small_log(form, fmt.COMP_ZLIB, False)
        originals = {(*as_tuple(r), seq) for seq, blk in enumerate(_BLOCKS) for r in blk}
        rng = random.Random(form)
        for _ in range(200):
            bad = bytearray(data)
            for _ in range(3):
                bad[rng.randrange(len(bad))] = rng.randrange(256)
            got, _ = decode(bytes(bad[: rng.randrange(len(bad) + 1)]))
            assert all(isinstance(g, Record) for g in got)
            assert {(*as_tuple(g), g.seq) for g in got} <= originals


_PREFIXES = [
    b"",
    fmt.BLOCK_MAGIC,
    fmt.CACHE_MAGIC,
    fmt.pack_cache_header(fmt.CacheInfo(1, 2, fmt.CACHE_HEADER_SIZE, 1024, 0, 0, "", "")),
    small_log("stream", fmt.COMP_ZSTD, False)[0][:64],
    small_log("whole", fmt.COMP_ZLIB, True)[0][:96],
]


_FUZZ_EXAMPLES = int(os.environ.get("MMAPLOG_FUZZ_EXAMPLES", "300"))


@settings(max_examples=_FUZZ_EXAMPLES, deadline=None)
@given(st.sampled_from(_PREFIXES), st.binary(max_size=3000), st.sampled_from([b"", b"MMLB"]))
def test_random_bytes_give_records_or_mmaplog_errors(
    prefix: bytes, body: bytes, salt: bytes
) -> None:
    """Random bytes, bare or behind real magics and headers, give records or mmaplog errors only."""
    data = prefix + body[: len(body) // 2] + salt + body[len(body) // 2 :]
    for key in (None, _KEY):
        try:
            got, _ = decode(data, key)
        except MmapLogError:
            continue
        assert all(isinstance(g, Record) for g in got)


@settings(max_examples=_FUZZ_EXAMPLES, deadline=None)
@given(
    st.sampled_from(CODECS),
    st.sampled_from([0, fmt.FLAG_STREAM]),
    st.booleans(),
    st.integers(0, 2**32 - 1),
    st.integers(0, 4096),
    st.one_of(
        st.binary(max_size=2000),
        st.sampled_from(CODECS).flatmap(
            lambda c: st.binary(max_size=300).map(lambda b, c=c: compress_whole(c, b))
        ),
    ),
)
def test_random_payloads_under_valid_checksums_are_reported(
    codec: int, stream: int, encrypted: bool, count: int, raw_len: int, payload: bytes
) -> None:
    """A block with valid checksums but a random payload gives records or damage, never a crash."""
    flags = codec | stream | (fmt.FLAG_ENCRYPTED if encrypted else 0)
    ext = _SEALER.ephemeral_public + _SEALER.key_fingerprint if encrypted else b""
    h = fmt.BlockHeader(flags, b"fuzzfuzz", 3, 1, 0, 0, 0, count, raw_len, 0, ext)
    if stream and payload and payload[0] & 1:
        payload = fmt.encode_chunk(payload, fmt.chunk_seed(h.session, h.seq))
    data = fmt.encode_block(h, payload)
    got, damages = decode(data, _KEY)
    assert all(isinstance(g, Record) for g in got)
    assert len(got) <= len(payload)
    assert all(d.reason for d in damages)


def test_a_chunk_without_a_record_is_reported() -> None:
    """A stream-form block whose valid chunk carries no record bytes is reported as damage."""
    t = fmt.BlockHeader(fmt.COMP_ZLIB | fmt.FLAG_STREAM, b"emptychk", 0, 1, 0, 0, 0, 1, 0, 0)
    empty = StreamCompressor(fmt.COMP_ZLIB).chunk(b"")  # a sync flush: 00 00 ff ff
    assert empty
    data = fmt.encode_block(t, fmt.encode_chunk(empty, fmt.chunk_seed(t.session, t.seq)))
    got, damages = decode(data)
    assert got == []
    assert len(damages) == 1
