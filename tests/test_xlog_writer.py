"""MmapHandler(format="xlog"): Mars xlog files written through mmaplog's crash-safe cache.

Real files, real handlers and real killed processes. The files are read back by
mmaplog's xlog reader and by a Python 3 port of the block walk of Tencent's own
decoders (``decode_mars_nocrypt_log_file.py`` / ``decode_mars_crypt_log_file.py``).
"""

from __future__ import annotations

import logging
import os
import random
import struct
import subprocess
import sys
import time
import zlib

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric import ec

import mmaplog
from mmaplog import _format as fmt
from mmaplog import _xlog as xlog
from mmaplog.exceptions import ConfigError
from mmaplog.recover import recover_image
from torture import harness

PRIVATE, PUBLIC = xlog.generate_xlog_keypair()
KEY = xlog.load_xlog_private_key(PRIVATE)
ASYNC = {xlog.MAGIC_ASYNC_ZLIB, xlog.MAGIC_ASYNC_NO_CRYPT_ZLIB}
ASYNC |= {xlog.MAGIC_ASYNC_ZSTD, xlog.MAGIC_ASYNC_NO_CRYPT_ZSTD}
CRYPT = pytest.mark.parametrize("crypt", [False, True], ids=["nocrypt", "crypt"])
COMPRESSION = pytest.mark.parametrize("compression", ["zlib", "zstd"])
MODE = pytest.mark.parametrize("mode", ["async", "sync"])


def xlog_handler(log_dir: str, **kwargs: object) -> mmaplog.MmapHandler:
    kwargs.setdefault("prefix", "app")
    return mmaplog.MmapHandler(log_dir, format="xlog", **kwargs)  # type: ignore[arg-type]


def logger_for(handler: logging.Handler, name: str = "xw") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def xlog_files(log_dir: str) -> list[str]:
    return sorted(os.path.join(log_dir, n) for n in os.listdir(log_dir) if n.endswith(".xlog"))


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_all(log_dir: str) -> bytes:
    return b"".join(read_bytes(p) for p in xlog_files(log_dir))


def lines_of(data: bytes) -> tuple[list[str], list[xlog.XlogDamage]]:
    damage: list[xlog.XlogDamage] = []
    return list(xlog.iter_lines(data, KEY, damage.append)), damage


def tencent_decode(data: bytes, private_hex: str | None = None) -> bytes:
    """Tencent's decoder loop (start = two good blocks, then block by block), in Python 3.

    Ported from ``decode_mars_crypt_log_file.py``: ``is_good_log_buffer``,
    ``get_log_start_pos``, ``decode_buffer`` and its ``tea_decipher``; only the
    removed zstd ``read_from`` API and ``pyelliptic`` are replaced.
    """
    buf = bytearray(data)
    starts = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}

    def key_len(magic: int) -> int:
        return 4 if magic in (3, 4, 5) else 64

    def is_good(offset: int, count: int) -> bool:
        if offset == len(buf):
            return True
        if buf[offset] not in starts:
            return False
        hlen = 9 + key_len(buf[offset])
        if offset + hlen + 1 + 1 > len(buf):
            return False
        (length,) = struct.unpack_from("I", buf, offset + hlen - 4 - key_len(buf[offset]))
        if offset + hlen + length + 1 > len(buf) or buf[offset + hlen + length] != 0:
            return False
        return count <= 1 or is_good(offset + hlen + length + 1, count - 1)

    def start_pos(base: int, count: int) -> int:
        for offset in range(base, len(buf)):
            if buf[offset] in starts and is_good(offset, count):
                return offset - base
        return -1

    def tea_decipher(v: bytes, k: bytes) -> bytes:
        op = 0xFFFFFFFF
        v0, v1 = struct.unpack("=LL", v[0:8])
        k1, k2, k3, k4 = struct.unpack("=LLLL", k[0:16])
        delta = 0x9E3779B9
        s = (delta << 4) & op
        for _ in range(16):
            v1 = (v1 - (((v0 << 4) + k3) ^ (v0 + s) ^ ((v0 >> 5) + k4))) & op
            v0 = (v0 - (((v1 << 4) + k1) ^ (v1 + s) ^ ((v1 >> 5) + k2))) & op
            s = (s - delta) & op
        return struct.pack("=LL", v0, v1)

    out = bytearray()
    pos = start_pos(0, 2)
    while 0 <= pos < len(buf):
        if not is_good(pos, 1):
            fix = start_pos(pos, 1)
            if fix < 0:
                break
            out += b"[F]decode error\n"
            pos += fix
        magic = buf[pos]
        hlen = 9 + key_len(magic)
        (length,) = struct.unpack_from("I", buf, pos + 5)
        payload = bytes(buf[pos + hlen : pos + hlen + length])
        if magic in (7, 12):
            assert private_hex is not None
            server = ec.derive_private_key(int(private_hex, 16), ec.SECP256K1())
            client = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256K1(), b"\x04" + bytes(buf[pos + 9 : pos + 73])
            )
            tea_key = server.exchange(ec.ECDH(), client)
            num = len(payload) // 8 * 8
            payload = (
                b"".join(tea_decipher(payload[i : i + 8], tea_key) for i in range(0, num, 8))
                + payload[num:]
            )
        if magic in (4, 7, 9):
            payload = zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload)
        elif magic in (12, 13):
            payload = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        out += payload
        pos = pos + hlen + length + 1
    return bytes(out)


