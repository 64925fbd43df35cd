"""Tests of mmaplog._crypto: key loading, the sealing scheme and its failure modes."""

from __future__ import annotations

import base64
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from mmaplog._crypto import (
    KEY_SIZE,
    TAG_SIZE,
    WHOLE_BLOCK_INDEX,
    Opener,
    Sealer,
    _nonce,
    generate_keypair,
    load_private_key,
    load_public_key,
    public_key_text,
)
from mmaplog.exceptions import ConfigError, DecryptionError

# ---------------------------------------------------------------------------
# Helpers and strategies

_P = 2**255 - 19

# RFC 7748 section 5 / libsodium's blacklist: X25519 with any of these gives an
# all-zero shared secret. Order-8 points, then 0, 1, p-1 and the non-canonical p, p+1.
_LOW_ORDER_INTS = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    _P - 1,
    _P,
    _P + 1,
]
_LOW_ORDER = [n.to_bytes(32, "little") for n in _LOW_ORDER_INTS]
# X25519 ignores the top bit, so the same points with it set are just as bad.
_LOW_ORDER += [p[:31] + bytes([p[31] | 0x80]) for p in _LOW_ORDER]

seqs = st.integers(min_value=0, max_value=2**64 - 1)
indexes = st.integers(min_value=0, max_value=2**32 - 1)
private_keys = (
    st.binary(min_size=32, max_size=32).filter(any).map(X25519PrivateKey.from_private_bytes)
)


def _raw_public(private: X25519PrivateKey) -> bytes:
    """Return the 32 raw bytes of the public half of ``private``."""
    return private.public_key().public_bytes_raw()


