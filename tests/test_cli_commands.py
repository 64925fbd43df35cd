"""The decode filters, tail, verify, stats and the progress bar, run as a user runs them."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import pty
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import mmaplog
from mmaplog import _format as fmt
from torture import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *sys.path])}
MMAPLOG = [sys.executable, "-m", "mmaplog"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MMAPLOG, *args], capture_output=True, text=True, env=ENV, timeout=60)


def open_handler(log_dir: str, **kwargs: object) -> mmaplog.MmapHandler:
    kwargs.setdefault("prefix", "app")
    kwargs.setdefault("flush_interval", 3600.0)
    h = mmaplog.MmapHandler(log_dir, **kwargs)  # type: ignore[arg-type]
    h.setFormatter(logging.Formatter("%(message)s"))
    return h


def emit(h: logging.Handler, text: str, level: int = logging.INFO, when: float | None = None):
    record = logging.LogRecord("cli", level, __file__, 1, text, None, None)
    if when is not None:
        record.created = when
        record.msecs = (when % 1) * 1000
    h.handle(record)


def write_log(log_dir: str, items: list[tuple[str, int, float | None]], **kwargs: object) -> None:
    h = open_handler(log_dir, **kwargs)
    for text, level, when in items:
        emit(h, text, level, when)
    h.close()


def log_files(log_dir: str) -> list[str]:
    return sorted(os.path.join(log_dir, n) for n in os.listdir(log_dir) if n.endswith(".mmlog"))


def no_traceback(res: subprocess.CompletedProcess[str]) -> bool:
    return "Traceback" not in res.stderr and "Traceback" not in res.stdout


LEVELED = [
    ("debug line", logging.DEBUG, None),
    ("info line", logging.INFO, None),
    ("warning line", logging.WARNING, None),
    ("error line", logging.ERROR, None),
    ("critical line", logging.CRITICAL, None),
]


# -- decode filters ---------------------------------------------------------------------


@pytest.mark.parametrize("level", ["WARNING", "warning", "W", "30", "warn"])
def test_decode_level_keeps_records_at_or_above(log_dir, level):
    """--level takes a name in any case, xlog's letter or a number, and keeps that level and up."""
    write_log(log_dir, LEVELED)
    res = run("decode", "--level", level, log_dir)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["warning line", "error line", "critical line"]


def test_decode_since_and_until_take_iso_and_relative_times(log_dir):
    """--since/--until take local ISO dates and times, zoned times and times ago, inclusively."""
    day = _dt.datetime(2026, 1, 10, 12, 0, 0)
    stamps = [day + _dt.timedelta(hours=h) for h in (0, 1, 2, 30)]
    write_log(log_dir, [(f"at {s:%d %H}", logging.INFO, s.timestamp()) for s in stamps])
    res = run("decode", "--since", "2026-01-10T13:00", "--until", "2026-01-10 14:00:00", log_dir)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["at 10 13", "at 10 14"]
    assert run("decode", "--since", "2026-01-11", log_dir).stdout.splitlines() == ["at 11 18"]
    zoned = _dt.datetime.fromtimestamp(stamps[2].timestamp(), _dt.timezone.utc)
    res = run("decode", "--until", zoned.strftime("%Y-%m-%dT%H:%M:%SZ"), log_dir)
    assert res.stdout.splitlines() == ["at 10 12", "at 10 13", "at 10 14"]

    recent = str(os.path.join(os.path.dirname(log_dir), "recent"))
    now = time.time()
    write_log(
        recent, [("3d ago", 20, now - 3 * 86400), ("2h ago", 20, now - 7200), ("now", 20, now)]
    )
    assert run("decode", "--since", "3h", recent).stdout.splitlines() == ["2h ago", "now"]
    assert run("decode", "--since", "10m", recent).stdout.splitlines() == ["now"]
    assert run("decode", "--until", "1d", recent).stdout.splitlines() == ["3d ago"]