def write_lines(handler: mmaplog.MmapHandler, messages: list[str]) -> None:
    logger = logger_for(handler)
    for m in messages:
        logger.info("%s", m)


MESSAGES = [f"line {i} ünïcode {'x' * (i % 97)} €" for i in range(400)]


# -- round trips -------------------------------------------------------------------------


@COMPRESSION
@CRYPT
@MODE
def test_round_trip(log_dir, compression, crypt, mode):
    """Every line comes back from the .xlog file, through mmaplog's reader and Tencent's walk."""
    h = xlog_handler(
        log_dir,
        compression=compression,
        mode=mode,
        xlog_public_key=PUBLIC if crypt else None,
        buffer_size=16 * 1024,
    )
    h.setFormatter(logging.Formatter("%(message)s"))
    write_lines(h, MESSAGES)
    h.close()
    assert [os.path.basename(p) for p in xlog_files(log_dir)] == [
        f"app_{time.strftime('%Y%m%d')}.xlog"
    ]
    data = read_all(log_dir)
    lines, damage = lines_of(data)
    assert lines == MESSAGES
    assert damage == []
    text = tencent_decode(data, PRIVATE if crypt else None).decode("utf-8")
    assert text == "".join(m + "\n" for m in MESSAGES)
    blocks = list(xlog.iter_blocks(data))
    magic = xlog.xlog_magic(mode, compression, crypt)
    hour = time.localtime().tm_hour
    for b in blocks:
        assert b.magic == magic
        assert b.client_pubkey != bytes(64) if crypt else b.client_pubkey == bytes(64)
        assert b.begin_hour in (hour, (hour - 1) % 24)
    if mode == "sync":
        assert len(blocks) == len(MESSAGES)
        assert all(b.seq == 0 and b.begin_hour == b.end_hour for b in blocks)
    else:
        assert len(blocks) >= 2  # a 16 KiB cache splits 400 lines into several blocks
        assert [b.seq for b in blocks] == list(range(1, len(blocks) + 1))


def test_default_formatter_lines_end_with_the_message(log_dir):
    """The default XlogFormatter line is written with a final newline, split back per line."""
    h = xlog_handler(log_dir)
    logger_for(h).warning("order %s failed", 42)
    h.close()
    data = read_all(log_dir)
    assert b"\n" in xlog.decode_block(next(xlog.iter_blocks(data)), KEY).encode()
    (line,) = lines_of(data)[0]
    assert line.startswith("[W][") and line.endswith("][order 42 failed")
    (record,) = mmaplog.read_records(log_dir)
    assert record.text == line and record.level == logging.WARNING


