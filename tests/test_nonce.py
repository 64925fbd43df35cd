"""Block identity: no (key, nonce) pair is ever used twice, on any path a block takes.

ChaCha20-Poly1305's nonce is (seq, index) under each session's ephemeral key
(docs/security.md). These tests check it two ways: white-box, with a recording
sealer that sees every seal the handler makes, and black-box, by reading every
sealed unit (chunk or whole block) back out of the log files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections import defaultdict
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import mmaplog
from mmaplog import _blocks
from mmaplog import _format as fmt
from mmaplog._crypto import Sealer
from mmaplog.exceptions import MmapLogError

from .conftest import make_logger

PRIVATE, PUBLIC = mmaplog.generate_keypair()


def sealed_units(folder: str) -> dict[tuple[bytes, int, int], set[bytes]]:
    """Every sealed unit in the folder's mmaplog files: (ephemeral key, seq, index) -> ciphertexts.

    A block moved whole is one unit under (seq, WHOLE_BLOCK_INDEX); a recovered
    stream block holds one unit per record chunk under (seq, index).
    """
    units: dict[tuple[bytes, int, int], set[bytes]] = defaultdict(set)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".mmlog"):
            continue
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        for b in fmt.scan_blocks(data):
            assert isinstance(b, fmt.ScannedBlock), f"{name}: damage {b}"
            h = b.header
            if not h.encrypted:
                continue
            if h.stream:
                bodies, _end = fmt.walk_chunks(b.payload, fmt.chunk_seed(h.session, h.seq))
                for i, body in enumerate(bodies):
                    units[(h.extension, h.seq, i)].add(bytes(body))
            else:
                units[(h.extension, h.seq, fmt.WHOLE_BLOCK_INDEX)].add(b.payload)
    return units


def assert_no_nonce_reuse(folder: str) -> int:
    """Fail if one (key, nonce) sealed two different ciphertexts; return the units seen."""
    units = sealed_units(folder)
    reused = {k: len(v) for k, v in units.items() if len(v) > 1}
    assert not reused, f"(key, nonce) pairs sealing different data: {list(reused.items())[:5]}"
    return len(units)


def test_an_oversize_record_after_a_moved_block_gets_its_own_nonce(tmp_path):
    """A record too large for a slot, written directly after a moved block, takes a new seq."""
    log_dir = str(tmp_path)
    h = mmaplog.MmapHandler(log_dir, public_key=PUBLIC, buffer_size=16 * 1024, compression=None)
    log = make_logger("nonce", h)
    log.info("A" * 200)
    h.flush()
    log.info("B" * 20000)
    h.close()
    assert assert_no_nonce_reuse(log_dir) == 2
    texts = [r.text for r in mmaplog.read_records(log_dir, key=PRIVATE)]
    assert [t[-200:] == "A" * 200 for t in texts] == [True, False]
    assert texts[1].endswith("B" * 20000)


@pytest.mark.parametrize("compression", ["zstd", "zlib", None])
def test_every_path_of_one_handler_seals_each_nonce_once(tmp_path, compression):
    """Moves, oversize records, flushes, records after close and a re-opened handler never
    share a (key, nonce)."""
    log_dir = str(tmp_path)
    for _round in range(2):  # the second handler re-opens the same folder in this process
        h = mmaplog.MmapHandler(
            log_dir, public_key=PUBLIC, buffer_size=16 * 1024, compression=compression
        )
        log = make_logger("nonce", h)
        for i in range(300):
            log.info("record %d %s", i, "x" * (i % 50))
            if i % 97 == 0:
                log.info("big %d %s", i, "y" * 20000)
            if i % 41 == 0:
                h.flush()
        h.close()
        log.info("after close")
        log.info("after close, big %s", "z" * 20000)
    assert assert_no_nonce_reuse(log_dir) > 10
    texts = [r.text for r in mmaplog.read_records(log_dir, key=PRIVATE)]
    assert len(texts) == 2 * (300 + 4 + 2)


def test_a_sync_handler_seals_each_nonce_once(tmp_path):
    """In sync mode every record is its own block, each with its own seq."""
    log_dir = str(tmp_path)
    h = mmaplog.MmapHandler(log_dir, public_key=PUBLIC, mode="sync")
    log = make_logger("nonce", h)
    for i in range(50):
        log.info("sync %d", i)
    h.close()
    log.info("after close")
    assert assert_no_nonce_reuse(log_dir) == 51


def test_a_killed_writer_and_its_recovery_seal_each_nonce_once(tmp_path):
    """Chunks sealed in the cache by a killed writer, recovered as they are, and the next
    handler's blocks never share a (key, nonce)."""
    log_dir = str(tmp_path)
    code = (
        "import logging, os, signal, sys, mmaplog\n"
        "h = mmaplog.MmapHandler(sys.argv[1], public_key=sys.argv[2], buffer_size=16 * 1024,"
        " flush_interval=3600)\n"
        "log = logging.getLogger('k'); log.addHandler(h); log.setLevel(logging.INFO)\n"
        "for i in range(400): log.info('killed %d %s', i, 'w' * (i % 90))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, log_dir, PUBLIC], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    h = mmaplog.MmapHandler(log_dir, public_key=PUBLIC, buffer_size=16 * 1024)
    assert h.recovered > 0
    log = make_logger("nonce", h)
    for i in range(100):
        log.info("after %d", i)
    h.close()
    assert assert_no_nonce_reuse(log_dir) > 3
    assert len(list(mmaplog.read_records(log_dir, key=PRIVATE))) == 500


def test_a_sealer_refuses_to_seal_in_a_forked_child():
    """A Sealer inherited through fork raises instead of reusing the parent's key and
    nonces; the C path's copy of its key is dropped, and refuses to seal where an
    inherited writer still holds it."""
    from mmaplog._crypto import load_public_key

    sealer = Sealer(load_public_key(PUBLIC))
    sealer.seal(0, 0, b"parent", b"")
    aead = sealer.native_aead  # None where the C path does not seal
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            answer = b"dropped" if sealer.native_aead is None else b"kept"
            if aead is not None:
                try:
                    aead.encrypt(bytes(12), b"child", b"")
                    answer += b" sealed in C"
                except RuntimeError:
                    answer += b" refused in C"
            sealer.seal(1, 0, b"child", b"")
            os.write(w, answer + b" sealed")
        except MmapLogError:
            os.write(w, answer + b" refused")
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    assert answer == (b"dropped refused" if aead is None else b"dropped refused in C refused")
    sealer.seal(1, 0, b"parent again", b"")  # the parent's own sealer still works
    if aead is not None:  # and its C key too
        assert len(aead.encrypt(bytes(12), b"parent", b"")) == 6 + 16


class RecordingSealer(Sealer):
    """A real Sealer that also records the (ephemeral key, seq, index) of every seal."""

    uses: ClassVar[list[tuple[str, int, int]]] = []

    def seal(self, seq: int, index: int, plaintext: Any, aad: Any) -> bytes:
        RecordingSealer.uses.append((self.ephemeral_public.hex(), seq, index))
        return super().seal(seq, index, plaintext, aad)


class HandlerLife(RuleBasedStateMachine):
    """Random lives of a handler: emits, oversize emits, flushes, close, logging after close,
    fork, re-opening in either format; every seal is recorded and every record counted."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mmaplog-nonce-")
        self.child_uses = os.path.join(self.dir, "child-uses.jsonl")
        self.handler: mmaplog.MmapHandler | None = None
        self.format = "mmaplog"
        self.logger = logging.getLogger("nonce-sm")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.logged: list[str] = []
        self.n = 0
        RecordingSealer.uses = []

    def _open(self, fmt_name: str) -> None:
        self.format = fmt_name
        kw: dict[str, Any] = {"buffer_size": 16 * 1024, "flush_interval": 3600}
        if fmt_name == "mmaplog":
            kw["public_key"] = PUBLIC
        else:
            kw["format"] = "xlog"
            kw["compression"] = "zlib"
        self.handler = mmaplog.MmapHandler(self.dir, fmt_name, **kw)
        self.logger.handlers[:] = [self.handler]

    @initialize(fmt_name=st.sampled_from(["mmaplog", "xlog"]))
    def start(self, fmt_name: str) -> None:
        self._open(fmt_name)

    def _log(self, size: int) -> None:
        self.n += 1
        text = f"r{self.n}:" + "m" * size
        self.logger.info("%s", text)
        self.logged.append(f"{self.format}:{text}")

    @rule(size=st.integers(0, 300))
    def emit(self, size: int) -> None:
        self._log(size)

    @rule(size=st.integers(9000, 15000))  # past a 8 KiB slot, within xlog's 16 KiB lines
    def emit_oversize(self, size: int) -> None:
        self._log(size)

    @rule()
    def flush(self) -> None:
        assert self.handler is not None
        self.handler.flush()

    @precondition(lambda self: self.handler is not None and not self.handler._closed)
    @rule()
    def close(self) -> None:
        assert self.handler is not None
        self.handler.close()

    @precondition(lambda self: self.handler is not None and self.handler._closed)
    @rule(fmt_name=st.sampled_from(["mmaplog", "xlog"]))
    def reopen(self, fmt_name: str) -> None:
        self._open(fmt_name)

    @rule(sizes=st.lists(st.sampled_from([10, 200, 12000]), min_size=1, max_size=4))
    def fork(self, sizes: list[int]) -> None:
        before = len(RecordingSealer.uses)  # the child inherits the parent's record
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            status = 1
            try:
                for i, size in enumerate(sizes):
                    self.logger.info("%s", f"child{self.n}.{i}:" + "c" * size)
                assert self.handler is not None
                self.handler.close()
                with open(self.child_uses, "a") as f:
                    f.write(json.dumps(RecordingSealer.uses[before:]) + "\n")
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert status == 0
        for i, size in enumerate(sizes):
            self.logged.append(f"{self.format}:child{self.n}.{i}:" + "c" * size)

    def all_uses(self) -> list[tuple[str, int, int]]:
        uses = [tuple(u) for u in RecordingSealer.uses]
        if os.path.exists(self.child_uses):
            with open(self.child_uses) as f:
                for line in f:
                    uses += [tuple(u) for u in json.loads(line)]
        return uses  # type: ignore[return-value]

    @invariant()
    def no_nonce_is_sealed_twice(self) -> None:
        uses = self.all_uses()
        assert len(uses) == len(set(uses)), "a (key, nonce) pair was sealed twice"

    def teardown(self) -> None:
        try:
            if self.handler is not None:
                self.handler.close()
            self.no_nonce_is_sealed_twice()
            assert_no_nonce_reuse(self.dir)
            got = sorted(_tail(r.text) for r in mmaplog.read_records(self.dir, key=PRIVATE))
            assert got == sorted(t.split(":", 1)[1] for t in self.logged)
        finally:
            self.logger.handlers[:] = []
            shutil.rmtree(self.dir, ignore_errors=True)


def _tail(text: str) -> str:
    """The numbered part of a record's text (``r<n>:...`` or ``child<n>.<i>:...``)."""
    text = text.rstrip("\n")
    for marker in ("][r", "][child"):
        at = text.rfind(marker)
        if at >= 0:
            return text[at + 2 :]
    raise AssertionError(f"not a record of the state machine: {text[:80]!r}")


def test_no_nonce_is_sealed_twice_in_any_life_of_a_handler(monkeypatch):
    """Hypothesis: whatever a handler goes through, every seal uses a fresh (key, nonce)."""
    monkeypatch.setattr(_blocks, "Sealer", RecordingSealer)
    run_state_machine_as_test(
        HandlerLife,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