def test_decode_grep_matches_a_regex_on_the_text(log_dir):
    """--grep keeps the records whose text matches a Python regex, alone or with other filters."""
    write_log(log_dir, [*LEVELED, ("order 42 failed", logging.ERROR, None)])
    res = run("decode", "--grep", r"^(error|order \d+)", log_dir)
    assert res.stdout.splitlines() == ["error line", "order 42 failed"]
    res = run("decode", "--grep", "line$", "--level", "ERROR", "--format", "json", log_dir)
    assert res.returncode == 0, res.stderr
    assert [line.count('"level": "') for line in res.stdout.splitlines()] == [1, 1]
    assert "error line" in res.stdout and "critical line" in res.stdout


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--level", "LOUD", "unknown level"),
        ("--since", "last tuesday", "not a time"),
        ("--until", "2026-13-45", "not a time"),
        ("--grep", "(unclosed", "bad regular expression"),
    ],
)
def test_decode_rejects_bad_filter_values(log_dir, option, value, message):
    """A bad --level, time or regex is a usage error: one message, exit status 2."""
    write_log(log_dir, LEVELED)
    res = run("decode", option, value, log_dir)
    assert res.returncode == 2
    assert message in res.stderr and no_traceback(res)


def test_decode_stops_quietly_when_the_reader_goes_away(log_dir):
    """`mmaplog decode | head -1`: a closed pipe ends the decode with no traceback."""
    write_log(log_dir, [(f"line {i} " + "x" * 50, 20, None) for i in range(5000)])
    with subprocess.Popen(
        [*MMAPLOG, "decode", log_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"line 0")
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=30) == 0
    assert b"Traceback" not in err and b"Exception" not in err


# -- tail -------------------------------------------------------------------------------


def test_tail_prints_the_newest_records_including_the_live_cache(log_dir):
    """tail -n N shows the newest records of the log files and of a live process's cache, once."""
    h = open_handler(log_dir)
    for i in range(20):
        emit(h, f"moved {i}")
    h.flush()
    for i in range(3):
        emit(h, f"cached {i}")
    try:
        res = run("tail", "-n", "5", log_dir)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == [
            "moved 18",
            "moved 19",
            "cached 0",
            "cached 1",
            "cached 2",
        ]
        everything = run("tail", "-n", "100", log_dir).stdout.splitlines()
        assert everything == [f"moved {i}" for i in range(20)] + [f"cached {i}" for i in range(3)]
        assert run("tail", log_dir).stdout.splitlines() == everything[-10:]
    finally:
        h.close()


def test_tail_prefix_selects_one_application(log_dir):
    """--prefix limits tail to that prefix's log files and caches."""
    write_log(log_dir, [("from a", 20, None)], prefix="a")
    write_log(log_dir, [("from b", 20, None)], prefix="b")
    assert run("tail", "--prefix", "b", log_dir).stdout.splitlines() == ["from b"]
    assert sorted(run("tail", log_dir).stdout.splitlines()) == ["from a", "from b"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda d, f: [os.path.join(d, "nope")], "no such folder"),
        (lambda d, f: [f], "not a folder"),
        (lambda d, f: ["-n", "-3", d], "expected a number"),
        (lambda d, f: ["-n", "ten", d], "expected a number"),
    ],
)
def test_tail_rejects_bad_input(tmp_path, args, message):
    """tail of a missing folder, a file or a bad -n is one line and exit status 2."""
    f = tmp_path / "file.mmlog"
    f.write_bytes(b"")
    res = run("tail", *args(str(tmp_path), str(f)))
    assert res.returncode == 2
    assert message in res.stderr and no_traceback(res)


