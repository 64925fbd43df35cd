"""The command line as a new user meets it, after a crash and with hostile input: subprocesses."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mmaplog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *sys.path])}
MMAPLOG = [sys.executable, "-m", "mmaplog"]


def run(
    *args: str, env: dict[str, str] | None = None, encoding: str = "utf-8", cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MMAPLOG, *args],
        capture_output=True,
        encoding=encoding,
        env={**ENV, **(env or {})},
        timeout=60,
        cwd=cwd,
    )


def _write_at_once_then_decode(
    script: str, folder: str, n: int
) -> tuple[list[subprocess.Popen[bytes]], list[dict[str, object]]]:
    """Run ``n`` writer processes of ``script`` on ``folder`` at once; return them and
    what ``decode --format json`` prints of the folder, checked to be in time order."""
    procs = [subprocess.Popen([sys.executable, "-c", script, folder], env=ENV) for _ in range(n)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    res = run("decode", "--format", "json", folder)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    stamps = [e["time"] for e in events]
    assert stamps == sorted(stamps)
    return procs, events


def write_log(log_dir: str, texts: list[str], prefix: str = "app", **kwargs: object) -> None:
    h = mmaplog.MmapHandler(log_dir, prefix=prefix, **kwargs)  # type: ignore[arg-type]
    h.setFormatter(logging.Formatter("%(message)s"))
    for text in texts:
        h.handle(logging.LogRecord("user", logging.INFO, __file__, 1, text, None, None))
    h.close()


_KILLED_WRITER = textwrap.dedent(
    """
    import json, logging, os, signal, sys
    import mmaplog
    log_dir, prefix, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    h = mmaplog.MmapHandler(log_dir, prefix=prefix, flush_interval=3600)
    h.setFormatter(logging.Formatter("%(message)s"))
    for text in texts:
        h.handle(logging.LogRecord("user", logging.INFO, "w.py", 1, text, None, None))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def killed_writer(log_dir: str, texts: list[str], prefix: str = "app") -> None:
    """Run a process that logs ``texts`` and is killed before its first block move."""
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, log_dir, prefix, json.dumps(texts)],
        env=ENV,
        timeout=60,
    )
    assert proc.returncode == -9


