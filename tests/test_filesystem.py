"""The life around the log: threads sharing caches, files and folders changed underneath."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import mmaplog

from .conftest import make_logger


def plain(h: mmaplog.MmapHandler, name: str) -> logging.Logger:
    h.setFormatter(logging.Formatter("%(message)s"))
    return make_logger(name, h)


def texts(*paths: str) -> list[str]:
    return [r.text for r in mmaplog.read_records(*paths)]


def today_log(log_dir: str) -> str:
    return os.path.join(log_dir, f"app_{dt.datetime.now().strftime('%Y%m%d')}.mmlog")


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("mmaplog:")]


# -- threads sharing the formatter's caches ------------------------------------------------


def test_xlog_formatter_stamps_every_record_with_its_own_second():
    """Threads formatting records of alternating seconds never get another record's second."""
    formatter = mmaplog.XlogFormatter()
    base = 1_764_000_000
    wrong: list[tuple[str, str]] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait()
        for i in range(4000):
            second = base + (i + t) % 4
            r = logging.makeLogRecord(
                {"msg": "m", "levelno": 20, "created": second + 0.25, "msecs": 250.0}
            )
            line = formatter.format(r)
            want = time.strftime("%Y-%m-%d %z %H:%M:%S", time.localtime(second))
            got = line[4 : 4 + len(want)]
            if got != want:
                wrong.append((got, want))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    assert not wrong, f"{len(wrong)} records stamped with another second, e.g. {wrong[0]}"


# -- the log file and its folder changed underneath ------------------------------------------


def test_a_deleted_log_file_is_opened_again_at_its_path(make_handler, log_dir, capfd):
    """After the log file is deleted, the next move writes a new file there, with one warning."""
    h = make_handler()
    log = plain(h, "deleted")
    log.info("before")
    h.flush()
    os.remove(today_log(log_dir))
    for i in range(3):
        log.info("after %d", i)
        h.flush()
    h.close()
    assert texts(log_dir) == ["after 0", "after 1", "after 2"]
    reopened = [w for w in warnings_in(capfd.readouterr().err) if "deleted or replaced" in w]
    assert len(reopened) == 1


def test_a_log_file_renamed_away_keeps_its_records_and_a_new_one_takes_the_rest(
    make_handler, log_dir, capfd
):
    """A log file renamed away keeps what it had; later records go to a new file at the path."""
    h = make_handler()
    log = plain(h, "renamed")
    log.info("old 1")
    log.info("old 2")
    h.flush()
    moved = today_log(log_dir) + ".1"
    os.rename(today_log(log_dir), moved)
    log.info("new 1")
    h.close()
    assert texts(moved) == ["old 1", "old 2"]
    assert texts(today_log(log_dir)) == ["new 1"]
    assert "deleted or replaced" in capfd.readouterr().err


def test_a_log_file_replaced_by_another_file_is_left_to_the_replacement(make_handler, log_dir):
    """A file put in place of the log file (a different inode) is appended to, not the old one."""
    h = make_handler()
    log = plain(h, "replaced")
    log.info("one")
    h.flush()
    path = today_log(log_dir)
    shutil.copy(path, path + ".tmp")
    os.replace(path + ".tmp", path)  # what an editor or a copying rotation does
    log.info("two")
    h.close()
    assert texts(path) == ["one", "two"]


@pytest.mark.parametrize("recreate", [True, False], ids=["recreated", "removed"])
def test_a_log_folder_removed_underneath_is_written_again(make_handler, log_dir, recreate, capfd):
    """The log folder removed (and made again, or not) while logging: later records land in it."""
    h = make_handler()
    log = plain(h, "folder")
    log.info("gone with the folder")
    h.flush()
    shutil.rmtree(log_dir)
    if recreate:
        os.makedirs(log_dir)
    log.info("in the new folder")
    h.close()
    assert texts(log_dir) == ["in the new folder"]
    assert "deleted or replaced" in capfd.readouterr().err


# -- a full disk -----------------------------------------------------------------------------

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

_FULL_DISK = """
import logging, mmaplog, resource, signal, sys, time
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
h = mmaplog.MmapHandler(sys.argv[1], buffer_size=16 * 1024, block_timeout=1.0, compression=None)
h.setFormatter(logging.Formatter('%(message)s'))
log = logging.getLogger('full'); log.addHandler(h); log.propagate = False
log.warning('before'); h.flush()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))  # the log file cannot grow: a full disk
t0 = time.monotonic()
for i in range(400): log.warning('full %03d %s', i, 'x' * 100)
print(round(time.monotonic() - t0, 2), h._cache.dropped_total, flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
h.flush()
for i in range(5): log.warning('after %d', i)
h.close()
"""


def test_a_full_disk_costs_one_timeout_then_drops_at_once_and_counts(tmp_path):
    """A full disk costs one block_timeout, then records drop at once, counted in log and close."""
    log_dir = str(tmp_path)
    res = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, log_dir],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    seconds, dropped = res.stdout.split()
    # Before: every record past the two slots waited block_timeout (about 300 s here).
    assert float(seconds) < 10, f"400 records took {seconds} s on a full disk"
    got = texts(log_dir)
    kept = [t for t in got if t.startswith("full ")]
    assert int(dropped) > 0 and len(kept) + int(dropped) == 400
    notes = [t for t in got if "dropped between" in t]
    assert len(notes) == 1 and f"mmaplog: {dropped} records dropped" in notes[0]
    assert got[0] == "before" and got[-5:] == [f"after {i}" for i in range(5)]
    assert f"{dropped} records were dropped" in res.stderr


# -- the cache file shrunk underneath ----------------------------------------------------------