def _pem_public(private: X25519PrivateKey) -> bytes:
    """Return the public half of ``private`` as a PEM block."""
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pem_private(private: X25519PrivateKey | Ed25519PrivateKey, password: bytes | None) -> bytes:
    """Return ``private`` as a PKCS8 PEM block, encrypted when a password is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.fixture
def keypair() -> tuple[X25519PrivateKey, bytes]:
    """A fresh recipient key pair: the private key and its raw public key."""
    private = X25519PrivateKey.generate()
    return private, _raw_public(private)


# ---------------------------------------------------------------------------
# Constants and the nonce layout


def test_constants() -> None:
    """The sizes and the reserved index are the ones docs/security.md specifies."""
    assert (KEY_SIZE, TAG_SIZE, WHOLE_BLOCK_INDEX) == (32, 16, 0xFFFFFFFF)


def test_nonce_layout() -> None:
    """A nonce is seq as uint64 little-endian followed by index as uint32 little-endian."""
    assert _nonce(0x0102030405060708, 0x0A0B0C0D) == bytes.fromhex("08070605040302010d0c0b0a")
    assert _nonce(3, WHOLE_BLOCK_INDEX) == b"\x03" + bytes(7) + b"\xff" * 4


@given(st.lists(st.tuples(seqs, indexes), unique=True, max_size=50))
def test_nonce_is_injective(pairs: list[tuple[int, int]]) -> None:
    """Distinct (seq, index) pairs always give distinct 12-byte nonces."""
    nonces = [_nonce(seq, index) for seq, index in pairs]
    assert all(len(n) == 12 for n in nonces)
    assert len(set(nonces)) == len(nonces)


# ---------------------------------------------------------------------------
# Round trips and the scheme itself


@given(private_keys, seqs, indexes, st.binary(max_size=300), st.binary(max_size=40))
def test_round_trip(
    private: X25519PrivateKey, seq: int, index: int, plaintext: bytes, aad: bytes
) -> None:
    """What a Sealer seals for a public key, an Opener with its private key opens unchanged."""
    sealer = Sealer(_raw_public(private))
    sealed = sealer.seal(seq, index, plaintext, aad)
    assert len(sealed) == len(plaintext) + TAG_SIZE
    assert Opener(private).open(sealer.ephemeral_public, seq, index, sealed, aad) == plaintext


@given(private_keys, seqs, indexes, st.binary(max_size=100), st.binary(max_size=40))
def test_scheme_matches_spec(
    private: X25519PrivateKey, seq: int, index: int, plaintext: bytes, aad: bytes
) -> None:
    """Sealed chunks open with X25519, HKDF-SHA256 and ChaCha20-Poly1305 exactly as documented."""
    recipient = _raw_public(private)
    sealer = Sealer(recipient)
    sealed = sealer.seal(seq, index, plaintext, aad)
    eph = sealer.ephemeral_public
    shared = private.exchange(X25519PublicKey.from_public_bytes(eph))
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=eph + recipient,
        info=b"mmaplog v1 block key",
    ).derive(shared)
    nonce = struct.pack("<QI", seq, index)
    assert ChaCha20Poly1305(key).decrypt(nonce, sealed, aad) == plaintext


def test_whole_block_index_round_trips(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    """A whole-block seal opens at the reserved index and not at chunk index 0."""
    private, public = keypair
    sealer = Sealer(public)
    sealed = sealer.seal(9, WHOLE_BLOCK_INDEX, b"whole block", b"aad")
    opener = Opener(private)
    assert opener.open(sealer.ephemeral_public, 9, WHOLE_BLOCK_INDEX, sealed, b"aad") == (
        b"whole block"
    )
    with pytest.raises(DecryptionError, match=r"chunk 0\b"):
        opener.open(sealer.ephemeral_public, 9, 0, sealed, b"aad")


def test_buffers_are_accepted(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    """Keys, plaintext, data and AAD may be memoryviews or bytearrays, as a parser gives."""
    private, public = keypair
    sealer = Sealer(memoryview(bytearray(public)))
    sealed = sealer.seal(1, 2, memoryview(b"record"), bytearray(b"aad"))
    opened = Opener(private).open(
        memoryview(sealer.ephemeral_public), 1, 2, memoryview(sealed), memoryview(b"aad")
    )
    assert opened == b"record"


def test_two_sealers_have_different_ephemeral_keys(
    keypair: tuple[X25519PrivateKey, bytes],
) -> None:
    """Each Sealer (session) makes its own ephemeral key, so the same input seals differently."""
    _, public = keypair
    first, second = Sealer(public), Sealer(public)
    assert len(first.ephemeral_public) == KEY_SIZE
    assert first.ephemeral_public != second.ephemeral_public
    assert first.seal(0, 0, b"same", b"aad") != second.seal(0, 0, b"same", b"aad")


@settings(max_examples=50)
@given(st.lists(st.tuples(seqs, indexes), unique=True, min_size=2, max_size=40))
def test_every_seal_in_a_session_uses_its_own_nonce(pairs: list[tuple[int, int]]) -> None:
    """Sealing one plaintext at distinct (seq, index) pairs never repeats a keystream or tag."""
    private = X25519PrivateKey.generate()
    sealer = Sealer(_raw_public(private))
    opener = Opener(private)
    sealed = [sealer.seal(seq, index, b"\x00" * 32, b"aad") for seq, index in pairs]
    # An identical output for identical input would mean a repeated (key, nonce).
    assert len(set(sealed)) == len(sealed)
    for (seq, index), data in zip(pairs, sealed, strict=True):
        assert opener.open(sealer.ephemeral_public, seq, index, data, b"aad") == b"\x00" * 32


def test_sealer_keeps_no_private_key(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    """A Sealer has slots only, none of which holds the ephemeral private key."""
    _, public = keypair
    sealer = Sealer(public)
    assert not hasattr(sealer, "__dict__")
    held = [getattr(sealer, name) for name in Sealer.__slots__]
    assert not any(isinstance(value, X25519PrivateKey) for value in held)
    for value in held:
        owner = getattr(value, "__self__", None)
        assert not isinstance(owner, X25519PrivateKey)


# ---------------------------------------------------------------------------
# Failures to open


def test_wrong_private_key_fails(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    """A chunk sealed for one key does not open with another private key."""
    _, public = keypair
    sealer = Sealer(public)
    sealed = sealer.seal(0, 0, b"secret", b"aad")
    with pytest.raises(DecryptionError, match="authentication failed"):
        Opener(X25519PrivateKey.generate()).open(sealer.ephemeral_public, 0, 0, sealed, b"aad")


def test_every_flipped_byte_fails(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    """Flipping any bit of any byte of the ciphertext or the tag makes opening fail."""
    private, public = keypair
    sealer = Sealer(public)
    sealed = sealer.seal(5, 6, b"forty bytes of log record text, roughly", b"aad")
    opener = Opener(private)
    for position in range(len(sealed)):
        for bit in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[position] ^= bit
            with pytest.raises(DecryptionError):
                opener.open(sealer.ephemeral_public, 5, 6, tampered, b"aad")


@pytest.mark.parametrize(
    "aad",
    [b"", b"aad!", b"aa", b"Aad", b"\x00aad"],
    ids=["empty", "appended", "truncated", "flipped", "prefixed"],
)
def test_changed_aad_fails(keypair: tuple[X25519PrivateKey, bytes], aad: bytes) -> None:
    """A chunk opened with any AAD other than the one it was sealed with fails."""
    private, public = keypair
    sealer = Sealer(public)
    sealed = sealer.seal(0, 0, b"record", b"aad")
    with pytest.raises(DecryptionError):
        Opener(private).open(sealer.ephemeral_public, 0, 0, sealed, aad)


@pytest.mark.parametrize("cut", [0, 1, TAG_SIZE - 1, TAG_SIZE, TAG_SIZE + 5])
def test_truncated_data_fails(keypair: tuple[X25519PrivateKey, bytes], cut: int) -> None:
    """A sealed chunk cut short, even below the tag size, fails with DecryptionError."""
    private, public = keypair
    sealer = Sealer(public)
    sealed = sealer.seal(0, 0, b"a record of some length", b"aad")
    with pytest.raises(DecryptionError):
        Opener(private).open(sealer.ephemeral_public, 0, 0, sealed[:cut], b"aad")


@pytest.mark.parametrize(
    ("seq", "index"),
    [(1, 2), (3, 3), (3, 1), (0, 2), (2**32 + 3, 2), (3, WHOLE_BLOCK_INDEX)],
)
def test_other_position_fails(
    keypair: tuple[X25519PrivateKey, bytes], seq: int, index: int
) -> None:
    """A chunk sealed as (seq 3, index 2) does not open as any other (seq, index)."""
    private, public = keypair
    sealer = Sealer(public)
    sealed = sealer.seal(3, 2, b"record", b"aad")
    with pytest.raises(DecryptionError):
        Opener(private).open(sealer.ephemeral_public, seq, index, sealed, b"aad")


def test_other_session_fails(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    """A chunk opened under another session's ephemeral key fails, so sessions cannot be spliced."""
    private, public = keypair
    first, second = Sealer(public), Sealer(public)
    sealed = first.seal(0, 0, b"record", b"aad")
    with pytest.raises(DecryptionError):
        Opener(private).open(second.ephemeral_public, 0, 0, sealed, b"aad")


