"""Encrypted logs end to end: no plaintext on disk, private-key decoding, wrong keys, tampering."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys

import pytest

import mmaplog
from mmaplog import _format as fmt
from torture import harness

from .conftest import make_logger

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
MARKER = "SECRET-MARKER-7f3a"


@pytest.fixture
def keys() -> tuple[str, str]:
    return mmaplog.generate_keypair()


def write(log_dir: str, public: str, n: int = 500, **kw: object) -> mmaplog.MmapHandler:
    h = mmaplog.MmapHandler(log_dir, public_key=public, **kw)  # type: ignore[arg-type]
    h.setFormatter(logging.Formatter("%(message)s"))
    log = make_logger("enc", h)
    for i in range(n):
        log.info("%s %d", MARKER, i)
    return h


def all_bytes(folder: str) -> bytes:
    out = b""
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            out += f.read()
    return out


@pytest.mark.parametrize("compression", ["zstd", "zlib", None])
def test_no_plaintext_in_cache_or_log_files(log_dir, keys, compression):
    """Neither the cache file nor the log files ever hold a record's plaintext."""
    private, public = keys
    h = write(log_dir, public, compression=compression, buffer_size=16 * 1024)
    # While running: the cache holds records.
    assert MARKER.encode() not in all_bytes(log_dir)
    h.close()
    assert MARKER.encode() not in all_bytes(log_dir)
    got = [r.text for r in mmaplog.read_records(log_dir, key=private)]
    assert got == [f"{MARKER} {i}" for i in range(500)]


def test_accepts_each_public_key_form(log_dir, keys):
    """public_key may be the base64 text, the raw 32 bytes or a PEM public key."""
    import base64

    from cryptography.hazmat.primitives import serialization

    private, public = keys
    raw = base64.b64decode(public)
    priv = serialization.load_pem_private_key(private.encode(), None)
    pem = priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for form in (public, raw, pem):
        write(log_dir, form, n=1).close()  # type: ignore[arg-type]
    assert len(list(mmaplog.read_records(log_dir, key=private))) == 3


