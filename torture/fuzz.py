"""A coverage-guided fuzzer of the decoder and of recovery's cache parser (atheris).

``python -m torture fuzz --seconds 60`` runs libFuzzer (through atheris) on
:func:`one_input` for a fixed time, seeded with the valid plain, compressed and
encrypted logs and caches in ``tests/fuzz/corpus/`` (made by :func:`make_corpus`).
The property: only :class:`mmaplog.MmapLogError` may escape, nothing hangs
(``-timeout=5``) and memory stays bounded (``-rss_limit_mb``). Every crashing
input is copied to ``tests/fuzz/regressions/``, where ``tests/test_torture.py``
replays it without atheris.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ_DIR = os.path.join(ROOT, "tests", "fuzz")
CORPUS = os.path.join(FUZZ_DIR, "corpus")
REGRESSIONS = os.path.join(FUZZ_DIR, "regressions")
KEY_FILE = os.path.join(FUZZ_DIR, "fuzz_key.pem")
"""A throw-away X25519 private key, committed so the encrypted seeds decrypt while fuzzing."""

_KEY: object = None


def _key() -> object:
    global _KEY
    if _KEY is None:
        from mmaplog._crypto import load_private_key

        with open(KEY_FILE) as f:
            _KEY = load_private_key(f.read())
    return _KEY


def one_input(data: bytes) -> None:
    """Decode ``data`` as a log or cache file (with and without the key) and parse it as a cache.

    Raises only what is a bug: anything that is not an ``MmapLogError``.
    """
    from mmaplog import MmapLogError
    from mmaplog._reader import Reader
    from mmaplog.recover import RecoveryReport, _slots_of

    for key in (_key(), None):
        reader = Reader(key, lambda _s, _d: None, markers=True)
        try:
            for _item in reader.iter_data(data, "fuzz"):
                pass
        except MmapLogError:
            pass
    try:
        _slots_of(data, RecoveryReport())
    except MmapLogError:
        pass


def make_corpus(dest: str = CORPUS) -> list[str]:
    """Write small valid seeds: logs and caches, plain, zlib, zstd, encrypted; return the paths."""
    from mmaplog import _format as fmt
    from mmaplog._crypto import generate_keypair, load_private_key

    from .corrupt import make_fixture

    os.makedirs(dest, exist_ok=True)
    if not os.path.exists(KEY_FILE):
        private, _public = generate_keypair()
        with open(KEY_FILE, "w") as f:
            f.write(private)
    with open(KEY_FILE) as f:
        private = f.read()
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = load_private_key(private)
    assert isinstance(key, X25519PrivateKey)
    import base64

    from cryptography.hazmat.primitives import serialization

    public = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    written = []
    work = tempfile.mkdtemp(prefix="torture-corpus-")
    try:
        for i, (codec, enc) in enumerate(
            [
                (fmt.COMP_NONE, False),
                (fmt.COMP_ZLIB, False),
                (fmt.COMP_ZSTD, False),
                (fmt.COMP_ZSTD, True),
            ]
        ):
            fx = make_fixture(
                os.path.join(work, str(i)),
                codec=codec,
                encrypted=enc,
                records=8,
                seed=i,
                keys=(private, public),
            )
            name = f"{fmt.COMPRESSION_NAMES[codec] or 'none'}{'-enc' if enc else ''}"
            # The whole cache image: one cut short is damage (its slots are missing).
            for suffix, data in (("log", fx.log), ("cache", fx.cache)):
                path = os.path.join(dest, f"{name}.{suffix}")
                with open(path, "wb") as f:
                    f.write(data)
                written.append(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return written


_CHILD = r"""
import sys
import atheris
with atheris.instrument_imports(include=["mmaplog"]):
    import mmaplog, mmaplog._reader, mmaplog._format, mmaplog._codec, mmaplog._crypto
    import mmaplog._xlog, mmaplog.recover
from torture.fuzz import one_input, _key
_key()
atheris.Setup(sys.argv, one_input)
atheris.Fuzz()
"""


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def main_fuzz(*, seconds: float, seed: int, verbose: bool = True) -> int:
    """Fuzz for ``seconds``; copy crashers to ``tests/fuzz/regressions/``; 1 if any was found."""
    if not have_atheris():
        print("torture fuzz: atheris is not installed (pip install atheris); skipped")
        return 0
    if not glob.glob(os.path.join(CORPUS, "*")):
        make_corpus()
    os.makedirs(REGRESSIONS, exist_ok=True)
    work = tempfile.mkdtemp(prefix="torture-fuzz-")
    corpus = os.path.join(work, "corpus")
    artifacts = os.path.join(work, "artifacts") + os.sep
    os.makedirs(corpus)
    os.makedirs(artifacts)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    deadline = time.monotonic() + seconds
    crashes: list[str] = []
    runs = 0
    execs = 0
    try:
        while time.monotonic() < deadline - 1:
            left = int(deadline - time.monotonic())
            cmd = [
                sys.executable,
                "-c",
                _CHILD,
                f"-max_total_time={left}",
                "-timeout=5",
                "-rss_limit_mb=2048",
                f"-seed={seed + runs}",
                f"-artifact_prefix={artifacts}",
                "-print_final_stats=1",
                "-max_len=65536",
                corpus,
                CORPUS,
            ]
            runs += 1
            proc = subprocess.run(
                cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=left + 120
            )
            for line in proc.stderr.splitlines():
                if line.startswith("stat::number_of_executed_units:"):
                    execs += int(line.split(":")[-1])
            found = sorted(glob.glob(artifacts + "*"))
            for path in found:
                with open(path, "rb") as f:
                    data = f.read()
                kind = os.path.basename(path).split("-")[0]
                name = f"{kind}-{hashlib.sha1(data).hexdigest()[:16]}"
                shutil.copy(path, os.path.join(REGRESSIONS, name))
                os.unlink(path)
                crashes.append(name)
                if verbose:
                    print(f"torture fuzz: crash -> tests/fuzz/regressions/{name}")
                    print("\n".join(proc.stderr.splitlines()[-40:]))
            if not found:
                if proc.returncode != 0 and verbose:
                    print(proc.stderr[-3000:])
                if proc.returncode != 0:
                    crashes.append(f"libFuzzer exited {proc.returncode} without an artifact")
                break
        corpus_size = len(os.listdir(corpus))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n== torture fuzz summary ==")
    print(
        f"{seconds:.0f} s of atheris/libFuzzer ({runs} run(s)), {execs} inputs executed, "
        f"{corpus_size} new corpus entries, crashes: {len(crashes)} {crashes}"
    )
    return 1 if crashes else 0


def regression_inputs() -> list[str]:
    """The saved crashing inputs, replayed by the tests."""
    return sorted(glob.glob(os.path.join(REGRESSIONS, "*")))