def test_tail_of_an_encrypted_folder_needs_the_key(log_dir, tmp_path):
    """tail of encrypted logs without --key exits 2; with it, prints the records."""
    private, public = mmaplog.generate_keypair()
    write_log(log_dir, [("sealed", 20, None)], public_key=public)
    res = run("tail", log_dir)
    assert res.returncode == 2 and "--key" in res.stderr and no_traceback(res)
    key = tmp_path / "ops.key"
    key.write_text(private)
    res = run("tail", "--key", str(key), log_dir)
    assert res.returncode == 0 and res.stdout.splitlines() == ["sealed"]


WRITER = r"""
import logging, sys, mmaplog
h = mmaplog.MmapHandler(sys.argv[1], prefix="app", flush_interval=3600)
h.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("writer")
log.addHandler(h)
log.setLevel(logging.DEBUG)
log.propagate = False
for line in sys.stdin:
    command, _, arg = line.strip().partition(" ")
    if command == "log":
        log.info(arg)
    elif command == "flush":
        h.flush()
    print("ok", flush=True)
h.close()
"""


class Lines:
    """The lines of a child's stream, read on a thread, waited for with a timeout."""

    def __init__(self, stream) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._stream = stream
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Wait for the end of the stream (the child has exited) and close it."""
        self._thread.join(timeout=10)
        self._stream.close()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not seen; got {self.seen}"
            try:
                self.seen.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                pass

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                self.seen.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                pass


@pytest.fixture
def writer(log_dir) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """A process logging what it is told on stdin into log_dir, kept running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, log_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert proc.stdout is not None
    replies = Lines(proc.stdout)
    try:
        yield proc, replies
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        replies.close()


def tell(proc: subprocess.Popen[str], replies: Lines, command: str) -> None:
    assert proc.stdin is not None
    replies.seen.clear()
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    replies.wait_for("ok")


