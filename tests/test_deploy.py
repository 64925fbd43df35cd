"""Real deployments: many processes, fork, file lifecycle, full disks, I/O errors, bad folders."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import mmaplog
from mmaplog import _format as fmt
from torture import harness

from .conftest import make_logger

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def texts(path: str) -> list[str]:
    return [r.text for r in mmaplog.read_records(path)]


def plain(h: mmaplog.MmapHandler, name: str) -> logging.Logger:
    h.setFormatter(logging.Formatter("%(message)s"))
    return make_logger(name, h)


# -- many processes and fork --------------------------------------------------------------


@pytest.mark.slow
def test_four_processes_two_killed_recovered_by_a_third(tmp_path):
    """Four writers share a folder; two finish, two are killed; a third process recovers all."""
    log_dir = str(tmp_path)
    results: dict[int, tuple[dict[int, list[int]], int]] = {}

    def one(i: int) -> None:
        config = {
            "log_dir": log_dir,
            "handler": {"buffer_size": 32 * 1024},
            "thread_base": i * 10,
            "sizes": [20, 300],
            "count": 0 if i < 2 else 3000,
        }
        results[i] = harness.run_writer(config, kill_after=1.5 if i < 2 else None)

    workers = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert [results[i][1] for i in range(4)] == [-9, -9, 0, 0]
    caches = sorted(n for n in os.listdir(log_dir) if n.endswith(".mmap"))
    assert len(caches) >= 2, "each live process must have had its own cache"
    # A third process starts a handler on the same prefix: it recovers the dead ones.
    code = (
        "import mmaplog, sys; h = mmaplog.MmapHandler(sys.argv[1]); print(h.recovered); h.close()"
    )
    moved = len(texts(log_dir))
    out = subprocess.run(
        [sys.executable, "-c", code, log_dir], capture_output=True, text=True, env=ENV, check=True
    )
    assert int(out.stdout) == len(texts(log_dir)) - moved
    acked: dict[int, list[int]] = {}
    for i in range(4):
        acked.update(results[i][0])
    harness.check_exactly_once(texts(log_dir), acked)
    pids = {r.pid for r in mmaplog.read_records(log_dir)}
    assert len(pids) == 4


def test_fork_child_and_parent_both_keep_their_records(make_handler, log_dir):
    """After os.fork() parent and child each log 1000 records; all are kept, none overwritten."""
    h = make_handler(buffer_size=16 * 1024)
    log = plain(h, "fork")
    for i in range(500):
        log.info("parent-before %d", i)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            for i in range(1000):
                log.info("child %d", i)
            h.close()
            code = 0
        finally:
            os._exit(code)
    for i in range(1000):
        log.info("parent %d", i)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    h.close()
    got = texts(log_dir)
    for tag, n in (("parent-before", 500), ("parent", 1000), ("child", 1000)):
        mine = [int(t.split()[1]) for t in got if t.split()[0] == tag]
        assert mine == list(range(n)), tag
    child_pids = {r.pid for r in mmaplog.read_records(log_dir) if r.text.startswith("child")}
    assert child_pids == {pid}


def _mp_child(log_dir: str, n: int) -> None:  # pragma: no cover - runs in the child
    log = logging.getLogger("mp")
    for i in range(n):
        log.info("mp-child %d", i)
    for h in log.handlers:
        h.flush()


def test_multiprocessing_fork_children_keep_their_records(make_handler, log_dir):
    """multiprocessing children (fork start method) log through the inherited handler safely."""
    h = make_handler(buffer_size=16 * 1024)
    plain(h, "mp")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_mp_child, args=(log_dir, 700)) for _ in range(3)]
    for p in procs:
        p.start()
    logging.getLogger("mp").info("parent line")
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    h.close()
    got = texts(log_dir)
    assert got.count("parent line") == 1
    for p in procs:
        mine = [r.text for r in mmaplog.read_records(log_dir) if r.pid == p.pid]
        assert mine == [f"mp-child {i}" for i in range(700)]


def test_child_exiting_without_close_is_recovered(make_handler, log_dir):
    """A forked child that logs and calls os._exit leaves its records to be recovered, once."""
    h = make_handler()
    log = plain(h, "exit")
    log.info("parent 0")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        for i in range(50):
            log.info("orphan %d", i)
        os._exit(0)
    os.waitpid(pid, 0)
    log.info("parent 1")
    h.close()
    # The parent's next start recovers the child's cache.
    again = mmaplog.MmapHandler(log_dir)
    assert again.recovered == 50
    again.close()
    got = texts(log_dir)
    assert [t for t in got if t.startswith("orphan")] == [f"orphan {i}" for i in range(50)]
    assert [t for t in got if t.startswith("parent")] == ["parent 0", "parent 1"]


@pytest.mark.slow
def test_killed_lock_holder_frees_its_cache_at_once(tmp_path):
    """After kill -9 of the process holding a cache, the next handler gets that cache at once."""
    log_dir = str(tmp_path)
    acked, status = harness.run_writer({"log_dir": log_dir}, kill_after=0.5)
    assert status == -9
    moved = len(texts(log_dir))
    h = mmaplog.MmapHandler(log_dir)
    try:
        assert os.path.basename(h._cache.path) == "app.mmap"
    finally:
        h.close()
    assert h.recovered == len(texts(log_dir)) - moved
    harness.check_exactly_once(texts(log_dir), acked)


def test_a_forked_child_does_not_keep_the_parents_cache_locked(tmp_path):
    """After the parent is killed, its cache is free at once even while a forked child lives."""
    log_dir = str(tmp_path)
    code = (
        "import logging, mmaplog, os, sys, time\n"
        "h = mmaplog.MmapHandler(sys.argv[1])\n"
        "logging.getLogger().addHandler(h)\n"
        "logging.getLogger().warning('parent record')\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(w, b'x')  # the at-fork hooks have run by now\n"
        "    time.sleep(30)\n"
        "    os._exit(0)\n"
        "os.read(r, 1)\n"
        "print('forked', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, log_dir],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "forked"
        proc.kill()
        proc.wait()
        h = mmaplog.MmapHandler(log_dir)
        try:
            assert os.path.basename(h._cache.path) == "app.mmap"
            assert h.recovered == 1
        finally:
            h.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        if proc.stdout is not None:
            proc.stdout.close()
    assert [t.endswith("parent record") for t in texts(log_dir)] == [True]


# -- files over time ------------------------------------------------------------------------


def test_max_file_size_splits_a_day_into_parts_read_in_order(make_handler, log_dir):
    """With max_file_size the day's log goes on in _1, _2, ... files, and reading keeps order."""
    h = make_handler(buffer_size=16 * 1024, max_file_size=20_000, compression=None)
    log = plain(h, "split")
    for i in range(3000):
        log.info("split %05d %s", i, "z" * 40)
    h.close()
    names = sorted(n for n in os.listdir(log_dir) if n.endswith(".mmlog"))
    assert len(names) >= 4
    day = names[0].split("_")[1].split(".")[0]
    assert f"app_{day}_1.mmlog" in names and f"app_{day}_2.mmlog" in names
    for n in names:
        size = os.path.getsize(os.path.join(log_dir, n))
        assert size <= 20_000, (n, size)
    assert texts(log_dir) == [f"split {i:05d} {'z' * 40}" for i in range(3000)]


