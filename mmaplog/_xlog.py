"""Mars xlog compatibility: read ``.xlog`` / ``.mmap3`` files and build xlog blocks.

This module owns the byte layout of Tencent Mars xlog as its C++ writer produces it
(``mars/xlog/crypt/log_crypt.cc``, ``log_magic_num.h``, ``mars/xlog/src/log_base_buffer.cc``,
``log_zlib_buffer.cc``, ``log_zstd_buffer.cc``, ``appender.cc``); ``docs/xlog.md`` describes
it byte by byte.  Everything here is pure: functions over bytes, no file or mmap I/O.

Reading never raises anything but mmaplog's own errors: damaged ranges, undecodable
blocks and sequence gaps are reported through an ``on_damage`` callback and skipped.
Every length read from the input is checked against the input before it is used, and
decompressed output is capped per block.

xlog's encryption (16-round TEA in ECB mode keyed by an ECDH secret, no integrity
check) is weak; it is implemented only to read and write files compatible with xlog.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

import zstandard
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mmaplog.exceptions import (
    ConfigError,
    CorruptionError,
    DecryptionError,
    KeyMismatchError,
    MmapLogError,
    NeedKeyError,
)

__all__ = [
    "MAGIC_ASYNC_NO_CRYPT_ZLIB",
    "MAGIC_ASYNC_NO_CRYPT_ZSTD",
    "MAGIC_ASYNC_ZLIB",
    "MAGIC_ASYNC_ZSTD",
    "MAGIC_END",
    "MAGIC_LEGACY_ASYNC",
    "MAGIC_LEGACY_COMPRESS",
    "MAGIC_LEGACY_SYNC",
    "MAGIC_SYNC_NO_CRYPT_ZLIB",
    "MAGIC_SYNC_NO_CRYPT_ZSTD",
    "MAGIC_SYNC_ZLIB",
    "MAGIC_SYNC_ZSTD",
    "MAX_DECODED_BLOCK_SIZE",
    "XlogBlock",
    "XlogBlockWriter",
    "XlogDamage",
    "XlogLineStream",
    "XlogPrivateKey",
    "decode_block",
    "generate_xlog_keypair",
    "iter_block_lines",
    "iter_blocks",
    "iter_lines",
    "load_xlog_private_key",
    "looks_like_xlog",
    "next_xlog_seq",
    "note_line",
    "pack_xlog_block",
    "tea_decrypt",
    "tea_encrypt",
    "xlog_magic",
    "xlog_payload",
    "xlog_seq_of",
]

# Start magics, named as in log_magic_num.h (LogMagicNum::kMagic...).  "Sync" blocks
# hold one plain-text log line each; "async" blocks hold the compressed (and, for the
# crypt magics, TEA-encrypted) contents of the mmap buffer.
MAGIC_SYNC_ZLIB: Final = 0x06  # kMagicSyncZlibStart: plain text, crypt configured
MAGIC_ASYNC_ZLIB: Final = 0x07  # kMagicAsyncZlibStart: raw deflate, TEA-encrypted
MAGIC_SYNC_NO_CRYPT_ZLIB: Final = 0x08  # kMagicSyncNoCryptZlibStart: plain text
MAGIC_ASYNC_NO_CRYPT_ZLIB: Final = 0x09  # kMagicAsyncNoCryptZlibStart: raw deflate
MAGIC_SYNC_ZSTD: Final = 0x0A  # kMagicSyncZstdStart: plain text, crypt configured
MAGIC_SYNC_NO_CRYPT_ZSTD: Final = 0x0B  # kMagicSyncNoCryptZstdStart: plain text
MAGIC_ASYNC_ZSTD: Final = 0x0C  # kMagicAsyncZstdStart: zstd, TEA-encrypted
MAGIC_ASYNC_NO_CRYPT_ZSTD: Final = 0x0D  # kMagicAsyncNoCryptZstdStart: zstd
# Pre-2016 open-source writer (13-byte header, see decode_mars_nocrypt_log_file.py).
MAGIC_LEGACY_SYNC: Final = 0x03  # MAGIC_NO_COMPRESS_START: plain text
MAGIC_LEGACY_COMPRESS: Final = 0x04  # MAGIC_COMPRESS_START: raw deflate
MAGIC_LEGACY_ASYNC: Final = 0x05  # MAGIC_COMPRESS_START1: uint16-prefixed deflate chunks
MAGIC_END: Final = 0x00  # kMagicEnd

# Block header, little-endian, no padding (LogCrypt::GetHeaderLen = 73):
#
#   0      1        3            4          5          9                  73
#   +------+--------+------------+----------+----------+------------------+
#   |magic | seq    | begin hour | end hour | length   | client pubkey    |
#   | u8   | u16    | u8         | u8       | u32      | 64 bytes X || Y  |
#   +------+--------+------------+----------+----------+------------------+
#   then ``length`` payload bytes, then MAGIC_END (1 byte).
_HEADER: Final = struct.Struct("<BHBBI64s")
# Legacy header: the 64-byte key is a 4-byte (always zero) "crypt key" field.
_LEGACY_HEADER: Final = struct.Struct("<BHBBI4s")
_LENGTH: Final = struct.Struct("<I")
_LENGTH_OFFSET: Final = 5
_LEGACY_CHUNK: Final = struct.Struct("<H")
_TEA_WORDS: Final = struct.Struct("<2I")
_TEA_KEY: Final = struct.Struct("<4I")

_PUBKEY_SIZE: Final = 64
_NO_PUBKEY: Final = bytes(_PUBKEY_SIZE)

#: Cap on the text one block may decompress to; more is treated as damage.
MAX_DECODED_BLOCK_SIZE: Final = 64 * 1024 * 1024
# A torn final block claiming more than this is not trusted as a torn block when
# confirming the block before it (xlog's async buffer is 150 KiB, a sync line 16 KiB).
_MAX_PLAUSIBLE_BLOCK: Final = 1024 * 1024
# Bytes a crash in the middle of LogBaseBuffer::Write can leave after the recorded
# length in a cache file (one compressed line, at most 16 KiB of input).
_MAX_UNACCOUNTED_TAIL: Final = 64 * 1024
_ZSTD_MAX_WINDOW: Final = 1 << 23  # xlog uses windowLog 16; refuse huge windows
_ZSTD_FEED: Final = 256
_ZSTD_FRAME_MAGIC: Final = b"\x28\xb5\x2f\xfd"

_TEA_DELTA: Final = 0x9E3779B9
_TEA_ROUNDS: Final = 16
_MASK32: Final = 0xFFFFFFFF
_SECP256K1_ORDER: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_MAX_SEQ: Final = 0xFFFF

_MAGIC_RE: Final = re.compile(b"[\x03-\x0d]")
_NONZERO_RE: Final = re.compile(b"[^\x00]")
_HEX64_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_HEX128_RE: Final = re.compile(r"[0-9a-fA-F]{128}")

_Codec = Literal["plain", "zlib", "zstd", "zlib-chunks"]
_BytesLike = bytes | bytearray | memoryview


XLOG_MAX_LINE = 16 * 1024 - 130
"""The longest line xlog writes, without its ``\n``: ``appender.cc`` formats a line into
``char temp[16 * 1024]`` and ``formater.cc`` cuts the message to leave 130 bytes of it."""
XLOG_BUFFER = 150 * 1024
"""xlog's async buffer (``kBufferBlockLength``); a block is moved when it is a third full."""
XLOG_MAX_PAYLOAD = 100_000
"""The largest block payload Tencent's Python decoders read (``read_size`` of their
``read_from`` call; a longer one overruns their reader)."""
XLOG_MAX_DECODED = 1_000_000
"""The most decoded text Tencent's Python decoders keep of one block (``write_size``)."""


