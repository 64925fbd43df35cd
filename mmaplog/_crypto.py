"""Public-key sealing of log data: X25519 + HKDF-SHA256 + ChaCha20-Poly1305.

This module owns the keys and the AEAD, nothing else: it never touches files,
block layouts or compression. It is pure (bytes in, bytes out), so the format
and the cache can call it from anywhere.

The scheme (``docs/security.md`` is the full description):

* Each handler session makes an *ephemeral* X25519 key pair and computes
  ``shared = X25519(ephemeral_private, recipient_public)``.
* ``key = HKDF-SHA256(length=32, salt=ephemeral_public || recipient_public,
  info=b"mmaplog v1 block key").derive(shared)``, used with ChaCha20-Poly1305.
* The 12-byte nonce is ``seq`` (uint64 LE, the block number in the session)
  followed by ``index`` (uint32 LE, the chunk's index in the block;
  :data:`WHOLE_BLOCK_INDEX` is reserved for a block sealed whole). A nonce is
  therefore unique under one key as long as the caller never repeats a
  ``(seq, index)`` pair within a session; every new session (new handler,
  restart after a crash, forked child) makes a new :class:`Sealer` and so a
  new ephemeral key, hence a new AEAD key.
* The AAD is given by the caller (the block's session id, seq and flags, and
  the recipient key's fingerprint), so a sealed chunk cannot be moved to another
  session, block or position.
* A public key's *fingerprint* is the first 8 bytes of the SHA-256 of its 32 raw
  bytes, shown as ``SHA256:`` and their unpadded base64 (the notation of
  OpenSSH's ``ssh-keygen -l``, truncated as age truncates the SHA-256 of a
  recipient key into a stanza tag). Blocks carry the recipient's, so a reader can
  say which key a log needs (:func:`key_fingerprint`, :func:`fingerprint_text`).

The ephemeral private key is dropped as soon as the AEAD key is derived: the
device cannot decrypt its own logs afterwards. The derived AEAD key does stay
in process memory (inside the ``ChaCha20Poly1305`` object) while the session
runs, so anyone who can read the process memory during the session can read
that session's logs; Python cannot reliably wipe ``bytes`` either.

Deciding "wrong key": ChaCha20-Poly1305 cannot tell a wrong private key from
tampered data, both are a tag failure (:class:`DecryptionError`). Callers
decide the key does not match (:class:`~mmaplog.exceptions.KeyMismatchError`)
when *no* record of a session authenticates; if some do and others do not,
those others were tampered with.

Errors: key loading raises :class:`~mmaplog.exceptions.ConfigError`; opening
raises :class:`~mmaplog.exceptions.DecryptionError`. Nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
import weakref
from collections import OrderedDict
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import _emitpath
from . import _format as fmt
from .exceptions import ConfigError, DecryptionError, MmapLogError

__all__ = [
    "KEY_SIZE",
    "TAG_SIZE",
    "WHOLE_BLOCK_INDEX",
    "Opener",
    "Sealer",
    "fingerprint_text",
    "generate_keypair",
    "key_fingerprint",
    "load_private_key",
    "load_public_key",
    "public_key_fingerprint",
    "public_key_text",
]

#: Size of an X25519 public or private key, and of the derived AEAD key.
KEY_SIZE: Final = 32
#: Size of the Poly1305 tag appended to every sealed chunk.
TAG_SIZE: Final = 16
#: The chunk index reserved for a block sealed whole (on its way to the log file).
WHOLE_BLOCK_INDEX: Final = fmt.WHOLE_BLOCK_INDEX

#: Opener keeps the AEADs of this many sessions (ephemeral keys) at most.
_OPENER_CACHE_SIZE: Final = 64

_HKDF_INFO: Final = b"mmaplog v1 block key"

# Nonce, 12 bytes:
#   0       8        12
#   | seq   | index  |
#   uint64  uint32   (little-endian)
_NONCE: Final = struct.Struct("<QI")

_PEM_BEGIN: Final = "-----BEGIN "

Buffer: TypeAlias = bytes | bytearray | memoryview


# ---------------------------------------------------------------------------
# Keys


def _describe(value: object) -> str:
    """Say what kind of value was given, without echoing any of its content."""
    if isinstance(value, str):
        return f"a str of {len(value)} characters"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes"
    return f"a {type(value).__name__}"


def _as_text(value: str | bytes, what: str, expected: str) -> str:
    """Return ``value`` as ASCII text with surrounding whitespace removed."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("ascii").strip()
        except UnicodeDecodeError:
            pass
    raise ConfigError(f"{what}: expected {expected}; got {_describe(value)}")