def _record_at(h: logging.Handler, when: float, msg: str) -> None:
    rec = logging.LogRecord("age", logging.INFO, __file__, 1, msg, None, None)
    rec.created = when
    h.handle(rec)


def test_old_logs_are_deleted_and_other_files_kept(make_handler, log_dir):
    """max_age_days removes this prefix's older dated files only, at the given clock."""
    h = make_handler(max_age_days=10)
    plain(h, "age")
    now = dt.datetime(2026, 3, 20, 12).timestamp()
    for days in (30, 11, 10, 3):
        _record_at(h, now - days * 86400, f"{days} days ago")
    h.flush()
    other = os.path.join(log_dir, "other_20200101.mmlog")
    notes = os.path.join(log_dir, "app_notes.txt")
    for p in (other, notes):
        with open(p, "w") as f:
            f.write("keep me")
    removed = sorted(os.path.basename(p) for p in h.remove_old_logs(now=now))
    assert removed == ["app_20260218.mmlog", "app_20260309.mmlog"]
    assert os.path.exists(other) and os.path.exists(notes)
    assert sorted(texts(log_dir)) == ["10 days ago", "3 days ago"]


def test_max_age_zero_keeps_everything(make_handler, log_dir):
    """max_age_days=0 never deletes a log file."""
    h = make_handler(max_age_days=0)
    plain(h, "keep")
    _record_at(h, time.time() - 400 * 86400, "ancient")
    h.flush()
    assert h.remove_old_logs() == []
    assert texts(log_dir) == ["ancient"]


@pytest.mark.slow
def test_cache_of_another_buffer_size_is_recovered(tmp_path):
    """A cache left by a run with another buffer_size is recovered by a handler with a new size."""
    log_dir = str(tmp_path)
    acked, _ = harness.run_writer(
        {"log_dir": log_dir, "handler": {"buffer_size": 256 * 1024, "flush_interval": 3600}},
        kill_after=0.6,
    )
    moved = len(texts(log_dir))
    h = mmaplog.MmapHandler(log_dir, buffer_size=16 * 1024)
    assert os.path.getsize(h._cache.path) < 64 * 1024
    h.close()
    assert h.recovered == len(texts(log_dir)) - moved
    harness.check_exactly_once(texts(log_dir), acked)