@dataclass(frozen=True, slots=True)
class _MagicInfo:
    header: struct.Struct
    codec: _Codec
    encrypted: bool  # payload is TEA-encrypted (async crypt magics only)


_MAGICS: Final[dict[int, _MagicInfo]] = {
    MAGIC_LEGACY_SYNC: _MagicInfo(_LEGACY_HEADER, "plain", False),
    MAGIC_LEGACY_COMPRESS: _MagicInfo(_LEGACY_HEADER, "zlib", False),
    MAGIC_LEGACY_ASYNC: _MagicInfo(_LEGACY_HEADER, "zlib-chunks", False),
    # CryptSyncLog copies the line as is: its TEA step is commented out upstream.
    MAGIC_SYNC_ZLIB: _MagicInfo(_HEADER, "plain", False),
    MAGIC_ASYNC_ZLIB: _MagicInfo(_HEADER, "zlib", True),
    MAGIC_SYNC_NO_CRYPT_ZLIB: _MagicInfo(_HEADER, "plain", False),
    MAGIC_ASYNC_NO_CRYPT_ZLIB: _MagicInfo(_HEADER, "zlib", False),
    MAGIC_SYNC_ZSTD: _MagicInfo(_HEADER, "plain", False),
    MAGIC_SYNC_NO_CRYPT_ZSTD: _MagicInfo(_HEADER, "plain", False),
    MAGIC_ASYNC_ZSTD: _MagicInfo(_HEADER, "zstd", True),
    MAGIC_ASYNC_NO_CRYPT_ZSTD: _MagicInfo(_HEADER, "zstd", False),
}


@dataclass(frozen=True, slots=True)
class XlogBlock:
    """One xlog block as found in the input, payload still compressed/encrypted."""

    offset: int
    magic: int
    seq: int
    begin_hour: int
    end_hour: int
    length: int
    client_pubkey: bytes
    payload: bytes

    @property
    def end(self) -> int:
        """Offset just past the block's end magic."""
        info = _MAGICS.get(self.magic)
        header_size = info.header.size if info is not None else _HEADER.size
        return self.offset + header_size + self.length + 1

    @property
    def encrypted(self) -> bool:
        """Whether the payload is TEA-encrypted and needs the private key."""
        info = _MAGICS.get(self.magic)
        return info is not None and info.encrypted


@dataclass(frozen=True, slots=True)
class XlogDamage:
    """A byte range ``[start, end)`` of the input that was skipped, and why."""

    start: int
    end: int
    reason: str


# --------------------------------------------------------------------------- TEA


def _check_tea_key(key: bytes) -> tuple[int, int, int, int]:
    if len(key) != 16:
        raise ConfigError(f"TEA key must be 16 bytes, got {len(key)}")
    k0, k1, k2, k3 = _TEA_KEY.unpack(key)
    return k0, k1, k2, k3


def tea_encrypt(data: bytes, key: bytes) -> bytes:
    """Encrypt ``data`` like xlog: 16-round TEA, ECB, little-endian words.

    Only whole 8-byte blocks are encrypted; the last ``len(data) % 8`` bytes are
    returned unchanged, as ``LogCrypt::CryptAsyncLog`` leaves them.
    Raises :class:`ConfigError` if ``key`` is not 16 bytes.
    """
    k0, k1, k2, k3 = _check_tea_key(key)
    whole = len(data) - len(data) % 8
    out = bytearray(data)
    pack_into = _TEA_WORDS.pack_into
    for pos, (v0, v1) in zip(
        range(0, whole, 8), _TEA_WORDS.iter_unpack(memoryview(data)[:whole]), strict=True
    ):
        total = 0
        for _ in range(_TEA_ROUNDS):
            total = (total + _TEA_DELTA) & _MASK32
            v0 = (v0 + ((((v1 << 4) + k0) ^ (v1 + total) ^ ((v1 >> 5) + k1)) & _MASK32)) & _MASK32
            v1 = (v1 + ((((v0 << 4) + k2) ^ (v0 + total) ^ ((v0 >> 5) + k3)) & _MASK32)) & _MASK32
        pack_into(out, pos, v0, v1)
    return bytes(out)