def _b64_key(text: str, what: str, expected: str, given: str) -> bytes:
    """Decode the standard base64 of a 32-byte key, or raise ConfigError."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what}: expected {expected}; got {given} that is not base64") from None
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"{what}: expected {expected}; got base64 of {len(raw)} bytes")
    return raw


def _is_low_order(raw: bytes) -> bool:
    """Tell whether ``raw`` is a public key whose X25519 result is all zero.

    Such keys (zero, the other low-order points, their non-canonical encodings)
    give the same shared secret for every private key, so they protect nothing.
    """
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        return True
    return False


_PUBLIC_EXPECTED: Final = (
    "an X25519 public key as 44 characters of base64, 32 raw bytes "
    "or a PEM '-----BEGIN PUBLIC KEY-----' block"
)


def load_public_key(value: str | bytes) -> bytes:
    """Return the 32 raw bytes of an X25519 public key given as text, raw bytes or PEM.

    Accepted: the standard base64 of the 32 raw bytes (what ``mmaplog keygen``
    prints; surrounding whitespace is ignored), the 32 raw bytes themselves, or
    a PEM ``PUBLIC KEY`` block (``str`` or ``bytes``).

    Raises:
        ConfigError: for anything else, including a key of another algorithm,
            a private key, and the all-zero / low-order points that would make
            every session key predictable. The message never contains the key.
    """
    what = "public key"
    if isinstance(value, (bytes, bytearray)) and len(value) == KEY_SIZE:
        raw = bytes(value)
    else:
        text = _as_text(value, what, _PUBLIC_EXPECTED)
        if text.startswith(_PEM_BEGIN):
            raw = _pem_public(text)
        else:
            raw = _b64_key(text, what, _PUBLIC_EXPECTED, _describe(value))
    if _is_low_order(raw):
        raise ConfigError(
            f"{what}: expected a valid X25519 public key; got an all-zero or "
            "low-order point, which would make every session key predictable"
        )
    return raw


def _pem_public(text: str) -> bytes:
    """Return the raw bytes of an X25519 public key in a PEM block."""
    what = "public key"
    if "PRIVATE KEY" in text.split("\n", 1)[0]:
        raise ConfigError(
            f"{what}: expected the public key; got a PEM private key "
            "(keep it off the device, give the base64 public key instead)"
        )
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{what}: expected {_PUBLIC_EXPECTED}; got an unreadable PEM block"
        ) from None
    if not isinstance(key, X25519PublicKey):
        raise ConfigError(f"{what}: expected an X25519 key; got a PEM {type(key).__name__}")
    return key.public_bytes_raw()


_PRIVATE_EXPECTED: Final = (
    "an X25519 private key as an unencrypted PEM '-----BEGIN PRIVATE KEY-----' "
    "block, 44 characters of base64 or 32 raw bytes"
)


def load_private_key(value: str | bytes) -> X25519PrivateKey:
    """Return the X25519 private key given as PKCS8 PEM, base64 of 32 bytes, or raw bytes.

    Raises:
        ConfigError: for anything else (another algorithm, an encrypted PEM,
            a public key, the wrong size, all zero bytes). The message never
            contains key material.
    """
    what = "private key"
    if isinstance(value, (bytes, bytearray)) and len(value) == KEY_SIZE:
        raw = bytes(value)
    else:
        text = _as_text(value, what, _PRIVATE_EXPECTED)
        if text.startswith(_PEM_BEGIN):
            return _pem_private(text)
        raw = _b64_key(text, what, _PRIVATE_EXPECTED, _describe(value))
    if raw == bytes(KEY_SIZE):
        raise ConfigError(f"{what}: expected a random X25519 private key; got 32 zero bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def _pem_private(text: str) -> X25519PrivateKey:
    """Return the X25519 private key in an unencrypted PKCS8 PEM block."""
    what = "private key"
    if "PUBLIC KEY" in text.split("\n", 1)[0]:
        raise ConfigError(f"{what}: expected the private key; got a PEM public key")
    try:
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    except TypeError:
        # pyca raises TypeError when the PEM is encrypted and no password was given.
        raise ConfigError(
            f"{what}: expected an unencrypted PEM key; got an encrypted PEM"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{what}: expected {_PRIVATE_EXPECTED}; got an unreadable PEM block"
        ) from None
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(f"{what}: expected an X25519 key; got a PEM {type(key).__name__}")
    return key


def generate_keypair() -> tuple[str, str]:
    """Make a new X25519 key pair: (private key as PKCS8 PEM text, public key as base64 text)."""
    private = X25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return pem, public_key_text(private)


def public_key_text(private: X25519PrivateKey) -> str:
    """Return the public half of ``private`` as the base64 text the handler takes."""
    return base64.b64encode(private.public_key().public_bytes_raw()).decode("ascii")


def key_fingerprint(public_raw: Buffer) -> bytes:
    """The fingerprint of an X25519 public key: the first 8 bytes of SHA-256 of its raw
    32 bytes (what encrypted blocks carry, ``fmt.KEY_FINGERPRINT_SIZE``)."""
    return hashlib.sha256(public_raw).digest()[: fmt.KEY_FINGERPRINT_SIZE]


def fingerprint_text(fingerprint: Buffer) -> str:
    """A fingerprint as shown to people: ``SHA256:`` and its unpadded standard base64
    (11 characters for 8 bytes), as OpenSSH shows its SHA-256 fingerprints."""
    return "SHA256:" + base64.b64encode(bytes(fingerprint)).decode("ascii").rstrip("=")


def public_key_fingerprint(private: X25519PrivateKey) -> str:
    """The fingerprint text of the public half of ``private``."""
    return fingerprint_text(key_fingerprint(private.public_key().public_bytes_raw()))


# ---------------------------------------------------------------------------
# AEAD


def _derive_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    """Derive a session's AEAD key from the X25519 shared secret and both public keys."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=ephemeral_public + recipient_public,
        info=_HKDF_INFO,
    ).derive(shared)