def test_unknown_future_cache_version_is_left_untouched(log_dir, capfd):
    """A cache from a newer format is not recovered, not overwritten, and reported clearly."""
    os.makedirs(log_dir)
    path = os.path.join(log_dir, "app.mmap")
    info = fmt.CacheInfo(99, 2, fmt.CACHE_HEADER_SIZE, 8192, 0, 1, log_dir, "app")
    image = fmt.pack_cache_header(info) + b"\x07" * 16384
    # pack_cache_header refuses nothing about the version: write version 99 as a newer run would.
    with open(path, "wb") as f:
        f.write(image)
    h = mmaplog.MmapHandler(log_dir)
    h.close()
    with open(path, "rb") as f:
        assert f.read() == image
    err = capfd.readouterr().err
    assert "format version 99 is not supported" in err and "left untouched" in err
    res = subprocess.run(
        [sys.executable, "-m", "mmaplog.recover", path], capture_output=True, text=True, env=ENV
    )
    assert res.returncode == 1 and "version 99" in res.stderr


# -- full disks and I/O errors ---------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(path: str, size: str) -> Iterator[str]:
    os.makedirs(path, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def fill(path: str) -> str:
    filler = os.path.join(path, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)
    return filler


def test_full_disk_keeps_blocks_in_the_cache_then_writes_them(tmp_path, capfd):
    """On a full disk blocks wait in the cache (no SIGBUS), drops are counted, then all flows."""
    with tiny_tmpfs(str(tmp_path / "mnt"), "512k") as mnt:
        h = mmaplog.MmapHandler(mnt, buffer_size=16 * 1024, block_timeout=0.01, compression=None)
        log = plain(h, "full")
        log.info("first")
        h.flush()
        filler = fill(mnt)
        for i in range(600):
            log.info("while full %04d %s", i, "q" * 80)
        assert h._cache.dropped > 0
        dropped = h._cache.dropped
        os.unlink(filler)
        h.flush()  # a move succeeds: records are taken again, the first after a note
        log.info("space is back")
        h.close()
        got = texts(mnt)
        err = capfd.readouterr().err
    assert "cannot write the log file" in err
    kept = [t for t in got if t.startswith("while full")]
    numbers = [int(t.split()[2]) for t in kept]
    assert numbers == sorted(set(numbers))
    assert len(kept) == 600 - dropped
    note = [t for t in got if "dropped between" in t]
    assert len(note) == 1 and f"mmaplog: {dropped} record" in note[0]
    assert got[0] == "first" and got[-1] == "space is back"


def test_cache_on_a_full_disk_falls_back_without_sigbus(tmp_path, capfd):
    """When the cache cannot be pre-allocated (disk full), the handler warns and keeps logging."""
    with tiny_tmpfs(str(tmp_path / "mnt"), "256k") as mnt:
        logs = os.path.join(mnt, "logs")
        os.makedirs(logs)
        filler = fill(mnt)
        code = (
            "import faulthandler, logging, mmaplog, sys\n"
            "faulthandler.enable()\n"
            "h = mmaplog.MmapHandler(sys.argv[1], buffer_size=128 * 1024)\n"
            "logging.getLogger().addHandler(h)\n"
            "for i in range(100): logging.getLogger().warning('x %d', i)\n"
            "print(h._cache.mapped)\n"
        )
        res = subprocess.run(
            [sys.executable, "-c", code, logs], capture_output=True, text=True, env=ENV, timeout=60
        )
        os.unlink(filler)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
    assert "cannot map the cache" in res.stderr


@pytest.mark.slow
def test_eio_on_log_writes_is_retried_without_loss(make_handler, log_dir, monkeypatch):
    """Injected EIO on the first log writes: blocks stay in the cache and land once, in order."""
    real_write = os.write
    failures = {"left": 5}

    def flaky_write(fd: int, data: bytes) -> int:
        if bytes(data[:4]) == fmt.BLOCK_MAGIC and failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(errno.EIO, "Input/output error (injected)")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky_write)
    h = make_handler(buffer_size=16 * 1024, block_timeout=10.0)
    log = plain(h, "eio")
    for i in range(3000):
        log.info("eio %d", i)
    h.close()
    monkeypatch.setattr(os, "write", real_write)
    assert failures["left"] == 0
    assert texts(log_dir) == [f"eio {i}" for i in range(3000)]


