"""Shipping log folders to S3-compatible storage and reading the bucket back.

Every test talks to a real SeaweedFS server started for the session (no mocks of
S3). When it cannot be started, these tests fail with the reason; the rest of the
suite does not need it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import pytest

import mmaplog
from mmaplog import _ship
from tests._weed import WeedServer

PY = sys.executable

# A writer: logs "<tag> <n>" until the stop file appears, then closes its handler
# and prints how many records it wrote.
WRITER = r"""
import logging, os, sys, time, mmaplog
log_dir, tag, stop = sys.argv[1], sys.argv[2], sys.argv[3]
h = mmaplog.MmapHandler(log_dir, prefix="app", buffer_size=16 * 1024, flush_interval=0.05)
lg = logging.getLogger(tag)
lg.addHandler(h); lg.setLevel(logging.DEBUG); lg.propagate = False
n = 0
while not os.path.exists(stop):
    for _ in range(50):
        lg.info("%s %d", tag, n)
        n += 1
    time.sleep(0.02)
h.close()
print(n)
"""

pytestmark = pytest.mark.slow  # a real storage server: left out of the quick run


@pytest.fixture
def s3env(weed: WeedServer, monkeypatch: pytest.MonkeyPatch) -> WeedServer:
    """The AWS settings of the test server in this process's environment."""
    for k, v in weed.env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    return weed


@pytest.fixture
def bucket(weed: WeedServer) -> str:
    """A new, empty bucket of its own."""
    name = "t-" + uuid.uuid4().hex[:12]
    weed.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


def write_logs(log_dir: str, tag: str, n: int, **kwargs: Any) -> None:
    """Write ``n`` records "<tag> <i>" through a handler, and close it."""
    kwargs.setdefault("buffer_size", 16 * 1024)
    h = mmaplog.MmapHandler(log_dir, prefix="app", **kwargs)
    lg = logging.getLogger("ship." + tag)
    lg.handlers[:] = [h]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    for i in range(n):
        lg.info("%s %d", tag, i)
    h.close()
    lg.handlers[:] = []


def keys_of(weed: WeedServer, bucket: str) -> list[str]:
    """Every key in the bucket."""
    client: Any = weed.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def assert_tiled(keys: list[str]) -> None:
    """Each log file's objects cover its bytes once: no range overlaps another."""
    files: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in keys:
        parsed = _ship.parse_object_key(k)
        assert parsed is not None, k
        host, seg, start, end = parsed
        files.setdefault((host, seg), []).append((start, end))
    for where, ranges in files.items():
        ranges.sort()
        at = 0
        for start, end in ranges:
            assert start == at, f"{where}: range {start}-{end} after {at}"
            at = end


def texts(records: Any) -> list[str]:
    """The message part ("<tag> <i>") of each record's line."""
    return [r.text.rsplit("][", 1)[-1] for r in records]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mmaplog ARGS`` and capture its output."""
    return subprocess.run(
        [PY, "-m", "mmaplog", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.slow
def test_ship_then_decode_merges_hosts_by_time(
    tmp_path: Any, s3env: WeedServer, bucket: str
) -> None:
    """Two hosts shipped to one bucket path decode to every record once, merged by time."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_logs(a, "A", 3000)
    write_logs(b, "B", 3000)
    write_logs(a, "A2", 1000)
    url = f"s3://{bucket}/prod"
    ra = mmaplog.ship(a, url, host="web-1", object_size=2000)
    rb = mmaplog.ship(b, url, host="web-2")
    assert ra.objects > 2 and rb.objects >= 1
    records = list(mmaplog.read_records(url))
    got = texts(records)
    assert Counter(got) == Counter(
        [f"A {i}" for i in range(3000)]
        + [f"B {i}" for i in range(3000)]
        + [f"A2 {i}" for i in range(1000)]
    )
    times = [r.time for r in records]
    assert times == sorted(times)
    assert_tiled(keys_of(s3env, bucket))
    out = run_cli("decode", url, "--host", "web-2", env=s3env.env())
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3000 and all(line.startswith("web-2 | [I]") for line in lines)