def _derive(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> ChaCha20Poly1305:
    """Derive a session's AEAD from the X25519 shared secret and both public keys."""
    return ChaCha20Poly1305(_derive_key(shared, ephemeral_public, recipient_public))


def _nonce(seq: int, index: int) -> bytes:
    """Return the 12-byte nonce of chunk ``index`` of block ``seq``."""
    return _NONCE.pack(seq, index)


class Sealer:
    """Seal the chunks of one handler session for one recipient public key.

    Make one per session and never share it across processes: a forked child
    must make its own, or it would reuse the parent's nonces. In a forked child
    every Sealer inherited from the parent refuses to seal (:class:`MmapLogError`),
    so that cannot happen by mistake either.
    """

    __slots__ = (
        "__weakref__",
        "_encrypt",
        "_pack",
        "_pid",
        "ephemeral_public",
        "key_fingerprint",
        "native_aead",
    )

    ephemeral_public: bytes
    key_fingerprint: bytes
    """The recipient public key's fingerprint (:func:`key_fingerprint`)."""
    native_aead: object | None
    """The same key for the C record path, which seals with it there (same bytes as
    :meth:`seal`), or None. Dropped in a forked child, where the C path also refuses it."""

    def __init__(self, recipient_public: Buffer) -> None:
        """Make the session's ephemeral key pair and derive its AEAD key.

        Raises:
            ConfigError: if ``recipient_public`` is not a usable X25519 public key
                (wrong length, or an all-zero / low-order point).
        """
        if (
            not isinstance(recipient_public, (bytes, bytearray, memoryview))
            or len(recipient_public) != KEY_SIZE
        ):
            raise ConfigError(
                f"recipient public key: expected {KEY_SIZE} raw bytes "
                f"(see load_public_key); got {_describe(recipient_public)}"
            )
        recipient = bytes(recipient_public)
        ephemeral = X25519PrivateKey.generate()
        try:
            shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
        except ValueError:
            raise ConfigError(
                "recipient public key: expected a valid X25519 public key; "
                "got an all-zero or low-order point"
            ) from None
        self.ephemeral_public = ephemeral.public_key().public_bytes_raw()
        self.key_fingerprint = key_fingerprint(recipient)
        # Keep only the AEAD: the ephemeral private key goes out of scope here,
        # so this process cannot recompute the key of an earlier session.
        del ephemeral
        key = _derive_key(shared, self.ephemeral_public, recipient)
        self._encrypt = ChaCha20Poly1305(key).encrypt
        self.native_aead = _emitpath.native_aead(key)
        del key
        self._pack = _NONCE.pack
        self._pid = os.getpid()
        _sealers.add(self)

    def seal(self, seq: int, index: int, plaintext: Buffer, aad: Buffer) -> bytes:
        """Return ``plaintext`` encrypted and authenticated with ``aad``: ciphertext + 16-byte tag.

        ``(seq, index)`` must never repeat within this Sealer; ``seq`` is a
        uint64 and ``index`` a uint32 (:data:`WHOLE_BLOCK_INDEX` is the whole-block seal).

        Raises:
            ConfigError: if ``seq`` or ``index`` is out of range.
        """
        try:
            return self._encrypt(self._pack(seq, index), plaintext, aad)
        except struct.error:
            raise ConfigError(
                f"nonce: expected seq in [0, 2**64) and index in [0, 2**32); got {seq!r}, {index!r}"
            ) from None


def _refuse_in_child(nonce: Buffer, data: Buffer, associated_data: Buffer | None) -> bytes:
    raise MmapLogError(
        "this encryption session belongs to the parent process: a forked child seals "
        "with a session (and ephemeral key) of its own"
    )


_sealers: weakref.WeakSet[Sealer] = weakref.WeakSet()


def _forget_sealers_in_child() -> None:
    # The child shares the parent's key and counters: one seal here could repeat a
    # nonce the parent uses. Make every inherited Sealer refuse, and drop the AEAD.
    # A Sealer made in the child already (by a record logged from another module's
    # at-fork hook, before this one ran) is the child's own and stays usable.
    pid = os.getpid()
    for sealer in list(_sealers):
        if sealer._pid != pid:
            sealer._encrypt = _refuse_in_child
            sealer.native_aead = None
            _sealers.discard(sealer)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_sealers_in_child)