def tea_decrypt(data: bytes, key: bytes) -> bytes:
    """Invert :func:`tea_encrypt`: sum starts at ``delta << 4`` and counts down.

    The last ``len(data) % 8`` bytes are returned unchanged.
    Raises :class:`ConfigError` if ``key`` is not 16 bytes.
    """
    k0, k1, k2, k3 = _check_tea_key(key)
    whole = len(data) - len(data) % 8
    out = bytearray(data)
    pack_into = _TEA_WORDS.pack_into
    start_sum = (_TEA_DELTA * _TEA_ROUNDS) & _MASK32  # == delta << 4 for 16 rounds
    for pos, (v0, v1) in zip(
        range(0, whole, 8), _TEA_WORDS.iter_unpack(memoryview(data)[:whole]), strict=True
    ):
        total = start_sum
        for _ in range(_TEA_ROUNDS):
            v1 = (v1 - ((((v0 << 4) + k2) ^ (v0 + total) ^ ((v0 >> 5) + k3)) & _MASK32)) & _MASK32
            v0 = (v0 - ((((v1 << 4) + k0) ^ (v1 + total) ^ ((v1 >> 5) + k1)) & _MASK32)) & _MASK32
            total = (total - _TEA_DELTA) & _MASK32
        pack_into(out, pos, v0, v1)
    return bytes(out)


# --------------------------------------------------------------------------- keys


def _point_from_xy(xy: bytes) -> ec.EllipticCurvePublicKey:
    """Parse xlog's 64-byte X||Y public key (uncompressed point without 0x04)."""
    if len(xy) != _PUBKEY_SIZE:
        raise ValueError(f"public key must be {_PUBKEY_SIZE} bytes, got {len(xy)}")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), b"\x04" + xy)


def _xy_of(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def _tea_key_from_secret(shared_x: bytes) -> bytes:
    # uECC_shared_secret gives X big-endian; xlog memcpy's its first 16 bytes into
    # uint32_t[4], i.e. reads them as four little-endian words: the bytes themselves.
    return shared_x[:16]


class XlogPrivateKey:
    """The server's secp256k1 private key that opens encrypted xlog blocks."""

    __slots__ = ("_key", "_tea_keys")

    _CACHE_LIMIT: Final = 64

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if key.curve.name != "secp256k1":
            raise ConfigError(f"xlog keys are on curve secp256k1, got {key.curve.name}")
        self._key = key
        # xlog uses one client key per appender instance, so a file has few of them.
        self._tea_keys: dict[bytes, bytes] = {}

    @property
    def public_key_hex(self) -> str:
        """The 128-hex-character public key (X||Y) to give xlog's ``appender_open``."""
        return _xy_of(self._key.public_key()).hex()

    def private_key_hex(self) -> str:
        """The 64-hex-character private key, as xlog's ``gen_key.py`` prints it."""
        return self._key.private_numbers().private_value.to_bytes(32, "big").hex()

    def tea_key(self, client_pubkey: bytes) -> bytes:
        """Derive the 16-byte TEA key shared with a block's client public key.

        Raises :class:`CorruptionError` if ``client_pubkey`` is not a curve point.
        """
        cached = self._tea_keys.get(client_pubkey)
        if cached is not None:
            return cached
        try:
            peer = _point_from_xy(client_pubkey)
        except ValueError as exc:
            raise CorruptionError(f"client public key is not a secp256k1 point: {exc}") from None
        tea_key = _tea_key_from_secret(self._key.exchange(ec.ECDH(), peer))
        if len(self._tea_keys) >= self._CACHE_LIMIT:
            self._tea_keys.clear()
        self._tea_keys[client_pubkey] = tea_key
        return tea_key

    def __repr__(self) -> str:
        return f"XlogPrivateKey(public_key_hex={self.public_key_hex[:16]}...)"


def load_xlog_private_key(key: str | bytes) -> XlogPrivateKey:
    """Load the server private key: 64 hex characters (``gen_key.py``) or a PEM EC key.

    Raises :class:`ConfigError` with a one-line message if the key is not usable.
    """
    if isinstance(key, bytes):
        try:
            text = key.decode("ascii")
        except UnicodeDecodeError:
            raise ConfigError("xlog private key is not ASCII text (hex or PEM)") from None
    elif isinstance(key, str):
        text = key
    else:
        raise ConfigError(f"xlog private key must be str or bytes, got {type(key).__name__}")
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            loaded = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"xlog private key: cannot load PEM ({first})") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConfigError("xlog private key: PEM does not hold an EC private key")
        if loaded.curve.name != "secp256k1":
            raise ConfigError(f"xlog private key: curve must be secp256k1, got {loaded.curve.name}")
        return XlogPrivateKey(loaded)
    if _HEX64_RE.fullmatch(text) is None:
        raise ConfigError(
            "xlog private key must be 64 hex characters or a PEM EC private key "
            f"(got {len(text)} characters)"
        )
    value = int(text, 16)
    if not 0 < value < _SECP256K1_ORDER:
        raise ConfigError("xlog private key is out of range for secp256k1")
    return XlogPrivateKey(ec.derive_private_key(value, ec.SECP256K1()))


def generate_xlog_keypair() -> tuple[str, str]:
    """Make a new key pair like xlog's ``gen_key.py``: (private hex 64, public hex 128)."""
    key = XlogPrivateKey(ec.generate_private_key(ec.SECP256K1()))
    return key.private_key_hex(), key.public_key_hex


# --------------------------------------------------------------------------- framing


def _length_at(view: memoryview, pos: int) -> int:
    length: int = _LENGTH.unpack_from(view, pos + _LENGTH_OFFSET)[0]
    return length


def _frame_end(view: memoryview, pos: int, size: int) -> int | None:
    """End offset of a complete, terminated, non-empty block at ``pos``, or None.

    xlog never writes an empty block (LogBaseBuffer::Flush and Write skip them), and
    rejecting them matters: a no-crypt header's zero key field makes an "empty
    block" of almost every magic-valued byte in front of it.
    """
    info = _MAGICS.get(view[pos])
    if info is None:
        return None
    header_size = info.header.size
    if pos + header_size + 1 > size:
        return None
    length = _length_at(view, pos)
    end = pos + header_size + length + 1
    if length == 0 or end > size or view[end - 1] != MAGIC_END:
        return None
    return end