def test_host_filter_downloads_only_that_host(
    tmp_path: Any, s3env: WeedServer, bucket: str
) -> None:
    """Filtering by host lists and downloads that host's objects only."""
    for host in ("h1", "h2", "h3"):
        d = str(tmp_path / host)
        write_logs(d, host, 500)
        mmaplog.ship(d, f"s3://{bucket}", host=host)
    from mmaplog._reader import BucketSource

    src = BucketSource(f"s3://{bucket}", hosts=["h2"])
    assert src.hosts() == ["h1", "h2", "h3"]
    got = texts(src)
    assert got == [f"h2 {i}" for i in range(500)]
    assert src.objects == 1


@pytest.mark.slow
def test_a_second_pass_ships_only_new_blocks(tmp_path: Any, s3env: WeedServer, bucket: str) -> None:
    """A pass after more logging uploads only the new blocks, under new ranges."""
    d = str(tmp_path / "logs")
    url = f"s3://{bucket}/x"
    write_logs(d, "one", 1000)
    first = mmaplog.ship(d, url, host="h")
    assert mmaplog.ship(d, url, host="h").objects == 0
    write_logs(d, "two", 1000)
    second = mmaplog.ship(d, url, host="h")
    assert first.objects >= 1 and second.objects >= 1
    assert_tiled(keys_of(s3env, bucket))
    assert texts(mmaplog.read_records(url)) == [f"one {i}" for i in range(1000)] + [
        f"two {i}" for i in range(1000)
    ]


