"""The command line as a user runs it: real subprocesses, real files, exit codes and messages."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys

import pytest

import mmaplog
from torture import harness

from .conftest import make_logger

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=stdin is None,
        input=stdin,
        env=ENV,
        timeout=60,
    )


def write_log(log_dir: str, messages: list[str], **kwargs: object) -> None:
    h = mmaplog.MmapHandler(log_dir, **kwargs)  # type: ignore[arg-type]
    h.setFormatter(logging.Formatter("%(message)s"))
    log = make_logger("cli", h)
    for m in messages:
        log.info(m)
    h.close()


def log_file(log_dir: str) -> str:
    (name,) = [n for n in os.listdir(log_dir) if n.endswith(".mmlog")]
    return os.path.join(log_dir, name)


def test_decode_module_prints_one_line_per_record(log_dir):
    """python -m mmaplog.decode FILE prints every record as text, in order, exit 0."""
    write_log(log_dir, ["alpha", "beta", "gamma"])
    res = run("-m", "mmaplog.decode", log_file(log_dir))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["alpha", "beta", "gamma"]
    assert res.stderr == ""


def test_decode_to_an_output_file(log_dir, tmp_path):
    """-o OUT writes the text to a file instead of stdout."""
    write_log(log_dir, ["one", "two"])
    out = str(tmp_path / "out.txt")
    res = run("-m", "mmaplog", "decode", log_dir, "-o", out)
    assert res.returncode == 0, res.stderr
    with open(out) as f:
        assert f.read().splitlines() == ["one", "two"]


def test_console_script_decodes(log_dir):
    """The installed `mmaplog` command decodes like the module does."""
    exe = shutil.which("mmaplog") or os.path.join(os.path.dirname(sys.executable), "mmaplog")
    if not os.path.exists(exe):
        pytest.skip("the mmaplog console script is not installed in this environment")
    write_log(log_dir, ["via the script"])
    res = subprocess.run([exe, "decode", log_dir], capture_output=True, text=True, env=ENV)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["via the script"]


def test_decode_reads_stdin(log_dir):
    """`-` reads a log from standard input."""
    write_log(log_dir, ["piped"])
    with open(log_file(log_dir), "rb") as f:
        data = f.read()
    res = run("-m", "mmaplog", "decode", "-", stdin=data)
    assert res.returncode == 0
    assert res.stdout.decode().splitlines() == ["piped"]


def test_decode_json_format(log_dir):
    """--format json prints one JSON object per record with time, level and message."""
    import json

    write_log(log_dir, ["structured"])
    res = run("-m", "mmaplog", "decode", "--format", "json", log_dir)
    assert res.returncode == 0, res.stderr
    obj = json.loads(res.stdout)
    assert obj["message"] == "structured" and obj["level"] == "INFO" and "time" in obj


def test_decode_of_damaged_file_reports_ranges_and_exits_1(log_dir):
    """A damaged file: intact blocks are printed, damage listed on stderr, exit status 1."""
    write_log(log_dir, [f"line {i}" for i in range(3000)], buffer_size=16 * 1024)
    path = log_file(log_dir)
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    res = run("-m", "mmaplog.decode", path)
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert 0 < len(lines) < 3000
    assert all(line.startswith("line ") for line in lines)
    assert "skipped" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: os.path.join(d, "missing.mmlog"), "no such file"),
        (lambda d: d, None),
    ],
)
def test_decode_of_missing_input_exits_2(tmp_path, make, message):
    """A missing file is one clear line and exit status 2; an empty folder decodes to nothing."""
    res = run("-m", "mmaplog", "decode", make(str(tmp_path)))
    if message is None:
        assert res.returncode == 0 and res.stdout == ""
    else:
        assert res.returncode == 2
        assert message in res.stderr and "Traceback" not in res.stderr


def test_decode_of_a_file_that_is_not_a_log_exits_2(tmp_path):
    """A file that is not an mmaplog log is refused in one line with exit status 2."""
    path = tmp_path / "notes.txt"
    path.write_text("just some text\n" * 50)
    res = run("-m", "mmaplog", "decode", str(path))
    assert res.returncode == 2
    assert res.stderr.strip() == f"mmaplog decode: {path}: not an mmaplog file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_decode_of_an_unreadable_file_exits_2(log_dir):
    """A file without read permission is one clear line and exit status 2."""
    write_log(log_dir, ["secret"])
    os.chmod(log_file(log_dir), 0)
    res = run("-m", "mmaplog", "decode", log_file(log_dir))
    assert res.returncode == 2 and "Traceback" not in res.stderr


@pytest.mark.slow
def test_recover_module_moves_a_dead_process_cache(tmp_path):
    """python -m mmaplog.recover DIR recovers a killed writer's cache and says how many records."""
    log_dir = str(tmp_path)
    acked, status = harness.run_writer(
        {"log_dir": log_dir, "handler": {"flush_interval": 3600}, "sizes": [10, 100]},
        kill_after=0.6,
    )
    assert status == -9
    res = run("-m", "mmaplog.recover", log_dir)
    assert res.returncode == 0, res.stderr
    n = int(res.stdout.split()[1])
    assert n > 0 and res.stdout.strip() == f"recovered {n} records"
    texts = [r.text for r in mmaplog.read_records(log_dir)]
    harness.check_exactly_once(texts, acked)
    again = run("-m", "mmaplog.recover", log_dir)
    assert again.stdout.strip() == "recovered 0 records"