def _claimed_end(view: memoryview, pos: int, size: int) -> int | None:
    """Where a damaged block at ``pos`` says it ends, if its header is believable.

    None when there is no start magic, the length is 0, or the block would run past
    the data by more than any xlog block is long.  A header cut off by the end of
    the data claims everything after it.
    """
    info = _MAGICS.get(view[pos])
    if info is None:
        return None
    header_size = info.header.size
    if pos + header_size > size:
        return size
    length = _length_at(view, pos)
    end = pos + header_size + length + 1
    if length == 0 or (end > size and length > _MAX_PLAUSIBLE_BLOCK):
        return None
    return end


def _is_torn_tail(view: memoryview, pos: int, size: int) -> bool:
    """Whether a block starting at ``pos`` is plausibly cut off by the end of input."""
    info = _MAGICS.get(view[pos])
    if info is None:
        return False
    if pos + info.header.size > size:
        return True
    end = _claimed_end(view, pos, size)
    return end is not None and end > size


def _zero_from(view: memoryview, pos: int) -> bool:
    return _NONZERO_RE.search(view, pos) is None


def _successor_ok(view: memoryview, end: int, size: int) -> bool:
    """Whether what follows a block confirms it (Tencent's IsGoodLogBuffer count=2)."""
    return (
        end >= size
        or _frame_end(view, end, size) is not None
        or _is_torn_tail(view, end, size)
        # Zero fill counts only right after a payload that does not end in zeros: a
        # false block whose length lands anywhere in a cache's fill must not pass.
        or (view[end - 2] != 0 and _zero_from(view, end))
    )


_SYNC_MAGICS: Final = frozenset(
    {
        MAGIC_LEGACY_SYNC,
        MAGIC_SYNC_ZLIB,
        MAGIC_SYNC_NO_CRYPT_ZLIB,
        MAGIC_SYNC_ZSTD,
        MAGIC_SYNC_NO_CRYPT_ZSTD,
    }
)


def _plausible_header(view: memoryview, pos: int) -> bool:
    """Whether a header could be xlog's: hours 0-23; sync: seq 0 and one hour; async: seq > 0.

    Applied to candidates found by searching (never to the block reading arrives
    at), it makes false blocks in compressed bytes some 200 times rarer.
    """
    begin_hour = view[pos + 3]
    end_hour = view[pos + 4]
    if begin_hour > 23 or end_hour > 23:
        return False
    seq = view[pos + 1] | view[pos + 2] << 8
    if view[pos] in _SYNC_MAGICS:
        return seq == 0 and begin_hour == end_hour
    return seq != 0


def _reaches(view: memoryview, pos: int, target: int, size: int) -> bool:
    """Whether blocks laid end to end from ``pos`` end exactly at ``target``."""
    end = _frame_end(view, pos, size)
    while end is not None and end < target:
        end = _frame_end(view, end, size)
    return end == target


_Confirm = Literal["none", "successor", "reaches-stop"]


def _resync(
    view: memoryview, start: int, stop: int, size: int, confirm: _Confirm = "none"
) -> int | None:
    """First offset in ``[start, stop)`` where a plausible complete block starts.

    ``confirm="successor"`` also wants what follows it to be good (Tencent's
    IsGoodLogBuffer with count 2; end of data, a torn block and zero fill count);
    ``confirm="reaches-stop"`` wants blocks from it to end exactly at ``stop``.
    """
    search = _MAGIC_RE.search
    pos = start
    while True:
        match = search(view, pos, stop)
        if match is None:
            return None
        pos = match.start()
        end = _frame_end(view, pos, size)
        if (
            end is not None
            and _plausible_header(view, pos)
            and (
                confirm == "none"
                or (confirm == "successor" and _successor_ok(view, end, size))
                or (confirm == "reaches-stop" and _reaches(view, pos, stop, size))
            )
        ):
            return pos
        pos += 1


def _diagnose(view: memoryview, pos: int, size: int) -> str:
    """Say why no block starts at ``pos``."""
    magic = view[pos]
    info = _MAGICS.get(magic)
    if info is None:
        return f"byte 0x{magic:02x} is not an xlog start magic"
    header_size = info.header.size
    if pos + header_size + 1 > size:
        return f"truncated header ({size - pos} of {header_size + 1} bytes)"
    length = _length_at(view, pos)
    end = pos + header_size + length + 1
    if length == 0:
        return "empty block (xlog never writes one)"
    if end > size:
        return f"block length {length} runs past the end of the data ({size - pos} bytes left)"
    return f"no end magic after {length} payload bytes (found 0x{view[end - 1]:02x})"


def _make_block(view: memoryview, pos: int) -> XlogBlock:
    info = _MAGICS[view[pos]]
    magic, seq, begin_hour, end_hour, length, key = info.header.unpack_from(view, pos)
    payload_start = pos + info.header.size
    return XlogBlock(
        offset=pos,
        magic=magic,
        seq=seq,
        begin_hour=begin_hour,
        end_hour=end_hour,
        length=length,
        client_pubkey=bytes(key),
        payload=bytes(view[payload_start : payload_start + length]),
    )


def _unterminated_tail(view: memoryview, pos: int, size: int) -> int | None:
    """End of the unaccounted bytes after an unterminated cache block at ``pos``.

    ``LogBaseBuffer::Write`` compresses into the buffer before it updates the length,
    so a crash there leaves a valid block whose end magic is overwritten by up to one
    line of compressed bytes, then the zeros of the cache.  Returns None unless that
    is exactly what is at ``pos``.
    """
    info = _MAGICS.get(view[pos])
    if info is None or pos + info.header.size > size:
        return None
    length = _length_at(view, pos)
    payload_end = pos + info.header.size + length
    if length == 0 or payload_end > size:
        return None
    window_end = min(size, payload_end + _MAX_UNACCOUNTED_TAIL)
    if not _zero_from(view, window_end):
        return None
    return payload_end + len(bytes(view[payload_end:window_end]).rstrip(b"\x00"))