_SHRUNK = """
import faulthandler, logging, mmaplog, sys
faulthandler.enable()
h = mmaplog.MmapHandler(sys.argv[1], buffer_size=16 * 1024, flush_interval=float(sys.argv[2]),
                        compression=None)
h.setFormatter(logging.Formatter('%(message)s'))
log = logging.getLogger('shrunk'); log.addHandler(h); log.propagate = False
for i in range(150): log.warning('before %03d', i)
if sys.argv[3] == 'between':
    h.flush()  # every block moved and no block open: the next record opens one
print('ready', flush=True)
sys.stdin.readline()  # the cache file is truncated here
for i in range(300): log.warning('after %03d', i)
print('done', flush=True)
sys.stdin.readline()  # killed here, without close()
"""


@pytest.mark.parametrize("when", ["between", "open"])
def test_a_cache_file_truncated_underneath_is_extended_again_and_nothing_is_lost(tmp_path, when):
    """A cache truncated to 0 between blocks, or while a block is open and then a tick passes,
    is extended again: the process survives, and after a kill -9 every record is recovered."""
    log_dir = str(tmp_path / "logs")
    interval = "3600" if when == "between" else "0.2"
    child = subprocess.Popen(
        [sys.executable, "-c", _SHRUNK, log_dir, interval, when],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        cache = os.path.join(log_dir, "app.mmap")
        os.truncate(cache, 0)  # as logrotate copytruncate does
        if when == "open":  # the flusher's tick extends it before the next record
            deadline = time.monotonic() + 30
            while os.path.getsize(cache) == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        child.kill()
    finally:
        child.kill()
        _out, err = child.communicate(timeout=60)
    assert line == "done\n", f"the writer died ({child.returncode}): {err[-2000:]}"
    assert child.returncode == -9
    assert "was shrunk to 0 bytes" in err and "extended again" in err
    mmaplog.recover(log_dir)
    want = [f"before {i:03d}" for i in range(150)] + [f"after {i:03d}" for i in range(300)]
    assert texts(log_dir) == want


# -- an unwritable log folder --------------------------------------------------------------------


def block_every_cache_name(log_dir: str) -> None:
    """Put a folder at every cache name and at today's log file: nothing there can be written."""
    from mmaplog._cache import cache_names

    os.makedirs(log_dir)
    for name in cache_names("app"):
        os.mkdir(os.path.join(log_dir, name))
    os.mkdir(today_log(log_dir))


def test_no_usable_cache_name_gives_one_warning_and_records_land_once_writable(log_dir, capfd):
    """With no cache name usable and the log file unwritable: one warning, not one per name,
    and the records held in memory are written once the log file can be."""
    block_every_cache_name(log_dir)
    h = mmaplog.MmapHandler(log_dir)
    log = plain(h, "unwritable")
    for i in range(20):
        log.info("held %d", i)
    h.flush()
    h.flush()
    assert not h._cache.mapped
    said = warnings_in(capfd.readouterr().err)
    assert len(said) == 1 and "no cache file can be made" in said[0], said
    os.rmdir(today_log(log_dir))
    h.flush()
    log.info("later")
    h.close()
    assert texts(log_dir) == [f"held {i}" for i in range(20)] + ["later"]
    assert not any("lost" in w for w in warnings_in(capfd.readouterr().err))


def test_records_never_written_are_counted_as_lost_at_close(log_dir, capfd):
    """Records held in memory that never reach the log are counted on stderr at close."""
    block_every_cache_name(log_dir)
    h = mmaplog.MmapHandler(log_dir)
    log = plain(h, "lost")
    for i in range(7):
        log.info("never written %d", i)
    h.flush()
    h.close()
    said = warnings_in(capfd.readouterr().err)
    assert len(said) == 2, said
    assert "7 records could not be written" in said[1] and "lost" in said[1]


def test_a_read_only_log_folder_warns_once_and_is_written_when_writable_again(tmp_path, capfd):
    """A read-only mount: one warning, records kept in memory, written by the flusher when
    the folder is writable again, without a flush()."""
    from .test_deploy import tiny_tmpfs

    with tiny_tmpfs(str(tmp_path / "mnt"), "4m") as mnt:
        log_dir = os.path.join(mnt, "logs")
        os.makedirs(log_dir)
        res = subprocess.run(["mount", "-o", "remount,ro", mnt], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot remount a tmpfs read-only here ({res.stderr.strip()})")
        h = mmaplog.MmapHandler(log_dir, flush_interval=0.05)
        log = plain(h, "readonly")
        for i in range(30):
            log.info("held %d", i)
        h.flush()
        said = warnings_in(capfd.readouterr().err)
        assert len(said) == 1 and "Read-only file system" in said[0], said
        subprocess.run(["mount", "-o", "remount,rw", mnt], check=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(today_log(log_dir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        got = texts(log_dir)
        h.close()
    assert got == [f"held {i}" for i in range(30)]


def test_a_deleted_cache_file_is_reported_once(tmp_path):
    """Removing the log folder (cache included) under a running handler gives a warning that
    records are not crash-safe until a restart, and records still reach the log."""
    code = textwrap.dedent(
        """
        import logging, shutil, sys, time, mmaplog
        d = sys.argv[1]
        h = mmaplog.MmapHandler(d, buffer_size=16 * 1024, flush_interval=0.05)
        log = logging.getLogger("gone"); log.propagate = False; log.addHandler(h)
        log.warning("before")
        h.flush()
        shutil.rmtree(d)
        for i in range(400):
            log.warning("after %d %s", i, "x" * 100)
        h.close()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("was deleted while in use") == 1
    texts = [r.text for r in mmaplog.read_records(str(tmp_path / "logs"))]
    assert sum("after" in t for t in texts) == 400