@COMPRESSION
def test_no_crypt_blocks_are_byte_identical_to_xlogs_layout(log_dir, compression):
    """Without a key, each block is exactly what XlogBlockWriter (xlog's layout) builds."""
    h = xlog_handler(log_dir, compression=compression, buffer_size=16 * 1024)
    h.setFormatter(logging.Formatter("%(message)s"))
    write_lines(h, MESSAGES)
    h.close()
    writer = xlog.XlogBlockWriter("async", compression)
    data = read_all(log_dir)
    blocks = list(xlog.iter_blocks(data))
    assert len(blocks) >= 2
    for b in blocks:
        lines = [line.encode() + b"\n" for line in xlog.decode_block(b).splitlines()]
        expected = writer.encode_block(lines, b.seq, b.begin_hour, b.end_hour)
        assert data[b.offset : b.end] == expected


@COMPRESSION
def test_crypt_blocks_decrypt_to_xlogs_exact_stream(log_dir, compression):
    """With a key, the payload is TEA-ECB of exactly xlog's compressed stream, tail in clear."""
    h = xlog_handler(log_dir, compression=compression, xlog_public_key=PUBLIC)
    h.setFormatter(logging.Formatter("%(message)s"))
    write_lines(h, MESSAGES[:50])
    h.close()
    (b,) = xlog.iter_blocks(read_all(log_dir))
    assert b.magic == (xlog.MAGIC_ASYNC_ZLIB if compression == "zlib" else xlog.MAGIC_ASYNC_ZSTD)
    plain = xlog.XlogBlockWriter("async", compression).encode_block(
        [m.encode() for m in MESSAGES[:50]], b.seq, b.begin_hour, b.end_hour
    )
    stream = plain[73:-1]
    tea_key = KEY.tea_key(b.client_pubkey)
    assert b.payload == xlog.tea_encrypt(stream, tea_key)
    tail = len(stream) % 8
    assert b.payload[len(stream) - tail :] == stream[len(stream) - tail :]
    assert b.payload[:8] != stream[:8]


def test_chunk_bodies_join_to_the_encrypted_stream_at_every_prefix():
    """Joining the first k cache chunks gives TEA-ECB of the first k lines' stream, for every k."""
    rnd = random.Random(7)
    tea_key = bytes(range(16))
    for compression in ("zlib", "zstd"):
        lines = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))) for _ in range(60)]
        stream = xlog.XlogLineStream(compression, tea_key)
        plain = xlog.XlogLineStream(compression, None)
        bodies: list[bytes] = []
        clear = b""
        for line in lines:
            bodies.append(stream.chunk(line))
            clear += plain.compress(line)
            joined = xlog.xlog_payload(bodies, True)
            assert joined == xlog.tea_encrypt(clear, tea_key)
            assert bodies[-1][-1] == len(clear) % 8


def test_malformed_crypt_chunk_is_corruption():
    """A crypt chunk body whose tail length does not fit its size is refused as corruption."""
    with pytest.raises(mmaplog.CorruptionError):
        xlog.xlog_payload([b"\x00" * 8 + b"\x09"], True)
    with pytest.raises(mmaplog.CorruptionError):
        xlog.xlog_payload([b"\x00" * 5 + b"\x01"], True)


def test_sync_mode_writes_each_record_before_emit_returns(log_dir):
    """In sync mode each record is one sync block in the file when emit returns; no cache."""
    h = xlog_handler(log_dir, mode="sync", compression="zlib", xlog_public_key=PUBLIC)
    h.setFormatter(logging.Formatter("%(message)s"))
    logger = logger_for(h)
    for i in range(3):
        logger.error("sync %d", i)
        blocks = list(xlog.iter_blocks(read_all(log_dir)))
        assert len(blocks) == i + 1
        assert blocks[-1].magic == xlog.MAGIC_SYNC_ZLIB and blocks[-1].seq == 0
        assert blocks[-1].payload == f"sync {i}\n".encode()  # xlog: sync lines are plain
    assert not [n for n in os.listdir(log_dir) if n.endswith(".mmap")]
    h.close()


def test_oversize_line_goes_in_a_block_of_its_own(log_dir):
    """A line larger than a cache slot is written directly as an async block, in order."""
    h = xlog_handler(log_dir, buffer_size=16 * 1024, compression="zstd")
    h.setFormatter(logging.Formatter("%(message)s"))
    big = "".join(random.Random(3).choice("abcdefghij") for _ in range(12_000))
    write_lines(h, ["before", big, "after"])
    h.close()
    lines, damage = lines_of(read_all(log_dir))
    assert lines == ["before", big, "after"]
    assert damage == []