def test_file_size_limit_error_is_retried_after_it_lifts(tmp_path):
    """Under RLIMIT_FSIZE the log write fails with EFBIG; once lifted, every record lands."""
    log_dir = str(tmp_path)
    code = (
        "import logging, mmaplog, resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "h = mmaplog.MmapHandler(sys.argv[1], buffer_size=64 * 1024, block_timeout=5)\n"
        "h.setFormatter(logging.Formatter('%(message)s'))\n"
        "log = logging.getLogger('fsz'); log.addHandler(h); log.propagate = False\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))\n"
        "for i in range(400): log.warning('fsize %d', i)\n"
        "h.flush()\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))\n"
        "h.close()\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, log_dir], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert "cannot write the log file" in res.stderr
    assert texts(log_dir) == [f"fsize {i}" for i in range(400)]


def test_durable_mode_writes_and_syncs(make_handler, log_dir):
    """durable=True logs as usual (msync per record, fsync per move)."""
    h = make_handler(durable=True)
    log = plain(h, "durable")
    for i in range(50):
        log.info("durable %d", i)
    h.close()
    assert texts(log_dir) == [f"durable {i}" for i in range(50)]


# -- permissions and hostile folders -----------------------------------------------------------


def test_symlink_at_the_cache_path_is_not_followed(log_dir, tmp_path, capfd):
    """A symlink planted at the cache path is refused; the victim is untouched; logging goes on."""
    os.makedirs(log_dir)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, os.path.join(log_dir, "app.mmap"))
    h = mmaplog.MmapHandler(log_dir)
    log = plain(h, "sym")
    log.info("safe")
    h.close()
    assert victim.read_bytes() == b"precious"
    assert "cannot use the cache" in capfd.readouterr().err
    assert texts(log_dir) == ["safe"]


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_planted_link_at_the_log_path_is_refused(log_dir, tmp_path, capfd, kind):
    """A symlink or hard link at today's log path is never written through; it is reported."""
    os.makedirs(log_dir)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    before = os.stat(victim).st_mtime_ns
    today = dt.datetime.now().strftime("%Y%m%d")
    link = os.path.join(log_dir, f"app_{today}.mmlog")
    (os.symlink if kind == "symlink" else os.link)(victim, link)
    h = mmaplog.MmapHandler(log_dir, block_timeout=0.05)
    log = plain(h, "link")
    log.info("not through the link")
    h.flush()
    assert victim.read_bytes() == b"precious"
    assert os.stat(victim).st_mtime_ns == before
    assert "cannot write the log file" in capfd.readouterr().err
    # Once the planted link is gone the record lands.
    os.unlink(link)
    h.close()
    assert texts(log_dir) == ["not through the link"]


def test_garbage_cache_is_moved_aside_not_deleted(log_dir, capfd):
    """A cache file that is not ours is renamed *.corrupt-<time>, and a fresh cache is used."""
    os.makedirs(log_dir)
    path = os.path.join(log_dir, "app.mmap")
    garbage = os.urandom(40_000)
    with open(path, "wb") as f:
        f.write(garbage)
    h = mmaplog.MmapHandler(log_dir)
    plain(h, "junk").info("fresh")
    h.close()
    aside = [n for n in os.listdir(log_dir) if n.startswith("app.mmap.corrupt-")]
    assert len(aside) == 1
    with open(os.path.join(log_dir, aside[0]), "rb") as f:
        assert f.read() == garbage
    assert "moved to" in capfd.readouterr().err
    assert texts(log_dir) == ["fresh"]


def test_no_sigbus_when_the_cache_file_is_truncated_by_another_process(make_handler, log_dir):
    """Recovery reads caches with pread, so a cache truncated to any length never kills us."""
    acked, _ = harness.run_writer(
        {"log_dir": log_dir, "handler": {"flush_interval": 3600}}, kill_after=0.5
    )
    path = os.path.join(log_dir, "app.mmap")
    with open(path, "r+b") as f:
        f.truncate(fmt.CACHE_HEADER_SIZE + 5000)
    mmaplog.recover(log_dir)
    got = texts(log_dir)
    # What survives is acknowledged, in order, once, and never garbled.
    numbers = []
    for text in got:
        n = int(text.split(" #", 1)[1].split()[0])
        message = text[text.index("T0 #") :]
        assert message == harness.record_text(0, n, len(message))
        numbers.append(n)
    assert numbers == sorted(set(numbers))
    assert set(numbers) <= set(acked[0]) | {max(acked[0]) + 1}


@pytest.mark.slow
def test_recovery_after_size_splits_keeps_reading_order(tmp_path):
    """A block recovered after a day was split goes to the newest part, so order holds."""
    log_dir = str(tmp_path)
    config = {
        "log_dir": log_dir,
        "handler": {"buffer_size": 16 * 1024, "max_file_size": 8000, "compression": None},
        "sizes": [50, 200],
    }
    acked, status = harness.run_writer(config, kill_after=0.8)
    assert status == -9
    parts = [n for n in os.listdir(log_dir) if n.endswith(".mmlog")]
    assert len(parts) > 2
    mmaplog.recover(log_dir)
    harness.check_exactly_once(texts(log_dir), acked)
