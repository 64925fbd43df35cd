"""Corruption: byte flips and truncations of small log and cache files, random damage of large ones.

The inputs are made by the library's own writer (a real :class:`mmaplog._cache.Cache`,
blocks moved as the flusher moves them (``BlockSession.whole_block``), recovered blocks from
``recover_image``), so they hold both payload forms. For every damaged copy:

- the decoder and recovery never raise (anything but ``MmapLogError`` is a
  crash) and never hang (10 s per case);
- a log yields exactly the records of the blocks the damage did not touch, in
  order, and reports a damaged range covering each damaged byte;
- a cache recovers, per slot, exactly the records before the first damaged chunk
  (none if the block template is damaged; all if the damage is in the commit
  word or the free space).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import mmaplog
from mmaplog import _cache
from mmaplog import _format as fmt
from mmaplog._blocks import BlockSession
from mmaplog._crypto import load_public_key
from mmaplog._reader import Reader, Record
from mmaplog.recover import recover_image
from torture import harness

from .common import finish_workdir
from .protocol import time_limit

PATTERNS: dict[str, Callable[[int], int]] = {
    "xor01": lambda b: b ^ 0x01,
    "xor80": lambda b: b ^ 0x80,
    "xorFF": lambda b: b ^ 0xFF,
    "set00": lambda b: 0,
}


@dataclass
class BlockSpan:
    start: int
    end: int
    texts: list[str]


@dataclass
class SlotSpan:
    """Where a cache slot's template and chunks are, and the record of each chunk."""

    template: tuple[int, int]
    chunks: list[tuple[int, int]]
    texts: list[str]
    order: tuple[int, int]


@dataclass
class Fixture:
    name: str
    key: str | None
    log: bytes
    blocks: list[BlockSpan]
    cache: bytes
    slots: list[SlotSpan]


@dataclass
class CorruptStats:
    cases: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    damage_reports: int = 0
    failures: list[str] = field(default_factory=list)

    def count(self, kind: str) -> None:
        self.cases += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