# -- the cache -----------------------------------------------------------------------------


@COMPRESSION
def test_cache_holds_no_plaintext_in_crypt_mode(log_dir, compression):
    """An xlog crypt cache holds only TEA units and < 8 clear compressed bytes per chunk."""
    h = xlog_handler(log_dir, compression=compression, xlog_public_key=PUBLIC, flush_interval=3600)
    h.setFormatter(logging.Formatter("%(message)s"))
    marker = "SECRET-MARKER-4242"
    write_lines(h, [f"{marker} {i} {marker}" for i in range(20)])
    image = read_bytes(os.path.join(log_dir, "app.mmap"))
    info = fmt.parse_cache_header(image)
    content = fmt.read_slot(image, info, 0)
    assert content is not None and content.count == 20
    assert content.template.flags & fmt.FLAG_XLOG and content.template.encrypted
    assert len(content.template.extension) == 64
    assert marker.encode() not in image and b"SECRET" not in image
    h.close()


@CRYPT
def test_recovery_builds_the_block_without_a_key_and_only_once(tmp_path, crypt):
    """Recovery appends the xlog block without a key; recovering the same image adds nothing."""
    log_dir = str(tmp_path / "logs")
    h = xlog_handler(log_dir, xlog_public_key=PUBLIC if crypt else None, flush_interval=3600)
    h.setFormatter(logging.Formatter("%(message)s"))
    write_lines(h, MESSAGES[:30])
    cache = os.path.join(log_dir, "app.mmap")
    image = read_bytes(cache)
    h._cache.abandon()  # type: ignore[union-attr]  # as if the process had died here
    h._cache = None
    h._flusher = None
    h._closed = True
    report = recover_image(image, cache)
    assert (report.blocks, report.records) == (1, 30)
    again = recover_image(image, cache)
    assert (again.blocks, again.skipped_blocks) == (0, 1)
    lines, damage = lines_of(read_all(log_dir))
    assert lines == MESSAGES[:30] and damage == []


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "xml"}, "format must be"),
        ({"format": "xlog", "xlog_public_key": "abcd"}, "128 hex"),
        ({"format": "xlog", "xlog_public_key": "zz" * 64}, "128 hex"),
        ({"format": "xlog", "xlog_public_key": "01" * 64}, "not a point"),
        ({"format": "xlog", "xlog_public_key": bytes(64)}, "must be a str"),
        ({"format": "xlog", "public_key": mmaplog.generate_keypair()[1]}, "X25519"),
        ({"format": "mmaplog", "xlog_public_key": PUBLIC}, "only for format='xlog'"),
        ({"format": "xlog", "compression": None}, "'zlib' or 'zstd'"),
        ({"format": "xlog", "compression": "zstd", "compress_level": -3}, "1 to 22"),
    ],
)
def test_bad_options_raise_config_error(log_dir, kwargs, message):
    """Bad xlog options are refused with a ConfigError saying what is wrong."""
    with pytest.raises(ConfigError, match=message):
        mmaplog.MmapHandler(log_dir, "app", **kwargs)


# -- files ---------------------------------------------------------------------------------------


def test_size_split_and_retention_apply_to_xlog_files(log_dir):
    """max_file_size splits .xlog files into _1, _2 parts; max_age_days removes old .xlog files."""
    os.makedirs(log_dir)
    old = os.path.join(log_dir, "app_20000101.xlog")
    other = os.path.join(log_dir, "app_20000101.mmlog")
    for p in (old, other):
        open(p, "wb").close()
    h = xlog_handler(log_dir, buffer_size=16 * 1024, max_file_size=6000, max_age_days=3)
    assert not os.path.exists(old)
    assert os.path.exists(other)  # an xlog handler manages only its own files
    h.setFormatter(logging.Formatter("%(message)s"))
    write_lines(h, MESSAGES)
    h.close()
    names = [os.path.basename(p) for p in xlog_files(log_dir)]
    assert len(names) > 1 and any("_1.xlog" in n for n in names)
    assert [r.text for r in mmaplog.read_records(log_dir)] == MESSAGES


# -- kill -9 ---------------------------------------------------------------------------------------