def _find_restart(view: memoryview, pos: int, size: int) -> int | None:
    """Where reading resumes after the damaged block or garbage at ``pos``.

    Bytes a damaged header claims (up to where its length points) are its payload
    unless a block confirmed by its successor is found among them; past that, the
    first complete block is taken, as Tencent's decoder does.
    """
    claimed = _claimed_end(view, pos, size)
    if claimed is None:
        return _resync(view, pos + 1, size, size)
    found = _resync(view, pos + 1, min(claimed, size), size, "successor")
    if found is None and claimed < size:
        found = _resync(view, claimed, size, size)
    return found


def _scan(view: memoryview, report: Callable[[XlogDamage], None]) -> Iterator[XlogBlock]:
    size = len(view)
    pos = 0
    while pos < size:
        end = _frame_end(view, pos, size)
        if end is not None:
            # A damaged length field can land on a zero byte, even on a later
            # block's end magic; blocks found inside our span say it did.  When
            # what follows is a block, they must also end exactly where we do.
            confirm: _Confirm = "reaches-stop" if _successor_ok(view, end, size) else "successor"
            inner = _resync(view, pos + 1, end, size, confirm)
            if inner is not None:
                report(
                    XlogDamage(
                        pos,
                        inner,
                        f"xlog block at offset {pos}: length field overlaps the "
                        f"next block at offset {inner}",
                    )
                )
                pos = inner
                continue
            yield _make_block(view, pos)
            pos = end
            continue
        if _zero_from(view, pos):
            return  # zero fill after the last block: a cache file's unused space
        # A cache written mid-line, checked first: in its zero fill almost any
        # length lands on a zero, so resyncing there would find false blocks.
        tail_end = _unterminated_tail(view, pos, size)
        if tail_end is not None and _resync(view, pos + 1, size, size, "reaches-stop") is None:
            block = _make_block(view, pos)
            yield block
            start = block.end - 1
            if tail_end > start:
                report(
                    XlogDamage(
                        start,
                        tail_end,
                        f"xlog block at offset {pos} has no end magic: "
                        f"{tail_end - start} unaccounted bytes after its payload",
                    )
                )
            return
        found = _find_restart(view, pos, size)
        if found is None:
            last = pos + len(bytes(view[pos:]).rstrip(b"\x00"))
            report(
                XlogDamage(
                    pos,
                    last,
                    f"xlog data at offset {pos}: {_diagnose(view, pos, size)}; no block follows",
                )
            )
            return
        report(
            XlogDamage(
                pos,
                found,
                f"xlog data at offset {pos}: {_diagnose(view, pos, size)}; "
                f"skipped {found - pos} bytes to the next block",
            )
        )
        pos = found


def _ignore(_damage: XlogDamage) -> None:
    return None


def looks_like_xlog(data: _BytesLike) -> bool:
    """Cheap sniff: the input starts with a plausible xlog block header.

    Checks the start magic, that the header is complete and that both hours are
    0-23; the length is not checked, so a torn file still looks like xlog.
    """
    with memoryview(data) as view:
        if len(view) == 0:
            return False
        info = _MAGICS.get(view[0])
        if info is None or len(view) < info.header.size:
            return False
        begin_hour: int = view[3]
        end_hour: int = view[4]
        return begin_hour < 24 and end_hour < 24


def iter_blocks(
    data: _BytesLike, on_damage: Callable[[XlogDamage], None] | None = None
) -> Iterator[XlogBlock]:
    """Yield every xlog block found in ``data`` (an ``.xlog`` or ``.mmap3`` image).

    Blocks are framed like Tencent's decoder does (a block counts only if its length
    lands on an end magic; after damage, the next block confirmed by its successor is
    where reading resumes).  Skipped byte ranges and sequence gaps are passed to
    ``on_damage``; trailing zero fill is not damage.  Raises nothing of its own: a
    length field larger than the input is damage, never an allocation.
    """
    report = on_damage if on_damage is not None else _ignore
    last_seq = 0
    last_end = 0
    with memoryview(data) as raw, raw.cast("B") as view:
        for block in _scan(view, report):
            seq = block.seq
            if seq not in (0, 1) and last_seq != 0 and seq != last_seq + 1:
                if seq > last_seq:
                    reason = f"seq gap: blocks with seq {last_seq + 1}-{seq - 1} are missing"
                else:
                    reason = f"seq gap: seq goes back from {last_seq} to {seq}"
                report(XlogDamage(min(last_end, block.offset), block.offset, reason))
            if seq != 0:
                last_seq = seq
            last_end = block.end
            yield block


# --------------------------------------------------------------------------- decoding


def _inflate(data: bytes, where: str) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_DECODED_BLOCK_SIZE + 1)
    except zlib.error as exc:
        raise ValueError(f"{where}: deflate data is invalid ({exc})") from None
    if len(out) > MAX_DECODED_BLOCK_SIZE:
        raise ValueError(f"{where}: decompresses to more than {MAX_DECODED_BLOCK_SIZE} bytes")
    if inflater.eof and inflater.unused_data:
        raise ValueError(f"{where}: {len(inflater.unused_data)} bytes after the deflate stream")
    return out


