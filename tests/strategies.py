"""Hypothesis strategies for mmaplog records and blocks, and builders of real blocks.

Blocks are always made with the library's own writers: stream form the way the
cache writes a slot and recovery turns it into a log block (``StreamCompressor``
+ ``encode_chunk`` per record, ``recovered_block``), whole form the way the
flusher moves a block (``build_block``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import strategies as st

from mmaplog import _format as fmt
from mmaplog._blocks import encode_whole_block as build_block
from mmaplog._codec import StreamCompressor
from mmaplog._crypto import Sealer
from mmaplog._reader import Reader, Record
from mmaplog.recover import recovered_block

CODECS = (fmt.COMP_NONE, fmt.COMP_ZLIB, fmt.COMP_ZSTD)
FORMS = ("stream", "whole")
KINDS = (fmt.KIND_TEXT, fmt.KIND_JSON, fmt.KIND_NOTE)
I64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Rec:
    """A record to write: time in µs, level, kind, text, logger name and thread id."""

    time_us: int
    level: int
    kind: int
    text: str
    name: str = ""
    thread: int = 0

    @property
    def raw(self) -> bytes:
        """The record's stored form."""
        return fmt.encode_record(
            self.time_us, self.level, self.kind, self.text.encode(), self.name.encode(), self.thread
        )


# -- strategies ------------------------------------------------------------------------

short_texts = st.text(max_size=40)
"""Any unicode text (no surrogates), including the empty string."""

long_texts = st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=16), st.integers(200, 600))
"""Multi-KB texts, built by repetition so they are cheap to generate."""

texts = st.one_of(short_texts, short_texts, short_texts, long_texts)

levels = st.integers(0, 255)

times_us = st.one_of(
    st.integers(0, 4_102_444_800_000_000),  # 1970 .. 2100
    st.integers(*I64),
)
"""Times in µs since the epoch: mostly realistic, sometimes any i64."""

kinds = st.sampled_from(KINDS)

logger_names = st.one_of(
    st.just(""),
    st.sampled_from(["root", "shop", "shop.orders", "urllib3.connectionpool"]),
    st.text(max_size=30),
)
"""Logger names: none, a few that repeat (as in a real block), or any text."""

thread_ids = st.one_of(st.just(0), st.just(140279348460416), st.integers(0, 2**64 - 1))
"""Thread ids: unknown (0), a typical pthread id, or any u64."""

records = st.builds(
    Rec, time_us=times_us, level=levels, kind=kinds, text=texts, name=logger_names,
    thread=thread_ids,
)  # fmt: skip

record_lists = st.lists(records, min_size=1, max_size=12)

codecs = st.sampled_from(CODECS)

forms = st.sampled_from(FORMS)

sessions = st.binary(min_size=8, max_size=8)

seqs = st.integers(0, 2**64 - 1)


@st.composite
def split_records(draw: st.DrawFn, recs: Sequence[Rec] | None = None) -> list[list[Rec]]:
    """A list of records cut into non-empty blocks at random boundaries."""
    if recs is None:
        recs = draw(record_lists)
    n = len(recs)
    cuts = draw(st.sets(st.integers(1, n - 1), max_size=n - 1)) if n > 1 else set()
    bounds = [0, *sorted(cuts), n]
    return [list(recs[a:b]) for a, b in itertools.pairwise(bounds)]


# -- builders ---------------------------------------------------------------------------


def template(
    first_time_us: int,
    *,
    codec: int,
    session: bytes,
    seq: int,
    sealer: Sealer | None = None,
    pid: int = 4242,
) -> fmt.BlockHeader:
    """The block header template the cache writes when it opens a slot."""
    flags = codec | fmt.FLAG_STREAM
    ext = b""
    if sealer is not None:
        flags |= fmt.FLAG_ENCRYPTED
        ext = sealer.ephemeral_public + sealer.key_fingerprint
    return fmt.BlockHeader(
        flags=flags,
        session=session,
        seq=seq,
        pid=pid,
        payload_len=0,
        first_time_us=first_time_us,
        last_time_us=0,
        count=0,
        raw_len=0,
        payload_crc=0,
        extension=ext,
    )


def stream_chunks(
    recs: Sequence[Rec], t: fmt.BlockHeader, *, sealer: Sealer | None = None
) -> bytes:
    """The chunks the cache writes for ``recs`` into the slot opened with template ``t``."""
    comp = StreamCompressor(t.compression)
    seed = fmt.chunk_seed(t.session, t.seq)
    aad = fmt.block_aad(t.session, t.seq, t.flags, t.key_fingerprint)
    out = []
    for i, r in enumerate(recs):
        body = comp.chunk(r.raw)
        if sealer is not None:
            body = sealer.seal(t.seq, i, body, aad)
        out.append(fmt.encode_chunk(body, seed))
    return b"".join(out)


def last_time(recs: Sequence[Rec]) -> int:
    """The largest record time, as the cache keeps it."""
    return max(r.time_us for r in recs)


def build(
    recs: Sequence[Rec],
    *,
    form: str,
    codec: int,
    session: bytes = b"sess0001",
    seq: int = 0,
    sealer: Sealer | None = None,
) -> bytes:
    """One complete log-file block holding ``recs``, in the given form."""
    t = template(recs[0].time_us, codec=codec, session=session, seq=seq, sealer=sealer)
    if form == "whole":
        heads, texts = fmt.split_records([r.raw for r in recs])
        return build_block(t, heads, texts, last_time(recs), level=None, sealer=sealer)
    payload = stream_chunks(recs, t, sealer=sealer)
    content = fmt.SlotContent(
        index=0,
        template=t,
        payload=payload,
        count=len(recs),
        last_time_us=last_time(recs),
        committed_len=len(payload),
    )
    return recovered_block(content)


def build_log(
    blocks: Sequence[Sequence[Rec]],
    *,
    form: str,
    codec: int,
    session: bytes = b"sess0001",
    sealer: Sealer | None = None,
) -> tuple[bytes, list[tuple[int, int]]]:
    """A log file image of consecutive blocks (seq 0, 1, ...) and each block's ``[start, end)``."""
    parts = []
    spans = []
    pos = 0
    for seq, recs in enumerate(blocks):
        b = build(recs, form=form, codec=codec, session=session, seq=seq, sealer=sealer)
        parts.append(b)
        spans.append((pos, pos + len(b)))
        pos += len(b)
    return b"".join(parts), spans


def new_key() -> tuple[X25519PrivateKey, Sealer]:
    """A recipient private key and a session sealer for its public key."""
    private = X25519PrivateKey.generate()
    return private, Sealer(private.public_key().public_bytes_raw())


def decode(
    data: bytes, private: X25519PrivateKey | None = None
) -> tuple[list[Record], list[fmt.Damage]]:
    """All records a Reader yields for ``data``, and every damage it reported."""
    damages: list[fmt.Damage] = []
    reader = Reader(private, lambda _src, d: damages.append(d))
    out = [r for r in reader.iter_data(data) if isinstance(r, Record)]
    return out, damages


def as_tuple(r: Record | Rec) -> tuple[float, int, int, str, str | None, int | None]:
    """What a written record and a decoded one must agree on (time, level, kind, text,
    logger and thread; an empty name and thread 0 read back as None)."""
    if isinstance(r, Rec):
        return (r.time_us / 1e6, r.level, r.kind, r.text, r.name or None, r.thread or None)
    return (r.time, r.level, r.kind, r.text, r.logger, r.thread)