def test_a_crash_between_upload_and_commit_reuploads_the_same_key(
    tmp_path: Any, s3env: WeedServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shipper dying after an upload but before recording it re-uploads the same range."""
    d = str(tmp_path / "logs")
    write_logs(d, "c", 2000)
    url = f"s3://{bucket}"
    real_save = _ship._State.save
    calls = 0

    def save_then_die(self: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the commit after the first upload
            raise KeyboardInterrupt
        real_save(self)

    monkeypatch.setattr(_ship._State, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        mmaplog.ship(d, url, host="h", object_size=3000)
    before = keys_of(s3env, bucket)
    assert len(before) == 1
    monkeypatch.setattr(_ship._State, "save", real_save)
    mmaplog.ship(d, url, host="h", object_size=3000)
    after = keys_of(s3env, bucket)
    assert before[0] in after
    assert_tiled(after)
    assert texts(mmaplog.read_records(url)) == [f"c {i}" for i in range(2000)]


def test_an_object_stored_twice_is_read_once(tmp_path: Any, s3env: WeedServer, bucket: str) -> None:
    """Blocks present in two objects (a copy under another range) are decoded once."""
    d = str(tmp_path / "logs")
    write_logs(d, "d", 1500)
    url = f"s3://{bucket}"
    mmaplog.ship(d, url, host="h")
    client: Any = s3env.client()
    (key,) = keys_of(s3env, bucket)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    host, seg, _start, end = _ship.parse_object_key(key)  # type: ignore[misc]
    # The same bytes again further on, as a careless copy would leave them.
    client.put_object(
        Bucket=bucket, Key=f"{host}/{seg}/{end:016d}-{end + len(body):016d}", Body=body
    )
    assert texts(mmaplog.read_records(url)) == [f"d {i}" for i in range(1500)]


@pytest.mark.slow
def test_kill9_of_the_shipper_leaves_every_block_once(
    tmp_path: Any, s3env: WeedServer, bucket: str
) -> None:
    """Shippers killed with SIGKILL at random moments while two hosts log, then a final
    pass: every record is in the bucket exactly once and no byte range is stored twice."""
    rng = random.Random(int(os.environ.get("MMAPLOG_SEED", time.time())))
    url = f"s3://{bucket}/fleet"
    stop = str(tmp_path / "stop")
    hosts = {"alpha": str(tmp_path / "alpha"), "beta": str(tmp_path / "beta")}
    writers = {
        h: subprocess.Popen([PY, "-c", WRITER, d, h, stop], stdout=subprocess.PIPE, text=True)
        for h, d in hosts.items()
    }
    # The shippers start once the writers have made their folders (a loaded machine can
    # take a second to start a Python process): a folder that does not exist is refused.
    deadline = time.monotonic() + 60
    while not all(os.path.isdir(d) for d in hosts.values()):
        assert time.monotonic() < deadline, "the writers never made their log folders"
        time.sleep(0.05)
    env = s3env.env()
    kills = intents_left = 0
    try:
        for round_ in range(24):
            host = "alpha" if round_ % 2 == 0 else "beta"
            shipper = subprocess.Popen(
                [
                    PY,
                    "-m",
                    "mmaplog",
                    "ship",
                    hosts[host],
                    url,
                    "--host",
                    host,
                    "--follow",
                    "--interval",
                    "0.02",
                    "--object-size",
                    "4000",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(rng.uniform(0.3, 1.2))
            shipper.send_signal(signal.SIGKILL)
            shipper.wait()
            assert shipper.stderr is not None
            err = shipper.stderr.read()
            shipper.stderr.close()
            assert shipper.returncode == -signal.SIGKILL, err
            kills += 1
            intents_left += _pending_intent(hosts[host])
    finally:
        open(stop, "w").close()
        counts = {}
        for h, w in writers.items():
            out, _ = w.communicate(timeout=60)
            counts[h] = int(out)
    assert kills >= 20
    shipped_before = len(keys_of(s3env, bucket))
    print(f"{kills} kills, {intents_left} left an upload half done, {shipped_before} objects")
    assert shipped_before > 0
    for h, d in hosts.items():
        done = run_cli("ship", d, url, "--host", h, env=env)
        assert done.returncode == 0, done.stderr
    assert_tiled(keys_of(s3env, bucket))
    records = list(mmaplog.read_records(url))
    expected = [f"{h} {i}" for h, n in counts.items() for i in range(n)]
    got = texts(records)
    assert len(got) == len(expected)
    assert Counter(got) == Counter(expected)
    times = [r.time for r in records]
    assert times == sorted(times)


def _pending_intent(log_dir: str) -> int:
    """1 when the shipper's state in ``log_dir`` holds an upload not confirmed yet."""
    for name in os.listdir(log_dir):
        if name.startswith(_ship.STATE_PREFIX) and name.endswith(".json"):
            with open(os.path.join(log_dir, name)) as f:
                return int(json.load(f)["pending"] is not None)
    return 0


@pytest.mark.slow
def test_storage_stopped_and_restarted_mid_ship_loses_nothing(
    tmp_path: Any, weed: WeedServer, bucket: str
) -> None:
    """The server killed while a ship is under way and started again a few seconds later:
    the shipper retries, resumes, and the bucket holds every record once."""
    d = str(tmp_path / "logs")
    write_logs(d, "r", 30000)
    url = f"s3://{bucket}"
    shipper = subprocess.Popen(
        [
            PY,
            "-m",
            "mmaplog",
            "ship",
            d,
            url,
            "--host",
            "h",
            "--object-size",
            "1",
            "--retry-for",
            "120",
        ],
        env=weed.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline and state is None:
            for name in os.listdir(d):
                if name.startswith(_ship.STATE_PREFIX) and name.endswith(".json"):
                    state = os.path.join(d, name)
            time.sleep(0.01)
        assert state is not None
        weed.stop()
        assert shipper.poll() is None, "the ship ended before the storage was stopped"
        time.sleep(3)
        assert shipper.poll() is None, "the shipper gave up while the storage was down"
    finally:
        if weed.proc is None:
            weed.start()
    _out, err = shipper.communicate(timeout=180)
    assert shipper.returncode == 0, err
    assert "Traceback" not in err
    assert_tiled(keys_of(weed, bucket))
    env = weed.env()
    decoded = run_cli("decode", url, env=env)
    assert decoded.returncode == 0, decoded.stderr
    assert [line.rsplit("][", 1)[-1] for line in decoded.stdout.splitlines()] == [
        f"r {i}" for i in range(30000)
    ]


@pytest.mark.slow
def test_follow_waits_out_an_outage(tmp_path: Any, s3env: WeedServer, bucket: str) -> None:
    """``ship --follow`` says the storage is away, keeps going, and ships what came
    meanwhile once it is back."""
    d = str(tmp_path / "logs")
    write_logs(d, "f1", 1000)
    url = f"s3://{bucket}"
    weed = s3env
    shipper = subprocess.Popen(
        [
            PY,
            "-m",
            "mmaplog",
            "ship",
            d,
            url,
            "--host",
            "h",
            "--follow",
            "--interval",
            "0.1",
            "--retry-for",
            "1",
        ],
        env=weed.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        weed.stop()
        write_logs(d, "f2", 1000)
        time.sleep(4)
        assert shipper.poll() is None
    finally:
        if weed.proc is None:
            weed.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = texts(mmaplog.read_records(url))
            if len(got) == 2000:
                break
            time.sleep(0.5)
    finally:
        shipper.send_signal(signal.SIGINT)
        _out, err = shipper.communicate(timeout=30)
    assert got == [f"f1 {i}" for i in range(1000)] + [f"f2 {i}" for i in range(1000)]
    assert "trying again" in err and "Traceback" not in err
    assert shipper.returncode == 0  # Ctrl-C is how a sidecar is stopped: exit 0, as documented


@pytest.mark.slow
def test_encrypted_logs_are_shipped_sealed(tmp_path: Any, s3env: WeedServer, bucket: str) -> None:
    """Encrypted logs reach the bucket sealed (no plaintext) and decode with the key."""
    private, public = mmaplog.generate_keypair()
    d = str(tmp_path / "logs")
    write_logs(d, "secret-payload", 800, public_key=public)
    url = f"s3://{bucket}/enc"
    mmaplog.ship(d, url, host="h")
    client: Any = s3env.client()
    for key in keys_of(s3env, bucket):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert b"secret-payload" not in body
    with pytest.raises(mmaplog.NeedKeyError):
        list(mmaplog.read_records(url))
    assert texts(mmaplog.read_records(url, key=private)) == [
        f"secret-payload {i}" for i in range(800)
    ]
    keyfile = tmp_path / "ops.key"
    keyfile.write_text(private)
    out = run_cli("decode", url, "--key", str(keyfile), "--level", "INFO", env=s3env.env())
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 800


def test_xlog_files_are_shipped_and_read(tmp_path: Any, s3env: WeedServer, bucket: str) -> None:
    """Mars xlog files are shipped block by block and read back from the bucket."""
    d = str(tmp_path / "logs")
    write_logs(d, "x", 1200, format="xlog")
    url = f"s3://{bucket}"
    report = mmaplog.ship(d, url, host="h", object_size=4000)
    assert report.objects >= 2
    assert texts(mmaplog.read_records(url)) == [f"x {i}" for i in range(1200)]


@pytest.mark.parametrize(
    ("args", "env_extra", "status", "words"),
    [
        (["s3://{bucket}"], {"AWS_SECRET_ACCESS_KEY": "wrong"}, 3, "access denied"),
        (["s3://no-such-bucket-here"], {}, 3, "does not exist"),
        (["{bucket}/prefix"], {}, 2, "not an s3:// URL|no such file or folder"),
        (["s3://Bad_Name"], {}, 2, "not a bucket name"),
    ],
)
def test_cli_refusals_are_one_line(
    tmp_path: Any,
    weed: WeedServer,
    bucket: str,
    args: list[str],
    env_extra: dict[str, str],
    status: int,
    words: str,
) -> None:
    """Bad credentials, a missing bucket and malformed URLs: one line and a documented
    status, from ship and from decode alike."""
    d = str(tmp_path / "logs")
    write_logs(d, "e", 10)
    url = args[0].format(bucket=bucket)
    commands = (["ship", d, url, "--host", "h", "--retry-for", "2"], ["decode", url])
    for argv, said in zip(commands, (words.split("|") * 2)[:2], strict=True):
        out = run_cli(*argv, env=weed.env(**env_extra))
        assert out.returncode == status, out.stderr
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and said in lines[0] and "Traceback" not in out.stderr


@pytest.mark.slow
def test_unreachable_storage_gives_up_after_the_retries(tmp_path: Any, bucket: str) -> None:
    """Storage that never answers: ship retries for --retry-for seconds, then says so
    in one line with status 3."""
    d = str(tmp_path / "logs")
    write_logs(d, "u", 10)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b")
    t0 = time.monotonic()
    out = run_cli(
        "ship",
        d,
        f"s3://{bucket}",
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--retry-for",
        "2",
        env=env,
    )
    assert out.returncode == 3 and len(out.stderr.splitlines()) == 1, out.stderr
    assert "failed for 2 s" in out.stderr
    assert 1.5 < time.monotonic() - t0 < 60


def test_missing_s3_client_is_one_line(tmp_path: Any) -> None:
    """Without boto3, ``import mmaplog`` works and ship says to install mmaplog[s3],
    with status 4."""
    d = str(tmp_path / "logs")
    write_logs(d, "m", 10)
    code = (
        "import sys; sys.modules['boto3'] = None; import mmaplog\n"
        "from mmaplog._cli import main\n"
        f"sys.exit(main(['ship', {d!r}, 's3://bucket/x', '--host', 'h']))"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 4
    assert out.stderr.strip().endswith('install mmaplog[s3] (pip install "mmaplog[s3]")')
    assert len(out.stderr.splitlines()) == 1
    code = (
        "import sys; sys.modules['boto3'] = None; import mmaplog\n"
        f"try: mmaplog.ship({d!r}, 's3://bucket/x', host='h')\n"
        "except mmaplog.MissingDependencyError: print('raised')"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "raised", out.stderr


def test_a_second_shipper_on_the_same_folder_is_refused(
    tmp_path: Any, s3env: WeedServer, bucket: str
) -> None:
    """Two shippers of one folder to one destination cannot run at once."""
    d = str(tmp_path / "logs")
    write_logs(d, "l", 10)
    with _ship.Shipper(d, f"s3://{bucket}", host="h"):
        out = run_cli("ship", d, f"s3://{bucket}", "--host", "h", env=s3env.env())
    assert out.returncode == 1 and "another shipper" in out.stderr


def test_retention_deletes_only_shipped_and_verified_past_files(
    tmp_path: Any, s3env: WeedServer, bucket: str
) -> None:
    """Past days' files go once shipped and checked against the bucket; today's file,
    and a file whose object differs, stay."""
    d = str(tmp_path / "logs")
    write_logs(d, "t", 500)
    (today,) = [n for n in os.listdir(d) if n.endswith(".mmlog")]
    with open(os.path.join(d, today), "rb") as f:
        data = f.read()
    old = time.time() - 3 * 86400
    for past in ("app_20200101.mmlog", "app_20200102.mmlog"):
        with open(os.path.join(d, past), "wb") as f:
            f.write(data)
        os.utime(os.path.join(d, past), (old, old))
    url = f"s3://{bucket}"
    mmaplog.ship(d, url, host="h")
    # The bucket's copy of one past file is altered: that file must be kept.
    client: Any = s3env.client()
    (bad,) = [k for k in keys_of(s3env, bucket) if "app_20200102" in k]
    client.put_object(Bucket=bucket, Key=bad, Body=b"x" * len(data), Metadata={"sha256": "0"})
    out = run_cli("ship", d, url, "--host", "h", "--delete-shipped", env=s3env.env())
    assert out.returncode == 0, out.stderr
    assert "deleted app_20200101.mmlog" in out.stdout
    assert "app_20200102.mmlog" in out.stderr  # kept, with the reason
    assert sorted(n for n in os.listdir(d) if n.endswith(".mmlog")) == [
        "app_20200102.mmlog",
        today,
    ]
    # A file that comes back under a deleted name is shipped under keys of its own.
    with open(os.path.join(d, "app_20200101.mmlog"), "wb") as f:
        f.write(data)
    mmaplog.ship(d, url, host="h")
    assert any("app_20200101.mmlog@1/" in k for k in keys_of(s3env, bucket))


def test_state_file_is_json_and_names_its_destination(
    tmp_path: Any, s3env: WeedServer, bucket: str
) -> None:
    """The state file records the destination and each file's shipped offset, no intent."""
    d = str(tmp_path / "logs")
    write_logs(d, "s", 100)
    mmaplog.ship(d, f"s3://{bucket}/p", host="h")
    (name,) = [n for n in os.listdir(d) if n.startswith(_ship.STATE_PREFIX) and n.endswith("json")]
    with open(os.path.join(d, name)) as f:
        state = json.load(f)
    (log,) = [n for n in os.listdir(d) if n.endswith(".mmlog")]
    assert state["url"] == f"s3://{bucket}/p" and state["host"] == "h"
    assert state["pending"] is None
    assert state["files"][log]["shipped"] == os.path.getsize(os.path.join(d, log))


def test_bad_host_names_and_folders_are_config_errors(tmp_path: Any, s3env: WeedServer) -> None:
    """A host name that cannot be a key part, or a missing folder, raise ConfigError."""
    d = str(tmp_path / "logs")
    os.makedirs(d)
    with pytest.raises(mmaplog.ConfigError):
        mmaplog.ship(d, "s3://bucket-x", host="../etc")
    with pytest.raises(mmaplog.ConfigError):
        mmaplog.ship(str(tmp_path / "missing"), "s3://bucket-x", host="h")


@pytest.mark.slow
def test_verify_and_stats_read_the_bucket(tmp_path: Any, s3env: WeedServer, bucket: str) -> None:
    """verify and stats on a bucket path: clean after shipping; an altered object and a
    missing one are reported, with status 1."""
    url = f"s3://{bucket}/prod"
    for host in ("h1", "h2"):
        d = str(tmp_path / host)
        write_logs(d, host, 2000)
        mmaplog.ship(d, url, host=host, object_size=1)  # one block per object
    env = s3env.env()
    stats = run_cli("stats", url, env=env)
    assert stats.returncode == 0, stats.stderr
    assert f"== {url}/h1" in stats.stdout and f"== {url}/h2" in stats.stdout
    assert stats.stdout.count("2000 records") == 2
    ok = run_cli("verify", url, "--host", "h1", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "records, 0 damaged ranges" in ok.stdout and "/h2/" not in ok.stdout
    client: Any = s3env.client()
    keys = sorted(k for k in keys_of(s3env, bucket) if "/h1/" in k)
    assert len(keys) >= 3
    first = client.get_object(Bucket=bucket, Key=keys[0])
    body = bytearray(first["Body"].read())
    body[-1] ^= 0xFF
    client.put_object(Bucket=bucket, Key=keys[0], Body=bytes(body), Metadata=first["Metadata"])
    client.delete_object(Bucket=bucket, Key=keys[1])
    bad = run_cli("verify", url, "--host", "h1", env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "SHA-256 differs from the one stored at upload" in bad.stdout
    assert "of the file are not in the bucket" in bad.stdout


@pytest.mark.slow
def test_tail_of_a_bucket_shows_the_newest_and_follows(
    tmp_path: Any, s3env: WeedServer, bucket: str
) -> None:
    """tail on a bucket path prints the newest records of all hosts, and with -f the
    records of objects shipped afterwards."""
    url = f"s3://{bucket}"
    dirs = {h: str(tmp_path / h) for h in ("h1", "h2")}
    write_logs(dirs["h1"], "h1", 3000)
    write_logs(dirs["h2"], "h2", 3000)
    for h, d in dirs.items():
        mmaplog.ship(d, url, host=h, object_size=1)
    env = s3env.env()
    out = run_cli("tail", url, "-n", "5", env=env)
    assert out.returncode == 0, out.stderr
    assert [line.rsplit("][", 1)[-1] for line in out.stdout.splitlines()] == [
        f"h2 {i}" for i in range(2995, 3000)
    ]
    follower = subprocess.Popen(
        [PY, "-m", "mmaplog", "tail", url, "-n", "1", "-f"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        # The newest record printed: the bucket has been listed; what comes now is new.
        assert follower.stdout.readline().rstrip().endswith("][h2 2999")
        write_logs(dirs["h1"], "late", 100)
        mmaplog.ship(dirs["h1"], url, host="h1")
        time.sleep(6)
    finally:
        follower.send_signal(signal.SIGINT)
        followed, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert [line.rsplit("][", 1)[-1] for line in followed.splitlines()] == [
        f"late {i}" for i in range(100)
    ]
    assert all(line.startswith("h1 | ") for line in followed.splitlines())


@pytest.mark.slow
def test_an_empty_bucket_path_says_it_has_no_log_files(
    tmp_path: Any, s3env: WeedServer, bucket: str
) -> None:
    """decode, tail, verify and stats of a bucket path nothing was shipped to say "no log
    files in" it and exit 0, as for an empty folder; so does a host that never shipped."""
    d = str(tmp_path / "logs")
    write_logs(d, "e", 10)
    mmaplog.ship(d, f"s3://{bucket}/prod", host="h1")
    env = s3env.env()
    for url, extra, said in (
        (f"s3://{bucket}/empty-prefix", [], f"no log files in s3://{bucket}/empty-prefix"),
        (
            f"s3://{bucket}/prod",
            ["--host", "h9"],
            f"no log files in s3://{bucket}/prod from host h9",
        ),
    ):
        for command in ("decode", "tail", "verify", "stats"):
            out = run_cli(command, url, *extra, env=env)
            assert out.returncode == 0, (command, out.stderr)
            assert said in out.stderr + out.stdout, (command, out.stdout, out.stderr)
            assert "Traceback" not in out.stderr
    out = run_cli(
        "decode", f"s3://{bucket}/prod", "--since", "2000-01-01", "--until", "2000-01-02", env=env
    )
    assert out.returncode == 0 and out.stdout == "" and "no log files" not in out.stderr
