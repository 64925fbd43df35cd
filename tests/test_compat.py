"""Files written by an earlier mmaplog still decode to the same records.

The fixtures in ``tests/fixtures/v1/`` were written once by
``tests/fixtures/make_fixtures.py`` (log files of both formats, cache files left by
a ``kill -9``) together with the records they decoded to then. These tests decode
them with the code installed now and compare every field. A change that makes
one of them fail changes what old files mean: it needs a format version, not a
new fixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mmaplog

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
LONG_TEXT = 4096  # as in make_fixtures.py
LOG_NAME = re.compile(r"^(?P<prefix>.+)_\d{8}\.(?:mmlog|xlog)$")


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Read in UTC, the zone the fixtures were written in: an xlog line with no header
    before it is dated by its block's local hour."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def dump(records: Any) -> list[dict[str, Any]]:
    """Every field of every record as make_fixtures.py stored it (long texts as a digest)."""
    out = []
    for r in records:
        d = r._asdict()
        d["source"] = os.path.basename(d["source"])
        text = d.pop("text")
        if len(text) > LONG_TEXT:
            d["text_len"] = len(text)
            d["text_head"] = text[:200]
            d["text_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        else:
            d["text"] = text
        out.append(d)
    return out


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
    """Every log, cache and expected-records file under v1/ is named in the manifest, and exists."""
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
    """A log file written by the old code decodes to exactly the records recorded with it."""
    got = dump(mmaplog.read_records(str(FIXTURES / entry["file"]), key=key_of(entry)))
    assert got == expected(entry["expected"])


@by_name([e for e in MANIFEST["caches"] if e.get("expected_cache")])
def test_cache_fixture_reads_directly_as_recorded(entry: dict[str, Any]) -> None:
    """A cache left by a killed old process reads (without recovery) as the records recorded."""
    got = dump(mmaplog.read_records(str(FIXTURES / entry["file"]), key=key_of(entry)))
    assert got == expected(entry["expected_cache"])


@by_name(MANIFEST["caches"])
def test_cache_fixture_recovers_to_recorded_records(entry: dict[str, Any], tmp_path: Path) -> None:
    """Recovering a cache left by a killed old process yields the records recorded with it."""
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


def run_decode(entry: dict[str, Any]) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "mmaplog", "decode", str(FIXTURES / entry["file"])]
    if entry["key"]:
        cmd[4:4] = ["--key", str(FIXTURES / entry["key"])]
    env = {**os.environ, "TZ": "UTC", "PYTHONIOENCODING": "utf-8"}
    # Bytes, not text=True: universal newlines would turn a record's "\r\n" into "\n".
    return subprocess.run(cmd, capture_output=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize("name", ["mmaplog_zstd", "mmaplog_zstd_enc", "xlog_zlib_enc"])
def test_cli_decode_prints_every_recorded_text(name: str) -> None:
    """``mmaplog decode`` (with ``--key`` when encrypted) exits 0 and prints every record's text."""
    entry = next(e for e in MANIFEST["logs"] if e["name"] == name)
    proc = run_decode(entry)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    out = proc.stdout.decode("utf-8")
    records = expected(entry["expected"])
    assert len(records) >= 30
    for r in records:
        assert r.get("text", r.get("text_head")) in out