def _unzstd(data: bytes, where: str) -> bytes:
    # Not stream_reader: on a frame that never ends (xlog's), it stops when the input
    # runs out and drops output the decoder still holds.  decompressobj returns all
    # of it; feeding small slices bounds what one call can produce (a 4-byte RLE block
    # expands to 128 KiB, so a slice yields at most ~8 MiB).
    decoder = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW).decompressobj()
    parts: list[bytes] = []
    total = 0
    view = memoryview(data)
    try:
        for start in range(0, len(data), _ZSTD_FEED):
            if decoder.eof:
                raise ValueError(f"{where}: {len(data) - start} bytes after the zstd frame")
            chunk = decoder.decompress(view[start : start + _ZSTD_FEED])
            total += len(chunk)
            if total > MAX_DECODED_BLOCK_SIZE:
                raise ValueError(
                    f"{where}: decompresses to more than {MAX_DECODED_BLOCK_SIZE} bytes"
                )
            parts.append(chunk)
    except zstandard.ZstdError as exc:
        raise ValueError(f"{where}: zstd data is invalid ({exc})") from None
    finally:
        view.release()
    return b"".join(parts)


def _join_chunks(data: bytes, where: str) -> bytes:
    """Undo the legacy 0x05 layout: ``(uint16 length, bytes)*`` then one deflate stream."""
    parts: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + _LEGACY_CHUNK.size > len(data):
            raise ValueError(f"{where}: truncated chunk length at payload byte {pos}")
        (chunk_len,) = _LEGACY_CHUNK.unpack_from(data, pos)
        pos += _LEGACY_CHUNK.size
        if pos + chunk_len > len(data):
            raise ValueError(f"{where}: chunk of {chunk_len} bytes runs past the payload")
        parts.append(data[pos : pos + chunk_len])
        pos += chunk_len
    return b"".join(parts)


def _decompress(codec: _Codec, payload: bytes, where: str) -> bytes:
    if codec == "plain":
        return payload
    if codec == "zlib":
        return _inflate(payload, where)
    if codec == "zstd":
        return _unzstd(payload, where)
    return _inflate(_join_chunks(payload, where), where)


def _plausible_start(codec: _Codec, plain: bytes) -> bool:
    """Whether decrypted bytes begin like the stream xlog writes."""
    if len(plain) < 8:
        return True  # a short payload's tail is never encrypted
    if codec == "zstd":
        return plain.startswith(_ZSTD_FRAME_MAGIC)
    first = plain[0]
    # Never a final block (xlog never finishes the stream) and never BTYPE 3.
    return first & 1 == 0 and (first >> 1) & 3 != 3


def decode_block(block: XlogBlock, private_key: XlogPrivateKey | None = None) -> str:
    """Decrypt and decompress one block into its text (UTF-8, bad bytes replaced).

    Raises :class:`NeedKeyError` for an encrypted block without ``private_key``,
    :class:`KeyMismatchError` if the key evidently is not the block's,
    :class:`DecryptionError` if the decrypted data does not decompress (wrong key or
    damage: TEA has no integrity check to tell them apart), and
    :class:`CorruptionError` for damaged unencrypted blocks or a bad client key.
    """
    info = _MAGICS.get(block.magic)
    where = f"xlog block at offset {block.offset}"
    if info is None:
        raise CorruptionError(f"{where}: unknown start magic 0x{block.magic:02x}", block.offset)
    payload = block.payload
    if info.encrypted:
        if private_key is None:
            raise NeedKeyError(
                f"{where} is encrypted (magic 0x{block.magic:02x}); a private key is needed"
            )
        try:
            tea_key = private_key.tea_key(block.client_pubkey)
        except CorruptionError as exc:
            raise CorruptionError(f"{where}: {exc}", block.offset) from None
        payload = tea_decrypt(payload, tea_key)
        if not _plausible_start(info.codec, payload):
            raise KeyMismatchError(
                f"{where}: decrypted data does not start like a "
                f"{'zstd' if info.codec == 'zstd' else 'deflate'} stream: the private key "
                "is not the one this block was written for (or the block is damaged)"
            )
        try:
            raw = _decompress(info.codec, payload, where)
        except ValueError as exc:
            raise DecryptionError(f"{exc} after decryption: wrong key or damaged block") from None
    else:
        try:
            raw = _decompress(info.codec, payload, where)
        except ValueError as exc:
            raise CorruptionError(str(exc), block.offset) from None
    return raw.decode("utf-8", "replace")


def _split_lines(text: str) -> Iterator[str]:
    # Only "\n" ends an xlog line (log_formater appends it); str.splitlines would also
    # split on \r, \x0b, \x1c... inside messages.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    yield from lines


def iter_lines(
    data: _BytesLike,
    private_key: XlogPrivateKey | None = None,
    on_damage: Callable[[XlogDamage], None] | None = None,
) -> Iterator[str]:
    """Yield every text line of an ``.xlog``/``.mmap3`` image, in file order.

    A block that fails to decode is reported to ``on_damage`` and skipped; damaged
    ranges and seq gaps are reported as in :func:`iter_blocks`.  Raises
    :class:`NeedKeyError` when it meets an encrypted block and no key was given
    (skipping every such block silently would hide most of the log).
    """
    for _block, lines in iter_block_lines(data, private_key, on_damage):
        yield from lines


def iter_block_lines(
    data: _BytesLike,
    private_key: XlogPrivateKey | None = None,
    on_damage: Callable[[XlogDamage], None] | None = None,
    *,
    skip_sealed: bool = False,
) -> Iterator[tuple[XlogBlock, list[str]]]:
    """Yield each block of an ``.xlog``/``.mmap3`` image that decodes, with its lines.

    As :func:`iter_lines`, which joins the lines; a reader also needs the block (its
    hours, and which lines were written together). With ``skip_sealed`` an encrypted
    block without a key is yielded with no lines instead of raising
    :class:`NeedKeyError`.
    """
    report = on_damage if on_damage is not None else _ignore
    for block in iter_blocks(data, report):
        if skip_sealed and private_key is None and block.encrypted:
            yield block, []
            continue
        try:
            text = decode_block(block, private_key)
        except NeedKeyError:
            raise
        except MmapLogError as exc:
            report(XlogDamage(block.offset, block.end, str(exc)))
            continue
        yield block, list(_split_lines(text))


# --------------------------------------------------------------------------- writing