def make_fixture(
    work: str,
    *,
    codec: int,
    encrypted: bool,
    records: int,
    seed: int,
    buffer_size: int = 16 * 1024,
    sizes: tuple[int, ...] = (1, 20, 80, 300),
    keys: tuple[str, str] | None = None,
) -> Fixture:
    """A log file (whole and recovered stream blocks) and a cache image with two busy slots."""
    rng = random.Random(seed)
    os.makedirs(work, exist_ok=True)
    key = public = None
    if encrypted:
        key, public = keys or mmaplog.generate_keypair()
    blocks = BlockSession(codec=codec, recipient=load_public_key(public) if public else None)
    path = os.path.join(work, "app.mmap")
    fd = _cache.open_locked(path, 0o600, create=True)
    assert fd is not None
    cache = _cache.Cache(
        path,
        fd,
        buffer_size=buffer_size,
        log_dir=work,
        prefix="app",
        blocks=blocks,
        wake=lambda: None,
    )
    log = bytearray()
    try:
        every = max(3, records // 6)
        for n in range(1, records + 1):
            if not any(s == _cache.EMPTY for s in cache._states):
                block = cache.take_sealed()
                assert block is not None
                log += cache.blocks.whole_block(
                    block.template, block.heads, block.texts, block.last_time_us
                )
                cache.release(block)
            now = time.time_ns() // 1000
            text = harness.record_text(0, n, rng.choice(sizes))
            data = text.encode()
            status = cache.append(fmt.record_head(now, 20, fmt.KIND_TEXT, data), data, now, 0.0)
            assert status == _cache.APPENDED
            if n % every == 0 and n < records - every:
                cache.seal()
                while (block := cache.take_sealed()) is not None:
                    log += cache.blocks.whole_block(
                        block.template, block.heads, block.texts, block.last_time_us
                    )
                    cache.release(block)
            elif n == records - every:
                cache.seal()  # leave this block sealed in its slot, the next one open
        image = bytes(cache._buf)
    finally:
        cache.close()
    # Recovered (stream-form) blocks after the whole ones, as after a crash.
    rec_dir = os.path.join(work, "rec")
    os.makedirs(rec_dir)
    recover_image(image, path, log_dir=rec_dir)
    for name in sorted(os.listdir(rec_dir)):
        with open(os.path.join(rec_dir, name), "rb") as f:
            log += f.read()
    shutil.rmtree(rec_dir)
    log_bytes = bytes(log)
    reader = Reader(key)
    blocks = []
    for item in fmt.scan_blocks(log_bytes):
        assert isinstance(item, fmt.ScannedBlock), item
        texts = [
            r.text
            for r in reader.iter_block(item.header, item.payload, item.offset, "f")
            if isinstance(r, Record)
        ]
        blocks.append(BlockSpan(item.offset, item.end, texts))
    assert not reader.damaged
    info = fmt.parse_cache_header(image)
    slots = []
    for i in range(info.nslots):
        content = fmt.read_slot(image, info, i)
        if content is None:
            continue
        base = info.header_size + i * info.slot_size
        t0 = base + fmt.SLOT_BLOCK_OFFSET
        t1 = t0 + content.template.header_len
        seed = fmt.chunk_seed(content.template.session, content.template.seq)
        bodies, _end = fmt.walk_chunks(content.payload, seed)
        chunks = []
        pos = t1
        for body in bodies:
            chunks.append((pos, pos + fmt.CHUNK_HEADER.size + len(body)))
            pos = chunks[-1][1]
        texts = [
            r.text
            for r in Reader(key).iter_block(content.template, content.payload, -1, "c")
            if isinstance(r, Record)
        ]
        assert len(texts) == len(chunks)
        slots.append(
            SlotSpan(
                (t0, t1), chunks, texts, (content.template.first_time_us, content.template.seq)
            )
        )
    slots.sort(key=lambda s: s.order)
    name = f"{fmt.COMPRESSION_NAMES[codec] or 'none'}{'+enc' if encrypted else ''}"
    return Fixture(name, key, log_bytes, blocks, image, slots)


# -- expectations ------------------------------------------------------------------------------


def changed_positions(original: bytes, damaged: bytes) -> list[int]:
    n = min(len(original), len(damaged))
    return [i for i in range(n) if original[i] != damaged[i]]


def copied_block_ranges(data: bytes) -> list[tuple[int, int]]:
    """The byte ranges of intact blocks that appear more than once, byte for byte."""
    seen: dict[tuple[bytes, int, int, int], list[tuple[int, int]]] = {}
    for b in fmt.scan_blocks(data):
        if isinstance(b, fmt.ScannedBlock):
            h = b.header
            key = (h.session, h.seq, h.payload_len, h.payload_crc)
            seen.setdefault(key, []).append((b.offset, b.end))
    return [r for ranges in seen.values() if len(ranges) > 1 for r in ranges]


def expected_log(fx: Fixture, changed: list[int], length: int) -> list[str]:
    """The texts of the blocks untouched by ``changed`` and wholly inside ``length`` bytes."""
    out = []
    for b in fx.blocks:
        if b.end <= length and not any(b.start <= p < b.end for p in changed):
            out.extend(b.texts)
    return out


def expected_cache(fx: Fixture, changed: list[int], length: int) -> list[str]:
    """Per slot: the records before the first damaged (or cut) chunk; none if its template is."""
    out = []
    for s in fx.slots:
        if s.template[1] > length or any(s.template[0] <= p < s.template[1] for p in changed):
            continue
        for (c0, c1), text in zip(s.chunks, s.texts, strict=True):
            if c1 > length or any(c0 <= p < c1 for p in changed):
                break
            out.append(text)
    return out


def _subsequence(got: list[str], original: list[str]) -> bool:
    it = iter(original)
    return all(any(g == o for o in it) for g in got)


# -- running one case ----------------------------------------------------------------------------


def decode_bytes(data: bytes, key: str | None) -> tuple[list[str], list[fmt.Damage]]:
    damages: list[fmt.Damage] = []
    reader = Reader(key, lambda _s, d: damages.append(d))
    texts = [r.text for r in reader.iter_data(data, "case") if isinstance(r, Record)]
    return texts, damages


class Runner:
    def __init__(self, work: str, stats: CorruptStats, max_saved: int = 10) -> None:
        self.work = work
        self.stats = stats
        self.max_saved = max_saved
        self.case_dir = os.path.join(work, "case")

    def fail(self, fx: Fixture, what: str, data: bytes, msg: str) -> None:
        self.stats.failures.append(f"[{fx.name}] {what}: {msg}")
        if len(self.stats.failures) <= self.max_saved:
            dest = os.path.join(self.work, "failures")
            os.makedirs(dest, exist_ok=True)
            n = len(self.stats.failures)
            with open(os.path.join(dest, f"case-{n}.bin"), "wb") as f:
                f.write(data)
            with open(os.path.join(dest, f"case-{n}.txt"), "w") as f:
                f.write(f"[{fx.name}] {what}: {msg}\n{fx.key or ''}\n")

    def log_case(self, fx: Fixture, what: str, data: bytes, kind: str) -> None:
        self.stats.count(kind)
        changed = changed_positions(fx.log, data)
        expected = expected_log(fx, changed, len(data))
        try:
            with time_limit(10):
                got, damages = decode_bytes(data, fx.key)
        except mmaplog.MmapLogError as exc:
            got, damages = [], [fmt.Damage(0, len(data), f"raised {exc}")]
        except Exception as exc:
            self.fail(fx, what, data, f"the decoder raised {type(exc).__name__}: {exc}")
            return
        self.stats.damage_reports += len(damages)
        if got != expected:
            lost = len([t for t in expected if t not in got])
            extra = len([t for t in got if t not in expected])
            self.fail(
                fx,
                what,
                data,
                f"decoded {len(got)} records, expected {len(expected)} "
                f"(missing {lost}, unexpected {extra})",
            )
            return
        truncated = 0 < len(data) < len(fx.log) and all(b.end != len(data) for b in fx.blocks)
        # A splice can copy a whole block elsewhere: an intact, authentic block whose
        # second copy readers skip quietly (as the repeat of an fsync retry).
        copies = copied_block_ranges(data)
        for p in changed + ([len(data) - 1] if truncated else []):
            if not any(d.start <= p < d.end for d in damages) and not any(
                a <= p < b for a, b in copies
            ):
                self.fail(
                    fx,
                    what,
                    data,
                    f"damaged byte {p} is in no reported range "
                    f"({[(d.start, d.end) for d in damages]})",
                )
                return

    def cache_case(self, fx: Fixture, what: str, data: bytes, kind: str, recover: bool) -> None:
        self.stats.count(kind)
        changed = changed_positions(fx.cache, data)
        expected = expected_cache(fx, changed, len(data))
        everything = [t for s in fx.slots for t in s.texts]
        try:
            with time_limit(10):
                got_reader, _damages = decode_bytes(data, fx.key)
                got = None
                if recover:
                    if os.path.isdir(self.case_dir):
                        shutil.rmtree(self.case_dir)
                    os.makedirs(self.case_dir)
                    recover_image(
                        data, os.path.join(self.case_dir, "app.mmap"), log_dir=self.case_dir
                    )
                    got = [r.text for r in mmaplog.read_records(self.case_dir, key=fx.key)]
        except Exception as exc:
            self.fail(fx, what, data, f"raised {type(exc).__name__}: {exc}")
            return
        if not _subsequence(got_reader, everything):
            self.fail(fx, what, data, "the decoder yielded records that are not the originals")
        if got is not None and got != expected:
            self.fail(fx, what, data, f"recovery gave {len(got)} records, expected {len(expected)}")


def flips(
    data: bytes, positions: Iterator[int] | range, patterns: list[str]
) -> Iterator[tuple[str, str, bytes]]:
    for p in positions:
        for name in patterns:
            new = PATTERNS[name](data[p])
            if new == data[p]:
                continue
            out = bytearray(data)
            out[p] = new
            yield f"{name} at {p}", name, bytes(out)


def random_damage(data: bytes, rng: random.Random) -> bytes:
    """1-6 bursts of random bytes, zeros, 0xFF or bytes copied from elsewhere in the file."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        n = rng.choice([1, 2, 4, 8, 64, 512, 4096])
        at = rng.randrange(len(out))
        kind = rng.choice(["random", "zeros", "ff", "splice"])
        if kind == "random":
            chunk = rng.randbytes(n)
        elif kind == "zeros":
            chunk = bytes(n)
        elif kind == "ff":
            chunk = b"\xff" * n
        else:
            src = rng.randrange(len(out))
            chunk = bytes(out[src : src + n])
        out[at : at + len(chunk)] = chunk[: len(out) - at]
    return bytes(out)


def run(
    *,
    seed: int,
    large: int,
    patterns: list[str] | None = None,
    stride: int = 1,
    cache_stride: int = 1,
    configs: list[tuple[int, bool]] | None = None,
    large_records: int = 2500,
    verbose: bool = True,
    work: str | None = None,
    keep_failures: str | None = None,
) -> CorruptStats:
    """Run the corruption campaign; failures are in ``stats.failures``."""
    stats = CorruptStats()
    pats = patterns or list(PATTERNS)
    base = work or tempfile.mkdtemp(
        prefix="torture-corrupt-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    runner = Runner(base, stats)
    rng = random.Random(seed)
    try:
        for i, (codec, enc) in enumerate(
            configs
            or [
                (fmt.COMP_ZSTD, False),
                (fmt.COMP_ZSTD, True),
                (fmt.COMP_ZLIB, False),
                (fmt.COMP_NONE, False),
            ]
        ):
            t0 = time.monotonic()
            n0 = stats.cases
            fx = make_fixture(
                os.path.join(base, f"small-{i}"),
                codec=codec,
                encrypted=enc,
                records=24,
                seed=seed + i,
            )
            for what, _kind, data in flips(fx.log, range(0, len(fx.log), stride), pats):
                runner.log_case(fx, "log " + what, data, "log flip")
            for cut in range(0, len(fx.log), stride):
                runner.log_case(fx, f"log cut at {cut}", fx.log[:cut], "log truncation")
            # The cache: every byte of templates and chunks; the free space at cache_stride.
            busy = {p for s in fx.slots for a, b in [s.template, *s.chunks] for p in range(a, b)}
            info = fmt.parse_cache_header(fx.cache)
            strings = len(info.log_dir.encode()) + len(info.prefix.encode())
            busy |= set(range(fmt.CACHE_HEADER.size + strings))  # the header's fields, strings
            positions = [p for p in range(len(fx.cache)) if p in busy or p % cache_stride == 0]
            for what, _kind, data in flips(fx.cache, positions[::stride], pats):
                runner.cache_case(fx, "cache " + what, data, "cache flip", recover=True)
            for cut in range(0, len(fx.cache), max(1, stride)):
                if cut in busy or cut % cache_stride == 0:
                    runner.cache_case(
                        fx, f"cache cut at {cut}", fx.cache[:cut], "cache truncation", recover=True
                    )
            if verbose:
                print(
                    f"  {fx.name}: log {len(fx.log)} B ({len(fx.blocks)} blocks), cache "
                    f"{len(fx.cache)} B: {stats.cases - n0} cases in "
                    f"{time.monotonic() - t0:.1f} s, failures so far {len(stats.failures)}",
                    flush=True,
                )
        if large:
            t0 = time.monotonic()
            n0 = stats.cases
            fx = make_fixture(
                os.path.join(base, "large"),
                codec=fmt.COMP_ZSTD,
                encrypted=False,
                records=large_records,
                seed=seed,
                buffer_size=150 * 1024,
                sizes=(10, 100, 400, 2000),
            )
            for j in range(large):
                data = random_damage(fx.log, rng)
                runner.log_case(fx, f"large log damage #{j}", data, "large log damage")
                data = random_damage(fx.cache, rng)
                runner.cache_case(
                    fx, f"large cache damage #{j}", data, "large cache damage", recover=True
                )
            if verbose:
                print(
                    f"  large: log {len(fx.log)} B ({len(fx.blocks)} blocks), cache "
                    f"{len(fx.cache)} B: {stats.cases - n0} damaged copies in "
                    f"{time.monotonic() - t0:.1f} s, failures so far {len(stats.failures)}",
                    flush=True,
                )
    finally:
        finish_workdir(
            base,
            own_dir=work is None,
            failed=bool(stats.failures),
            keep_failures=keep_failures,
            name=f"corrupt-seed{seed}",
            what="inputs",
            verbose=verbose,
        )
    return stats


def main_corrupt(
    *, seed: int, large: int, failures: str, cache_stride: int = 16, large_records: int = 2500
) -> int:
    print(
        f"torture corrupt: seed {seed}, patterns {', '.join(PATTERNS)}, {large} large damages; "
        "caches: every byte of the header fields, templates and chunks, "
        + (
            "and of the free space"
            if cache_stride == 1
            else f"every {cache_stride}th byte of the free space"
        )
    )
    t0 = time.monotonic()
    stats = run(
        seed=seed,
        large=large,
        cache_stride=cache_stride,
        large_records=large_records,
        keep_failures=failures,
    )
    print("\n== torture corrupt summary ==")
    print(f"{stats.cases} damaged inputs in {time.monotonic() - t0:.0f} s: {stats.by_kind}")
    print(f"damage reports: {stats.damage_reports}; failures: {len(stats.failures)}")
    for f in stats.failures[:20]:
        print("  " + f)
    return 1 if stats.failures else 0