def test_decode_without_key_exits_2(log_dir, keys):
    """Decoding encrypted input without --key is one clear line and exit status 2."""
    write(log_dir, keys[1]).close()
    res = subprocess.run(
        [sys.executable, "-m", "mmaplog", "decode", log_dir],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert res.returncode == 2
    assert "encrypted" in res.stderr and "--key" in res.stderr
    assert "Traceback" not in res.stderr and MARKER not in res.stdout


def test_decode_with_key_file(log_dir, keys, tmp_path):
    """mmaplog decode --key FILE prints the records."""
    private, public = keys
    write(log_dir, public, n=3).close()
    key = tmp_path / "ops.key"
    key.write_text(private)
    res = subprocess.run(
        [sys.executable, "-m", "mmaplog", "decode", "--key", str(key), log_dir],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"{MARKER} {i}" for i in range(3)]


def test_wrong_key_says_so(log_dir, keys, tmp_path):
    """Another private key prints no record, says the key does not match, and exits 1."""
    write(log_dir, keys[1]).close()
    other, _ = mmaplog.generate_keypair()
    key = tmp_path / "other.key"
    key.write_text(other)
    res = subprocess.run(
        [sys.executable, "-m", "mmaplog", "decode", "--key", str(key), log_dir],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert res.returncode == 1
    assert res.stdout == ""
    assert "the key does not match" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "region", ["header-seq", "header-key", "header-fingerprint", "record", "tag"]
)
def test_tampered_block_is_reported_and_others_still_decode(log_dir, keys, region):
    """A change in any region of an encrypted block (CRCs forged) loses only that block."""
    from dataclasses import replace

    private, public = keys
    write(log_dir, public, n=4000, buffer_size=16 * 1024).close()
    (name,) = [n for n in os.listdir(log_dir) if n.endswith(".mmlog")]
    path = os.path.join(log_dir, name)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    blocks = [b for b in fmt.scan_blocks(bytes(data)) if isinstance(b, fmt.ScannedBlock)]
    assert len(blocks) > 3
    victim = blocks[1]
    h = victim.header
    payload = bytearray(victim.payload)
    if region == "header-seq":  # an attacker renumbers the block
        h = replace(h, seq=h.seq + 1000)
    elif region == "header-key":  # or swaps the ephemeral public key
        flip = b"\x01" * 32 + bytes(8)
        h = replace(h, extension=bytes(a ^ b for a, b in zip(h.extension, flip, strict=True)))
    elif region == "header-fingerprint":  # or names another recipient key
        h = replace(h, extension=h.extension[:32] + bytes(8))
    elif region == "record":
        payload[len(payload) // 2] ^= 0x10
    else:  # the AEAD tag: the last 16 bytes
        payload[-1] ^= 0x01
    # Forge the CRCs as an attacker would: only the AEAD can tell.
    data[victim.offset : victim.end] = fmt.encode_block(h, bytes(payload))
    with open(path, "wb") as f:
        f.write(data)
    damage: list[fmt.Damage] = []
    got = [
        r.text
        for r in mmaplog.read_records(path, key=private, on_damage=lambda s, d: damage.append(d))
    ]
    assert len(damage) == 1 and damage[0].start == victim.offset, damage
    assert len(got) == 4000 - victim.header.count
    assert all(t.startswith(MARKER) for t in got)


def test_tampered_recovered_block_loses_only_later_records(tmp_path, keys):
    """A changed record in a recovered (per-record) block is reported; earlier records stay."""
    from dataclasses import replace

    private, public = keys
    log_dir = str(tmp_path)
    # A cache too large to fill in the half second: no block is moved, so the kill
    # cannot tear a write (one more damage report than the tampering's).
    handler = {"public_key": public, "flush_interval": 3600, "buffer_size": 32 * 1024 * 1024}
    harness.run_writer({"log_dir": log_dir, "handler": handler}, kill_after=0.5)
    mmaplog.recover(log_dir)
    (name,) = [n for n in os.listdir(log_dir) if n.endswith(".mmlog")]
    path = os.path.join(log_dir, name)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    blocks = [b for b in fmt.scan_blocks(bytes(data)) if isinstance(b, fmt.ScannedBlock)]
    victim = next(b for b in blocks if b.header.recovered and b.header.count > 4)
    # Tamper with the third chunk's body and fix its chunk CRC and the block CRCs.
    seed = fmt.chunk_seed(victim.header.session, victim.header.seq)
    chunks, _ = fmt.walk_chunks(victim.payload, seed)
    rebuilt = b""
    for i, body in enumerate(chunks):
        body = bytearray(body)
        if i == 2:
            body[0] ^= 0x01
        rebuilt += fmt.encode_chunk(bytes(body), seed)
    data[victim.offset : victim.end] = fmt.encode_block(replace(victim.header), rebuilt)
    with open(path, "wb") as f:
        f.write(data)
    damage: list[fmt.Damage] = []
    recs = list(mmaplog.read_records(path, key=private, on_damage=lambda s, d: damage.append(d)))
    mine = [
        r for r in recs if r.session == victim.header.session.hex() and r.seq == victim.header.seq
    ]
    assert len(mine) == 2 and len(damage) == 1
    assert "record 2" in damage[0].reason


@pytest.mark.slow
def test_kill_with_encryption_recovers_without_key(tmp_path, keys):
    """Recovery of an encrypted cache moves its blocks without the private key."""
    private, public = keys
    log_dir = str(tmp_path)
    acked, status = harness.run_writer(
        {"log_dir": log_dir, "handler": {"public_key": public, "flush_interval": 3600}},
        kill_after=0.6,
    )
    assert status == -9
    assert mmaplog.recover(log_dir) > 0
    assert b"T0 #1 " not in all_bytes(log_dir)
    harness.check_exactly_once([r.text for r in mmaplog.read_records(log_dir, key=private)], acked)


def test_fork_child_uses_a_new_key_and_session(log_dir, keys):
    """A forked child never continues the parent's session: new session id and ephemeral key."""
    private, public = keys
    h = write(log_dir, public, n=10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            logging.getLogger("enc").info("%s child", MARKER)
            h.close()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    logging.getLogger("enc").info("%s parent", MARKER)
    h.close()
    recs = list(mmaplog.read_records(log_dir, key=private))
    child = [r for r in recs if r.text.endswith("child")]
    parent = [r for r in recs if not r.text.endswith("child")]
    assert len(child) == 1 and len(parent) == 11
    assert child[0].pid != os.getpid() and child[0].session not in {r.session for r in parent}
    keys_used = set()
    name = next(n for n in os.listdir(log_dir) if n.endswith(".mmlog"))
    with open(os.path.join(log_dir, name), "rb") as f:
        for b in fmt.scan_blocks(f.read()):
            if isinstance(b, fmt.ScannedBlock):
                keys_used.add((b.header.session, b.header.extension))
    assert len({s for s, _ in keys_used}) == len({e for _, e in keys_used}) == 2


def block_counts(folder: str) -> list[int]:
    """The record count of each block in the log files of ``folder``, in order."""
    counts = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".mmlog"):
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            counts += [
                b.header.count for b in fmt.scan_blocks(data) if not isinstance(b, fmt.Damage)
            ]
    return counts


def test_encrypted_blocks_hold_as_many_records_as_plain_ones(tmp_path, keys):
    """The per-record tags do not count toward sealing, so encryption does not shrink blocks."""
    _private, public = keys
    counts = {}
    for name, key in (("plain", None), ("sealed", public)):
        folder = str(tmp_path / name)
        h = mmaplog.MmapHandler(folder, public_key=key, buffer_size=32 * 1024)
        h.setFormatter(logging.Formatter("%(message)s"))
        log = make_logger(name, h)
        rng = random.Random(7)  # the same application-like lines, of 100-200 bytes, both times
        for i in range(3000):
            log.info(
                "%s %d user %s took %d ms", MARKER, i, rng.randbytes(20).hex(), rng.randrange(999)
            )
        h.close()
        counts[name] = block_counts(folder)
    assert len(counts["plain"]) > 2
    # The last block is cut by close(); compare the first, full one.
    assert abs(counts["sealed"][0] - counts["plain"][0]) <= counts["plain"][0] // 50
