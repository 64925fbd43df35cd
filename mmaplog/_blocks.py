"""Block identity: the one owner of a writing session's block numbers and sealing.

A :class:`BlockSession` is made once per handler start (and again in a forked
child, and by a handler re-opened in the same process). It owns:

* the session id (8 random bytes) and the writer's pid, stamped in every block;
* the one sequence counter: every block of the session, whatever path writes it,
  takes its ``seq`` from :meth:`BlockSession.next_seq`;
* the :class:`~mmaplog._crypto.Sealer` (the session's ephemeral X25519 key), made
  here and nowhere else on the writing side;
* the block templates (flags, extension) of both forms, mmaplog's and xlog's.

Why: ChaCha20-Poly1305 must never see one ``(key, nonce)`` twice, and the nonce is
``(seq, index)`` (``docs/security.md``). With one key per session, one counter per
session, ``index`` a chunk's position in its block and :data:`WHOLE_BLOCK_INDEX`
for the one whole-block seal of a block, no nonce can repeat by construction: a
cache block's chunks use ``(seq, 0..n-1)``, its move ``(seq, WHOLE_BLOCK_INDEX)``
once (the built bytes are kept for a retry, never sealed again), and a block
written directly (a record too large for a slot, records after ``close()``,
``mode="sync"``, xlog direct blocks) a fresh ``seq`` from the same counter.

The module is pure apart from ``os.urandom``/``os.getpid`` at construction: it
builds bytes and never writes them.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from . import _format as fmt
from ._codec import compress_whole
from ._crypto import Sealer
from ._xlog import pack_xlog_block, xlog_magic, xlog_payload, xlog_seq_of

if TYPE_CHECKING:
    from ._xlog import XlogBlockWriter

__all__ = ["BlockSession", "build_xlog_block", "encode_whole_block", "local_hour"]

WHOLE_BLOCK_INDEX = fmt.WHOLE_BLOCK_INDEX


def local_hour(time_us: int) -> int:
    """The local hour (0-23) of a time in µs, as xlog's header hours are."""
    return time.localtime(time_us // 1_000_000).tm_hour


def encode_whole_block(
    template: fmt.BlockHeader,
    heads: bytes | bytearray,
    texts: Sequence[bytes],
    last_time_us: int,
    *,
    level: int | None,
    sealer: Sealer | None,
    codec: int | None = None,
) -> bytes:
    """Return the whole-form block for the records with headers ``heads`` and ``texts``.

    ``codec`` is the block's compression (``fmt.COMP_*``; None: the template's). The
    payload is compressed whole and, with ``sealer``, sealed once under the nonce
    ``(template.seq, WHOLE_BLOCK_INDEX)``. Inside the package only
    :meth:`BlockSession.whole_block` calls this, which is what keeps that nonce
    unique; tests call it to build logs of their own.

    Compressed blocks hold their records as columns (``FLAG_COLUMNS``): about 10 %
    fewer bytes than the records back to back, for the same raw length.
    """
    if codec is None:
        codec = template.compression
    flags = (template.flags & ~(fmt.FLAG_STREAM | fmt.FLAG_COMPRESSION_MASK)) | codec
    columns = fmt.encode_columns(heads, texts) if codec != fmt.COMP_NONE else None
    if columns is not None:
        raw = columns
        flags |= fmt.FLAG_COLUMNS
    else:
        raw = fmt.join_records(heads, texts)
    payload = compress_whole(codec, raw, level)
    if sealer is not None:
        aad = fmt.block_aad(template.session, template.seq, flags, template.key_fingerprint)
        payload = sealer.seal(template.seq, WHOLE_BLOCK_INDEX, payload, aad)
    header = replace(
        template, flags=flags, last_time_us=last_time_us, count=len(texts), raw_len=len(raw)
    )
    return fmt.encode_block(header, payload)


def build_xlog_block(
    template: fmt.BlockHeader, bodies: Iterable[bytes | memoryview], last_time_us: int
) -> bytes:
    """Return the Mars xlog async block for an xlog cache block's chunk bodies.

    Start magic from the template's compression and encryption, seq from its sequence
    number (1..65535, wrapping), begin/end hour from the first/last record time, the
    client key from its extension (zeros without encryption), the payload joined from
    the chunk bodies, then the end magic. The flusher and recovery both call this, so
    a block moved before a crash and recovered after it have the same bytes. Nothing
    is sealed here: xlog's chunks were encrypted (TEA) as they were written.
    Raises ``CorruptionError`` for chunk bodies that cannot be an xlog payload.
    """
    compression = fmt.COMPRESSION_NAMES[template.compression] or "none"
    encrypted = template.encrypted
    payload = xlog_payload(bodies, encrypted)
    return pack_xlog_block(
        xlog_magic("async", compression, encrypted),
        xlog_seq_of(template.seq),
        local_hour(template.first_time_us),
        local_hour(max(last_time_us, template.first_time_us)),
        template.extension if encrypted else bytes(fmt.XLOG_EXTENSION),
        payload,
    )


class BlockSession:
    """The identity of one writing session's blocks: session id, sequence, sealer, templates.

    ``codec`` is the log files' compression (``fmt.COMP_*``), ``level`` the level of
    the whole-block compression on the move (None: the codec's default), ``recipient``
    the 32 raw bytes of an X25519 public key (a :class:`Sealer`, and so a new
    ephemeral key, is made for this session), ``xlog`` the xlog writer when the log
    files are Mars xlog files. ``recipient`` and ``xlog`` are not both given.

    Thread-safe: :meth:`next_seq` is one call of an ``itertools.count`` (atomic under
    the GIL, and safe to re-enter from a signal handler), the rest is read-only.
    Raises :class:`~mmaplog.ConfigError` for an unusable ``recipient``.
    """

    __slots__ = (
        "_flags",
        "_next",
        "_stream_flags",
        "codec",
        "extension",
        "level",
        "pid",
        "sealer",
        "session",
        "stream_codec",
        "xlog",
    )

    def __init__(
        self,
        *,
        codec: int,
        level: int | None = None,
        recipient: bytes | None = None,
        xlog: XlogBlockWriter | None = None,
    ) -> None:
        self.codec = codec
        self.level = level
        self.xlog = xlog
        self.session = os.urandom(8)
        self.pid = os.getpid()
        self.sealer = Sealer(recipient) if recipient is not None else None
        self._next = itertools.count().__next__
        flags = codec
        ext = b""
        if xlog is not None:
            flags |= fmt.FLAG_XLOG
            if xlog.encrypted:
                flags |= fmt.FLAG_ENCRYPTED
                ext = xlog.client_pubkey
        elif self.sealer is not None:
            flags |= fmt.FLAG_ENCRYPTED
            ext = self.sealer.ephemeral_public + self.sealer.key_fingerprint
        self._flags = flags
        # The cache's records are not compressed one by one (xlog's are, as xlog's
        # format says): each record stays decodable after a crash without a flush of a
        # compressor, which would cost more than the rest of the record path. The
        # block is compressed whole when it is moved (whole_block).
        self.stream_codec = codec if xlog is not None else fmt.COMP_NONE
        self._stream_flags = (flags & ~fmt.FLAG_COMPRESSION_MASK) | self.stream_codec
        self._stream_flags |= fmt.FLAG_STREAM
        self.extension = ext
        """The header extension of this session's blocks (the ephemeral public key and
        the recipient key's fingerprint; xlog's client key in an xlog session)."""

    def next_seq(self) -> int:
        """Take the next block sequence number of this session (0, 1, 2, ...)."""
        return self._next()

    def open_block(self, time_us: int) -> fmt.BlockHeader:
        """Number a new stream block (a cache slot's) and return its template header."""
        return fmt.BlockHeader(
            flags=self._stream_flags,
            session=self.session,
            seq=self._next(),
            pid=self.pid,
            payload_len=0,
            first_time_us=time_us,
            last_time_us=0,
            count=0,
            raw_len=0,
            payload_crc=0,
            extension=self.extension,
        )

    def whole_block(
        self,
        template: fmt.BlockHeader,
        heads: bytes | bytearray,
        texts: Sequence[bytes],
        last_time_us: int,
    ) -> bytes:
        """The log-file block for a block this session numbered (its one whole seal).

        Raises ``ValueError`` for a template of another session: sealing it here
        would use this session's key with another session's numbers.
        """
        if template.session != self.session:
            raise ValueError("a block of another session cannot be sealed by this one")
        return encode_whole_block(
            template,
            heads,
            texts,
            last_time_us,
            level=self.level,
            sealer=self.sealer,
            codec=self.codec,
        )

    def direct_block(self, head: bytes, text: bytes, time_us: int) -> bytes:
        """A block of its own for one record, numbered now (written past the cache).

        In an xlog session ``head`` is ignored and ``text`` is the line: a sync block
        (seq 0, as xlog writes them) in sync mode, else an async block whose seq comes
        from the session's counter like every other block's.
        """
        xlog = self.xlog
        if xlog is not None:
            hour = local_hour(time_us)
            seq = 0 if xlog.mode == "sync" else xlog_seq_of(self._next())
            return xlog.encode_block([text], seq, hour, hour)
        template = fmt.BlockHeader(
            flags=self._flags,
            session=self.session,
            seq=self._next(),
            pid=self.pid,
            payload_len=0,
            first_time_us=time_us,
            last_time_us=time_us,
            count=1,
            raw_len=0,
            payload_crc=0,
            extension=self.extension,
        )
        return encode_whole_block(
            template, head, [text], time_us, level=self.level, sealer=self.sealer
        )