def next_xlog_seq(seq: int) -> int:
    """The seq xlog gives the async block after ``seq``: 1..65535, wrapping past 0."""
    following = (seq + 1) & _MAX_SEQ
    return following if following != 0 else 1


def xlog_seq_of(n: int) -> int:
    """The xlog seq of a writer's ``n``-th async block (``n`` from 0): 1..65535, wrapping."""
    return n % _MAX_SEQ + 1


def note_line(time_us: int, pid: int, text: bytes) -> bytes:
    """A line mmaplog writes itself (a count of dropped records), in xlog's line format."""
    seconds, micros = divmod(time_us, 1_000_000)
    stamp = time.strftime("%Y-%m-%d %z %H:%M:%S", time.localtime(seconds))
    head = f"[W][{stamp}.{micros // 1000:03d}][{pid}, 0][mmaplog][:0, ][".encode()
    return head + text + b"\n"


def xlog_magic(mode: str, compression: str, encrypted: bool) -> int:
    """The start magic xlog writes for a mode, a compression and whether a key is set.

    Raises :class:`ConfigError` for an unknown mode or compression.
    """
    if mode not in ("async", "sync"):
        raise ConfigError(f"xlog mode must be 'async' or 'sync', got {mode!r}")
    if compression not in ("zlib", "zstd"):
        raise ConfigError(f"xlog compression must be 'zlib' or 'zstd', got {compression!r}")
    if mode == "sync":
        if compression == "zlib":
            return MAGIC_SYNC_ZLIB if encrypted else MAGIC_SYNC_NO_CRYPT_ZLIB
        return MAGIC_SYNC_ZSTD if encrypted else MAGIC_SYNC_NO_CRYPT_ZSTD
    if compression == "zlib":
        return MAGIC_ASYNC_ZLIB if encrypted else MAGIC_ASYNC_NO_CRYPT_ZLIB
    return MAGIC_ASYNC_ZSTD if encrypted else MAGIC_ASYNC_NO_CRYPT_ZSTD


def pack_xlog_block(
    magic: int, seq: int, begin_hour: int, end_hour: int, client_pubkey: bytes, payload: bytes
) -> bytes:
    """Header, payload and end magic of one block (fields are not checked beyond packing).

    Raises :class:`ConfigError` if the payload does not fit xlog's 32-bit length.
    """
    if len(payload) > _MASK32:
        raise ConfigError(f"xlog block payload of {len(payload)} bytes does not fit 32 bits")
    header = _HEADER.pack(magic, seq, begin_hour, end_hour, len(payload), client_pubkey)
    return header + payload + bytes((MAGIC_END,))


