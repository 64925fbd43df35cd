"""A kill simulated at every byte boundary of the commit protocol, a slot release,
a flusher move and recovery.

A real :class:`mmaplog._cache.Cache` is built on a real file, then its mapping is
swapped for a bytearray that records every store the cache makes (the chunk
copy, the commit store, the template header, the slot zeroing), in program
order, with the exact bytes. For each store of each step, the harness builds the
cache image a kill would leave: every byte prefix of the store (and, since the
byte order inside one ``memcpy`` is unspecified, a few random subsets of its
bytes), with all earlier stores complete and no later one begun. Then it runs
``mmaplog.recover.recover_image`` on that image next to the log files as they were
at that moment, decodes the folder, and checks:

- the records are exactly those whose ``append`` had returned, plus possibly the
  one in flight, whole (never garbled, never twice);
- no damage is reported but a torn block write the state really contains;
- a second recovery (the first killed before it cleared the cache) adds nothing.

The flusher's move is cut the same way (the block not written, written in part,
written whole with the slot still full, the release at every byte), and so is
recovery itself (some of its blocks appended, one torn, the slots half cleared).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import mmaplog
from mmaplog import _cache, _emitpath
from mmaplog import _format as fmt
from mmaplog._blocks import BlockSession
from mmaplog._crypto import load_public_key
from mmaplog._logfile import LogFiles, day_of
from mmaplog.recover import clear_slots, recover_image
from torture import harness

from .common import decode_dir, describe, finish_workdir

Store = tuple[int, bytes]


class RecordingBuffer(bytearray):
    """A bytearray that logs every slice or item store made into it."""

    def __init__(self, data: bytes, trace: list[Store]) -> None:
        super().__init__(data)
        self.trace = trace

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            data = bytes(value)
            if step != 1 or stop - start != len(data):
                raise AssertionError("the cache made a store the harness cannot model")
            self.trace.append((start, data))
        else:
            self.trace.append((key, bytes([value])))
        super().__setitem__(key, value)


class _RecordingStruct:
    """``fmt.COMMIT`` whose ``pack_into`` goes through the buffer's ``__setitem__``."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def pack_into(self, buf: Any, offset: int, *values: Any) -> None:
        buf[offset : offset + self._real.size] = self._real.pack(*values)


class _FmtProxy:
    """The ``_format`` module as ``_cache`` sees it, with a recording ``COMMIT``."""

    def __init__(self) -> None:
        self.COMMIT = _RecordingStruct(fmt.COMMIT)

    def __getattr__(self, name: str) -> Any:
        return getattr(fmt, name)


