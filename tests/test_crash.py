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
    nested_every: int = 0,
    nested_kill: int = 0,
) -> dict[str, int]:
    key = _PRIVATE if encrypted else None
    config = {
        "log_dir": log_dir,
        "handler": keyed({"buffer_size": 64 * 1024, **(handler or {})}, encrypted),
        "threads": threads,
        "sizes": list(sizes),
        "nested_every": nested_every,
        "nested_kill": nested_kill,
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
    handler = keyed({"buffer_size": 64 * 1024, "flush_interval": 3600}, encrypted)
    code = (
        "import sys; from mmaplog import _faults, recover\n"
        "_faults.crash_at('recover_after_append', 1)\n"
        "recover(sys.argv[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for attempt in range(3):
        log_dir = str(tmp_path / f"attempt-{attempt}")
        acked, status = harness.run_writer({"log_dir": log_dir, "handler": handler}, kill_after=0.8)
        assert status == -9
        res = subprocess.run([sys.executable, "-c", code, log_dir], env=env)
        if res.returncode == -9:
            break
        # The kill can leave nothing to recover (an empty open block beside one already
        # moved): recovery then appends nothing and ends normally. Try another kill.
        assert res.returncode == 0
        harness.check_exactly_once(decoded(log_dir, _PRIVATE if encrypted else None), acked)
    else:
        pytest.fail("three kills in a row left nothing in the cache to recover")
    mmaplog.recover(log_dir)
    harness.check_exactly_once(decoded(log_dir, _PRIVATE if encrypted else None), acked)


def test_recovered_blocks_are_marked_in_the_decoded_output(tmp_path):
    """decode prints where a process died: a line naming the crashed pid before its records."""
    log_dir = str(tmp_path)
    # A cache too large to fill in the half second: no block is moved, so the kill
    # cannot tear a write (decode would report those bytes) and every record is recovered.
    handler = {"flush_interval": 3600, "buffer_size": 32 * 1024 * 1024}
    config = {"log_dir": log_dir, "handler": handler, "sizes": [10, 50]}
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


@ENCRYPTION
@pytest.mark.parametrize("nth", [0, 1, 40, 700])
def test_kill_while_records_are_logged_inside_others(tmp_path, nth, encrypted):
    """Two threads whose every third record logs one of its own while it is formatted
    (acknowledged when that call returns): a SIGKILL at a random time (nth 0), or right
    after the nth such record is acknowledged, before the outer record is stored,
    loses none of either."""
    counts = kill_and_check(
        str(tmp_path),
        delay=RANDOM_DELAYS[nth % len(RANDOM_DELAYS)] if not nth else 30.0,
        threads=2,
        nested_every=3,
        nested_kill=nth,
        encrypted=encrypted,
    )
    assert counts["acknowledged"] > 0


_NESTED_THEN_KILLED = """
import gc, logging, os, signal, sys
import mmaplog
log_dir, how, pure, key = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
if pure:
    from mmaplog import _emitpath
    _emitpath._WRITER = None
h = mmaplog.MmapHandler(log_dir, public_key=key or None, durable=how == "durable")
log = logging.getLogger("nested")
log.addHandler(h)
log.setLevel(logging.INFO)
log.info("before")

def done():
    print("inner returned", flush=True)  # the inner call returned: its record is safe
    os.kill(os.getpid(), signal.SIGKILL)

class Finalized:
    def __del__(self):
        log.info("inner record")

class Deeper:
    def __str__(self):
        log.info("two levels deep")
        return "d"

class Arg:
    def __str__(self):
        if how in ("str", "durable", "closed", "forked"):
            log.info("inner record")
        elif how == "after-queued":  # one queued first (two levels deep), then this one
            log.info("queued %s", Deeper())
            log.info("inner record")
        elif how == "finalizer":
            a = Finalized(); a.cycle = a; del a
            gc.collect()
        elif how == "signal":
            signal.signal(signal.SIGUSR1, lambda *_: log.info("inner record"))
            signal.raise_signal(signal.SIGUSR1)
        done()
        return "x"

class Logging(mmaplog.XlogFormatter):
    def format(self, record):
        if record.msg == "outer %s":
            log.info("inner record")
            done()
        return super().format(record)

if how == "formatter":
    h.setFormatter(Logging())
if how == "closed":
    h.close()  # records after close() go straight into the log file
if how == "forked":
    pid = os.fork()
    if pid:  # the parent waits for the child, which is killed as above, and dies too
        os.waitpid(pid, 0)
        print("inner returned", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
log.info("outer %s", Arg() if how != "formatter" else "y")
"""


@pytest.mark.parametrize("pure", [False, True], ids=["c-path", "pure"])
@pytest.mark.parametrize(
    "how",
    ["str", "finalizer", "signal", "formatter", "durable", "closed", "forked", "after-queued"],
)
@ENCRYPTION
def test_a_record_logged_inside_another_survives_a_kill_before_the_outer_ends(
    tmp_path, how, pure, encrypted
):
    """A record logged while another record is formatted (by a message's __str__, a
    finalizer, a signal handler or a formatter; with durable=True, after close(), as
    the first record of a forked child) is in the log after a SIGKILL that comes once
    its own call returned, before the outer call ended."""
    if not pure and mmaplog.EMIT_PATH != "native":
        pytest.skip("the C path is not active")
    log_dir = str(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _NESTED_THEN_KILLED,
            log_dir,
            how,
            "1" if pure else "0",
            _PUBLIC if encrypted else "",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9 and "inner returned" in proc.stdout, proc.stderr
    mmaplog.recover(log_dir)
    texts = [t.rsplit("][", 1)[1] for t in decoded(log_dir, _PRIVATE if encrypted else None)]
    if how == "after-queued":  # the queued ones are written before it, in order
        assert texts == ["before", "queued d", "two levels deep", "inner record"]
        return
    # A forked child's records are in a cache (and session) of its own: any order.
    assert (sorted(texts) if how == "forked" else texts) == ["before", "inner record"]
