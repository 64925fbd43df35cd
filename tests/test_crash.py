"""kill -9 crash tests: real child processes, killed with SIGKILL, then recovered and decoded.

Each child logs numbered records and acknowledges each one on a pipe after
``emit`` returned; after the kill every acknowledged record must be in the log
exactly once and in order (at most the one record in flight may also appear).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

import mmaplog
from torture import harness

pytestmark = pytest.mark.slow  # kills real processes: left out of the quick run

SEED = int(os.environ.get("MMAPLOG_CRASH_SEED", "20261125"))
# Every crash test runs with and without encryption: the key changes what is in the
# cache, never what survives.
_PRIVATE, _PUBLIC = mmaplog.generate_keypair()
ENCRYPTION = pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])


def keyed(handler: dict[str, object], encrypted: bool) -> dict[str, object]:
    return {**handler, "public_key": _PUBLIC} if encrypted else handler


def decoded(log_dir: str, key: str | None = None) -> list[str]:
    return [r.text for r in mmaplog.read_records(log_dir, key=key)]


def kill_and_check(
    log_dir: str,
    *,
    delay: float,
    handler: dict[str, object] | None = None,
    threads: int = 1,
    sizes: tuple[int, int] = (1, 4096),
    encrypted: bool = False,
    recover_with_handler: bool = False,
) -> dict[str, int]:
    key = _PRIVATE if encrypted else None
    config = {
        "log_dir": log_dir,
        "handler": keyed({"buffer_size": 64 * 1024, **(handler or {})}, encrypted),
        "threads": threads,
        "sizes": list(sizes),
    }
    acked, status = harness.run_writer(config, kill_after=delay)
    assert status == -9, "the writer should have been killed, not have exited"
    assert acked, "the writer acknowledged nothing before the kill"
    if recover_with_handler:
        h = mmaplog.MmapHandler(log_dir, **{k: v for k, v in (handler or {}).items()})
        h.close()
    else:
        mmaplog.recover(log_dir)
    counts = harness.check_exactly_once(decoded(log_dir, key), acked)
    # Recovery a second time finds nothing more.
    assert mmaplog.recover(log_dir) == 0
    assert harness.check_exactly_once(decoded(log_dir, key), acked) == counts
    return counts


_rng = random.Random(SEED)
RANDOM_DELAYS = [round(_rng.uniform(0.25, 1.5), 3) for _ in range(10)]


@ENCRYPTION
@pytest.mark.parametrize("delay", RANDOM_DELAYS)
def test_random_kill_loses_nothing(tmp_path, delay, encrypted):
    """A writer killed at a random moment loses no acknowledged record and duplicates none."""
    kill_and_check(str(tmp_path), delay=delay, encrypted=encrypted)


@ENCRYPTION
@pytest.mark.parametrize("delay", [0.4, 0.7, 1.0, 1.3])
def test_kill_with_threads_and_a_busy_flusher(tmp_path, delay, encrypted):
    """Four threads on a 16 KiB cache with a flusher always moving: a kill loses nothing."""
    kill_and_check(
        str(tmp_path),
        delay=delay,
        encrypted=encrypted,
        handler={"buffer_size": 16 * 1024, "flush_interval": 0.001},
        threads=4,
        sizes=(1, 600),
    )


@ENCRYPTION
@pytest.mark.parametrize("compression", ["zlib", None])
def test_kill_with_other_compressions(tmp_path, compression, encrypted):
    """zlib and uncompressed caches are recovered as completely as zstd ones."""
    kill_and_check(
        str(tmp_path), delay=0.6, handler={"compression": compression}, encrypted=encrypted
    )


@ENCRYPTION
def test_kill_then_restart_recovers_at_start_up(tmp_path, encrypted):
    """Opening a new handler on the same folder recovers what the killed process left."""
    kill_and_check(str(tmp_path), delay=0.8, recover_with_handler=True, encrypted=encrypted)


@ENCRYPTION
@pytest.mark.parametrize("step", ["after_append", "mid_release", "after_release"])
@pytest.mark.parametrize("nth", [1, 3])
def test_kill_at_each_step_of_a_block_move(tmp_path, step, nth, encrypted):
    """A kill at each step of a block move (written, being freed, freed) loses nothing."""
    log_dir = str(tmp_path)
    key = _PRIVATE if encrypted else None
    config = {
        "log_dir": log_dir,
        "handler": keyed({"buffer_size": 16 * 1024}, encrypted),
        "sizes": [1, 300],
        "crash_at": {step: nth},
    }
    acked, status = harness.run_writer(config, kill_after=30.0)
    assert status == -9
    mmaplog.recover(log_dir)
    harness.check_exactly_once(decoded(log_dir, key), acked)
    # Keep logging after the crash, then check again: the second session adds its own.
    acked2, status2 = harness.run_writer({**config, "crash_at": {}, "count": 300}, kill_after=None)
    assert status2 == 0
    texts = decoded(log_dir, key)
    first = [t for t in texts[: len(texts) - 300]]
    harness.check_exactly_once(first, acked)
    harness.check_exactly_once(texts[len(texts) - 300 :], acked2, complete=True)


@ENCRYPTION
def test_kill_during_recovery_then_recover_again(tmp_path, encrypted):
    """Recovery killed after writing a block, then run again, still gives every record once."""
    log_dir = str(tmp_path)
    handler = keyed({"buffer_size": 64 * 1024, "flush_interval": 3600}, encrypted)
    config = {"log_dir": log_dir, "handler": handler}
    acked, status = harness.run_writer(config, kill_after=0.8)
    assert status == -9
    code = (
        "import sys; from mmaplog import _faults, recover\n"
        "_faults.crash_at('recover_after_append', 1)\n"
        "recover(sys.argv[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", code, log_dir], env=env)
    assert res.returncode == -9
    mmaplog.recover(log_dir)
    harness.check_exactly_once(decoded(log_dir, _PRIVATE if encrypted else None), acked)


def test_recovered_blocks_are_marked_in_the_decoded_output(tmp_path):
    """decode prints where a process died: a line naming the crashed pid before its records."""
    log_dir = str(tmp_path)
    config = {"log_dir": log_dir, "handler": {"flush_interval": 3600}, "sizes": [10, 50]}
    _acked, _ = harness.run_writer(config, kill_after=0.5)
    assert mmaplog.recover(log_dir) > 0
    out = subprocess.run(
        [sys.executable, "-m", "mmaplog", "decode", log_dir],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    assert "-- recovered after a crash of pid " in out.stdout