def test_tail_follow_sees_another_process_and_stops_on_ctrl_c(log_dir, writer):
    """tail -f prints a record another process leaves in its live cache, once even after it is
    moved to the log file, and exits 0 without a traceback on SIGINT."""
    write_log(log_dir, [("before", 20, None)])
    tail = subprocess.Popen(
        [*MMAPLOG, "tail", "-f", log_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert tail.stdout is not None and tail.stderr is not None
    out = Lines(tail.stdout)
    try:
        out.wait_for("before")
        proc, replies = writer
        tell(proc, replies, "log marker-in-cache")
        out.wait_for("marker-in-cache")
        tell(proc, replies, "flush")  # its block moves from the cache to the log file
        tell(proc, replies, "log marker-after-flush")
        out.wait_for("marker-after-flush")
        out.drain(0.6)  # a few more polls: a duplicate would show up here
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=10) == 0
        err = tail.stderr.read()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err
        assert out.seen == ["before", "marker-in-cache", "marker-after-flush"]
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
        out.close()
        tail.stderr.close()


def test_decode_follow_prints_everything_then_new_records(log_dir, writer):
    """decode -f prints every record of the folder, then new ones as they come, like tail -f."""
    write_log(log_dir, [(f"old {i}", 20, None) for i in range(15)])
    follow = subprocess.Popen(
        [*MMAPLOG, "decode", "-f", log_dir], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert follow.stdout is not None
    out = Lines(follow.stdout)
    try:
        out.wait_for("old 14")
        proc, replies = writer
        tell(proc, replies, "log fresh")
        out.wait_for("fresh")
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=10) == 0
        assert out.seen == [f"old {i}" for i in range(15)] + ["fresh"]
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        out.close()
    res = run("decode", "-f", log_dir, log_dir)
    assert res.returncode == 2 and "-f follows one log folder" in res.stderr


# -- verify -----------------------------------------------------------------------------


def test_verify_of_intact_logs_exits_0_with_a_summary(log_dir):
    """verify counts files, blocks and records and exits 0 when every block is intact."""
    write_log(log_dir, [(f"line {i}", 20, None) for i in range(3000)], buffer_size=16 * 1024)
    res = run("verify", log_dir)
    assert res.returncode == 0, res.stderr
    *files, total = res.stdout.splitlines()
    assert files[0].endswith(": ok") and "3000 records" in files[0]
    assert total.startswith("total: 1 files, ") and "3000 records, 0 damaged ranges" in total


def test_verify_reports_damaged_ranges_with_offsets_and_exits_1(log_dir):
    """verify lists each damaged byte range with its offsets and exits 1."""
    write_log(log_dir, [(f"line {i}", 20, None) for i in range(3000)], buffer_size=16 * 1024)
    (path,) = log_files(log_dir)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    res = run("verify", path)
    assert res.returncode == 1 and no_traceback(res)
    lines = res.stdout.splitlines()
    assert lines[0].endswith("1 damaged range")
    start, end = (int(n) for n in lines[1].split()[1].split("-"))
    assert start <= size // 2 < end <= size
    assert "1 damaged range" in lines[-1]


def test_verify_checks_encrypted_blocks_with_and_without_the_key(log_dir, tmp_path):
    """Without --key verify checks checksums and says so; with it, it decrypts; a wrong key is 1."""
    private, public = mmaplog.generate_keypair()
    write_log(log_dir, [(f"secret {i}", 20, None) for i in range(50)], public_key=public)
    res = run("verify", log_dir)
    assert res.returncode == 0, res.stderr
    assert "50 records" in res.stdout and "checksums only" in res.stdout
    key = tmp_path / "ops.key"
    key.write_text(private)
    res = run("verify", "--key", str(key), log_dir)
    assert res.returncode == 0 and "checksums only" not in res.stdout
    other = tmp_path / "other.key"
    other.write_text(mmaplog.generate_keypair()[0])
    res = run("verify", "--key", str(other), log_dir)
    assert res.returncode == 1 and "the key does not match" in res.stderr


def test_verify_rejects_missing_and_foreign_files(tmp_path, log_dir):
    """verify of a missing file or a file that is not a log says so and exits 2."""
    write_log(log_dir, [("fine", 20, None)])
    notes = tmp_path / "notes.txt"
    notes.write_text("just some text\n" * 50)
    res = run("verify", str(notes), log_dir)
    assert res.returncode == 2 and no_traceback(res)
    assert res.stderr.strip() == f"mmaplog verify: {notes}: not an mmaplog file"
    assert "1 records: ok" in res.stdout
    res = run("verify", str(tmp_path / "missing.mmlog"))
    assert res.returncode == 2 and "no such file" in res.stderr and no_traceback(res)


def test_verify_reads_a_cache_file(log_dir):
    """verify of a cache file counts the records still in it."""
    h = open_handler(log_dir)
    try:
        for i in range(4):
            emit(h, f"in cache {i}")
        res = run("verify", os.path.join(log_dir, "app.mmap"))
        assert res.returncode == 0, res.stderr
        assert "cache file: 1 blocks, 4 records: ok" in res.stdout
    finally:
        h.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_verify_and_stats_of_unreadable_input_exit_2(log_dir):
    """A log file without read permission is one clear line and exit status 2."""
    write_log(log_dir, [("secret", 20, None)])
    (path,) = log_files(log_dir)
    os.chmod(path, 0)
    for res in (run("verify", path), run("stats", log_dir)):
        assert res.returncode == 2 and "cannot read" in res.stderr and no_traceback(res)


# -- stats ------------------------------------------------------------------------------


def test_stats_counts_files_records_span_and_ratio(log_dir):
    """stats prints per-file and total sizes, blocks, records, the time span and the ratio."""
    start = _dt.datetime(2026, 3, 1, 9, 0, 0).timestamp()
    items = [(f"request {i} handled in 12 ms", 20, start + i * 60) for i in range(2000)]
    write_log(log_dir, items, buffer_size=16 * 1024)
    res = run("stats", log_dir)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    size = sum(os.path.getsize(p) for p in log_files(log_dir))  # two days: two files
    assert "total: 2 files, " in out and f"({size} bytes) on disk" in out
    assert "2000 records" in out
    assert "time span: 2026-03-01 09:00:00.000" in out and "1d 9h 19m" in out
    ratio = float(out.split("ratio ")[1].split()[0])
    assert ratio > 2
    assert run("stats", "--prefix", "other", log_dir).stdout.strip() == f"no log files in {log_dir}"


def test_stats_lists_recovered_blocks_apart(tmp_path):
    """Blocks moved by recovery count as records but are listed apart from the ratio."""
    log_dir = str(tmp_path)
    # A cache too large to fill in the half second: no block is moved, so the kill
    # cannot tear a write (stats would report those bytes, exit status 1).
    handler = {"flush_interval": 3600, "buffer_size": 32 * 1024 * 1024}
    harness.run_writer({"log_dir": log_dir, "handler": handler, "sizes": [10, 100]}, kill_after=0.5)
    assert run("recover", log_dir).returncode == 0
    res = run("stats", log_dir)
    assert res.returncode == 0, res.stderr
    assert "recovered: " in res.stdout and "stream-form blocks" in res.stdout


@pytest.mark.parametrize("make", [lambda d: os.path.join(d, "nope"), lambda d: __file__])
def test_stats_rejects_a_missing_folder_or_a_file(tmp_path, make):
    """stats of something that is not a folder is one line and exit status 2."""
    res = run("stats", make(str(tmp_path)))
    assert res.returncode == 2 and res.stderr.startswith("mmaplog stats: ") and no_traceback(res)


# -- progress bar, help -----------------------------------------------------------------


def big_log(log_dir: str) -> None:
    # Enough output to fill a pipe several times over.
    write_log(log_dir, [(f"record {i:06d} " + "y" * 40, 20, None) for i in range(10000)])


def stalled_decode(log_dir: str, stderr: int) -> bytes:
    """Run a decode whose stdout is not read for a while, so it runs long enough for a bar;
    return what it wrote on a piped stderr."""
    with subprocess.Popen(
        [*MMAPLOG, "decode", log_dir], stdout=subprocess.PIPE, stderr=stderr, env=ENV
    ) as proc:
        time.sleep(1.0)  # the child blocks once the stdout pipe is full
        assert proc.stdout is not None
        assert proc.stdout.read().count(b"\n") == 10000
        err = proc.stderr.read() if proc.stderr is not None else b""
        assert proc.wait(timeout=30) == 0
    return err


def test_progress_bar_is_drawn_on_a_terminal_and_erased(log_dir):
    """A long decode draws an ASCII progress bar on stderr when it is a terminal, then erases it."""
    big_log(log_dir)
    master, slave = pty.openpty()
    try:
        stalled_decode(log_dir, slave)
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                part = os.read(master, 4096)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not part:
                break
            seen += part
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert b"decode [" in seen and b"%" in seen and (b"MiB" in seen or b"KiB" in seen)
    assert seen.isascii()
    last_line = seen.rsplit(b"\r", 2)
    assert seen.endswith(b"\r") and last_line[-2].strip() == b""


def test_no_progress_bar_when_stderr_is_piped(log_dir):
    """The same long decode with stderr piped writes nothing on stderr."""
    big_log(log_dir)
    assert stalled_decode(log_dir, subprocess.PIPE) == b""


@pytest.mark.parametrize(
    "command",
    [[], ["decode"], ["tail"], ["verify"], ["stats"], ["recover"], ["keygen"], ["pubkey"]],
)
def test_help_documents_the_exit_status(command):
    """Every --help, the top level's included, lists the exit statuses."""
    res = run(*command, "--help")
    assert res.returncode == 0
    status = res.stdout.split("exit status")[1]
    assert "  0  " in status and "  2  " in status
    if command not in (["keygen"], ["pubkey"]):
        assert "  1  " in status


def test_decode_json_names_the_logger_of_xlog_lines(tmp_path):
    """--format json gives time, level, logger, pid, session and message for text records."""
    import json as _json

    log_dir = str(tmp_path / "logs")
    h = mmaplog.MmapHandler(log_dir)
    lg = logging.getLogger("shop.orders")
    lg.handlers[:] = [h]
    lg.propagate = False
    lg.warning("order %s failed", 42)
    h.close()
    res = subprocess.run(
        [sys.executable, "-m", "mmaplog", "decode", "--format", "json", log_dir],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert res.returncode == 0, res.stderr
    obj = _json.loads(res.stdout)
    assert obj["logger"] == "shop.orders" and obj["level"] == "WARNING"
    assert obj["pid"] == os.getpid() and len(obj["session"]) == 16
    assert obj["message"].endswith("[order 42 failed")
    assert obj["thread"] == threading.get_ident()


def test_decode_json_gives_logger_and_thread_whatever_the_formatter(tmp_path):
    """--format json names the logger and thread of records whose text shows neither."""
    import json as _json

    log_dir = str(tmp_path / "logs")
    h = mmaplog.MmapHandler(log_dir)
    h.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    lg = logging.getLogger("shop.orders")
    lg.handlers[:] = [h]
    lg.propagate = False
    lg.warning("order %s failed", 42)
    worker = threading.Thread(target=lg.error, args=("from a worker",))
    worker.start()
    worker.join()
    h.close()
    res = subprocess.run(
        [sys.executable, "-m", "mmaplog", "decode", "--format", "json", log_dir],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert res.returncode == 0, res.stderr
    first, second = (_json.loads(line) for line in res.stdout.splitlines())
    assert first["message"] == "WARNING order 42 failed"
    assert (first["logger"], first["pid"], first["thread"]) == (
        "shop.orders",
        os.getpid(),
        threading.get_ident(),
    )
    assert second["logger"] == "shop.orders" and second["thread"] not in (None, first["thread"])


def test_blocks_of_a_newer_format_version_are_reported_not_read(tmp_path):
    """A log whose blocks are of a format version this mmaplog does not know is one
    damaged range per run of them, saying so, and decode exits 1 printing nothing."""
    from dataclasses import replace

    path = os.path.join(
        os.path.dirname(__file__), "fixtures", "v2", "logs", "mmaplog_zstd_20250314.mmlog"
    )
    with open(path, "rb") as f:
        data = f.read()
    newer = b"".join(
        fmt.pack_header(replace(b.header, version=3)) + b.payload
        for b in fmt.scan_blocks(data)
        if isinstance(b, fmt.ScannedBlock)
    )
    log = tmp_path / "app_20250314.mmlog"
    log.write_bytes(newer)
    res = subprocess.run(
        [sys.executable, "-m", "mmaplog", "decode", str(log)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert res.returncode == 1 and res.stdout == ""
    (line,) = res.stderr.splitlines()
    assert line.endswith(
        "block at offset 0: format version 3 is not supported (this mmaplog reads versions 1 and 2)"
    )


def test_decode_json_of_a_version_1_log_reads_logger_and_thread_from_the_line():
    """A log written before records carried them gives the logger and thread of the default
    line, and null for events logged as JSON objects."""
    import json as _json

    path = os.path.join(
        os.path.dirname(__file__), "fixtures", "v1", "logs", "mmaplog_zstd_20250314.mmlog"
    )
    res = subprocess.run(
        [sys.executable, "-m", "mmaplog", "decode", "--format", "json", path],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert res.returncode == 0, res.stderr
    objs = [_json.loads(line) for line in res.stdout.splitlines()]
    lines = [o for o in objs if "message" in o]
    events = [o for o in objs if "event" in o]
    assert len(lines) > 30 and len(events) == 2
    for o in lines:
        assert o["logger"] == "fixtures.mmaplog_zstd"
        assert f"[{o['pid']}, {o['thread']}][fixtures.mmaplog_zstd][" in o["message"]
    assert all(o["logger"] is None and o["thread"] is None for o in events)