class XlogLineStream:
    """The compressor of one async block, fed one line at a time, as xlog's buffer is.

    :meth:`compress` returns the bytes one line adds to the (unencrypted) payload: the
    line compressed and flushed (zlib: raw deflate, ``Z_SYNC_FLUSH``; zstd: block
    flush), the stream never ended.  :meth:`chunk` returns what mmaplog's cache stores
    for the line (see ``docs/xlog.md``, "Writing with MmapHandler"): without a key the
    same bytes; with a key, the 8-byte units the line completes, TEA-encrypted, then
    the clear tail (< 8 bytes not yet forming a unit) and one byte giving its length.
    :func:`xlog_payload` turns a block's chunk bodies back into xlog's payload.
    """

    __slots__ = ("_compressor", "_flush", "_flush_arg", "_pending", "_tea_key")

    def __init__(
        self,
        compression: str,
        tea_key: bytes | None,
        *,
        zlib_level: int = 9,
        zstd_params: zstandard.ZstdCompressionParameters | None = None,
    ) -> None:
        if compression == "zlib":
            deflater = zlib.compressobj(zlib_level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
            self._compressor: Callable[[bytes], bytes] = deflater.compress
            self._flush: Callable[[int], bytes] = deflater.flush
            self._flush_arg = zlib.Z_SYNC_FLUSH
        elif compression == "zstd":
            params = zstd_params or zstandard.ZstdCompressionParameters.from_level(6, window_log=16)
            stream = zstandard.ZstdCompressor(compression_params=params).compressobj()
            self._compressor = stream.compress
            self._flush = stream.flush
            self._flush_arg = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        else:
            raise ConfigError(f"xlog compression must be 'zlib' or 'zstd', got {compression!r}")
        self._tea_key = tea_key
        self._pending = b""

    def compress(self, line: bytes) -> bytes:
        """The compressed bytes ``line`` adds to the payload (the stream flushed after it)."""
        return self._compressor(line) + self._flush(self._flush_arg)

    def chunk(self, line: bytes) -> bytes:
        """The cache chunk body for ``line`` (never plaintext when a key is set)."""
        data = self.compress(line)
        key = self._tea_key
        if key is None:
            return data
        data = self._pending + data
        whole = len(data) - len(data) % 8
        tail = data[whole:]
        self._pending = tail
        return tea_encrypt(data[:whole], key) + tail + bytes((len(tail),))


def xlog_payload(bodies: Iterable[bytes | memoryview], encrypted: bool) -> bytes:
    """Join the cache chunk bodies of one block into xlog's payload.

    Without encryption the bodies are concatenated.  With it, each body is encrypted
    units + clear tail + tail length; the payload is every body's units followed by the
    last body's tail, which is exactly TEA-ECB over the whole compressed stream with its
    last ``len % 8`` bytes in clear.  Raises :class:`CorruptionError` for a body whose
    framing is impossible.
    """
    if not encrypted:
        return b"".join(bytes(b) for b in bodies)
    units: list[bytes] = []
    tail = b""
    for i, body in enumerate(bodies):
        size = len(body)
        tail_len = body[-1] if size else 0
        if size == 0 or tail_len >= 8 or (size - 1 - tail_len) % 8:
            raise CorruptionError(
                f"xlog cache chunk {i}: {size} bytes with a tail of {tail_len} is not "
                "encrypted units + tail + tail length"
            )
        cut = size - 1 - tail_len
        units.append(bytes(body[:cut]))
        tail = bytes(body[cut : size - 1])
    return b"".join(units) + tail


class XlogBlockWriter:
    """Build complete xlog blocks byte-for-byte the way Mars xlog's appender does.

    ``mode="async"`` blocks hold lines compressed as one stream (zlib: raw deflate,
    level 9, memLevel 9, a sync flush per line, never finished; zstd: windowLog 16, a
    block flush per line, frame never ended), TEA-encrypted with the key shared with
    ``public_key_hex`` when given.  ``mode="sync"`` blocks hold the lines as plain
    text, even with a key, exactly like ``LogCrypt::CryptSyncLog``.  As in xlog, one
    ephemeral client key is made per writer (xlog: per appender) and stored in every
    block header.  The block bytes minus the final end magic, followed by zeros, is
    what xlog's ``.mmap3`` cache holds while the block is being filled.
    """

    __slots__ = (
        "_client_pubkey",
        "_compression",
        "_magic",
        "_mode",
        "_tea_key",
        "_zlib_level",
        "_zstd_params",
    )

    def __init__(
        self,
        mode: Literal["async", "sync"] = "async",
        compression: Literal["zlib", "zstd"] = "zlib",
        public_key_hex: str | None = None,
        *,
        zstd_level: int = 6,
        zlib_level: int = 9,
    ) -> None:
        """Raises :class:`ConfigError` for an unknown mode/compression or a bad key."""
        if mode not in ("async", "sync"):
            raise ConfigError(f"xlog mode must be 'async' or 'sync', got {mode!r}")
        if compression not in ("zlib", "zstd"):
            raise ConfigError(f"xlog compression must be 'zlib' or 'zstd', got {compression!r}")
        if not isinstance(zstd_level, int) or not 1 <= zstd_level <= 22:
            raise ConfigError(f"zstd level must be 1-22, got {zstd_level}")
        if not isinstance(zlib_level, int) or not 1 <= zlib_level <= 9:
            raise ConfigError(f"zlib level must be 1-9, got {zlib_level}")
        self._mode = mode
        self._compression = compression
        self._zlib_level = zlib_level
        self._zstd_params = zstandard.ZstdCompressionParameters.from_level(
            zstd_level, window_log=16
        )
        self._tea_key: bytes | None = None
        self._client_pubkey = _NO_PUBKEY
        if public_key_hex is not None:
            if not isinstance(public_key_hex, str):
                raise ConfigError(
                    "xlog public key must be a str of 128 hex characters (X||Y), "
                    f"got {type(public_key_hex).__name__}"
                )
            text = public_key_hex.strip()
            if _HEX128_RE.fullmatch(text) is None:
                raise ConfigError(
                    f"xlog public key must be 128 hex characters (X||Y), got {len(text)} characters"
                )
            try:
                server = _point_from_xy(bytes.fromhex(text))
            except ValueError:
                raise ConfigError("xlog public key is not a point on secp256k1") from None
            client = ec.generate_private_key(ec.SECP256K1())
            self._client_pubkey = _xy_of(client.public_key())
            self._tea_key = _tea_key_from_secret(client.exchange(ec.ECDH(), server))
        self._magic = xlog_magic(mode, compression, self._tea_key is not None)

    @property
    def magic(self) -> int:
        """The start magic every block from this writer carries."""
        return self._magic

    @property
    def client_pubkey(self) -> bytes:
        """The 64-byte ephemeral client public key written in headers (zeros: no crypt)."""
        return self._client_pubkey

    @property
    def encrypted(self) -> bool:
        """Whether a public key was given (async payloads are then TEA-encrypted)."""
        return self._tea_key is not None

    @property
    def compression(self) -> str:
        """``"zlib"`` or ``"zstd"``."""
        return self._compression

    @property
    def mode(self) -> str:
        """``"async"`` or ``"sync"``."""
        return self._mode

    def line_stream(self) -> XlogLineStream:
        """A fresh per-block compressor (and encryptor) for this writer's async blocks."""
        return XlogLineStream(
            self._compression,
            self._tea_key,
            zlib_level=self._zlib_level,
            zstd_params=self._zstd_params,
        )

    def _compress(self, lines: Iterable[bytes]) -> bytes:
        stream = self.line_stream()
        return b"".join(stream.compress(line) for line in lines)

    def encode_block(self, lines: list[bytes], seq: int, begin_hour: int, end_hour: int) -> bytes:
        """Return one complete block holding ``lines`` (each gets a final ``\\n`` if missing).

        As xlog does, sync blocks take seq 0 and one hour for both hour fields, async
        blocks seq 1..65535 (see :func:`next_xlog_seq`); readers rely on it to tell
        real headers from lookalikes.  Raises :class:`ConfigError` for no lines or
        header fields outside those rules.
        """
        if not 0 <= seq <= _MAX_SEQ:
            raise ConfigError(f"xlog seq must be 0-65535, got {seq}")
        for name, hour in (("begin_hour", begin_hour), ("end_hour", end_hour)):
            if not 0 <= hour <= 23:
                raise ConfigError(f"xlog {name} must be 0-23, got {hour}")
        if not lines:
            raise ConfigError(
                "an xlog block holds at least one line (xlog never writes empty ones)"
            )
        if self._mode == "sync" and (seq != 0 or begin_hour != end_hour):
            raise ConfigError(
                "xlog sync blocks have seq 0 and begin_hour == end_hour "
                f"(got seq {seq}, hours {begin_hour}-{end_hour})"
            )
        if self._mode == "async" and seq == 0:
            raise ConfigError("xlog async blocks have seq 1-65535 (0 marks sync blocks)")
        framed = [line if line.endswith(b"\n") else line + b"\n" for line in lines]
        if self._mode == "sync":
            payload = b"".join(framed)
        else:
            payload = self._compress(framed)
            if self._tea_key is not None:
                payload = tea_encrypt(payload, self._tea_key)
        return pack_xlog_block(self._magic, seq, begin_hour, end_hour, self._client_pubkey, payload)
