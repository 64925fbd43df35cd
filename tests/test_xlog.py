"""Tests of the pure Mars xlog reader/writer in ``mmaplog._xlog``.

Strategies live here rather than in ``tests/strategies.py`` because they only make
sense for xlog blocks.  All crypto is real (secp256k1 ECDH through ``cryptography``).
"""

from __future__ import annotations

import contextlib
import functools
import struct
import tracemalloc
import zlib

import pytest
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmaplog import _xlog as xlog
from mmaplog.exceptions import (
    ConfigError,
    CorruptionError,
    DecryptionError,
    KeyMismatchError,
    MmapLogError,
    NeedKeyError,
)

# The sample key pair shipped in Tencent's decode_mars_crypt_log_file.py.
TENCENT_PRIV = "145aa7717bf9745b91e9569b80bbf1eedaa6cc6cd0e26317d810e35710f44cf8"
TENCENT_PUB = (
    "572d1e2710ae5fbca54c76a382fdd44050b3a675cb2bf39feebe85ef63d947af"
    "f0fa4943f1112e8b6af34bebebbaefa1a0aae055d9259b89a1858f7cc9af9df1"
)

MASK = 0xFFFFFFFF
DELTA = 0x9E3779B9


def line(i: int, body: str = "hello") -> bytes:
    """An xlog-formatted line as log_formater writes it."""
    return (
        f"[I][2026-11-23 +8.0 12:00:{i % 60:02d}.123][4242, 4243*][demo]"
        f"[app.py:{i}, main][{body} {i}\n"
    ).encode()


def text_of(lines: list[bytes]) -> list[str]:
    """The lines iter_lines should yield for ``lines``."""
    return [raw.decode().rstrip("\n") for raw in lines]


@functools.cache
def server_key() -> xlog.XlogPrivateKey:
    """The server key used by every encrypted test file."""
    return xlog.load_xlog_private_key(TENCENT_PRIV)


@functools.cache
def sample() -> tuple[bytes, tuple[tuple[int, bytes], ...], tuple[tuple[bytes, ...], ...]]:
    """A small file of five blocks, one per kind, with offsets, payloads and lines."""
    specs: list[tuple[str, str, str | None, int, int]] = [
        ("sync", "zlib", None, 0, 2),
        ("async", "zlib", None, 1, 3),
        ("async", "zstd", None, 2, 3),
        ("async", "zlib", TENCENT_PUB, 3, 2),
        ("sync", "zstd", TENCENT_PUB, 0, 1),
    ]
    data = b""
    blocks: list[tuple[int, bytes]] = []
    lines: list[tuple[bytes, ...]] = []
    counter = 0
    for mode, compression, pub, seq, count in specs:
        writer = xlog.XlogBlockWriter(mode, compression, pub)  # type: ignore[arg-type]
        chunk = [line(counter + k) for k in range(count)]
        counter += count
        encoded = writer.encode_block(chunk, seq, 12, 12)
        blocks.append((len(data), encoded[73:-1]))
        lines.append(tuple(chunk))
        data += encoded
    return data, tuple(blocks), tuple(lines)


def collect(data: bytes) -> tuple[list[xlog.XlogBlock], list[xlog.XlogDamage]]:
    """All blocks and damage reports of ``data``."""
    damage: list[xlog.XlogDamage] = []
    return list(xlog.iter_blocks(data, damage.append)), damage


# ----------------------------------------------------------------- constants, layout


def test_magic_numbers_match_tencent_log_magic_num_h() -> None:
    """The start magics have the values of Tencent's log_magic_num.h and decoders."""
    assert (xlog.MAGIC_SYNC_ZLIB, xlog.MAGIC_ASYNC_ZLIB) == (0x06, 0x07)
    assert (xlog.MAGIC_SYNC_NO_CRYPT_ZLIB, xlog.MAGIC_ASYNC_NO_CRYPT_ZLIB) == (0x08, 0x09)
    assert (xlog.MAGIC_SYNC_ZSTD, xlog.MAGIC_SYNC_NO_CRYPT_ZSTD) == (0x0A, 0x0B)
    assert (xlog.MAGIC_ASYNC_ZSTD, xlog.MAGIC_ASYNC_NO_CRYPT_ZSTD) == (0x0C, 0x0D)
    assert (xlog.MAGIC_LEGACY_SYNC, xlog.MAGIC_LEGACY_COMPRESS) == (0x03, 0x04)
    assert (xlog.MAGIC_LEGACY_ASYNC, xlog.MAGIC_END) == (0x05, 0x00)