def listing(folder: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


# -- recover ----------------------------------------------------------------------------


def test_recover_of_a_log_file_says_not_a_cache_and_leaves_it(log_dir):
    """recover of a log, a text file or random bytes exits 2, "not a cache", renaming nothing."""
    write_log(log_dir, ["one", "two"])
    (log_name,) = [n for n in os.listdir(log_dir) if n.endswith(".mmlog")]
    with open(os.path.join(log_dir, "notes.txt"), "w") as f:
        f.write("hello\n")
    with open(os.path.join(log_dir, "noise.mmap"), "wb") as f:
        f.write(os.urandom(5000))
    before = listing(log_dir)
    for name in (log_name, "notes.txt", "noise.mmap"):
        res = run("recover", os.path.join(log_dir, name))
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip().endswith("not a cache (no cache magic); not touched")
        assert "Traceback" not in res.stderr and res.stdout == ""
    assert listing(log_dir) == before
    res = run("decode", log_dir)
    assert res.stdout.splitlines() == ["one", "two"]


def test_recover_of_a_folder_skips_files_that_are_not_caches(log_dir):
    """recover of a folder recovers its caches and skips *.mmap files that are not caches."""
    killed_writer(log_dir, ["left in the cache"])
    with open(os.path.join(log_dir, "other.mmap"), "wb") as f:
        f.write(b"not a cache at all\n" * 100)
    res = run("recover", log_dir)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "recovered 1 records"
    assert "other.mmap: skipped: not a cache" in res.stderr
    with open(os.path.join(log_dir, "other.mmap"), "rb") as f:
        assert f.read() == b"not a cache at all\n" * 100
    assert [r.text for r in mmaplog.read_records(log_dir)] == ["left in the cache"]


def test_recover_module_runs_without_a_warning(log_dir):
    """python -W error -m mmaplog.recover runs clean: no RuntimeWarning about the module."""
    killed_writer(log_dir, ["a", "b"])
    res = subprocess.run(
        [sys.executable, "-W", "error", "-m", "mmaplog.recover", log_dir],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and res.stdout.strip() == "recovered 2 records"


def test_recover_as_a_library_prints_nothing(log_dir):
    """mmaplog.recover returns the count and prints nothing, even for a non-cache in the folder."""
    killed_writer(log_dir, ["x"])
    with open(os.path.join(log_dir, "junk.mmap"), "wb") as f:
        f.write(b"junk")
    code = f"import mmaplog; print(mmaplog.recover({log_dir!r}))"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert res.returncode == 0 and res.stdout == "1\n" and res.stderr == ""


def test_importing_the_recover_module_keeps_the_function_callable(log_dir):
    """After import mmaplog.recover, mmaplog.recover(path) still recovers."""
    killed_writer(log_dir, ["y"])
    code = f"import mmaplog.recover, mmaplog; print(mmaplog.recover({log_dir!r}))"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert res.returncode == 0 and res.stdout == "1\n", res.stderr


def test_a_cache_cut_short_is_damage_and_recover_never_grows_it(log_dir):
    """A cache shorter than its header says: verify and decode report the missing range
    (status 1); recover moves out the whole records, says what was cut, and moves the file
    aside without making it longer (status 1)."""
    from mmaplog import _format as fmt

    texts = [f"record {i} " + os.urandom(50).hex() for i in range(200)]  # about 16 KB
    killed_writer(log_dir, texts)
    with open(os.path.join(log_dir, "app.mmap"), "rb") as f:
        image = f.read()
    os.remove(os.path.join(log_dir, "app.mmap"))
    alone = os.path.join(log_dir, "alone")
    os.mkdir(alone)
    header_only = os.path.join(alone, "app.mmap")
    with open(header_only, "wb") as f:
        f.write(image[: fmt.CACHE_HEADER_SIZE])
    cut = f"bytes {fmt.CACHE_HEADER_SIZE}-{len(image)}"
    res = run("verify", header_only)
    assert res.returncode == 1, res.stdout + res.stderr
    assert cut in res.stdout and "cut short" in res.stdout
    res = run("verify", alone)  # found in a folder, though it holds no record
    assert res.returncode == 1 and cut in res.stdout
    res = run("decode", alone)
    assert res.returncode == 1 and cut in res.stderr and "Traceback" not in res.stderr
    res = run("recover", header_only)
    assert res.returncode == 1, res.stderr
    assert res.stdout.strip() == "recovered 0 records"
    assert "cut short" in res.stderr and cut in res.stderr and "moved to" in res.stderr
    (aside,) = os.listdir(alone)
    assert aside.startswith("app.mmap.corrupt-")
    assert os.path.getsize(os.path.join(alone, aside)) == fmt.CACHE_HEADER_SIZE  # not grown
    # Recovering the file moved aside again leaves it under its name.
    res = run("recover", os.path.join(alone, aside))
    assert res.returncode == 1 and os.listdir(alone) == [aside], res.stderr
    assert "moved aside already" in res.stderr
    # Cut inside the first slot: the records whose chunks are whole are recovered, in order.
    partial = os.path.join(log_dir, "app.mmap")
    with open(partial, "wb") as f:
        f.write(image[: fmt.CACHE_HEADER_SIZE + 3000])
    res = run("recover", partial)
    assert res.returncode == 1 and "cut short" in res.stderr
    marker, *recovered = run("decode", log_dir).stdout.splitlines()
    assert marker.startswith("-- recovered after a crash of pid")
    assert 0 < len(recovered) < len(texts) and recovered == texts[: len(recovered)]
    assert res.stdout.strip() == f"recovered {len(recovered)} records"
    (aside,) = [n for n in os.listdir(log_dir) if ".corrupt-" in n]
    assert os.path.getsize(os.path.join(log_dir, aside)) == fmt.CACHE_HEADER_SIZE + 3000


def test_an_empty_file_is_not_a_cache(log_dir):
    """recover of a 0-byte file says "not a cache" (status 2) and leaves it; in a folder it is
    skipped, and recovery of the folder's real caches goes on."""
    killed_writer(log_dir, ["real"])
    empty = os.path.join(log_dir, "empty.mmap")
    open(empty, "wb").close()
    res = run("recover", empty)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"mmaplog recover: {empty}: not a cache (an empty file); not touched"
    )
    res = run("recover", log_dir)
    assert res.returncode == 0, res.stderr
    assert f"{empty}: skipped: not a cache (an empty file)" in res.stderr
    assert res.stdout.strip() == "recovered 1 records"
    assert os.path.getsize(empty) == 0 and not [n for n in os.listdir(log_dir) if "corrupt" in n]


def test_links_are_followed_to_read_and_never_to_recover(log_dir, tmp_path):
    """decode and verify follow a link named on the command line, tail and stats a linked
    folder; recover refuses a linked cache (status 2, naming its target) and skips links in
    a folder, touching neither link nor cache."""
    killed_writer(log_dir, ["one", "two"])
    cache = os.path.join(log_dir, "app.mmap")
    link = str(tmp_path / "link.mmap")
    os.symlink(cache, link)
    linked_dir = str(tmp_path / "linked")
    os.symlink(log_dir, linked_dir)
    res = run("decode", link)
    assert res.returncode == 0 and res.stdout.splitlines() == ["one", "two"], res.stderr
    res = run("verify", link)
    assert res.returncode == 0 and "2 records: ok" in res.stdout, res.stderr
    res = run("tail", linked_dir)
    assert res.returncode == 0 and res.stdout.splitlines() == ["one", "two"], res.stderr
    res = run("stats", linked_dir)
    assert res.returncode == 0 and "(cache, not recovered)" in res.stdout, res.stderr
    before = listing(log_dir)
    res = run("recover", link)
    assert res.returncode == 2 and res.stdout == ""
    assert f"{link}: a symbolic link (to {os.path.realpath(cache)})" in res.stderr
    assert "recover does not act through links" in res.stderr
    assert os.path.islink(link) and listing(log_dir) == before
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(cache, other / "app.mmap")
    res = run("recover", str(other))
    assert res.returncode == 0 and res.stdout.strip() == "recovered 0 records"
    assert f"{other / 'app.mmap'}: skipped: a symbolic link (not followed)" in res.stderr
    assert listing(log_dir) == before
    res = run("recover", linked_dir)  # a folder named through a link is a folder
    assert res.returncode == 0 and res.stdout.strip() == "recovered 2 records", res.stderr


# -- tail -------------------------------------------------------------------------------


def test_tail_n_larger_than_the_log_prints_every_record(log_dir):
    """tail -n N prints all records when N exceeds their number, and the last N otherwise."""
    texts = [f"record {i}" for i in range(30)]
    write_log(log_dir, texts)
    for n, want in (("40", texts), ("61", texts), ("30", texts), ("5", texts[-5:]), ("0", [])):
        res = run("tail", "-n", n, log_dir)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == want, n


# -- output -----------------------------------------------------------------------------


def on_terminal(*args: str, env: dict[str, str] | None = None) -> str:
    """Run ``mmaplog ARGS`` with stdout on a pseudo-terminal; what it printed there."""
    master, slave = pty.openpty()
    try:
        env = {**ENV, "NO_COLOR": "1", **(env or {})}
        with subprocess.Popen([*MMAPLOG, *args], stdout=slave, env=env) as proc:
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
            assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return seen.decode("utf-8").replace("\r\n", "\n")


def test_text_the_output_cannot_encode_is_escaped(log_dir):
    """decode and tail to a latin-1 stdout escape CJK text and exit 0, with no traceback."""
    write_log(log_dir, ["订单 42 失败", "café"])
    for command in ("decode", "tail"):
        res = run(command, log_dir, env={"PYTHONIOENCODING": "latin-1"}, encoding="latin-1")
        assert res.returncode == 0 and res.stderr == "", res.stderr
        assert res.stdout.splitlines() == ["\\u8ba2\\u5355 42 \\u5931\\u8d25", "café"]


def test_control_characters_are_escaped_on_a_terminal(log_dir):
    """On a terminal, escape sequences and carriage returns are shown as \\xNN; --raw keeps them."""
    hostile = "ok\x1b[2J\x1b]0;owned\x07\rfake line\x9b1m"
    write_log(log_dir, [hostile, "tab\there"])
    shown = "ok\\x1b[2J\\x1b]0;owned\\x07\\x0dfake line\\x9b1m"
    for command in ("decode", "tail"):
        assert on_terminal(command, log_dir).splitlines() == [shown, "tab\there"]
        assert on_terminal(command, "--raw", log_dir).split("\n") == [hostile, "tab\there", ""]
    # Into a pipe or a file, the text is as it was logged.
    piped = subprocess.run([*MMAPLOG, "decode", log_dir], capture_output=True, env=ENV, timeout=60)
    assert piped.stdout.decode().split("\n") == [hostile, "tab\there", ""]


def test_bidi_and_c1_controls_are_escaped_on_a_terminal_in_text_and_json(log_dir):
    """On a terminal, a right-to-left override and C1 controls are escaped in text and in
    JSON Lines (as JSON escapes, so the line is still the same JSON); --raw keeps them."""
    hostile = "pay \u202eevil\u202c 10\x9b2J\x7f"
    write_log(log_dir, [hostile])
    assert on_terminal("decode", log_dir).splitlines() == ["pay \\u202eevil\\u202c 10\\x9b2J\\x7f"]
    line = on_terminal("decode", "--format", "json", log_dir).strip()
    assert "\u202e" not in line and "\x9b" not in line and "\\u202e" in line
    assert json.loads(line)["message"] == hostile
    raw = on_terminal("decode", "--format", "json", "--raw", log_dir).strip()
    assert json.loads(raw)["message"] == hostile and "\u202e" in raw


# -- xlog times -------------------------------------------------------------------------

_XLOG_WRITER = textwrap.dedent(
    """
    import logging, sys
    import mmaplog
    h = mmaplog.MmapHandler(sys.argv[1], prefix="app", format="xlog", compression="zstd")
    for when in (float(sys.argv[2]), float(sys.argv[2]) + 60.5):
        r = logging.LogRecord("svc", logging.INFO, "w.py", 7, "at %s", (when,), None)
        r.created, r.msecs = when, (when % 1) * 1000
        h.handle(r)
    h.close()
    """
)


def test_xlog_lines_written_outside_utc_read_back_at_their_time(tmp_path):
    """xlog files written at UTC offsets like +0800, +0545 or -0330 read back at their time."""
    import time

    now = round(time.time() - 120, 3)
    for tz in ("Asia/Shanghai", "Asia/Kathmandu", "America/St_Johns", "UTC"):
        folder = str(tmp_path / tz.replace("/", "_"))
        env = {**ENV, "TZ": tz}
        subprocess.run(
            [sys.executable, "-c", _XLOG_WRITER, folder, repr(now)], env=env, check=True, timeout=60
        )
        times = [r.time for r in mmaplog.read_records(folder)]
        assert times == [pytest.approx(now, abs=0.001), pytest.approx(now + 60.5, abs=0.001)]
        res = run("decode", "--since", "1h", folder, env={"TZ": tz})
        assert res.returncode == 0 and len(res.stdout.splitlines()) == 2, (tz, res.stderr)
        res = run("decode", "--since", "90s", folder, env={"TZ": "UTC"})
        assert [line.rsplit("[", 1)[1] for line in res.stdout.splitlines()] == [f"at {now + 60.5}"]


_XLOG_PID_WRITER = textwrap.dedent(
    """
    import logging, sys
    import mmaplog
    h = mmaplog.MmapHandler(sys.argv[1], prefix=sys.argv[2], format="xlog")
    for text in (f"from {sys.argv[2]}", "two lines\\nsecond line"):
        h.handle(logging.LogRecord("svc", logging.INFO, "w.py", 7, text, None, None))
    h.close()
    """
)


def test_pid_of_xlog_lines_filters_and_shows_in_json(tmp_path):
    """--pid keeps the xlog lines of one process, read from their [pid, tid] field, with the
    lines of its messages that have no header of their own; JSON shows it for each line."""
    folder = str(tmp_path)
    pids = {}
    for name in ("a", "b"):
        proc = subprocess.Popen([sys.executable, "-c", _XLOG_PID_WRITER, folder, name], env=ENV)
        assert proc.wait(timeout=60) == 0
        pids[name] = proc.pid
    res = run("decode", "--pid", str(pids["a"]), folder)
    assert res.returncode == 0, res.stderr
    assert [line.rsplit("][", 1)[-1] for line in res.stdout.splitlines()] == [
        "from a",
        "two lines",
        "second line",
    ]
    res = run("decode", "--format", "json", folder)
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(events) == 6
    by_pid = sorted((e["pid"], e["message"].rsplit("][", 1)[-1]) for e in events)
    assert by_pid == sorted(
        (pid, text)
        for name, pid in pids.items()
        for text in (f"from {name}", "two lines", "second line")
    )


_XLOG_KILLED = textwrap.dedent(
    """
    import logging, os, signal, sys
    import mmaplog
    h = mmaplog.MmapHandler(sys.argv[1], prefix="m", format="xlog", flush_interval=3600)
    for i in range(5):
        h.handle(logging.LogRecord("svc", logging.INFO, "w.py", 7, "line %d", (i,), None))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_an_xlog_cache_left_by_a_kill_reads_intact_and_not_recovered(tmp_path):
    """After a kill -9 of an xlog writer, decode, tail and verify show its cache's lines,
    marked as not recovered, and call the cache intact; recover then moves them."""
    folder = str(tmp_path / "crash")
    proc = subprocess.Popen([sys.executable, "-c", _XLOG_KILLED, folder], env=ENV)
    assert proc.wait(timeout=60) == -9
    cache = os.path.join(folder, "m.mmap")
    want = [f"line {i}" for i in range(5)]
    res = run("decode", folder)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"-- not recovered yet: left in {cache} by pid {proc.pid}; ")
    assert [line.rsplit("][", 1)[1] for line in lines[1:]] == want
    assert "skipped" not in res.stderr and "5 records of pid" in res.stderr
    res = run("tail", folder)
    assert res.returncode == 0, res.stderr
    assert [line.rsplit("][", 1)[1] for line in res.stdout.splitlines()] == want
    res = run("verify", folder)
    assert res.returncode == 0, res.stdout
    assert f"{cache}: cache file: 1 blocks, 5 records: ok" in res.stdout
    fixture = os.path.join(ROOT, "tests", "fixtures", "v1", "caches", "crash_xlog_zlib.mmap")
    res = run("verify", fixture)
    assert res.returncode == 0 and res.stdout.endswith(" 0 damaged ranges (0 bytes)\n"), res.stdout
    res = run("decode", "--level", "ERROR", fixture)
    assert res.returncode == 0 and "ValueError: stock for order 42" in res.stdout, res.stderr
    assert run("recover", folder).stdout.strip() == "recovered 5 records"
    res = run("decode", folder)
    assert res.returncode == 0 and "not recovered" not in res.stdout + res.stderr
    assert [line.rsplit("][", 1)[1] for line in res.stdout.splitlines()] == want


_XLOG_TRACEBACK_WRITER = textwrap.dedent(
    """
    import logging, sys
    import mmaplog
    log = logging.getLogger("svc")
    log.propagate = False
    log.setLevel(logging.INFO)
    h = mmaplog.MmapHandler(sys.argv[1], prefix="app", format="xlog")
    log.addHandler(h)
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("division failed")
    log.info("first\\nsecond")
    h.close()
    log.removeHandler(h)
    custom = mmaplog.MmapHandler(sys.argv[2], prefix="app", format="xlog")
    custom.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(custom)
    log.error("custom one\\nand two")
    custom.close()
    """
)


def test_xlog_lines_without_a_header_take_their_records_time_level_and_pid(tmp_path):
    """A traceback or a message's second line in an xlog file has its record's time, level
    and pid; lines another formatter wrote have the file's date, kept by --since/--until."""
    folder, other = str(tmp_path / "xlog"), str(tmp_path / "custom")
    proc = subprocess.Popen([sys.executable, "-c", _XLOG_TRACEBACK_WRITER, folder, other], env=ENV)
    assert proc.wait(timeout=60) == 0
    res = run("decode", "--level", "ERROR", folder)
    assert res.returncode == 0, res.stderr
    errors = res.stdout.splitlines()
    assert errors[0].endswith("][division failed")
    assert errors[1] == "Traceback (most recent call last):"
    assert errors[-1] == "ZeroDivisionError: division by zero"
    everything = run("decode", folder).stdout.splitlines()
    assert everything[-2].endswith("][first") and everything[-1] == "second"
    assert run("decode", "--since", "1h", folder).stdout.splitlines() == everything
    assert run("tail", "-n", "100", folder).stdout.splitlines() == everything
    events = [
        json.loads(line) for line in run("decode", "--format", "json", folder).stdout.splitlines()
    ]
    assert {e["pid"] for e in events} == {proc.pid}
    assert [e["time"] for e in events if e["message"] == "second"] == [
        e["time"] for e in events if e["message"].endswith("][first")
    ]
    assert not any(e["time"].startswith("1970") for e in events)
    # No xlog header at all: the day the file is named after, at its block's hour.
    (name,) = [n for n in os.listdir(other) if n.endswith(".xlog")]
    day = re.search(r"_(\d{4})(\d\d)(\d\d)\.xlog$", name)
    assert day is not None
    date = "-".join(day.groups())
    res = run("decode", "--since", f"{date}T00:00", "--until", f"{date}T23:59:59", other)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["ERROR custom one", "and two"]
    events = [
        json.loads(line) for line in run("decode", "--format", "json", other).stdout.splitlines()
    ]
    assert [e["time"][:10] for e in events] == [date, date]


_XLOG_BUSY_WRITER = textwrap.dedent(
    """
    import logging, sys, time
    import mmaplog
    h = mmaplog.MmapHandler(sys.argv[1], prefix="m", format="xlog", flush_interval=3600)
    for i in range(30):
        h.handle(logging.LogRecord("svc", logging.INFO, "w.py", 7, "%d", (i,), None))
        time.sleep(0.005)
    h.close()
    """
)


def test_an_xlog_folder_of_several_processes_decodes_in_time_order(tmp_path):
    """Two processes writing one xlog file at once decode merged by time, each in its order."""
    procs, events = _write_at_once_then_decode(_XLOG_BUSY_WRITER, str(tmp_path), 2)
    assert len(events) == 60
    for proc in procs:
        mine = [int(e["message"].rsplit("][", 1)[1]) for e in events if e["pid"] == proc.pid]
        assert mine == list(range(30))


_XLOG_SYNC_WRITER = textwrap.dedent(
    """
    import logging, sys
    import mmaplog
    key = sys.argv[3] if len(sys.argv) > 3 else None
    h = mmaplog.MmapHandler(sys.argv[1], prefix="m", format="xlog", mode=sys.argv[2],
                            xlog_public_key=key)
    for i in range(3):
        h.handle(logging.LogRecord("svc", logging.INFO, "w.py", 7, "%d\\nmore", (i,), None))
    h.close()
    """
)


def test_verify_and_stats_count_the_blocks_and_lines_of_xlog_files(tmp_path):
    """verify and stats count an xlog file's blocks and lines (stats leaves out the lines
    of encrypted blocks and says so)."""
    folder, sealed = str(tmp_path / "sync"), str(tmp_path / "sealed")
    subprocess.run(
        [sys.executable, "-c", _XLOG_SYNC_WRITER, folder, "sync"], env=ENV, check=True, timeout=60
    )
    res = run("verify", folder)
    assert res.returncode == 0, res.stdout
    assert "xlog file: 3 blocks, 6 records: ok" in res.stdout
    res = run("stats", folder)
    assert res.returncode == 0, res.stderr
    assert "not counted" not in res.stdout
    assert "total: 1 files" in res.stdout and ", 3 blocks, 6 records" in res.stdout
    assert "time span: " in res.stdout
    from mmaplog._xlog import generate_xlog_keypair

    _private, public = generate_xlog_keypair()
    subprocess.run(
        [sys.executable, "-c", _XLOG_SYNC_WRITER, sealed, "async", public],
        env=ENV,
        check=True,
        timeout=60,
    )
    res = run("stats", sealed)
    assert res.returncode == 0, res.stderr
    assert ", 1 blocks, 0 records" in res.stdout
    assert "the lines of 1 encrypted block are not counted" in res.stdout


# -- keys -------------------------------------------------------------------------------


_KEY_LINES = re.compile(r"public key: (?P<key>\S{44})\nfingerprint: (?P<fp>SHA256:[\w+/]{11})\n")


def keypair(folder: str, name: str = "ops.key") -> tuple[str, str]:
    """Make a key pair with keygen; the private key file's path and the public key."""
    path, public, _fingerprint = keypair_with_fingerprint(folder, name)
    return path, public


def keypair_with_fingerprint(folder: str, name: str = "ops.key") -> tuple[str, str, str]:
    """Make a key pair with keygen; the private key file, the public key, its fingerprint."""
    path = os.path.join(folder, name)
    res = run("keygen", "-o", path)
    assert res.returncode == 0, res.stderr
    m = _KEY_LINES.fullmatch(res.stdout)
    assert m is not None, res.stdout
    return path, m["key"], m["fp"]


def test_a_wrong_key_is_one_line_per_file_with_the_block_count(log_dir, tmp_path):
    """A key that does not match says so once per file, with how many blocks and which key
    the blocks need, and exits 1."""
    _private, public, needed = keypair_with_fingerprint(str(tmp_path))
    other, _, given = keypair_with_fingerprint(str(tmp_path), "other.key")
    write_log(log_dir, [f"secret {os.urandom(1000).hex()}" for i in range(400)], public_key=public)
    (log,) = [n for n in os.listdir(log_dir) if n.endswith(".mmlog")]
    for command in ("decode", "verify"):
        res = run(command, "--key", other, log_dir)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        (line,) = res.stderr.splitlines()
        assert line.startswith(f"mmaplog {command}: {os.path.join(log_dir, log)}: the key does")
        assert "encrypted blocks skipped" in line and "secret" not in res.stdout
        assert line.endswith(f"encrypted to the key {needed}, the key given is {given}")


def test_an_encrypted_log_names_the_key_it_needs_as_pubkey_prints_it(log_dir, tmp_path):
    """decode without --key names the fingerprint of the key the log was encrypted to, the
    one keygen and pubkey print for the key file; verify without --key names it too."""
    private, public, fingerprint = keypair_with_fingerprint(str(tmp_path))
    write_log(log_dir, ["secret"], public_key=public)
    assert run("pubkey", private).stdout == f"public key: {public}\nfingerprint: {fingerprint}\n"
    res = run("decode", log_dir)
    assert res.returncode == 2 and res.stdout == ""
    assert f"is encrypted for the key {fingerprint}: give its private key" in res.stderr
    res = run("verify", log_dir)
    assert res.returncode == 0 and f"the private key of {fingerprint}" in res.stdout


def test_key_mistakes_get_a_clear_line(log_dir, tmp_path):
    """A public key, a missing key file and a base64 public key each get a message saying so."""
    private, public = keypair(str(tmp_path))
    write_log(log_dir, ["secret"], public_key=public)
    pem = tmp_path / "public.pem"
    from mmaplog import _crypto

    raw = _crypto.load_public_key(public)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    pem.write_bytes(
        X25519PublicKey.from_public_bytes(raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    res = run("decode", "--key", str(pem), log_dir)
    assert res.returncode == 2
    assert res.stderr.strip().endswith("this is a public key: decoding needs the private key")
    res = run("decode", "--key", str(tmp_path / "missing.key"), log_dir)
    assert res.returncode == 2 and res.stderr.strip().endswith(
        "no such file (nor a key given as text)"
    )
    res = run("decode", "--key", public, log_dir)
    assert res.returncode == 1 and "if it is the public key keygen printed" in res.stderr
    assert run("decode", "--key", private, log_dir).stdout == "secret\n"


def test_keygen_writes_the_private_key_only_to_a_file_and_pubkey_prints_the_public(tmp_path):
    """keygen needs -o (never prints the private key); pubkey prints the public key of the file."""
    res = run("keygen")
    assert res.returncode == 2 and "-o" in res.stderr and "PRIVATE" not in res.stdout
    private, public = keypair(str(tmp_path))
    assert os.stat(private).st_mode & 0o777 == 0o600
    res = run("pubkey", private)
    assert res.returncode == 0 and res.stdout.startswith(f"public key: {public}\nfingerprint: ")
    res = run("pubkey", str(tmp_path / "nope.key"))
    assert res.returncode == 2 and res.stderr.strip().endswith("nope.key: no such file")


# -- after a crash, and many processes --------------------------------------------------


def test_decode_stats_and_verify_of_a_folder_show_what_a_dead_process_left(log_dir):
    """After a kill before any move, decode shows the cache's records; stats, verify count them."""
    write_log(log_dir, ["in the log"])
    killed_writer(log_dir, ["left 1", "left 2"], prefix="svc")
    res = run("decode", log_dir)
    assert res.returncode == 0, res.stderr
    cache = os.path.join(log_dir, "svc.mmap")
    lines = res.stdout.splitlines()
    assert lines[0] == "in the log" and lines[2:] == ["left 1", "left 2"]
    assert lines[1].startswith(f"-- not recovered yet: left in {cache} by pid ")
    assert f"run `mmaplog recover {log_dir}` --" in lines[1]
    assert "2 records of pid" in res.stderr and f"mmaplog recover {log_dir}" in res.stderr
    filtered = run("decode", "--level", "ERROR", log_dir)
    assert filtered.stdout == "" and "2 records of pid" in filtered.stderr
    res = run("stats", log_dir)
    assert res.returncode == 0, res.stderr
    assert "svc.mmap" in res.stdout and "(cache, not recovered)" in res.stdout
    assert "not recovered: 2 records in 1 cache of processes no longer running" in res.stdout
    res = run("verify", log_dir)
    assert res.returncode == 0, res.stderr
    assert f"{cache}: cache file: 1 blocks, 2 records: ok" in res.stdout
    assert f"1 cache in {log_dir} of processes no longer running" in res.stdout
    # Reading changed nothing: recovery still finds the two records.
    assert run("recover", log_dir).stdout.strip() == "recovered 2 records"
    assert "not recovered" not in run("decode", log_dir).stdout


def test_an_empty_folder_says_it_has_no_log_files(tmp_path):
    """decode, verify, stats and tail of a folder with no logs say "no log files in" it."""
    folder = str(tmp_path)
    for command in ("decode", "verify", "stats", "tail"):
        res = run(command, folder)
        assert res.returncode == 0, res.stderr
        assert f"no log files in {folder}" in res.stderr + res.stdout


_BUSY_WRITER = textwrap.dedent(
    """
    import logging, sys, time
    import mmaplog
    h = mmaplog.MmapHandler(sys.argv[1], prefix="app", buffer_size=16 * 1024,
                            flush_interval=0.02)
    h.setFormatter(logging.Formatter("%(message)s"))
    for i in range(300):
        h.handle(logging.LogRecord("w", logging.INFO, "w.py", 1, "%s " + "x" * 60, (i,), None))
        time.sleep(0.001)
    h.close()
    """
)


def test_a_folder_of_several_processes_decodes_in_time_order(log_dir):
    """Three processes logging at once decode in time order, with the pid in JSON and --pid."""
    procs, events = _write_at_once_then_decode(_BUSY_WRITER, log_dir, 3)
    assert len(events) == 900
    pids = sorted({e["pid"] for e in events})
    assert pids == sorted(p.pid for p in procs)
    for pid in pids:  # each process's records in its own order
        mine = [int(e["message"].split()[0]) for e in events if e["pid"] == pid]
        assert mine == list(range(300))
    res = run("decode", "--pid", str(pids[1]), log_dir)
    assert len(res.stdout.splitlines()) == 300 and res.returncode == 0


# -- conventions ------------------------------------------------------------------------


def test_version_and_unknown_options():
    """--version prints the version; an unknown option prints the usage naming it, exit 2."""
    res = run("--version")
    assert res.returncode == 0
    assert res.stdout.startswith(f"mmaplog {mmaplog.__version__} (") and "emit path" in res.stdout
    res = run("decode", "--bogus", "logs")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("usage: mmaplog decode")
    assert res.stderr.strip().endswith("unrecognized arguments: --bogus")
    for args in (["--bogus"], ["--bogus", "decode", "logs"], ["-x"]):
        res = run(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, args
        assert res.stderr.startswith("usage: mmaplog [")
        assert res.stderr.strip().endswith(f"mmaplog: error: unrecognized arguments: {args[0]}")
    assert run("--vers").stdout == run("--version").stdout  # an abbreviation


def test_output_file_is_new_and_private_unless_forced(log_dir, tmp_path):
    """decode -o creates a 0600 file, never replaces one without --force, and --force does."""
    write_log(log_dir, ["one"])
    out = tmp_path / "out.txt"
    assert run("decode", "-o", str(out), log_dir).returncode == 0
    assert out.read_text() == "one\n" and out.stat().st_mode & 0o777 == 0o600
    out.write_text("keep me\n")
    out.chmod(0o644)
    res = run("decode", "-o", str(out), log_dir)
    assert res.returncode == 2 and "already exists" in res.stderr and "--force" in res.stderr
    assert out.read_text() == "keep me\n"
    assert run("decode", "-o", str(out), "--force", log_dir).returncode == 0
    assert out.read_text() == "one\n" and out.stat().st_mode & 0o777 == 0o600


def test_since_and_until_take_words_and_utc(log_dir):
    """--since/--until take now, today, yesterday and '1 hour ago'; --utc shows UTC times."""
    import datetime as dt
    import time

    now = time.time()
    stamps = [now - 3 * 86400, now - 7200, now - 60]
    h = mmaplog.MmapHandler(log_dir, prefix="app")
    h.setFormatter(logging.Formatter("%(message)s"))
    for i, when in enumerate(stamps):
        r = logging.LogRecord("w", logging.INFO, "w.py", 1, f"r{i}", None, None)
        r.created = when
        h.handle(r)
    h.close()

    def texts(*args: str) -> list[str]:
        res = run("decode", *args, log_dir)
        assert res.returncode == 0, res.stderr
        return res.stdout.splitlines()

    assert texts("--since", "1 hour ago") == ["r2"]
    assert texts("--since", "3 hours ago", "--until", "now") == ["r1", "r2"]
    assert texts("--until", "yesterday") == ["r0"]
    midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
    assert texts("--since", "today") == [f"r{i}" for i, t in enumerate(stamps) if t >= midnight]
    res = run("decode", "--utc", "--format", "json", log_dir)
    assert all(json.loads(line)["time"].endswith("+00:00") for line in res.stdout.splitlines())
    assert "+0000" in run("stats", "--utc", log_dir).stdout
    res = run("decode", "--since", "the day before", log_dir)
    assert res.returncode == 2 and "not a time" in res.stderr


def test_levels_are_coloured_on_a_terminal_unless_no_color(log_dir):
    """On a terminal, warnings and errors are coloured; NO_COLOR and pipes get plain text."""
    h = mmaplog.MmapHandler(log_dir, prefix="app")
    h.setFormatter(logging.Formatter("%(message)s"))
    for level in (logging.INFO, logging.WARNING, logging.ERROR):
        h.handle(logging.LogRecord("w", level, "w.py", 1, logging.getLevelName(level), None, None))
    h.close()
    coloured = on_terminal("decode", log_dir, env={"NO_COLOR": "", "TERM": "xterm"})
    assert coloured.splitlines() == ["INFO", "\x1b[33mWARNING\x1b[0m", "\x1b[31mERROR\x1b[0m"]
    plain = on_terminal("decode", log_dir, env={"NO_COLOR": "1", "TERM": "xterm"})
    assert plain.splitlines() == ["INFO", "WARNING", "ERROR"]
    assert run("decode", log_dir).stdout.splitlines() == ["INFO", "WARNING", "ERROR"]


def test_tail_takes_the_filters_and_decode_takes_n(log_dir):
    """tail takes --level/--grep/--pid like decode, and decode -n N prints the last N records."""
    texts = [f"record {i}" for i in range(20)]
    write_log(log_dir, texts)
    res = run("tail", "-n", "3", "--grep", "record 1", log_dir)
    assert res.returncode == 0 and res.stdout.splitlines() == texts[17:20]
    assert run("tail", "--level", "ERROR", log_dir).stdout == ""
    assert run("decode", "-n", "2", log_dir).stdout.splitlines() == texts[-2:]
    assert run("decode", "-n", "2", "--grep", "record [1-5]$", log_dir).stdout.splitlines() == [
        "record 4",
        "record 5",
    ]


def test_a_handler_says_when_it_deletes_old_logs(log_dir):
    """A handler deleting log files past max_age_days (on by default) says so on stderr."""
    os.makedirs(log_dir)
    for name in ("app_20200101.mmlog", "app_20200102.mmlog", "other_20200101.mmlog"):
        with open(os.path.join(log_dir, name), "wb"):
            pass
    code = f"import mmaplog; mmaplog.MmapHandler({log_dir!r}, prefix='app').close()"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert res.returncode == 0
    assert res.stderr == (
        f"mmaplog: deleted 2 log files of prefix 'app' older than 10 days in {log_dir} "
        "(max_age_days)\n"
    )
    assert os.listdir(log_dir).count("other_20200101.mmlog") == 1


_LONG_XLOG_WRITER = textwrap.dedent(
    """
    import logging, os, sys
    import mmaplog
    h = mmaplog.MmapHandler(sys.argv[1], prefix="app", format="xlog", compression="zstd",
                            buffer_size=1024 * 1024)
    h.setFormatter(logging.Formatter("%(message)s"))
    def log(text):
        h.handle(logging.LogRecord("w", logging.INFO, "w.py", 1, text, None, None))
    log("x" * 200_000)
    for i in range(3000):
        log(f"{i} " + os.urandom(60).hex())
    h.close()
    """
)


def test_xlog_blocks_stay_within_what_xlog_writes(tmp_path):
    """With format="xlog", long lines are cut as xlog cuts them and no block passes its sizes."""
    from mmaplog import _xlog

    folder = str(tmp_path)
    subprocess.run([sys.executable, "-c", _LONG_XLOG_WRITER, folder], env=ENV, check=True)
    (name,) = [n for n in os.listdir(folder) if n.endswith(".xlog")]
    with open(os.path.join(folder, name), "rb") as f:
        blocks = list(_xlog.iter_blocks(f.read()))
    assert len(blocks) > 3
    for block in blocks:
        assert block.length <= 100_000
        assert len(_xlog.decode_block(block).encode()) <= 1_000_000
    lines = run("decode", folder).stdout.splitlines()
    assert len(lines) == 3001
    assert lines[0].startswith("xxx") and lines[0].endswith(" [truncated: 200000 bytes]")
    assert len(lines[0]) == 16 * 1024 - 130  # where xlog cuts its lines


_STDLIB_STRUCTLOG = textwrap.dedent(
    """
    import logging, sys
    import mmaplog, structlog
    handler = mmaplog.MmapHandler(sys.argv[1], prefix="api")
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=structlog.processors.JSONRenderer()))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    structlog.configure(
        processors=[structlog.stdlib.add_log_level,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    structlog.get_logger("orders").info("order placed", order=42)
    logging.getLogger("plain").info("{not json")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("plain").warning("{not json either")
    handler.close()
    """
)


def test_json_output_prints_stdlib_structlog_events_as_objects(log_dir):
    """--format json prints a record whose text is a JSON object (structlog's stdlib path) as it."""
    pytest.importorskip("structlog")
    subprocess.run([sys.executable, "-c", _STDLIB_STRUCTLOG, log_dir], env=ENV, check=True)
    res = run("decode", "--format", "json", log_dir)
    assert res.returncode == 0, res.stderr
    first, second, third = (json.loads(line) for line in res.stdout.splitlines())
    pid, thread = first["pid"], first["thread"]
    assert isinstance(pid, int) and isinstance(thread, int) and thread > 0
    # The event dict, with the logger, pid and thread the record carries.
    assert first == {"order": 42, "event": "order placed", "level": "info",
                     "logger": "orders", "pid": pid, "thread": thread}  # fmt: skip
    assert second == {"event": "{not json", "logger": "plain", "pid": pid, "thread": thread}
    assert third["message"] == "{not json either" and third["level"] == "WARNING"
    assert (third["logger"], third["pid"], third["thread"]) == ("plain", pid, thread)


def test_fifos_and_foreign_files_named_like_caches_are_left_alone(log_dir):
    """A FIFO or a foreign file named *.mmap in a log folder never blocks or changes a command."""
    write_log(log_dir, ["one"])
    os.mkfifo(os.path.join(log_dir, "pipe.mmap"))
    with open(os.path.join(log_dir, "foreign.mmap"), "wb") as f:
        f.write(b"x" * 100_000)
    for args in (("decode",), ("tail",), ("stats",), ("verify",), ("recover",)):
        res = run(*args, log_dir)
        assert res.returncode == 0, (args, res.stderr)
        assert "Traceback" not in res.stderr
    assert run("decode", log_dir).stdout == "one\n"
    with open(os.path.join(log_dir, "foreign.mmap"), "rb") as f:
        assert f.read() == b"x" * 100_000


def test_decode_output_never_replaces_a_log_or_cache_file_even_with_force(tmp_path):
    """``decode -o FILE --force`` refuses a FILE that is a log or a cache (one of its inputs,
    or records not yet recovered) and leaves it as it was; other files it replaces."""
    log_dir = str(tmp_path / "logs")
    write_log(log_dir, ["one", "two"])
    (log_name,) = [n for n in os.listdir(log_dir) if n.endswith(".mmlog")]
    log_path = os.path.join(log_dir, log_name)
    before = Path(log_path).read_bytes()
    p = run("decode", log_dir, "-o", log_path, "--force")
    assert p.returncode == 2 and "not replaced" in p.stderr
    assert Path(log_path).read_bytes() == before
    dead = str(tmp_path / "dead")
    killed_writer(dead, ["waiting"])
    cache = os.path.join(dead, "app.mmap")
    cache_before = Path(cache).read_bytes()
    p = run("decode", log_dir, "-o", cache, "--force")
    assert p.returncode == 2 and Path(cache).read_bytes() == cache_before
    other = tmp_path / "out.txt"
    other.write_text("old\n")
    p = run("decode", log_dir, "-o", str(other), "--force")
    assert p.returncode == 0 and other.read_text().count("\n") == 2


def test_keygen_on_an_existing_file_suggests_nothing_it_lacks(tmp_path):
    """``keygen -o`` over an existing file says to remove it or choose another name."""
    key = tmp_path / "ops.key"
    assert run("keygen", "-o", str(key)).returncode == 0
    p = run("keygen", "-o", str(key))
    assert p.returncode == 2 and "--force" not in p.stderr and "another name" in p.stderr


def test_force_replaces_only_regular_files(tmp_path):
    """`-o FILE --force` refuses a device node or a FIFO (its mode untouched, no hang), and
    keygen refuses `-o -` rather than writing a file named '-'."""
    log_dir = str(tmp_path / "logs")
    write_log(log_dir, ["one"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = os.stat(fifo).st_mode
    res = run("decode", log_dir, "-o", str(fifo), "--force")
    assert res.returncode == 2 and "not a regular file" in res.stderr
    assert os.stat(fifo).st_mode == before
    res = run("decode", log_dir, "-o", "/dev/null", "--force")
    assert res.returncode == 2 and "not a regular file" in res.stderr
    assert os.stat("/dev/null").st_mode & 0o777 == 0o666
    res = run("keygen", "-o", "-", cwd=str(tmp_path))
    assert res.returncode == 2 and "give a file name" in res.stderr
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize(
    "env",
    [
        {"AWS_PROFILE": "no-such-profile"},
        {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": ""},
        {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_ENDPOINT_URL": "notaurl"},
    ],
)
def test_wrong_s3_settings_are_one_line_and_exit_2(env):
    """A missing profile, half a pair of credentials or an endpoint that is not a URL: one
    line naming the problem, exit status 2, no traceback (decode and ship alike)."""
    pytest.importorskip("boto3")
    clean = {k: v for k, v in ENV.items() if not k.startswith("AWS_")}
    for args in (["decode", "s3://fleet/prod"], ["ship", ".", "s3://fleet/prod"]):
        res = subprocess.run(
            [sys.executable, "-m", "mmaplog", *args],
            capture_output=True,
            text=True,
            env={**clean, **env},
            timeout=120,
        )
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_file_names_with_escape_sequences_are_printed_escaped(tmp_path):
    """A log file whose name holds an escape sequence is named with it escaped by stats,
    verify and error messages: a file name cannot repaint the operator's terminal."""
    log_dir = str(tmp_path / "logs")
    write_log(log_dir, ["one"], prefix="a\x1b[2Jb")
    for args in (("stats", log_dir), ("verify", log_dir), ("recover", log_dir + "/nope\x1b[31m")):
        res = run(*args)
        assert "\x1b" not in res.stdout + res.stderr, args
        assert "\\x1b[" in res.stdout + res.stderr, args


def test_json_lines_stay_strict_json(log_dir):
    """A record whose text is an object with NaN or a key twice is printed as a text
    record (its text whole), so every line of --format json is strict JSON."""
    write_log(log_dir, ['{"n": NaN}', '{"dup": 1, "dup": 2}', '{"ok": 1}'])
    res = run("decode", "--format", "json", log_dir)
    lines = [
        json.loads(line, parse_constant=lambda c: pytest.fail(c))
        for line in res.stdout.splitlines()
    ]
    assert [x.get("message", x.get("ok")) for x in lines] == [
        '{"n": NaN}',
        '{"dup": 1, "dup": 2}',
        1,
    ]


def test_records_at_times_no_date_can_show_print_without_a_traceback(tmp_path: Path) -> None:
    """A record at a time outside years 1-9999 (a 64-bit count of µs can hold one) is
    printed by decode (text and JSON, the time then as seconds since the epoch), and
    counted by stats and verify, without a traceback."""
    from .test_format import _column_block_of

    path = tmp_path / "app_20261130.mmlog"
    path.write_bytes(_column_block_of([2**63 - 1], [b"far future"]))
    text = run("decode", str(path))
    assert text.returncode == 0 and text.stdout == "far future\n", text.stderr
    js = run("decode", "--format", "json", str(path))
    assert js.returncode == 0, js.stderr
    assert json.loads(js.stdout)["time"] == f"{(2**63 - 1) / 1e6:.6f}"
    for command, where in (("stats", tmp_path), ("verify", path)):
        res = run(command, str(where))
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
