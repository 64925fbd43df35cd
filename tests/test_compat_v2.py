"""Files written by format version 2 still decode to the same records.

The fixtures in ``tests/fixtures/v2/`` were written once by
``tests/fixtures/make_fixtures.py`` (log files of both formats, cache files left by
a ``kill -9``) together with the records they decoded to then, logger name and
thread included. As ``tests/test_compat.py`` does for version 1, these tests
decode them with the code installed now and compare every field.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mmaplog

from .test_compat import LOG_NAME, dump, utc  # noqa: F401 (utc: autouse)

FIXTURES = Path(__file__).parent / "fixtures" / "v2"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))


def expected(rel: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((FIXTURES / rel).read_text(encoding="utf-8"))
    return data


def key_of(entry: dict[str, Any]) -> str | None:
    return (FIXTURES / entry["key"]).read_text(encoding="ascii") if entry["key"] else None


def by_name(entries: list[dict[str, Any]]) -> Any:
    return pytest.mark.parametrize("entry", entries, ids=[e["name"] for e in entries])


def recover_copy(entry: dict[str, Any], tmp_path: Path) -> tuple[int, Path]:
    """Copy the cache fixture to ``tmp_path`` and recover it into an empty log folder."""
    cache = tmp_path / os.path.basename(entry["file"])
    shutil.copyfile(FIXTURES / entry["file"], cache)
    logs = tmp_path / "logs"
    logs.mkdir()
    return mmaplog.recover(str(cache), log_dir=str(logs)), logs


def test_manifest_lists_every_fixture_file() -> None:
    """Every log, cache and expected-records file under v2/ is named in the manifest, and exists."""
    named = {"manifest.json", *MANIFEST["keys"]}
    for entry in MANIFEST["logs"] + MANIFEST["caches"]:
        for field in ("file", "key", "expected", "expected_cache", "expected_recovered"):
            if entry.get(field):
                named.add(entry[field])
    on_disk = {p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*") if p.is_file()}
    assert on_disk == named
    assert len(MANIFEST["logs"]) == 8
    assert len(MANIFEST["caches"]) == 3


@by_name(MANIFEST["logs"])
def test_log_fixture_decodes_to_recorded_records(entry: dict[str, Any]) -> None:
    """A log file written by format version 2 decodes to exactly the records recorded with it."""
    got = dump(mmaplog.read_records(str(FIXTURES / entry["file"]), key=key_of(entry)))
    assert got == expected(entry["expected"])


@by_name([e for e in MANIFEST["logs"] if e["name"].startswith("mmaplog")])
def test_every_record_carries_its_logger_and_thread(entry: dict[str, Any]) -> None:
    """Every record of a version 2 log carries the logger's name and the thread, whatever
    the formatter: the name matches the default line's, and another thread is told apart."""
    records = list(mmaplog.read_records(str(FIXTURES / entry["file"]), key=key_of(entry)))
    assert all(r.thread for r in records)
    # Only the events of the structlog logger got without a name have none.
    assert all(r.logger is not None or "order placed" in r.text or "slow payment" in r.text
               for r in records)  # fmt: skip
    for r in records:
        if r.text.startswith("["):  # the default line: [L][time][pid, tid][logger][...
            assert f"[{r.pid}, {r.thread}][{r.logger}][" in r.text
    by_text = {r.text: r for r in records}
    plain = by_text["INFO a formatter that does not show the logger's name"]
    assert plain.logger == f"fixtures.{entry['name']}"
    other = next(r for r in records if r.text.endswith("][logged by another thread"))
    assert other.thread != plain.thread and other.logger == plain.logger
    named = next(r for r in records if "named structlog logger" in r.text)
    assert named.logger == "fixtures.structlog" and named.kind == 1
    assert any(r.logger == "fixtures.ünïcödé.名前" for r in records)