def test_header_sizes_match_log_crypt_get_header_len() -> None:
    """Headers are 1+2+1+1+4+64 = 73 bytes, legacy ones 1+2+1+1+4+4 = 13 bytes."""
    assert xlog._HEADER.size == 73
    assert xlog._LEGACY_HEADER.size == 13


def test_block_fields_are_read_from_the_header() -> None:
    """iter_blocks reports magic, seq, hours, length and client key as written."""
    writer = xlog.XlogBlockWriter("async", "zstd", TENCENT_PUB)
    data = writer.encode_block([line(1)], 77, 9, 10)
    (block,) = xlog.iter_blocks(data)
    assert (block.offset, block.magic, block.seq) == (0, xlog.MAGIC_ASYNC_ZSTD, 77)
    assert (block.begin_hour, block.end_hour) == (9, 10)
    assert block.length == len(data) - 74 == len(block.payload)
    assert block.client_pubkey == writer.client_pubkey != bytes(64)
    assert block.end == len(data)
    assert block.encrypted


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("mode", "compression", "crypt", "magic"),
    [
        ("sync", "zlib", True, 0x06),
        ("async", "zlib", True, 0x07),
        ("sync", "zlib", False, 0x08),
        ("async", "zlib", False, 0x09),
        ("sync", "zstd", True, 0x0A),
        ("sync", "zstd", False, 0x0B),
        ("async", "zstd", True, 0x0C),
        ("async", "zstd", False, 0x0D),
    ],
)
def test_writer_round_trips_every_magic(
    mode: str, compression: str, crypt: bool, magic: int
) -> None:
    """Every mode/compression/crypt combination gets its magic and reads back intact."""
    writer = xlog.XlogBlockWriter(
        mode,  # type: ignore[arg-type]
        compression,  # type: ignore[arg-type]
        TENCENT_PUB if crypt else None,
    )
    assert writer.magic == magic
    first = [line(i) for i in range(40)]
    second = [line(i, "again") for i in range(5)]
    if mode == "sync":  # xlog: seq 0 and one hour for sync blocks
        data = writer.encode_block(first, 0, 23, 23) + writer.encode_block(second, 0, 0, 0)
    else:
        data = writer.encode_block(first, 1, 23, 23) + writer.encode_block(second, 2, 23, 0)
    damage: list[xlog.XlogDamage] = []
    assert list(xlog.iter_lines(data, server_key(), damage.append)) == text_of(first + second)
    assert damage == []
    assert [b.magic for b in xlog.iter_blocks(data)] == [magic, magic]


def test_sync_blocks_are_plain_text_even_with_a_key() -> None:
    """Like CryptSyncLog, sync blocks hold the line verbatim and need no private key."""
    writer = xlog.XlogBlockWriter("sync", "zlib", TENCENT_PUB)
    data = writer.encode_block([line(5)], 0, 1, 1)
    (block,) = xlog.iter_blocks(data)
    assert block.payload == line(5)
    assert block.client_pubkey == writer.client_pubkey
    assert xlog.decode_block(block) == line(5).decode()


def test_async_payload_is_raw_deflate_sync_flushed_per_line() -> None:
    """An unencrypted zlib block is raw deflate, each line ending on a sync-flush marker."""
    writer = xlog.XlogBlockWriter("async", "zlib")
    (block,) = xlog.iter_blocks(writer.encode_block([line(1), line(2)], 1, 0, 0))
    assert block.payload.endswith(b"\x00\x00\xff\xff")
    assert zlib.decompressobj(-15).decompress(block.payload) == line(1) + line(2)


def test_async_zstd_payload_is_one_unterminated_frame() -> None:
    """An unencrypted zstd block is one zstd frame, flushed but never ended."""
    writer = xlog.XlogBlockWriter("async", "zstd")
    (block,) = xlog.iter_blocks(writer.encode_block([line(1), line(2)], 1, 0, 0))
    assert block.payload.startswith(b"\x28\xb5\x2f\xfd")
    params = zstandard.get_frame_parameters(block.payload)
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert params.window_size == 1 << 16


