"""CI-sized runs of the torture suite (``python -m torture``): each attack, small budgets.

The long runs and their figures are in docs/reliability.md. Decompression bombs and
absurd length fields are covered by tests/test_reader_damage.py and not repeated here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mmaplog
from mmaplog import _format as fmt
from torture import corrupt, fuzz, harness, protocol, resources, stateful
from torture.common import decode_dir, is_torn_write

from .conftest import new_cache

pytestmark = pytest.mark.slow  # kills real processes: left out of the quick run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = int(os.environ.get("TORTURE_SEED", "7"))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


# -- 1. random kills of writers and recoverers ------------------------------------------------


def test_random_kills_of_writers_and_recoverers_lose_nothing(tmp_path):
    """Ten random SIGKILLs of writers and recoverers (CLI run) leave every acked record once."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torture",
            "--kills",
            "10",
            "--seed",
            str(SEED),
            "--extended",
            "--quiet",
            "--failures",
            str(tmp_path / "failures"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "lost: 0, duplicated: 0, garbled: 0, out of order: 0" in out.stdout


def test_torture_run_py_runs_as_a_script():
    """``python torture/run.py --help`` works as well as ``python -m torture``."""
    out = subprocess.run(
        [sys.executable, "torture/run.py", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0 and "--kills" in out.stdout


def test_recovery_after_size_splits_keeps_the_order(tmp_path):
    """A writer killed after size splits is recovered with its records still in order."""
    # Bug 1 in docs/reliability.md, found by the kill run: recovery used to append to the
    # day's first part, so the records it recovered decoded before older ones.
    log_dir = str(tmp_path)
    config = {
        "log_dir": log_dir,
        "sizes": [100, 300],
        "handler": {"buffer_size": 16 * 1024, "max_file_size": 4096, "flush_interval": 3600},
    }
    acked, status = harness.run_writer(config, kill_after=1.0)
    assert status == -9
    mmaplog.recover(log_dir)
    harness.check_exactly_once([r.text for r in mmaplog.read_records(log_dir)], acked)


def test_recovery_writes_a_caches_blocks_in_sequence(tmp_path):
    """Recovery appends a dead cache's blocks in sequence order, whatever their first times."""
    # Bug 5 in docs/reliability.md (found by the torture suite, fixed since).
    from mmaplog import _cache
    from mmaplog.recover import recover_image

    cache = new_cache(str(tmp_path))
    path = cache.path
    now = 1_764_000_000_000_000
    for text, t, seal in (
        ("B #1", now + 50, False),
        ("A #1", now + 60, True),
        ("C #1", now, False),
        ("A #2", now + 70, False),
    ):
        data = text.encode()
        assert cache.append(fmt.record_head(t, 20, 0, data), data, t, 0.0) == _cache.APPENDED
        if seal:
            cache.seal()  # the flusher's tick: block 0 sealed, not yet moved
    image = _cache.read_image(cache.fd)  # the process is killed with both blocks in the cache
    cache.close()
    recover_image(image, path)
    texts = [r.text for r in mmaplog.read_records(str(tmp_path))]
    assert texts == ["B #1", "A #1", "C #1", "A #2"]


# -- 2. a kill at every byte boundary ----------------------------------------------------------


def test_a_kill_at_every_byte_of_the_protocol_loses_nothing(tmp_path):
    """A kill at each byte (or byte subset) of every store, move and recovery loses nothing."""
    stats = protocol.run(
        records=10,
        subsets=2,
        seed=SEED,
        verbose=False,
        seal_p=0.4,
        configs=[(fmt.COMP_ZSTD, False), (fmt.COMP_ZSTD, True), (fmt.COMP_NONE, False)],
        work=str(tmp_path),
    )
    assert not stats.failures, "\n".join(stats.failures[:10])
    assert stats.appends >= 30 and stats.moves >= 3 and stats.states > 2000


def test_a_kill_during_a_template_copy_is_not_reported_as_damage(tmp_path):
    """A cache whose newest block template was cut short by a kill is not quarantined."""
    # Bug 2 in docs/reliability.md (found by the torture suite, fixed since).
    with protocol.recording_cache_stores():
        h = protocol.Harness(
            str(tmp_path / "w"),
            codec=fmt.COMP_ZSTD,
            encrypted=False,
            buffer_size=16 * 1024,
            seed=1,
            subsets=0,
            stats=protocol.ProtocolStats(),
        )
        try:
            head = fmt.record_head(1, 20, fmt.KIND_TEXT, b"first")
            before, stores, _after, _ = h.run_op(lambda: h.cache.append(head, b"first", 1, 0.0))
        finally:
            h.close()
    off, data = stores[1]  # commit word zeroed, then the template header copy: cut it at 20
    assert data[:4] == fmt.BLOCK_MAGIC
    torn = bytearray(before)
    torn[off : off + 20] = data[:20]
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "app.mmap").write_bytes(bytes(torn))
    mmaplog.recover(str(log_dir))
    assert not [n for n in os.listdir(log_dir) if ".corrupt-" in n]


def test_recording_buffer_sees_every_store_of_the_cache(tmp_path):
    """The harness models every store: replaying them rebuilds the cache image exactly."""
    with protocol.recording_cache_stores():
        h = protocol.Harness(
            str(tmp_path),
            codec=fmt.COMP_ZLIB,
            encrypted=False,
            buffer_size=16 * 1024,
            seed=1,
            subsets=0,
            stats=protocol.ProtocolStats(),
        )
        try:
            for n in range(1, 30):
                text = b"x" * n
                head = fmt.record_head(n, 20, fmt.KIND_TEXT, text)
                before, stores, after, _ = h.run_op(
                    lambda head=head, text=text: h.cache.append(head, text, 1, 0.0)
                )
                assert stores and protocol.apply(before, stores) == after
        finally:
            h.close()


# -- 3. corruption -------------------------------------------------------------------------------


def test_byte_flips_truncations_and_random_damage_are_survived(tmp_path):
    """Flips and cuts of small logs and caches, random damage of large ones: no crash, no loss."""
    stats = corrupt.run(
        seed=SEED,
        large=12,
        patterns=["xor01", "xorFF", "set00"],
        stride=3,
        cache_stride=257,
        large_records=1200,
        verbose=False,
        configs=[(fmt.COMP_ZSTD, False), (fmt.COMP_ZSTD, True)],
        work=str(tmp_path),
    )
    assert not stats.failures, "\n".join(stats.failures[:10])
    assert stats.by_kind["log flip"] > 1000 and stats.by_kind["cache flip"] > 300


def test_torn_write_classifier():
    """A block cut short by a kill is told apart from a damaged block."""
    h = fmt.BlockHeader(fmt.FLAG_STREAM, b"sessions", 1, 1, 0, 0, 0, 0, 0, 0)
    block = fmt.encode_block(h, fmt.encode_chunk(b"x" * 100, fmt.chunk_seed(b"sessions", 1)))
    assert is_torn_write(block[:50], fmt.Damage(0, 50, "torn"))
    assert is_torn_write(block[:2] + block, fmt.Damage(0, 2, "torn"))
    assert is_torn_write(block[:-1], fmt.Damage(0, len(block) - 1, "torn"))
    flipped = block[:-3] + b"\0" + block[-2:]
    assert not is_torn_write(flipped, fmt.Damage(0, len(block), "crc"))


# -- 4. fuzzing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=os.path.basename(p)) for p in fuzz.regression_inputs()]
    or [pytest.param(None, id="none-yet")],
)
def test_fuzz_regressions_replay_cleanly(path):
    """Every input the fuzzer ever crashed on is now decoded with at most an MmapLogError."""
    if path is None:
        pytest.skip("the fuzzer has found no crash so far (tests/fuzz/regressions/ is empty)")
    with open(path, "rb") as f:
        fuzz.one_input(f.read())


def test_fuzz_seed_corpus_decodes_without_damage():
    """The fuzzer's seeds (plain, zlib, zstd, encrypted logs and caches) are valid inputs."""
    from mmaplog._reader import Reader, Record

    paths = sorted(os.listdir(fuzz.CORPUS))
    assert {"zstd-enc.log", "zstd.cache", "none.log"} <= set(paths)
    for name in paths:
        with open(os.path.join(fuzz.CORPUS, name), "rb") as f:
            data = f.read()
        damages = []
        reader = Reader(fuzz._key(), lambda _s, d, damages=damages: damages.append(d))
        records = [r for r in reader.iter_data(data, name) if isinstance(r, Record)]
        assert records and not damages, (name, damages)
        fuzz.one_input(data)


@pytest.mark.skipif(not fuzz.have_atheris(), reason="atheris is not installed")
def test_atheris_finds_no_crash_in_ten_seconds():
    """Ten seconds of coverage-guided fuzzing of the decoder find no crash."""
    out = subprocess.run(
        [sys.executable, "-m", "torture", "fuzz", "--seconds", "10", "--seed", str(SEED)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "crashes: 0" in out.stdout


def test_handler_state_machine():
    """Random interleavings of emit, flush, close+reopen, fork, kill and recover keep the model."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        stateful.HandlerMachine, settings=stateful.machine_settings(examples=8, steps=8)
    )


# -- 5. resources --------------------------------------------------------------------------------


def test_sixteen_threads_with_a_microsecond_switch_interval(tmp_path):
    """16 threads logging at once with random flush() calls: every record once, in order."""
    result = resources.thread_storm(str(tmp_path), threads=16, records=400, seed=SEED)
    assert result["records"] == 6400


def test_log_write_failing_at_call_n_loses_nothing(tmp_path):
    """EIO/ENOSPC on the log write at call N, once or for a while: retried, nothing lost."""
    assert resources.io_errors(str(tmp_path), first_n=3, records=200)["runs"] == 6


def test_a_failed_fsync_is_retried_without_a_damage_report(tmp_path):
    """With durable=True, an fsync failing once loses nothing and reports no damage."""
    # Bug 3 in docs/reliability.md (found by the torture suite, fixed since).
    result = resources.fsync_failure(str(tmp_path))
    counts = result["counts"]
    assert not (counts["lost"] or counts["duplicated"] or counts["garbled"]), counts
    assert result["damage"] == []


def test_a_short_write_under_rlimit_fsize_leaves_no_damage(tmp_path):
    """Writes cut short by RLIMIT_FSIZE lose only counted drops and leave no torn block."""
    # Bug 4 in docs/reliability.md (found by the torture suite, fixed since).
    resources.file_size_limit(str(tmp_path), records=800)


@pytest.mark.skipif(not resources.can_mount_tmpfs(), reason="needs root, unshare and tmpfs")
def test_a_full_disk_is_survived_and_drops_are_counted():
    """A full tmpfs at start and while running: no SIGBUS, no exception, drops counted."""
    results = resources.full_disk(records=600)
    running = results["full while running"]
    assert running["counts"]["lost"] == running["dropped_noted"]


def test_decode_dir_reports_no_damage_for_a_clean_close(tmp_path):
    """The checker itself: a clean close decodes with no damage and no torn write."""
    h = mmaplog.MmapHandler(str(tmp_path), "app", buffer_size=16 * 1024)
    h.write(b"T0 #1 ", 1.0, 20)
    h.close()
    dec = decode_dir(str(tmp_path))
    assert dec.texts == ["T0 #1 "] and not (dec.bad or dec.torn or dec.duplicates)


def test_corrupt_accepts_a_spliced_copy_of_a_whole_block():
    """A splice that copies a whole block elsewhere leaves an authentic block, not damage."""
    from .strategies import Rec, build_log

    recs = [
        [Rec(1_764_000_000_000_000 + 10 * b + i, 20, 0, f"b{b} r{i}" + "x" * b) for i in range(3)]
        for b in range(3)
    ]
    data, spans = build_log(recs, form="whole", codec=fmt.COMP_NONE)
    (_a0, _a1), (b0, b1), (c0, c1) = spans
    assert c1 - c0 > b1 - b0  # block 2 is the longer: a copy of block 1 fits over its start
    spliced = data[:c0] + data[b0:b1] + data[c0 + (b1 - b0) :]
    assert corrupt.copied_block_ranges(spliced) == [(b0, b1), (c0, c0 + b1 - b0)]
    assert corrupt.copied_block_ranges(data) == []


def test_lifecycle_schedules_neither_hang_nor_lose_records():
    """Random schedules of signals, finalizers, fork, reopen, reloads, renames and chdir
    around threads that log: no hang, no logging error, every acknowledged record once."""
    from torture.lifecycle import main_lifecycle

    status, summary = main_lifecycle(schedules=6, seconds=None, seed=4242, quiet=True)
    assert status == 0
    assert summary["schedules"] == 6 and summary["hangs"] == 0
