"""The code blocks of README.md and docs/guide.md run as written, and their shown output holds.

Each document runs in a fresh folder, its blocks in order: ``python`` blocks are
saved as ``app.py`` and run; an ``ini`` block is saved as ``logging.ini`` for the
Python block that loads it; in ``console`` blocks each ``$`` line is run by the
shell and must print what follows it (dates, times, keys, key fingerprints, session
ids and numbers of three digits or more may differ). Blocks with no language list
commands: each ``mmaplog`` or ``python -m mmaplog`` line in them is run once the
rest has run and must exit 0, but for ``-f`` (it runs until Ctrl-C). Not run:
``text`` blocks (pictures) and the blocks that set up an environment (``python3 -m
venv``, ``pip``).
A document whose code reads or writes ``s3://fleet`` gets what its setup block
makes: a SeaweedFS server (the session's), its settings in the environment, and
the bucket ``fleet``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests._weed import WeedServer

ROOT = Path(__file__).resolve().parent.parent
BIN = os.path.dirname(sys.executable)
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]),
    "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
    "TZ": "UTC",
    "NO_COLOR": "1",
}
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SETUP = ("python3 -m venv", "pip ", ".venv/bin/pip")


def blocks(doc: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer((ROOT / doc).read_text())]


def shape(text: str) -> str:
    """What must match in shown output: dates, times, long numbers, keys, key fingerprints
    and session ids may differ."""
    text = re.sub(r"\d{4}-\d\d-\d\d", "DATE", text)
    text = re.sub(r"\d\d:\d\d:\d\d(?:\.\d+)?", "TIME", text)
    text = re.sub(r"[A-Za-z0-9+/]{43}=", "KEY", text)
    text = re.sub(r"SHA256:[A-Za-z0-9+/]{11}", "SHA256:FINGERPRINT", text)
    text = re.sub(r'"session": "[0-9a-f]{16}"', '"session": "SESSION"', text)
    text = re.sub(r"\d{3,}", "N", text)
    return re.sub(r"[ \t]+#.*$", "", text, flags=re.MULTILINE).rstrip()


def sh(command: str, cwd: Path, env: dict[str, str] = ENV) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, env=env, timeout=120
    )


def storage_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment of the guide's storage setup: the test server and a bucket ``fleet``."""
    weed: WeedServer = request.getfixturevalue("weed")
    client: Any = weed.client()
    buckets = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
    if "fleet" not in buckets:
        client.create_bucket(Bucket="fleet")
    return {**ENV, **{k: v for k, v in weed.env().items() if k.startswith("AWS_")}}


def listed_commands(code: str) -> list[str]:
    out = []
    for line in code.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith(("mmaplog ", "python -m mmaplog")) and " -f" not in line:
            out.append(line)
    return out


@pytest.mark.parametrize(
    "doc",
    ["README.md", pytest.param("docs/guide.md", marks=pytest.mark.slow)],  # starts a storage server
)
def test_every_code_block_runs_as_written(doc, tmp_path, request):
    """Each Python block runs, each console block prints what it shows, listed commands run."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    later: list[str] = []
    found = blocks(doc)
    env = ENV
    if any("s3://fleet" in code for lang, code in found if lang != "text"):
        env = storage_env(request)
    for n, (lang, code) in enumerate(found):
        where = f"{doc}, code block {n + 1}"
        if lang == "python":
            (tmp_path / "app.py").write_text(code)
            res = sh(f"{sys.executable} app.py", tmp_path, env)
            assert res.returncode == 0, f"{where}: {res.stderr}"
            assert "Traceback" not in res.stderr, f"{where}: {res.stderr}"
        elif lang == "ini":
            (tmp_path / "logging.ini").write_text(code)
        elif lang == "console":
            parts = re.split(r"^\$ ", code, flags=re.MULTILINE)[1:]
            for part in parts:
                command, _, shown = part.partition("\n")
                res = sh(command, tmp_path, env)
                assert res.returncode == 0, f"{where}: {command}: {res.stderr}"
                assert shape(res.stdout) == shape(shown), f"{where}: {command}"
        elif lang in ("", "sh", "shell"):
            if any(code.lstrip().startswith(s) for s in _SETUP):
                continue
            later.extend(listed_commands(code))
    for command in later:
        res = sh(command, tmp_path, env)
        assert res.returncode == 0, f"{doc}: {command}: {res.stderr}"
        assert "Traceback" not in res.stderr, f"{doc}: {command}: {res.stderr}"