def test_encrypted_payload_is_tea_over_the_compressed_stream() -> None:
    """An encrypted block's payload decrypts, with the ECDH key, to raw deflate."""
    writer = xlog.XlogBlockWriter("async", "zlib", TENCENT_PUB)
    (block,) = xlog.iter_blocks(writer.encode_block([line(1)] * 3, 1, 0, 0))
    tea_key = server_key().tea_key(block.client_pubkey)
    plain = xlog.tea_decrypt(block.payload, tea_key)
    tail = len(block.payload) % 8
    assert plain[len(plain) - tail :] == block.payload[len(plain) - tail :]
    assert zlib.decompressobj(-15).decompress(plain) == line(1) * 3


def test_ecdh_secret_is_the_shared_x_coordinate() -> None:
    """The TEA key is the first 16 bytes of the ECDH X coordinate, from either side."""
    writer = xlog.XlogBlockWriter("async", "zstd", TENCENT_PUB)
    client_point = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256K1(), b"\x04" + writer.client_pubkey
    )
    private = ec.derive_private_key(int(TENCENT_PRIV, 16), ec.SECP256K1())
    shared_x = private.exchange(ec.ECDH(), client_point)
    assert server_key().tea_key(writer.client_pubkey) == shared_x[:16]
    assert writer._tea_key == shared_x[:16]


line_bodies = st.lists(
    st.text(st.characters(exclude_characters="\n", exclude_categories=["Cs"]), max_size=80),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    bodies=line_bodies,
    mode=st.sampled_from(["async", "sync"]),
    compression=st.sampled_from(["zlib", "zstd"]),
    crypt=st.booleans(),
)
def test_any_lines_round_trip(bodies: list[str], mode: str, compression: str, crypt: bool) -> None:
    """Any text without newlines comes back line for line through writer and reader."""
    writer = xlog.XlogBlockWriter(
        mode,  # type: ignore[arg-type]
        compression,  # type: ignore[arg-type]
        TENCENT_PUB if crypt else None,
    )
    seq = 0 if mode == "sync" else 1
    data = writer.encode_block([body.encode() for body in bodies], seq, 0, 0)
    assert list(xlog.iter_lines(data, server_key())) == bodies


def test_only_newline_splits_lines() -> None:
    """Carriage returns and other separators inside a message do not split the line."""
    writer = xlog.XlogBlockWriter("async", "zlib")
    data = writer.encode_block([b"a\rb\x0bc\x1cd", b"e"], 1, 0, 0)
    assert list(xlog.iter_lines(data)) == ["a\rb\x0bc\x1cd", "e"]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    """Bytes that are not UTF-8 come out as replacement characters."""
    writer = xlog.XlogBlockWriter("sync", "zlib")
    assert list(xlog.iter_lines(writer.encode_block([b"bad \xff byte"], 0, 0, 0))) == [
        "bad \ufffd byte"
    ]


def test_next_seq_wraps_past_zero() -> None:
    """Async seq numbers run 1..65535 and wrap to 1, never 0, like __GetSeq."""
    assert xlog.next_xlog_seq(0) == 1
    assert xlog.next_xlog_seq(41) == 42
    assert xlog.next_xlog_seq(65535) == 1


# ----------------------------------------------------------------- TEA