@contextlib.contextmanager
def recording_cache_stores() -> Iterator[None]:
    """Route every store ``mmaplog._cache`` makes through the buffer's ``__setitem__``."""
    commit = fmt.COMMIT

    def pack_commit(buf: Any, offset: int, *values: Any) -> None:
        buf[offset : offset + commit.size] = commit.pack(*values)

    with (
        mock.patch.object(_cache, "_pack_commit", pack_commit),
        mock.patch.object(_cache, "fmt", _FmtProxy()),
    ):
        yield


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError if the block takes longer than ``seconds`` (a hang is a failure)."""

    def on_alarm(_sig: int, _frame: Any) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def apply(image: bytes, stores: list[Store]) -> bytes:
    out = bytearray(image)
    for off, data in stores:
        out[off : off + len(data)] = data
    return bytes(out)


def torn_variants(
    image: bytes, store: Store, rng: random.Random, subsets: int, dense: int = 1 << 30
) -> Iterator[tuple[str, bytes]]:
    """The images a kill during ``store`` may leave: each byte prefix, then random subsets.

    Prefixes are taken at every byte up to ``dense`` bytes and sparsely after that.
    """
    off, data = store
    n = len(data)
    cuts = (
        list(range(n + 1))
        if n <= dense
        else sorted(set(range(min(n, dense) + 1)) | set(range(dense, n + 1, 97)) | {n})
    )
    base = bytearray(image)
    for k in cuts:
        img = bytearray(base)
        img[off : off + k] = data[:k]
        yield f"prefix {k}/{n}", bytes(img)
    changed = [i for i in range(n) if image[off + i] != data[i]]
    for s in range(subsets if len(changed) > 1 else 0):
        pick = [i for i in changed if rng.random() < 0.5]
        img = bytearray(base)
        for i in pick:
            img[off + i] = data[i]
        yield f"subset {s} ({len(pick)}/{len(changed)} bytes)", bytes(img)


@dataclass
class ProtocolStats:
    """Counts over the whole run."""

    states: int = 0
    appends: int = 0
    moves: int = 0
    releases: int = 0
    recovery_states: int = 0
    in_flight_seen: int = 0
    recovery_problems: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


class Harness:
    """One cache configuration driven record by record, with every kill state checked."""

    def __init__(
        self,
        work: str,
        *,
        codec: int,
        encrypted: bool,
        buffer_size: int,
        seed: int,
        subsets: int,
        stats: ProtocolStats,
        max_failures: int = 5,
    ) -> None:
        self.work = work
        self.rng = random.Random(seed)
        self.subsets = subsets
        self.stats = stats
        self.max_failures = max_failures
        self.name = f"{fmt.COMPRESSION_NAMES[codec] or 'none'}{'+enc' if encrypted else ''}"
        self.key: str | None = None
        recipient = None
        if encrypted:
            self.key, public = mmaplog.generate_keypair()
            recipient = load_public_key(public)
        self.cache_path = os.path.join(work, "app.mmap")
        self.log_dir = os.path.join(work, "logs")
        self.case_dir = os.path.join(work, "case")
        os.makedirs(self.log_dir)
        fd = _cache.open_locked(self.cache_path, 0o600, create=True)
        assert fd is not None
        self.trace: list[Store] = []
        # The pure-Python writer: its stores go through the buffer's __setitem__, which
        # is what this harness records. The C writer copies into the mapping directly;
        # its store order is checked by real kills (tests/test_native.py).
        with mock.patch.object(_emitpath, "_WRITER", None):
            self.cache = _cache.Cache(
                self.cache_path,
                fd,
                buffer_size=buffer_size,
                log_dir=self.log_dir,
                prefix="app",
                blocks=BlockSession(codec=codec, recipient=recipient),
                wake=lambda: None,
            )
        mapped = self.cache._buf
        self.buf = RecordingBuffer(bytes(mapped), self.trace)
        self.cache._buf = self.cache._w.buf = self.buf
        if hasattr(mapped, "close"):
            mapped.close()
        self.logs: dict[str, bytes] = {}  # the log files as they are, by name
        self.committed: list[str] = []
        self.pending: list[_cache.SealedBlock] = []

    # -- checking one state ---------------------------------------------------------------

    def check(
        self,
        what: str,
        image: bytes,
        logs: dict[str, bytes],
        *,
        expected: list[str],
        inflight: str | None = None,
        torn_ok: bool = False,
    ) -> None:
        """Recover ``image`` next to ``logs``, decode, and compare with ``expected``."""
        self.stats.states += 1
        if os.path.isdir(self.case_dir):
            shutil.rmtree(self.case_dir)
        os.makedirs(self.case_dir)
        for name, data in logs.items():
            with open(os.path.join(self.case_dir, name), "wb") as f:
                f.write(data)
        problems = []
        try:
            with time_limit(10):
                report = recover_image(image, self.cache_path, log_dir=self.case_dir)
                dec = decode_dir(self.case_dir, self.key)
                report2 = recover_image(image, self.cache_path, log_dir=self.case_dir)
                dec2 = decode_dir(self.case_dir, self.key)
        except Exception as exc:
            problems.append(f"recovery or decode raised {type(exc).__name__}: {exc}")
        else:
            for p in report.problems:
                kind = p.split(":")[-1].split("(")[0].strip()[:60]
                self.stats.recovery_problems[kind] = self.stats.recovery_problems.get(kind, 0) + 1
            got = dec.texts
            if inflight is not None and got == [*expected, inflight]:
                self.stats.in_flight_seen += 1
            elif got != expected:
                lost = [t[:12] for t in expected if t not in got]
                extra = [t[:12] for t in got if t not in expected and t != inflight]
                problems.append(
                    f"decoded {len(got)} records, expected {len(expected)}"
                    f"{' (+1 in flight)' if inflight else ''}; lost {lost[:3]} extra {extra[:3]}"
                )
            if dec.bad or dec.duplicates:
                problems.append(f"damage: {describe(dec.bad + dec.duplicates)}")
            if dec.torn and not torn_ok:
                problems.append(f"torn write reported where none was made: {describe(dec.torn)}")
            if report2.records or dec2.texts != got:
                problems.append(f"a second recovery added {report2.records} records")
        if problems:
            msg = f"[{self.name}] {what}: {' | '.join(problems)}"
            self.stats.failures.append(msg)
            if len(self.stats.failures) <= self.max_failures:
                self._save(msg, image, logs)

    def _save(self, msg: str, image: bytes, logs: dict[str, bytes]) -> None:
        dest = os.path.join(self.work, "..", "failures", f"case-{len(self.stats.failures)}")
        os.makedirs(dest, exist_ok=True)
        with open(os.path.join(dest, "app.mmap"), "wb") as f:
            f.write(image)
        for name, data in logs.items():
            with open(os.path.join(dest, name), "wb") as f:
                f.write(data)
        with open(os.path.join(dest, "what.txt"), "w") as f:
            f.write(msg + "\n" + (self.key or "") + "\n")

    def check_stores(
        self,
        what: str,
        before: bytes,
        stores: list[Store],
        logs: dict[str, bytes],
        *,
        expected: list[str],
        inflight: str | None = None,
        dense: int = 1 << 30,
    ) -> None:
        """Check a kill at every byte boundary of each store in ``stores`` (in order)."""
        image = before
        for i, store in enumerate(stores):
            for label, img in torn_variants(image, store, self.rng, self.subsets, dense):
                self.check(
                    f"{what}, store {i + 1}/{len(stores)} at {store[0]}, {label}",
                    img,
                    logs,
                    expected=expected,
                    inflight=inflight,
                )
            image = apply(image, [store])

    # -- driving the cache ---------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return bytes(self.buf)

    def run_op(self, op: Callable[[], Any]) -> tuple[bytes, list[Store], bytes, Any]:
        before = self.snapshot()
        self.trace.clear()
        result = op()
        stores = list(self.trace)
        after = self.snapshot()
        if apply(before, stores) != after:
            raise AssertionError("the recorded stores do not explain the cache image")
        return before, stores, after, result

    def append(self, text: str) -> None:
        data = text.encode()
        head = fmt.record_head(time.time_ns() // 1000, 20, fmt.KIND_TEXT, data)
        before, stores, _after, status = self.run_op(
            lambda: self.cache.append(head, data, time.time_ns() // 1000, 0.0)
        )
        if status != _cache.APPENDED:
            raise AssertionError(f"append returned {status}")
        self.stats.appends += 1
        self.check_stores(
            f"append #{len(self.committed) + 1}",
            before,
            stores,
            dict(self.logs),
            expected=list(self.committed),
            inflight=text,
        )
        self.committed.append(text)

    def seal(self) -> None:
        """What the flusher's tick does: seal the open block (no memory store unless empty)."""
        before, stores, _after, _ = self.run_op(self.cache.seal)
        if stores:
            self.check_stores(
                "seal of an empty block",
                before,
                stores,
                dict(self.logs),
                expected=list(self.committed),
            )

    def move_one(self) -> bool:
        """Move the oldest sealed block as the flusher does, checking each kill state."""
        block = self.cache.take_sealed()
        if block is None:
            return False
        self.stats.moves += 1
        data = self.cache.blocks.whole_block(
            block.template, block.heads, block.texts, block.last_time_us
        )
        name = os.path.basename(
            LogFiles(self.log_dir, "app").path_for(day_of(block.template.first_time_us))
        )
        image = self.snapshot()
        old = self.logs.get(name, b"")
        expected = list(self.committed)
        # Killed before the write, during it (a torn block), and after it (slot still full).
        self.check("move: before the write", image, dict(self.logs), expected=expected)
        n = len(data)
        cuts = sorted(set(range(1, min(n, 200))) | set(range(200, n, 211)))
        for k in cuts:
            self.check(
                f"move: write torn at {k}/{n}",
                image,
                {**self.logs, name: old + data[:k]},
                expected=expected,
                torn_ok=True,
            )
        self.logs[name] = old + data
        self.check(
            "move: written, slot not released (after_append)",
            image,
            dict(self.logs),
            expected=expected,
        )
        before, stores, _after, _ = self.run_op(lambda: self.cache.release(block))
        self.stats.releases += 1
        self.check_stores("release", before, stores, dict(self.logs), expected=expected, dense=300)
        return True

    def recovery_states(self) -> None:
        """Cut recovery itself: some blocks appended, one torn, the slots half cleared."""
        image = self.snapshot()
        expected = list(self.committed)
        scratch = os.path.join(self.work, "scratch")
        shutil.rmtree(scratch, ignore_errors=True)
        os.makedirs(scratch)
        for name, data in self.logs.items():
            with open(os.path.join(scratch, name), "wb") as f:
                f.write(data)
        recover_image(image, self.cache_path, log_dir=scratch)
        after = {}
        for n in os.listdir(scratch):
            with open(os.path.join(scratch, n), "rb") as f:
                after[n] = f.read()
        for name, data in after.items():
            old = self.logs.get(name, b"")
            added = data[len(old) :]
            blocks = [b for b in fmt.scan_blocks(added) if isinstance(b, fmt.ScannedBlock)]
            ends = [b.end for b in blocks]
            for j, end in enumerate(ends):
                start = ends[j - 1] if j else 0
                # Killed after j whole blocks (recover_after_append) and in the middle of one.
                self.stats.recovery_states += 1
                self.check(
                    f"recovery: {j} blocks appended",
                    image,
                    {**self.logs, name: old + added[:start]},
                    expected=expected,
                )
                for k in sorted({1, 4, 63, 64, 65, (end - start) // 2, end - start - 1}):
                    if 0 < k < end - start:
                        self.check(
                            f"recovery: block {j} torn at {k}",
                            image,
                            {**self.logs, name: old + added[: start + k]},
                            expected=expected,
                            torn_ok=True,
                        )
        # Killed while clearing the slots: the log has everything, the cache part of it.
        fd = os.open(os.path.join(self.work, "clear.mmap"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, image, 0)
            clear_stores: list[Store] = []
            real_pwrite = os.pwrite

            def recording_pwrite(f: int, data: bytes, off: int) -> int:
                clear_stores.append((off, bytes(data)))
                return real_pwrite(f, data, off)

            with mock.patch.object(os, "pwrite", recording_pwrite):
                clear_slots(fd, image)
        finally:
            os.close(fd)
        img = image
        for off, data in clear_stores:
            self.stats.recovery_states += 1
            for k in sorted({0, 1, 2, 3, 16, 80, len(data) // 2, len(data)}):
                if k <= len(data):
                    torn = bytearray(img)
                    torn[off : off + k] = data[:k]
                    self.check(
                        f"recovery: clearing at {off}, {k} bytes",
                        bytes(torn),
                        after,
                        expected=expected,
                    )
            img = apply(img, [(off, data)])

    def close(self) -> None:
        self.cache._buf = self.cache._w.buf = bytearray(len(self.buf))
        os.close(self.cache.fd)
        self.cache.fd = -1


def run_config(
    work: str,
    *,
    codec: int,
    encrypted: bool,
    records: int,
    seed: int,
    subsets: int,
    stats: ProtocolStats,
    buffer_size: int = 16 * 1024,
    seal_p: float = 0.12,
) -> None:
    """Drive one configuration (appends, seals, moves, recovery), cut at every byte."""
    os.makedirs(work)
    with recording_cache_stores():
        h = Harness(
            work,
            codec=codec,
            encrypted=encrypted,
            buffer_size=buffer_size,
            seed=seed,
            subsets=subsets,
            stats=stats,
        )
        try:
            rng = random.Random(seed)
            for n in range(1, records + 1):
                size = rng.choice([1, 10, 40, 80, 150]) if rng.random() < 0.9 else 3000
                if not any(s == _cache.EMPTY for s in h.cache._states):
                    h.move_one()  # both slots busy: the flusher must free one first
                h.append(harness.record_text(0, n, size))
                if rng.random() < seal_p:
                    h.seal()
                if rng.random() < 0.5 or n == records:
                    while h.move_one():
                        pass
                if n == records // 2:
                    h.recovery_states()  # with the cache part-filled, maybe a block waiting
            h.append(harness.record_text(0, records + 1, 30))  # leave one in the cache
            h.recovery_states()
        finally:
            h.close()


CONFIGS = [
    (fmt.COMP_ZSTD, False),
    (fmt.COMP_ZLIB, False),
    (fmt.COMP_NONE, False),
    (fmt.COMP_ZSTD, True),
    (fmt.COMP_NONE, True),
]


def run(
    records: int,
    subsets: int,
    seed: int,
    configs: list[tuple[int, bool]] | None = None,
    work: str | None = None,
    verbose: bool = True,
    seal_p: float = 0.12,
    keep_failures: str | None = None,
) -> ProtocolStats:
    """Run every configuration; return the statistics (failures in ``stats.failures``)."""
    stats = ProtocolStats()
    base = work or tempfile.mkdtemp(
        prefix="torture-protocol-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    try:
        for i, (codec, enc) in enumerate(configs or CONFIGS):
            t0 = time.monotonic()
            before = stats.states
            run_config(
                os.path.join(base, f"config-{i}"),
                codec=codec,
                encrypted=enc,
                records=records,
                seed=seed + i,
                subsets=subsets,
                stats=stats,
                seal_p=seal_p,
            )
            if verbose:
                print(
                    f"  {fmt.COMPRESSION_NAMES[codec] or 'none'}{' encrypted' if enc else ''}: "
                    f"{stats.states - before} kill states checked in "
                    f"{time.monotonic() - t0:.1f} s, failures so far {len(stats.failures)}",
                    flush=True,
                )
    finally:
        finish_workdir(
            base,
            own_dir=work is None,
            failed=bool(stats.failures),
            keep_failures=keep_failures,
            name=f"protocol-seed{seed}",
            what="states",
            verbose=verbose,
        )
    return stats


def main_protocol(*, records: int, subsets: int, seed: int, failures: str) -> int:
    print(
        f"torture protocol: {records} records per configuration, {subsets} random subsets "
        f"per store, seed {seed}"
    )
    t0 = time.monotonic()
    stats = run(records, subsets, seed, keep_failures=failures)
    print("\n== torture protocol summary ==")
    print(
        f"{stats.states} simulated kill states in {time.monotonic() - t0:.0f} s: "
        f"{stats.appends} appends, {stats.moves} moves, {stats.releases} releases, "
        f"{stats.recovery_states} recovery steps"
    )
    print(f"states where the in-flight record was recovered (allowed): {stats.in_flight_seen}")
    print(f"problems recovery reported (no record lost): {stats.recovery_problems or 'none'}")
    print(f"failures: {len(stats.failures)}")
    for f in stats.failures[:20]:
        print("  " + f)
    return 1 if stats.failures else 0