@pytest.mark.parametrize("eph", _LOW_ORDER, ids=[p.hex()[:8] + p.hex()[-2:] for p in _LOW_ORDER])
def test_low_order_ephemeral_key_is_a_decryption_error(
    keypair: tuple[X25519PrivateKey, bytes], eph: bytes
) -> None:
    """An all-zero or low-order ephemeral key is a DecryptionError naming the bad key."""
    private, _ = keypair
    with pytest.raises(DecryptionError, match="bad ephemeral key"):
        Opener(private).open(eph, 0, 0, bytes(40), b"aad")


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_wrong_length_ephemeral_key_is_a_decryption_error(
    keypair: tuple[X25519PrivateKey, bytes], size: int
) -> None:
    """An ephemeral key of the wrong length is a DecryptionError naming the bad key."""
    private, _ = keypair
    with pytest.raises(DecryptionError, match="bad ephemeral key"):
        Opener(private).open(b"\x09" * size, 0, 0, bytes(40), b"aad")


def test_bad_session_does_not_spoil_others(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    """After a bad ephemeral key, the same Opener still opens good sessions."""
    private, public = keypair
    sealer = Sealer(public)
    sealed = sealer.seal(0, 0, b"record", b"aad")
    opener = Opener(private)
    with pytest.raises(DecryptionError):
        opener.open(bytes(32), 0, 0, sealed, b"aad")
    assert opener.open(sealer.ephemeral_public, 0, 0, sealed, b"aad") == b"record"


def test_opener_cache_is_bounded_and_transparent(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    """An Opener keeps at most 64 sessions' keys yet opens sessions evicted from its cache."""
    private, public = keypair
    sessions = []
    for _ in range(100):
        sealer = Sealer(public)
        sessions.append((sealer.ephemeral_public, sealer.seal(0, 0, b"r", b"")))
    opener = Opener(private)
    for _ in range(2):
        for eph, sealed in sessions:
            assert opener.open(eph, 0, 0, sealed, b"") == b"r"
    assert len(opener._aeads) == 64


@pytest.mark.parametrize(("seq", "index"), [(-1, 0), (2**64, 0), (0, -1), (0, 2**32)])
def test_out_of_range_position(
    keypair: tuple[X25519PrivateKey, bytes], seq: int, index: int
) -> None:
    """A seq or index beyond uint64/uint32 is a ConfigError to seal, a DecryptionError to open."""
    private, public = keypair
    sealer = Sealer(public)
    with pytest.raises(ConfigError, match="nonce"):
        sealer.seal(seq, index, b"record", b"")
    with pytest.raises(DecryptionError, match="out of range"):
        Opener(private).open(sealer.ephemeral_public, seq, index, bytes(20), b"")


@pytest.mark.parametrize("recipient", [bytes(32), _LOW_ORDER[2], b"\x09" * 31, b"\x09" * 33])
def test_sealer_rejects_unusable_recipient(recipient: bytes) -> None:
    """A Sealer refuses a recipient key of the wrong length or of low order with ConfigError."""
    with pytest.raises(ConfigError, match="recipient public key"):
        Sealer(recipient)


# ---------------------------------------------------------------------------
# Public keys


def _public_forms(private: X25519PrivateKey) -> list[str | bytes]:
    """Every accepted spelling of the public half of ``private``."""
    raw = _raw_public(private)
    text = base64.b64encode(raw).decode()
    pem = _pem_public(private)
    return [
        text,
        f"  {text}\n",
        f"\t{text}\r\n",
        text.encode(),
        f"{text}\n".encode(),
        raw,
        pem,
        pem.decode(),
        b"\n" + pem + b"\n\n",
    ]


def test_public_key_accepted_forms(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    """Base64 text (with or without whitespace, str or bytes), raw bytes and PEM all load."""
    private, public = keypair
    for form in _public_forms(private):
        assert load_public_key(form) == public


def _rejected_public_forms() -> list[tuple[str, object]]:
    """Named values that load_public_key must refuse."""
    key = X25519PrivateKey.generate()
    ed_pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    forms: list[tuple[str, object]] = [
        ("empty str", ""),
        ("empty bytes", b""),
        ("whitespace", "   \n"),
        ("not base64", "this is not a key at all, just some words!!"),
        ("base64 of 31 bytes", base64.b64encode(b"\x09" * 31).decode()),
        ("base64 of 33 bytes", base64.b64encode(b"\x09" * 33).decode()),
        ("urlsafe base64", base64.urlsafe_b64encode(b"\xfb" * 32).decode()),
        ("hex", (b"\x09" * 32).hex()),
        ("raw 31 bytes", b"\x09" * 31),
        ("raw 33 bytes", b"\x09" * 33),
        ("non-ascii bytes", b"\xff" * 44),
        ("zero base64", base64.b64encode(bytes(32)).decode()),
        ("private PEM", _pem_private(key, None).decode()),
        ("private PEM bytes", _pem_private(key, None)),
        ("Ed25519 PEM", ed_pem),
        ("broken PEM", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        ("an int", 42),
        ("None", None),
    ]
    forms += [(f"low order {p.hex()[:8]}", p) for p in _LOW_ORDER]
    forms += [(f"low order b64 {p.hex()[:8]}", base64.b64encode(p).decode()) for p in _LOW_ORDER]
    return forms


@pytest.mark.parametrize(
    "value", [v for _, v in _rejected_public_forms()], ids=[n for n, _ in _rejected_public_forms()]
)
def test_public_key_rejected_forms(value: object) -> None:
    """Anything but a usable X25519 public key is a one-line ConfigError not echoing the input."""
    with pytest.raises(ConfigError, match=r"^public key: expected") as info:
        load_public_key(value)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    if isinstance(value, (str, bytes)) and len(value) >= 8:
        text = value if isinstance(value, str) else value.decode("latin-1")
        for line in text.splitlines():
            if len(line.strip()) >= 8 and not line.startswith("-----"):
                assert line.strip() not in message


def test_private_pem_given_as_public_key_says_so() -> None:
    """Giving the private key where the public key belongs is named, without showing the key."""
    pem, _ = generate_keypair()
    with pytest.raises(ConfigError, match="got a PEM private key") as info:
        load_public_key(pem)
    assert pem.splitlines()[1] not in str(info.value)


@given(st.one_of(st.binary(max_size=120), st.text(max_size=120)))
def test_public_key_fuzz(value: str | bytes) -> None:
    """Arbitrary input either loads as 32 bytes or raises ConfigError, never anything else."""
    try:
        raw = load_public_key(value)
    except ConfigError:
        return
    assert len(raw) == KEY_SIZE


# ---------------------------------------------------------------------------
# Private keys


def test_private_key_accepted_forms(keypair: tuple[X25519PrivateKey, bytes]) -> None:
    """PKCS8 PEM (str or bytes), base64 of the raw key (with whitespace) and raw bytes all load."""
    private, public = keypair
    raw = private.private_bytes_raw()
    text = base64.b64encode(raw).decode()
    pem = _pem_private(private, None)
    forms: list[str | bytes] = [
        pem,
        pem.decode(),
        b"\n" + pem,
        text,
        f" {text}\n",
        text.encode(),
        raw,
    ]
    for form in forms:
        assert _raw_public(load_private_key(form)) == public


def _rejected_private_forms() -> list[tuple[str, object]]:
    """Named values that load_private_key must refuse."""
    key = X25519PrivateKey.generate()
    return [
        ("empty", ""),
        ("not base64", "definitely not a private key, only words"),
        ("base64 of 31 bytes", base64.b64encode(b"\x09" * 31).decode()),
        ("raw 33 bytes", b"\x09" * 33),
        ("zero raw", bytes(32)),
        ("zero base64", base64.b64encode(bytes(32)).decode()),
        ("public PEM", _pem_public(key)),
        ("encrypted PEM", _pem_private(key, b"hunter2")),
        ("Ed25519 PEM", _pem_private(Ed25519PrivateKey.generate(), None)),
        ("broken PEM", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        ("non-ascii", "ключ"),
        ("None", None),
    ]


@pytest.mark.parametrize(
    "value",
    [v for _, v in _rejected_private_forms()],
    ids=[n for n, _ in _rejected_private_forms()],
)
def test_private_key_rejected_forms(value: object) -> None:
    """Anything but a usable unencrypted X25519 private key is a one-line ConfigError."""
    with pytest.raises(ConfigError, match=r"^private key: expected") as info:
        load_private_key(value)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@given(st.one_of(st.binary(max_size=120), st.text(max_size=120)))
def test_private_key_fuzz(value: str | bytes) -> None:
    """Arbitrary input either loads as an X25519 private key or raises ConfigError."""
    try:
        key = load_private_key(value)
    except ConfigError:
        return
    assert isinstance(key, X25519PrivateKey)


# ---------------------------------------------------------------------------
# Key generation


def test_generate_keypair_round_trips() -> None:
    """The generated PEM loads back, matches the generated public key and opens what it seals."""
    pem, public_text = generate_keypair()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert pem.endswith("-----END PRIVATE KEY-----\n")
    private = load_private_key(pem)
    assert public_key_text(private) == public_text
    assert len(base64.b64decode(public_text, validate=True)) == KEY_SIZE
    sealer = Sealer(load_public_key(public_text))
    sealed = sealer.seal(0, 0, b"hello", b"aad")
    assert Opener(private).open(sealer.ephemeral_public, 0, 0, sealed, b"aad") == b"hello"


def test_generated_keypairs_differ() -> None:
    """Two calls to generate_keypair give different keys."""
    first, second = generate_keypair(), generate_keypair()
    assert first[0] != second[0]
    assert first[1] != second[1]