def reference_tea(v0: int, v1: int, key: tuple[int, int, int, int], rounds: int) -> tuple[int, int]:
    """TEA encipher written from the paper's description, one step per line."""
    k0, k1, k2, k3 = key
    total = 0
    for _ in range(rounds):
        total = (total + DELTA) % 2**32
        v0 = (v0 + ((((v1 * 16) + k0) ^ (v1 + total) ^ ((v1 // 32) + k1)) % 2**32)) % 2**32
        v1 = (v1 + ((((v0 * 16) + k2) ^ (v0 + total) ^ ((v0 // 32) + k3)) % 2**32)) % 2**32
    return v0, v1


def test_reference_tea_matches_the_published_32_round_vector() -> None:
    """The test's reference TEA gives the well-known 41ea3a0a 94baa940 for zero input."""
    assert reference_tea(0, 0, (0, 0, 0, 0), 32) == (0x41EA3A0A, 0x94BAA940)


@pytest.mark.parametrize(
    ("key", "plain", "expected"),
    [
        # Key bytes 00..0f read as little-endian words 0x03020100, 0x07060504, ...
        (bytes(range(16)), b"mmaplog!", "0eb6a4e5ef05078c"),
        (bytes(16), bytes(8), "98f789a883802d18"),
    ],
)
def test_tea_matches_hand_computed_16_round_vectors(
    key: bytes, plain: bytes, expected: str
) -> None:
    """xlog's TEA is 16 rounds over two little-endian words, checked against the reference."""
    k0, k1, k2, k3 = struct.unpack("<4I", key)
    p0, p1 = struct.unpack("<2I", plain)
    v0, v1 = reference_tea(p0, p1, (k0, k1, k2, k3), 16)
    assert struct.pack("<2I", v0, v1).hex() == expected
    assert xlog.tea_encrypt(plain, key).hex() == expected
    assert xlog.tea_decrypt(bytes.fromhex(expected), key) == plain


def test_tea_leaves_the_tail_in_clear() -> None:
    """The last len % 8 bytes are not encrypted, as in LogCrypt::CryptAsyncLog."""
    data = b"0123456789abcdefXYZ"
    out = xlog.tea_encrypt(data, bytes(range(16)))
    assert out[16:] == b"XYZ" and out[:16] != data[:16]
    assert xlog.tea_encrypt(b"short", bytes(16)) == b"short"


@given(data=st.binary(max_size=200), key=st.binary(min_size=16, max_size=16))
def test_tea_decrypt_inverts_encrypt(data: bytes, key: bytes) -> None:
    """Decrypting an encrypted buffer gives the original back."""
    assert xlog.tea_decrypt(xlog.tea_encrypt(data, key), key) == data


def test_tea_rejects_a_key_that_is_not_16_bytes() -> None:
    """A TEA key of the wrong size is a ConfigError."""
    with pytest.raises(ConfigError, match="16 bytes"):
        xlog.tea_encrypt(b"12345678", b"short")


# ----------------------------------------------------------------- keys


def test_tencent_sample_private_key_gives_its_public_key() -> None:
    """Tencent's sample key pair agrees: secp256k1, public key written as hex X||Y."""
    assert server_key().public_key_hex == TENCENT_PUB
    assert server_key().private_key_hex() == TENCENT_PRIV


def test_generated_keypair_has_gen_key_py_shape() -> None:
    """A generated pair is 64 + 128 hex characters and the halves belong together."""
    private_hex, public_hex = xlog.generate_xlog_keypair()
    assert len(private_hex) == 64 and len(public_hex) == 128
    assert xlog.load_xlog_private_key(private_hex).public_key_hex == public_hex
    writer = xlog.XlogBlockWriter("async", "zlib", public_hex)
    data = writer.encode_block([line(1)], 1, 0, 0)
    assert list(xlog.iter_lines(data, xlog.load_xlog_private_key(private_hex))) == text_of(
        [line(1)]
    )


def test_pem_private_key_loads() -> None:
    """A PEM secp256k1 key, as text or bytes, loads to the same key as its hex."""
    private = ec.derive_private_key(int(TENCENT_PRIV, 16), ec.SECP256K1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert xlog.load_xlog_private_key(pem).public_key_hex == TENCENT_PUB
    assert xlog.load_xlog_private_key(pem.decode()).public_key_hex == TENCENT_PUB
    assert xlog.load_xlog_private_key(f"  {TENCENT_PRIV.upper()}\n").public_key_hex == TENCENT_PUB


def pem_of(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    """PEM text of ``key``, optionally password-protected."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "zz" * 32,
        "00" * 32,
        "ff" * 32,
        TENCENT_PRIV + "00",
        b"\xff" * 64,
        "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----",
        pem_of(ec.generate_private_key(ec.SECP256R1())),
        pem_of(ec.generate_private_key(ec.SECP256K1()), b"secret"),
    ],
)
def test_bad_private_keys_are_config_errors(bad: str | bytes) -> None:
    """Anything but a usable secp256k1 key is a ConfigError with a one-line message."""
    with pytest.raises(ConfigError) as info:
        xlog.load_xlog_private_key(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "batch"}, "mode"),
        ({"compression": "lz4"}, "compression"),
        ({"public_key_hex": "ab" * 10}, "128 hex"),
        ({"public_key_hex": "00" * 64}, "not a point"),
        ({"zstd_level": 0}, "zstd level"),
    ],
)
def test_writer_rejects_bad_options(kwargs: dict[str, object], match: str) -> None:
    """Bad writer options are ConfigErrors (xlog itself silently drops a bad key)."""
    with pytest.raises(ConfigError, match=match):
        xlog.XlogBlockWriter(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seq", "begin", "end"), [(-1, 0, 0), (65536, 0, 0), (1, 24, 0), (1, 0, -1)]
)
def test_writer_rejects_out_of_range_header_fields(seq: int, begin: int, end: int) -> None:
    """A seq outside 0-65535 or an hour outside 0-23 is a ConfigError."""
    with pytest.raises(ConfigError):
        xlog.XlogBlockWriter().encode_block([b"x"], seq, begin, end)


@pytest.mark.parametrize(
    ("mode", "seq", "begin", "end"), [("sync", 1, 0, 0), ("sync", 0, 1, 2), ("async", 0, 0, 0)]
)
def test_writer_keeps_xlog_seq_conventions(mode: str, seq: int, begin: int, end: int) -> None:
    """Sync blocks need seq 0 and one hour, async blocks a seq above 0, as xlog writes them."""
    with pytest.raises(ConfigError, match="seq"):
        xlog.XlogBlockWriter(mode).encode_block([b"x"], seq, begin, end)  # type: ignore[arg-type]


def test_writer_refuses_an_empty_block() -> None:
    """Like xlog, the writer never produces a block without lines."""
    with pytest.raises(ConfigError, match="at least one line"):
        xlog.XlogBlockWriter().encode_block([], 1, 0, 0)


# ----------------------------------------------------------------- key errors


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_missing_key_raises_need_key(compression: str) -> None:
    """An encrypted block without a private key raises NeedKeyError, also from iter_lines."""
    writer = xlog.XlogBlockWriter("async", compression, TENCENT_PUB)  # type: ignore[arg-type]
    data = writer.encode_block([line(1)], 1, 0, 0)
    (block,) = xlog.iter_blocks(data)
    with pytest.raises(NeedKeyError):
        xlog.decode_block(block)
    with pytest.raises(NeedKeyError):
        list(xlog.iter_lines(data))


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_wrong_key_is_a_decryption_error(compression: str) -> None:
    """With another server's key, decoding raises KeyMismatchError or DecryptionError."""
    writer = xlog.XlogBlockWriter("async", compression, TENCENT_PUB)  # type: ignore[arg-type]
    (block,) = xlog.iter_blocks(writer.encode_block([line(i) for i in range(30)], 1, 0, 0))
    for _ in range(8):
        wrong = xlog.load_xlog_private_key(xlog.generate_xlog_keypair()[0])
        with pytest.raises((KeyMismatchError, DecryptionError)):
            xlog.decode_block(block, wrong)


def test_wrong_key_in_iter_lines_is_reported_and_skipped() -> None:
    """iter_lines reports a block it cannot decrypt and still yields the others."""
    plain = xlog.XlogBlockWriter("async", "zlib").encode_block([line(1)], 1, 0, 0)
    secret = xlog.XlogBlockWriter("async", "zstd", TENCENT_PUB).encode_block(
        [line(i) for i in range(20)], 2, 0, 0
    )
    wrong = xlog.load_xlog_private_key(xlog.generate_xlog_keypair()[0])
    damage: list[xlog.XlogDamage] = []
    assert list(xlog.iter_lines(plain + secret, wrong, damage.append)) == text_of([line(1)])
    assert [(d.start, d.end) for d in damage] == [(len(plain), len(plain + secret))]


def test_client_key_not_on_the_curve_is_corruption() -> None:
    """An encrypted block whose header key is not a curve point is a CorruptionError."""
    data = bytearray(
        xlog.XlogBlockWriter("async", "zlib", TENCENT_PUB).encode_block([b"x"], 1, 0, 0)
    )
    data[9:73] = bytes(64)
    (block,) = xlog.iter_blocks(bytes(data))
    with pytest.raises(CorruptionError, match="not a secp256k1 point"):
        xlog.decode_block(block, server_key())


# ----------------------------------------------------------------- damage


def test_truncation_at_every_offset_yields_a_prefix() -> None:
    """A file cut anywhere yields a prefix of its blocks and lines, never an invented one."""
    data, blocks, lines = sample()
    all_lines = [text for chunk in lines for text in text_of(list(chunk))]
    ends = [offset + 73 + len(payload) + 1 for offset, payload in blocks]
    for cut in range(len(data) + 1):
        got, damage = collect(data[:cut])
        found = [(b.offset, b.payload) for b in got]
        complete = sum(end <= cut for end in ends)
        assert found == list(blocks[: len(found)]), cut
        assert len(found) >= complete, cut
        assert all(d.start < d.end <= cut for d in damage if "seq gap" not in d.reason)
        text = list(xlog.iter_lines(data[:cut], server_key()))
        assert text == all_lines[: len(text)], cut
        assert len(text) >= sum(len(chunk) for chunk in lines[:complete]), cut


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_one_flipped_byte_keeps_every_other_block(data: st.DataObject) -> None:
    """After any single byte flip, every block not containing it is still found and decoded."""
    raw, blocks, lines = sample()
    where = data.draw(st.integers(0, len(raw) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(raw)
    damaged[where] ^= flip
    got, _damage = collect(bytes(damaged))
    by_offset = {b.offset: b for b in got}
    for (offset, payload), chunk in zip(blocks, lines, strict=True):
        if offset <= where < offset + 73 + len(payload) + 1:
            continue
        assert offset in by_offset, (where, flip, offset)
        block = by_offset[offset]
        assert block.payload == payload
        assert xlog.decode_block(block, server_key()) == b"".join(chunk).decode()
    list(xlog.iter_lines(bytes(damaged), server_key(), lambda _d: None))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=3))))
def test_random_bytes_raise_only_mmaplog_errors(
    noise: bytes, splices: list[tuple[int, bytes]]
) -> None:
    """Random bytes, alone or spliced into a real file, raise nothing but mmaplog errors."""
    raw = bytearray(sample()[0])
    for where, chunk in splices:
        at = where % (len(raw) + 1)
        raw[at : at + len(chunk)] = chunk
    for candidate in (noise, bytes(raw), noise + bytes(raw), bytes(raw) + noise):
        xlog.looks_like_xlog(candidate)
        list(xlog.iter_lines(candidate, server_key(), lambda _d: None))
        with contextlib.suppress(MmapLogError):
            list(xlog.iter_lines(candidate))


# Garbage that cannot hold a block: no start magic byte at all.
garbage_bytes = st.binary(min_size=1, max_size=300).map(
    lambda raw: bytes(b for b in raw if not 0x03 <= b <= 0x0D) or b"!"
)


@settings(max_examples=100, deadline=None)
@given(garbage=st.lists(garbage_bytes, min_size=6, max_size=6))
def test_garbage_between_blocks_is_skipped_and_reported(garbage: list[bytes]) -> None:
    """Garbage before, between and after blocks is reported; all lines still come out."""
    raw, blocks, lines = sample()
    pieces = [raw[offset : offset + 73 + len(payload) + 1] for offset, payload in blocks]
    data = garbage[0] + b"".join(
        piece + junk for piece, junk in zip(pieces, garbage[1:], strict=True)
    )
    damage: list[xlog.XlogDamage] = []
    got = list(xlog.iter_lines(data, server_key(), damage.append))
    assert got == [text for chunk in lines for text in text_of(list(chunk))]
    skipped = sum(d.end - d.start for d in damage)
    # Zeros after the last block are a cache's fill, not damage.
    assert skipped == sum(map(len, garbage[:-1])) + len(garbage[-1].rstrip(b"\x00"))
    assert all("seq gap" not in d.reason for d in damage)


def test_garbage_range_is_reported_exactly() -> None:
    """A run of garbage between two blocks is reported as exactly that byte range."""
    writer = xlog.XlogBlockWriter("async", "zlib")
    first = writer.encode_block([line(1)], 1, 0, 0)
    second = writer.encode_block([line(2)], 2, 0, 0)
    junk = b"garbage!" * 10
    damage: list[xlog.XlogDamage] = []
    lines = list(xlog.iter_lines(first + junk + second, on_damage=damage.append))
    assert lines == text_of([line(1), line(2)])
    assert [(d.start, d.end) for d in damage] == [(len(first), len(first) + len(junk))]
    assert "0x67 is not an xlog start magic" in damage[0].reason


def test_leading_garbage_needs_a_confirmed_block() -> None:
    """Reading starts at the first block confirmed by the one after it."""
    data, blocks, _lines = sample()
    got, damage = collect(b"\x09junk\x00\x00" + data)
    assert [(b.offset - 7, b.payload) for b in got] == list(blocks)
    assert [(d.start, d.end) for d in damage] == [(0, 7)]


def test_length_field_pointing_into_the_next_block_is_detected() -> None:
    """A corrupted length that lands on a zero inside the next header does not swallow it."""
    writer = xlog.XlogBlockWriter("sync", "zlib")
    pieces = [writer.encode_block([line(i)], 0, 0, 0) for i in range(3)]
    data = bytearray(b"".join(pieces))
    # Point block 0's end at a zero byte in block 1's (all-zero) client key field.
    struct.pack_into("<I", data, 5, len(pieces[0]) - 74 + 20)
    got, damage = collect(bytes(data))
    assert [b.offset for b in got] == [len(pieces[0]), len(pieces[0]) + len(pieces[1])]
    assert len(damage) == 1 and "overlaps the next block" in damage[0].reason
    assert (damage[0].start, damage[0].end) == (0, len(pieces[0]))


def test_huge_length_field_does_not_allocate() -> None:
    """A length of 4 GiB in a small input is damage, found without a big allocation."""
    writer = xlog.XlogBlockWriter("async", "zlib")
    good = writer.encode_block([line(1)], 1, 0, 0)
    huge = bytearray(good)
    struct.pack_into("<I", huge, 5, 0xFFFFFFFF)
    data = bytes(huge) + good
    tracemalloc.start()
    try:
        got, damage = collect(data)
        lines = list(xlog.iter_lines(data))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    assert [b.offset for b in got] == [len(good)]
    assert lines == text_of([line(1)])
    assert "runs past the end" in damage[0].reason


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_decompression_is_capped_per_block(compression: str) -> None:
    """A block that inflates beyond 64 MiB is corruption, not a 4 GiB string."""
    zeros = bytes(xlog.MAX_DECODED_BLOCK_SIZE + 1024)
    if compression == "zlib":
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = deflater.compress(zeros) + deflater.flush(zlib.Z_SYNC_FLUSH)
        magic = xlog.MAGIC_ASYNC_NO_CRYPT_ZLIB
    else:
        stream = zstandard.ZstdCompressor().compressobj()
        payload = stream.compress(zeros) + stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        magic = xlog.MAGIC_ASYNC_NO_CRYPT_ZSTD
    del zeros
    block = xlog.XlogBlock(0, magic, 1, 0, 0, len(payload), bytes(64), payload)
    with pytest.raises(CorruptionError, match="more than"):
        xlog.decode_block(block)


def test_damaged_compressed_payload_is_corruption() -> None:
    """An unencrypted block whose compressed bytes are garbage raises CorruptionError."""
    for magic in (xlog.MAGIC_ASYNC_NO_CRYPT_ZLIB, xlog.MAGIC_ASYNC_NO_CRYPT_ZSTD):
        block = xlog.XlogBlock(100, magic, 1, 0, 0, 8, bytes(64), b"\xff" * 8)
        with pytest.raises(CorruptionError, match="offset 100"):
            xlog.decode_block(block)


# ----------------------------------------------------------------- seq


def test_seq_gap_is_reported() -> None:
    """Missing async seq numbers are reported with the range that is missing."""
    writer = xlog.XlogBlockWriter("async", "zstd")
    data = b"".join(writer.encode_block([line(s)], s, 0, 0) for s in (1, 2, 5, 6))
    damage: list[xlog.XlogDamage] = []
    assert len(list(xlog.iter_lines(data, on_damage=damage.append))) == 4
    assert [d.reason for d in damage] == ["seq gap: blocks with seq 3-4 are missing"]


def test_sync_blocks_restarts_and_wraps_are_not_gaps() -> None:
    """Seq 0 (sync), a restart at 1 and the 65535 -> 1 wrap are not reported."""
    async_writer = xlog.XlogBlockWriter("async", "zlib")
    sync_writer = xlog.XlogBlockWriter("sync", "zlib")
    data = b"".join(
        [
            async_writer.encode_block([line(1)], 65534, 0, 0),
            sync_writer.encode_block([line(2)], 0, 0, 0),
            async_writer.encode_block([line(3)], 65535, 0, 0),
            async_writer.encode_block([line(4)], 1, 0, 0),
            async_writer.encode_block([line(5)], 2, 0, 0),
            async_writer.encode_block([line(6)], 1, 0, 0),
        ]
    )
    _got, damage = collect(data)
    assert damage == []


# ----------------------------------------------------------------- cache files


def test_mmap3_cache_block_then_zeros_decodes() -> None:
    """A .mmap3 image (one block, then the rest of the 150 KiB buffer zero) decodes."""
    writer = xlog.XlogBlockWriter("async", "zlib", TENCENT_PUB)
    lines = [line(i) for i in range(25)]
    block = writer.encode_block(lines, 7, 3, 3)
    cache = block[:-1] + bytes(150 * 1024 - len(block) + 1)
    damage: list[xlog.XlogDamage] = []
    mapped = memoryview(bytearray(cache))  # what the cache module hands over
    assert list(xlog.iter_lines(mapped, server_key(), damage.append)) == text_of(lines)
    assert damage == []
    assert xlog.looks_like_xlog(mapped)
    mapped.release()  # iter_lines released its own view: no BufferError


def test_mmap3_written_mid_line_recovers_the_recorded_lines() -> None:
    """Bytes compressed past the recorded length (crash mid-write) are reported, not fatal."""
    writer = xlog.XlogBlockWriter("async", "zstd")
    block = writer.encode_block([line(1), line(2)], 3, 0, 0)
    cache = block[:-1] + b"\x17unaccounted" + bytes(4096)
    damage: list[xlog.XlogDamage] = []
    assert list(xlog.iter_lines(cache, on_damage=damage.append)) == text_of([line(1), line(2)])
    assert [(d.start, d.end) for d in damage] == [(len(block) - 1, len(block) + 11)]
    assert "no end magic" in damage[0].reason


def test_clean_mmap3_is_empty_and_quiet() -> None:
    """An all-zero cache (xlog clears it on close) holds no lines and no damage."""
    assert collect(bytes(150 * 1024)) == ([], [])
    assert not xlog.looks_like_xlog(bytes(150 * 1024))


# ----------------------------------------------------------------- legacy, sniffing


def legacy_block(magic: int, payload: bytes, seq: int = 1) -> bytes:
    """A pre-2016 block: 13-byte header with a 4-byte zero key field."""
    return struct.pack("<BHBBI4s", magic, seq, 5, 5, len(payload), bytes(4)) + payload + b"\x00"


def test_legacy_blocks_decode_like_the_tencent_script() -> None:
    """Magics 0x03 (plain), 0x04 (deflate) and 0x05 (uint16-prefixed deflate chunks) decode."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunks = [deflater.compress(line(i)) + deflater.flush(zlib.Z_SYNC_FLUSH) for i in range(3)]
    chunked = b"".join(struct.pack("<H", len(c)) + c for c in chunks)
    data = (
        legacy_block(0x03, line(0), 0)
        + legacy_block(0x04, b"".join(chunks), 1)
        + legacy_block(0x05, chunked, 2)
    )
    blocks, damage = collect(data)
    assert [len(b.client_pubkey) for b in blocks] == [4, 4, 4] and damage == []
    expected = text_of([line(0)] + [line(i) for i in range(3)] * 2)
    assert list(xlog.iter_lines(data)) == expected


def test_looks_like_xlog_sniffs_the_first_header() -> None:
    """looks_like_xlog accepts writer output, even torn, and rejects other bytes."""
    data = sample()[0]
    assert xlog.looks_like_xlog(data)
    assert xlog.looks_like_xlog(data[:80])
    assert not xlog.looks_like_xlog(b"")
    assert not xlog.looks_like_xlog(data[:20])
    assert not xlog.looks_like_xlog(b"[I][2026-11-23 +8.0 12:00:00.123] plain text log")
    assert not xlog.looks_like_xlog(b"\x09\x01\x00\x30\x30" + bytes(100))