@by_name([e for e in MANIFEST["caches"] if e.get("expected_cache")])
def test_cache_fixture_reads_directly_as_recorded(entry: dict[str, Any]) -> None:
    """A cache left by a killed version 2 process reads (without recovery) as recorded."""
    got = dump(mmaplog.read_records(str(FIXTURES / entry["file"]), key=key_of(entry)))
    assert got == expected(entry["expected_cache"])


@by_name(MANIFEST["caches"])
def test_cache_fixture_recovers_to_recorded_records(entry: dict[str, Any], tmp_path: Path) -> None:
    """Recovering a cache left by a killed version 2 process yields the records recorded."""
    count, logs = recover_copy(entry, tmp_path)
    assert count == entry["records"]
    got = dump(mmaplog.read_records(str(logs), key=key_of(entry)))
    want = expected(entry["expected_recovered"])
    # The dated log file's name follows the local time zone: compare the prefix only.
    for records in (got, want):
        for r in records:
            m = LOG_NAME.match(r.pop("source"))
            assert m is not None and m["prefix"] == entry["name"]
    assert got == want


@by_name(MANIFEST["caches"])
def test_cache_fixture_recovers_once(entry: dict[str, Any], tmp_path: Path) -> None:
    """A second recovery of the same cache copy finds nothing left to move."""
    _, logs = recover_copy(entry, tmp_path)
    cache = tmp_path / os.path.basename(entry["file"])
    assert mmaplog.recover(str(cache), log_dir=str(logs)) == 0


def test_cli_json_carries_logger_and_thread() -> None:
    """``mmaplog decode --format json`` of an encrypted version 2 log gives every record
    its logger and thread, structlog events as objects with those fields added."""
    entry = next(e for e in MANIFEST["logs"] if e["name"] == "mmaplog_zstd_enc")
    cmd = [sys.executable, "-m", "mmaplog", "decode", "--format", "json", "--key"]
    cmd += [str(FIXTURES / entry["key"]), str(FIXTURES / entry["file"])]
    env = {**os.environ, "TZ": "UTC", "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    lines = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    records = expected(entry["expected"])
    assert len(lines) == len(records)
    for line, r in zip(lines, records, strict=True):
        want = (r.get("logger"), r["pid"], r["thread"])
        assert (line["logger"], line["pid"], line["thread"]) == want
        if r["kind"] == 1:
            assert line["event"] and "message" not in line
        else:
            assert line["message"] == r.get("text", line["message"])


def test_cli_decode_without_the_key_names_its_fingerprint() -> None:
    """``mmaplog decode`` of the encrypted fixture without ``--key`` names the fingerprint
    that ``mmaplog pubkey`` prints for the fixture's private key."""
    entry = next(e for e in MANIFEST["logs"] if e["name"] == "mmaplog_zstd_enc")
    env = {**os.environ, "TZ": "UTC"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "mmaplog", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)

    pub = run("pubkey", str(FIXTURES / entry["key"]))
    fingerprint = pub.stdout.splitlines()[1].removeprefix("fingerprint: ")
    assert fingerprint.startswith("SHA256:") and len(fingerprint) == 18
    res = run("decode", str(FIXTURES / entry["file"]))
    assert res.returncode == 2
    assert f"encrypted for the key {fingerprint}: give its private key" in res.stderr


def test_a_day_file_of_both_versions_reads_whole() -> None:
    """A day's log file that a version 1 writer began and a version 2 writer went on with
    (an upgrade during the day) reads back every record of both, each as it was written."""
    from mmaplog._reader import Reader, Record

    from .test_compat import FIXTURES as V1
    from .test_compat import expected as expected_v1

    name = "mmaplog_zstd"
    v1 = (V1 / f"logs/{name}_20250314.mmlog").read_bytes()
    v2 = (FIXTURES / f"logs/{name}_20250314.mmlog").read_bytes()
    items = Reader().iter_data(v1 + v2, f"{name}_20250314.mmlog")
    got = [r for r in items if isinstance(r, Record)]
    old, new = expected_v1(f"expected/{name}.json"), expected(f"expected/{name}.json")
    assert dump(got) == old + new
    assert all(r.logger is None and r.thread is None for r in got[: len(old)])