def test_recover_into_another_folder(tmp_path):
    """--log-dir sends the recovered records to another folder."""
    log_dir = str(tmp_path / "a")
    other = str(tmp_path / "b")
    os.makedirs(other)
    _acked, _ = harness.run_writer(
        {"log_dir": log_dir, "handler": {"flush_interval": 3600}, "sizes": [10, 100]},
        kill_after=0.5,
    )
    res = run("-m", "mmaplog.recover", log_dir, "--log-dir", other)
    assert res.returncode == 0, res.stderr
    n = int(res.stdout.split()[1])
    assert len(list(mmaplog.read_records(other))) == n > 0


def test_recover_refuses_a_cache_held_by_a_live_process(make_handler, log_dir):
    """recover exits 1 with a clear message when a live process holds the cache."""
    h = make_handler()
    make_logger("live", h).info("still running")
    res = run("-m", "mmaplog.recover", log_dir)
    assert res.returncode == 1
    assert "held by a live process" in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(mmaplog.CacheLockedError):
        mmaplog.recover(log_dir)


def test_recover_of_a_missing_path_exits_2(tmp_path):
    """recover of a path that does not exist is one line and exit status 2."""
    res = run("-m", "mmaplog.recover", str(tmp_path / "nope"))
    assert res.returncode == 2 and "no such file" in res.stderr
    res = run("-m", "mmaplog.recover", str(tmp_path), "--log-dir", str(tmp_path / "nope"))
    assert res.returncode == 2 and "not a folder" in res.stderr


def test_keygen_writes_a_private_key_file(tmp_path):
    """keygen -o writes the private key with mode 0600 and prints the public key."""
    key = tmp_path / "ops.key"
    res = run("-m", "mmaplog", "keygen", "-o", str(key))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("public key: ")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    again = run("-m", "mmaplog", "keygen", "-o", str(key))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_bad_usage_exits_2():
    """An unknown command is a usage error with exit status 2."""
    res = run("-m", "mmaplog", "frobnicate")
    assert res.returncode == 2


def test_decode_reads_mars_xlog_files(tmp_path):
    """decode reads a Mars xlog file, encrypted with xlog's scheme, given the secp256k1 key."""
    from mmaplog import _xlog

    private, public = _xlog.generate_xlog_keypair()
    writer = _xlog.XlogBlockWriter(mode="async", compression="zstd", public_key_hex=public)
    lines = [
        b"[I][2026-11-23 +8.0 12:00:00.123][1, 2*][tag][f.c:1, fn][hello\n",
        b"[E][2026-11-23 +8.0 12:00:01.000][1, 2*][tag][f.c:2, fn][bad\n",
    ]
    path = tmp_path / "app_20261123.xlog"
    path.write_bytes(writer.encode_block(lines, 1, 12, 12))
    key = tmp_path / "xlog.key"
    key.write_text(private)
    res = run("-m", "mmaplog", "decode", "--key", str(key), str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [line.decode().rstrip("\n") for line in lines]
    recs = list(mmaplog.read_records(str(path), key=private))
    assert [r.level for r in recs] == [logging.INFO, logging.ERROR]
    assert recs[0].time == 1795406400.123
    no_key = run("-m", "mmaplog", "decode", str(path))
    assert no_key.returncode == 2 and "private key is needed" in no_key.stderr