class Opener:
    """Open chunks sealed for one private key, from any number of sessions.

    The AEADs of the most recent sessions are cached (keyed by ephemeral
    public key), so opening every record of a file costs one X25519 per
    session, not per record. Not thread-safe: use one per decoding thread.
    """

    __slots__ = ("_aeads", "_private", "_recipient_public", "key_fingerprint")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        """Keep ``private_key`` to open chunks sealed for its public key."""
        self._private = private_key
        self._recipient_public = private_key.public_key().public_bytes_raw()
        self.key_fingerprint = key_fingerprint(self._recipient_public)
        """The fingerprint of the public key this opener's key pairs with."""
        self._aeads: OrderedDict[bytes, ChaCha20Poly1305] = OrderedDict()

    def _aead(self, ephemeral_public: Buffer) -> ChaCha20Poly1305:
        """Return the AEAD of the session with ``ephemeral_public``, deriving it once."""
        eph = bytes(ephemeral_public)
        aeads = self._aeads
        aead = aeads.get(eph)
        if aead is not None:
            aeads.move_to_end(eph)
            return aead
        if len(eph) != KEY_SIZE:
            raise DecryptionError(
                f"bad ephemeral key: expected {KEY_SIZE} bytes, got {len(eph)} bytes"
            )
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(eph))
        except ValueError:
            raise DecryptionError(
                "bad ephemeral key: an all-zero or low-order point (the session cannot be opened)"
            ) from None
        aead = _derive(shared, eph, self._recipient_public)
        aeads[eph] = aead
        if len(aeads) > _OPENER_CACHE_SIZE:
            aeads.popitem(last=False)
        return aead

    def open(
        self, ephemeral_public: Buffer, seq: int, index: int, data: Buffer, aad: Buffer
    ) -> bytes:
        """Return the plaintext of ``data`` (ciphertext + tag), chunk ``index`` of block ``seq``.

        Raises:
            DecryptionError: if the ephemeral key is bad (wrong length, all zero,
                low-order), ``seq``/``index`` are out of range, or the tag does not
                verify: the data or AAD were tampered with, or the chunk was sealed
                for another key, at another position, or in another session.
        """
        aead = self._aead(ephemeral_public)
        try:
            nonce = _NONCE.pack(seq, index)
        except struct.error:
            raise DecryptionError(
                f"block seq {seq!r} chunk {index!r}: seq or index out of range"
            ) from None
        try:
            return aead.decrypt(nonce, data, aad)
        except InvalidTag:
            raise DecryptionError(
                f"block seq {seq} chunk {_index_text(index)}: authentication failed "
                "(tampered data, or sealed for another key)"
            ) from None


def _index_text(index: int) -> str:
    """Name a chunk index in messages, spelling out the whole-block index."""
    return "whole-block" if index == WHOLE_BLOCK_INDEX else str(index)