def xlog_writer_config(log_dir: str, crypt: bool, **handler: object) -> dict[str, object]:
    options: dict[str, object] = {"format": "xlog", "buffer_size": 32 * 1024, **handler}
    if crypt:
        options["xlog_public_key"] = PUBLIC
    return {"log_dir": log_dir, "handler": options, "sizes": [1, 400]}


def decoded(log_dir: str) -> list[str]:
    return [r.text for r in mmaplog.read_records(log_dir, key=PRIVATE)]


def no_damage(log_dir: str) -> None:
    damage: list[object] = []
    list(mmaplog.read_records(log_dir, key=PRIVATE, on_damage=lambda p, d: damage.append(d)))
    assert damage == []


@CRYPT
@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.7, 1.1, 1.5])
def test_random_kill_loses_nothing(tmp_path, crypt, delay):
    """An xlog writer killed at a random moment loses no acknowledged line and repeats none."""
    log_dir = str(tmp_path)
    compression = random.Random(delay).choice(["zlib", "zstd"])
    config = xlog_writer_config(log_dir, crypt, compression=compression, flush_interval=0.05)
    acked, status = harness.run_writer(config, kill_after=delay)
    assert status == -9 and acked
    mmaplog.recover(log_dir)
    counts = harness.check_exactly_once(decoded(log_dir), acked)
    assert mmaplog.recover(log_dir) == 0
    assert harness.check_exactly_once(decoded(log_dir), acked) == counts
    no_damage(log_dir)


@CRYPT
@pytest.mark.parametrize("nth", [1, 3])
def test_kill_after_append_before_release_gives_no_duplicate(tmp_path, crypt, nth):
    """Killed after a block is in the .xlog file but still in the cache: recovery skips it."""
    log_dir = str(tmp_path)
    config = xlog_writer_config(log_dir, crypt, buffer_size=16 * 1024)
    config["crash_at"] = {"after_append": nth}
    acked, status = harness.run_writer(config, kill_after=30.0)
    assert status == -9
    cache = os.path.join(log_dir, "app.mmap")
    report = recover_image(read_bytes(cache), cache)
    assert report.skipped_blocks == 1  # the slot still held the block already appended
    assert mmaplog.recover(log_dir) == 0  # everything is in the log now
    harness.check_exactly_once(decoded(log_dir), acked)
    # A new session on the same folder recovers nothing more and appends its own lines.
    acked2, status2 = harness.run_writer({**config, "crash_at": {}, "count": 200}, kill_after=None)
    assert status2 == 0
    texts = decoded(log_dir)
    harness.check_exactly_once(texts[:-200], acked)
    harness.check_exactly_once(texts[-200:], acked2, complete=True)
    no_damage(log_dir)


@CRYPT
@pytest.mark.slow
def test_kill_during_recovery_then_recover_again(tmp_path, crypt):
    """Recovery killed after appending an xlog block, then run again, gives every line once."""
    log_dir = str(tmp_path)
    config = xlog_writer_config(log_dir, crypt, flush_interval=3600)
    acked, status = harness.run_writer(config, kill_after=0.8)
    assert status == -9
    code = (
        "import sys; from mmaplog import _faults, recover\n"
        "_faults.crash_at('recover_after_append', 1)\n"
        "recover(sys.argv[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code, log_dir], env=env).returncode == -9
    mmaplog.recover(log_dir)
    harness.check_exactly_once(decoded(log_dir), acked)


@pytest.mark.slow
def test_kill_then_a_new_handler_recovers_at_start(tmp_path):
    """A new xlog handler on the folder recovers what the killed writer left in its cache."""
    log_dir = str(tmp_path)
    config = xlog_writer_config(log_dir, True, flush_interval=3600)
    acked, status = harness.run_writer(config, kill_after=0.8)
    assert status == -9
    moved = len(decoded(log_dir))
    h = xlog_handler(log_dir, xlog_public_key=PUBLIC)
    h.close()
    # What the cache still held (nothing when the kill came just after every block had
    # been moved, while the writer waited for a slot) is what recovery counted.
    assert h.recovered == len(decoded(log_dir)) - moved
    harness.check_exactly_once(decoded(log_dir), acked)
    assert tencent_decode(read_all(log_dir), PRIVATE).count(b"\n") == len(decoded(log_dir))
