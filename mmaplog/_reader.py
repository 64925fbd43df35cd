"""Reading records back: log files, folders of them, and cache files.

Composes the pure format, codec and crypto modules over bytes it is handed or
reads itself. Damage never stops a read: the intact blocks are all decoded and
every skipped byte range is reported to ``on_damage``.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import logging
import mmap
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice, pairwise, repeat
from operator import attrgetter, truediv
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _emitpath
from . import _format as fmt
from ._codec import StreamDecompressor, decompress_whole
from .exceptions import (
    ConfigError,
    CorruptionError,
    DecryptionError,
    KeyMismatchError,
    MmapLogError,
    NeedKeyError,
)

if TYPE_CHECKING:
    from . import _xlog
    from ._crypto import Opener

_MAX_CHUNK_RAW = fmt.MAX_RECORD_TEXT + fmt.RECORD_HEADER.size + fmt.MAX_LOGGER_NAME
_LOG_NAME = re.compile(r"^(?P<prefix>.+)_(?P<day>\d{8})(?:_(?P<part>\d+))?\.(?:mmlog|xlog)$")


class _RecordFields(NamedTuple):
    time: float
    """Seconds since the epoch, as ``LogRecord.created``."""
    level: int
    text: str
    kind: int = fmt.KIND_TEXT
    pid: int = 0
    session: str = ""
    seq: int = 0
    recovered: bool = False
    source: str = ""
    logger: str | None = None
    """The name of the logger that made the record; None when the record does not carry
    one: written by mmaplog before format version 2, read from a Mars xlog file, or
    logged without a name (a structlog logger got without one)."""
    thread: int | None = None
    """The id of the thread that logged the record (``LogRecord.thread``); None when the
    record does not carry one (as for ``logger``)."""


class Record(_RecordFields):
    """A record read back from a log (a named tuple: cheap to make by the million).

    Fields: ``time`` (seconds since the epoch), ``level``, ``text``, ``kind``,
    ``pid``, ``session``, ``seq``, ``recovered``, ``source``, ``logger`` and
    ``thread`` (None when the record does not carry them).
    """

    __slots__ = ()

    @property
    def levelname(self) -> str:
        return logging.getLevelName(self.level)

    def _asdict(self) -> dict[str, Any]:
        """The fields by name; ``logger`` and ``thread`` only when the record carries
        them (records of files written before format version 2 have neither)."""
        fields = super()._asdict()
        if self.logger is None:
            del fields["logger"]
        if self.thread is None:
            del fields["thread"]
        return fields


@dataclass(frozen=True, slots=True)
class Marker:
    """Not a record: a line telling the reader something about the log (a crash)."""

    text: str
    source: str = ""


DamageCallback = Callable[[str, fmt.Damage], None]


class Reader:
    """Decodes mmaplog data, with an optional private key."""

    def __init__(
        self,
        private_key: Any = None,
        on_damage: DamageCallback | None = None,
        *,
        markers: bool = False,
        each_mismatch: bool = True,
    ) -> None:
        self._opener: Opener | None = None
        self._xlog_key: Any = None
        if private_key is not None:
            self._load_key(private_key)
        self.key_fingerprint = self._opener.key_fingerprint if self._opener else None
        """The fingerprint of the public key the private key pairs with (None: no key)."""
        self._on_damage = on_damage
        self.markers = markers
        self.damaged = False
        self.key_mismatch = False
        self.each_mismatch = each_mismatch
        """Report each block the key does not open to ``on_damage`` (else only count them)."""
        self.mismatched: dict[str, int] = {}
        """How many blocks of each source the key does not open."""
        self.mismatched_keys: dict[str, set[bytes]] = {}
        """The fingerprints of the keys those blocks were encrypted to, by source
        (format version 2 blocks carry one)."""
        self._opened_sessions: set[bytes] = set()
        self._last_recovered: tuple[str, bytes] | None = None
        self._seen_blocks: dict[tuple[bytes, int, int], tuple[int, int]] = {}
        self.repeated_blocks = 0
        """Exact copies of a block already read: a write retried after a failed fsync."""

    def _load_key(self, key: Any) -> None:
        from ._crypto import Opener, load_private_key
        from ._xlog import XlogPrivateKey, load_xlog_private_key

        if isinstance(key, XlogPrivateKey):
            self._xlog_key = key
            return
        if not isinstance(key, (str, bytes)):
            self._opener = Opener(key)
            return
        try:
            self._opener = Opener(load_private_key(key))
        except ConfigError as exc:
            # Not an X25519 key: perhaps xlog's secp256k1 key (64 hex digits or PEM).
            try:
                self._xlog_key = load_xlog_private_key(key)
            except ConfigError:
                raise exc from None

    # -- reporting -----------------------------------------------------------------

    def _damage(self, source: str, start: int, end: int, reason: str) -> None:
        self.damaged = True
        if self._on_damage is not None:
            self._on_damage(source, fmt.Damage(start, end, reason))

    # -- whole inputs --------------------------------------------------------------

    def iter_data(self, data: fmt.Buffer, source: str = "<data>") -> Iterator[Record | Marker]:
        """Yield the records (and markers) of a log file or cache file image."""
        if data[:4] == fmt.CACHE_MAGIC and _is_cache(data):
            yield from self._iter_cache(bytes(data), source)
            return
        if data[:4] != fmt.BLOCK_MAGIC and data[:1] in _XLOG_MAGICS:
            from . import _xlog

            if _xlog.looks_like_xlog(_view(data)):
                yield from self._iter_xlog(data, source)
                return
        for item in fmt.scan_blocks(data):
            if isinstance(item, fmt.Damage):
                self._damage(source, item.start, item.end, item.reason)
                continue
            yield from self.block_items(item.header, item.payload, item.offset, source)

    def record_batches(self, data: fmt.Buffer, source: str = "<data>") -> Iterator[list[Record]]:
        """The records of :meth:`iter_data` without its markers, in lists (a block's
        records at a time in a log file): a reader of millions of records pays no
        generator step per record here."""
        if data[:4] != fmt.BLOCK_MAGIC:  # a cache, an xlog file, or damage first
            items = self.iter_data(data, source)
            while True:
                chunk = list(islice(items, 4096))
                if not chunk:
                    return
                yield [r for r in chunk if isinstance(r, Record)]
        for item in fmt.scan_blocks(data):
            if isinstance(item, fmt.Damage):
                self._damage(source, item.start, item.end, item.reason)
                continue
            records = self.block_items(item.header, item.payload, item.offset, source)
            if records and not isinstance(records[0], Record):
                del records[0]  # the marker of a recovered block, only ever first
            yield records  # type: ignore[misc]  # (records only, now)

    def _iter_xlog(self, data: fmt.Buffer, source: str) -> Iterator[Record | Marker]:
        """Lines of a Mars xlog file (``.xlog``) or cache (``.mmap3``)."""
        for _block, records in self.iter_xlog_blocks(data, source):
            yield from records

    def iter_xlog_blocks(
        self,
        data: fmt.Buffer,
        source: str,
        *,
        skip_sealed: bool = False,
        start_time: float | None = None,
        pid: int = 0,
        session: str = "",
        seq: int = 0,
    ) -> Iterator[tuple[_xlog.XlogBlock, list[Record]]]:
        """Each block of an xlog image that decodes, with its lines as records.

        A line with xlog's header (``[I][2026-11-25 +8.0 12:00:00.123][pid, tid]...``)
        gives its record's time, level and pid. A line without one (a traceback, the
        next lines of a message, a line another formatter wrote) belongs to the line
        with a header before it in the same block, as a record's lines are always
        written in one block; a line with no such line before it has level NOTSET, pid
        ``pid``, and ``start_time`` or else the block's begin hour on the day the file
        is named after (``<prefix>_YYYYMMDD.xlog``), an approximation. Damage is
        reported to ``on_damage``; with ``skip_sealed`` an encrypted block is yielded
        with no records when there is no key, else :class:`NeedKeyError` is raised.
        """
        from . import _xlog

        def damaged(d: _xlog.XlogDamage) -> None:
            self._damage(source, d.start, d.end, d.reason)

        day = _day_of_source(source) if start_time is None else None
        blocks = _xlog.iter_block_lines(
            _view(data), self._xlog_key, damaged, skip_sealed=skip_sealed
        )
        for block, lines in blocks:
            when = start_time if start_time is not None else _at_hour(day, block.begin_hour)
            level, line_pid = logging.NOTSET, pid
            records = []
            for line in lines:
                header = _xlog_header(line)
                if header is not None:
                    stamp, level, line_pid = header
                    when = when if stamp is None else stamp
                    line_pid = line_pid or pid
                records.append(
                    Record(
                        time=when,
                        level=level,
                        text=line,
                        pid=line_pid,
                        session=session,
                        seq=seq,
                        source=source,
                    )
                )
            yield block, records

    def _iter_cache(self, image: bytes, source: str) -> Iterator[Record | Marker]:
        from ._recovery import RecoveryReport, _slots_of, recovered_xlog_block

        report = RecoveryReport()
        _info, contents = _slots_of(image, report)
        for problem in report.problems:
            cut = report.cut
            if cut is not None and problem == cut.reason:
                self._damage(source, cut.start, cut.end, problem)
            else:
                self._damage(source, 0, 0, problem)
        for c in sorted(contents, key=lambda c: (c.template.session, c.template.seq)):
            t = c.template
            if not t.flags & fmt.FLAG_XLOG:
                yield from self.iter_block(t, c.payload, -1, source)
                continue
            if not c.count:
                continue
            # The xlog block recovery would append, built the same way, then read as
            # an xlog file's block is (no key needed to build it).
            try:
                block = recovered_xlog_block(c)
            except CorruptionError as exc:
                self._damage(source, 0, 0, f"cache block {t.seq}: {exc}")
                continue
            for _block, records in self.iter_xlog_blocks(
                block,
                source,
                start_time=t.first_time_us / 1e6,
                pid=t.pid,
                session=t.session.hex(),
                seq=t.seq,
            ):
                yield from records

    # -- one block -------------------------------------------------------------------

    def iter_block(
        self, h: fmt.BlockHeader, payload: bytes, offset: int, source: str
    ) -> Iterator[Record | Marker]:
        """Yield the records of one block whose checksums already hold."""
        return iter(self.block_items(h, payload, offset, source))

    def block_items(
        self, h: fmt.BlockHeader, payload: bytes, offset: int, source: str
    ) -> list[Record | Marker]:
        """The records of one block whose checksums already hold, as a list: after a
        crash, first the marker that says so (only ever first)."""
        out: list[Record | Marker] = []
        where = f"block at offset {offset}" if offset >= 0 else f"cache block {h.seq}"
        if h.encrypted and self._opener is None:
            raise NeedKeyError(
                f"{source}: {where} is encrypted{_for_key(h)}: give its private key (--key FILE)"
            )
        if h.recovered and self.markers:
            key = (source, h.session)
            if self._last_recovered != key:
                self._last_recovered = key
                out.append(Marker(f"-- recovered after a crash of pid {h.pid} --", source))
        elif not h.recovered:
            self._last_recovered = None
        session = h.session.hex()
        ident = (h.session, h.seq, h.flags & fmt.FLAG_STREAM)
        seen = self._seen_blocks.get(ident)
        if seen is not None and offset >= 0:
            if seen == (h.payload_len, h.payload_crc):
                # The same bytes again: a block written a second time because an fsync
                # failed after its write. Nothing is lost or changed: skip it quietly.
                self.repeated_blocks += 1
                return out
            self._damage(
                source,
                offset,
                offset + h.header_len + h.payload_len,
                f"{where}: block {h.seq} of session {session} appears twice with other "
                "contents; the second is skipped",
            )
            return out
        self._seen_blocks[ident] = (h.payload_len, h.payload_crc)
        try:
            if h.flags & fmt.FLAG_COLUMNS:
                records = self._column_records(h, payload, where, session, source)
                if not out:
                    return records  # type: ignore[return-value]  # (list is invariant)
                out.extend(records)
                return out
            raws = (
                self._stream_records(h, payload, offset, source, where)
                if h.stream
                else self._whole_records(h, payload, where)
            )
            pid, seq, recovered = h.pid, h.seq, h.recovered
            v1 = h.version == 1
            new = tuple.__new__  # cheaper than Record(...) for a named tuple, per record
            append = out.append
            for time_us, level, kind, text, name, thread in raws:
                append(
                    new(
                        Record,
                        (
                            time_us / 1e6,
                            level,
                            text.decode("utf-8", "replace"),
                            kind,
                            pid,
                            session,
                            seq,
                            recovered,
                            source,
                            None if v1 else name.decode("utf-8", "replace") or None,
                            None if v1 else thread or None,
                        ),
                    )
                )
        except KeyMismatchError as exc:
            self.key_mismatch = True
            self.mismatched[source] = self.mismatched.get(source, 0) + 1
            self.mismatched_keys.setdefault(source, set()).add(h.key_fingerprint)
            if not self.each_mismatch:
                self.damaged = True
                return out
            self._damage(
                source, max(offset, 0), max(offset, 0) + h.header_len + h.payload_len, str(exc)
            )
        except (CorruptionError, DecryptionError) as exc:
            start = max(offset, 0)
            self._damage(source, start, start + h.header_len + h.payload_len, str(exc))
        return out

    def _open(self, h: fmt.BlockHeader, index: int, data: bytes, where: str) -> bytes:
        assert self._opener is not None
        aad = fmt.block_aad(h.session, h.seq, h.flags, h.key_fingerprint)
        try:
            out = self._opener.open(h.ephemeral_key, h.seq, index, data, aad)
        except DecryptionError as exc:
            if h.session not in self._opened_sessions and "ephemeral" not in str(exc):
                raise KeyMismatchError(f"{where}: the key does not match") from None
            raise DecryptionError(f"{where}: record {index}: {exc}") from None
        self._opened_sessions.add(h.session)
        return out

    def _whole_records(
        self, h: fmt.BlockHeader, payload: bytes, where: str
    ) -> Iterator[fmt.RawRecord]:
        if h.encrypted:
            payload = self._open(h, fmt.WHOLE_BLOCK_INDEX, payload, where)
        raw = decompress_whole(h.compression, payload, h.raw_len, where=where)
        records = list(fmt.iter_records(raw, where=where, version=h.version))
        if len(records) != h.count:
            raise CorruptionError(f"{where}: holds {len(records)} records, header says {h.count}")
        return iter(records)

    def _column_records(
        self, h: fmt.BlockHeader, payload: bytes, where: str, session: str, source: str
    ) -> list[Record]:
        """The records of a column-form block, built column by column (the common case)."""
        if h.encrypted:
            payload = self._open(h, fmt.WHOLE_BLOCK_INDEX, payload, where)
        raw = decompress_whole(h.compression, payload, h.raw_len, where=where)
        c = fmt.split_columns(raw, h.count, where=where, version=h.version)
        ascii_texts = c.texts.isascii()
        # Each column is one value for every record, or a list of one per record.
        loggers: str | list[str | None] | None = None
        threads: int | list[int | None] | None = None
        if h.version != 1:
            names, at = c.names, c.name_starts
            size = at[1] if len(at) > 1 else 0
            first = names[:size]
            if names == first * h.count and at == list(range(0, size * h.count + 1, size or 1)):
                # Every record from one logger (the common case): decoded once, no slices.
                loggers = first.decode("utf-8", "replace") or None
            else:
                slices = [names[a:b] for a, b in pairwise(at)]
                # A block's records come from few loggers: each name is decoded once.
                decoded = {n: n.decode("utf-8", "replace") or None for n in set(slices)}
                loggers = list(map(decoded.__getitem__, slices))
            ids = c.threads
            if ids and ids.count(ids[0]) == len(ids):  # one thread wrote the block
                threads = ids[0] or None
            else:
                threads = [t or None for t in ids]
        build = _emitpath.column_records()
        if build is not None:  # the same tuples, built in C
            try:
                return build(  # type: ignore[no-any-return]
                    Record,
                    c.times_us,
                    c.levels,
                    c.kinds,
                    c.starts,
                    c.texts.decode("ascii") if ascii_texts else c.texts,
                    h.pid,
                    session,
                    h.seq,
                    h.recovered,
                    source,
                    loggers,
                    threads,
                )
            except (ValueError, OverflowError) as exc:  # what split_columns let through
                raise CorruptionError(f"{where}: {exc}") from None
        starts, ends = c.starts, c.starts[1:]
        if ascii_texts:
            # Byte offsets are character offsets: decode once, then slice.
            whole = c.texts.decode("ascii")
            texts = [whole[a:b] for a, b in zip(starts, ends, strict=False)]
        else:
            data = c.texts
            texts = [
                data[a:b].decode("utf-8", "replace") for a, b in zip(starts, ends, strict=False)
            ]
        # tuple.__new__ over zipped columns: no Python-level step per record.
        return list(
            map(
                tuple.__new__,
                repeat(Record),
                zip(
                    map(truediv, c.times_us, repeat(1e6)),
                    c.levels,
                    texts,
                    c.kinds,
                    repeat(h.pid),
                    repeat(session),
                    repeat(h.seq),
                    repeat(h.recovered),
                    repeat(source),
                    loggers if isinstance(loggers, list) else repeat(loggers),
                    threads if isinstance(threads, list) else repeat(threads),
                    strict=False,
                ),
            )
        )

    def _stream_records(
        self, h: fmt.BlockHeader, payload: bytes, offset: int, source: str, where: str
    ) -> Iterator[fmt.RawRecord]:
        bodies, end = fmt.walk_chunks(payload, fmt.chunk_seed(h.session, h.seq))
        # One chunk carries one record: bound each chunk's output by the largest record.
        dec = StreamDecompressor(h.compression, fmt.MAX_BLOCK_RAW, per_feed=_MAX_CHUNK_RAW)
        for index, body in enumerate(bodies):
            data = bytes(body)
            if h.encrypted:
                data = self._open(h, index, data, where)
            records = list(
                fmt.iter_records(dec.feed(data, where=where), where=where, version=h.version)
            )
            if len(records) != 1:
                raise CorruptionError(
                    f"{where}: chunk {index} holds {len(records)} records, expected 1"
                )
            yield records[0]
        if h.count and len(bodies) < h.count and end == len(payload):
            raise CorruptionError(f"{where}: holds {len(bodies)} records, header says {h.count}")
        if end != len(payload):
            start = max(offset, 0) + h.header_len + end
            self._damage(
                source,
                start,
                start + len(payload) - end,
                f"{where}: chunk at payload offset {end} is damaged",
            )


def _for_key(h: fmt.BlockHeader) -> str:
    """`` for the key SHA256:...`` naming the key a block was encrypted to, if it says."""
    if not h.key_fingerprint:
        return ""
    from ._crypto import fingerprint_text

    return f" for the key {fingerprint_text(h.key_fingerprint)}"


_XLOG_MAGICS = {bytes([m]) for m in range(0x03, 0x0E)}
_XLOG_LEVELS = {"V": 5, "D": 10, "I": 20, "W": 30, "E": 40, "F": 50}
_XLOG_STAMP = re.compile(
    r"^\[([VDIWEF])\]\[(\d{4})-(\d\d)-(\d\d) ([+-]?\d+(?:\.\d+)?) "
    r"(\d\d):(\d\d):(\d\d)\.(\d{3})\]"
)


# "[L][time][pid, tid]" (a "*" after the tid marks xlog's main thread); the time may
# be empty (xlog leaves it out for a record without one).
_XLOG_PID = re.compile(r"^\[[VDIWEF]\]\[[^\]]*\]\[(\d{1,10}), -?\d+\*?\]")


def _xlog_pid(line: str) -> int:
    """The pid of an xlog line's ``[pid, tid]`` field; 0 when the line has none."""
    m = _XLOG_PID.match(line)
    return int(m.group(1)) if m is not None else 0


def _xlog_offset(text: str) -> _dt.timedelta:
    """A line's UTC offset: xlog's hours (``+8.0``, ``-3.5``) or strftime's ``%z`` (``+0800``)."""
    if re.fullmatch(r"[+-]\d{4}(?:\d\d)?", text):
        sign = -1 if text[0] == "-" else 1
        hours, minutes, seconds = int(text[1:3]), int(text[3:5]), int(text[5:7] or 0)
        return sign * _dt.timedelta(hours=hours, minutes=minutes, seconds=seconds)
    return _dt.timedelta(hours=float(text))


def _xlog_header(line: str) -> tuple[float | None, int, int] | None:
    """The time, level and pid of an xlog line's header; None when it has none.

    ``[I][2026-11-23 +8.0 12:00:00.123][pid, tid]...``: Mars writes the UTC offset in
    hours (``+8.0``); mmaplog's ``XlogFormatter`` writes it as ``strftime`` does
    (``+0800``). Both are read. The time is None when the header has none (or one
    that is not a date), the pid 0 when it has no ``[pid, tid]`` field.
    """
    m = _XLOG_STAMP.match(line)
    if m is None:
        p = _XLOG_PID.match(line)
        if p is None:
            return None
        return None, _XLOG_LEVELS[line[1]], int(p.group(1))
    level, pid = _XLOG_LEVELS[m.group(1)], _xlog_pid(line)
    try:
        tz = _dt.timezone(_xlog_offset(m.group(5)))
        y, mo, d, h, mi, s, ms = (int(m.group(i)) for i in (2, 3, 4, 6, 7, 8, 9))
        when = _dt.datetime(y, mo, d, h, mi, s, ms * 1000, tzinfo=tz).timestamp()
    except (ValueError, OverflowError):
        return None, level, pid
    return when, level, pid


def _day_of_source(source: str) -> str | None:
    """The day (``YYYYMMDD``) a log file is named after; None when its name has none.

    A file read from a bucket is named by the segment before its byte range.
    """
    for name in source.rsplit("/", 2)[-2:][::-1]:
        m = _LOG_NAME.match(name.partition("@")[0])
        if m is not None:
            return m.group("day")
    return None


def _at_hour(day: str | None, hour: int) -> float:
    """Local time ``hour``:00 on ``day`` (``YYYYMMDD``); 0.0 without a day."""
    if day is None:
        return 0.0
    try:
        return _dt.datetime.strptime(day, "%Y%m%d").replace(hour=min(hour, 23)).timestamp()
    except (ValueError, OverflowError):
        return 0.0


def _view(data: fmt.Buffer) -> bytes | memoryview:
    return data if isinstance(data, bytes) else memoryview(data)


def _is_cache(data: fmt.Buffer) -> bool:
    """Whether data starting with the cache magic really is a cache."""
    from ._recovery import is_cache_image

    return is_cache_image(data)


def log_files_in(folder: str, prefix: str | None = None) -> list[str]:
    """The log files in ``folder`` in time order (date, then part)."""
    found = []
    for name in os.listdir(folder):
        m = _LOG_NAME.match(name)
        if m and (prefix is None or m.group("prefix") == prefix):
            found.append((m.group("day"), int(m.group("part") or 0), m.group("prefix"), name))
    found.sort()
    return [os.path.join(folder, f[3]) for f in found]


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Files named by ``paths``; a folder stands for its log files in time order."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(log_files_in(p))
        else:
            out.append(p)
    return out


def read_file(path: str) -> bytes | mmap.mmap:
    """The contents of a file: mapped read-only when large, read when small."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size >= 1 << 20:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return f.read()


def read_records(
    *paths: str,
    key: Any = None,
    on_damage: DamageCallback | None = None,
) -> Iterator[Record]:
    """Yield every record in the given log files, folders or cache files, in order.

    ``key`` is the private key for encrypted logs (PEM text, bytes or a key
    object). Damaged ranges are skipped and passed to ``on_damage(path, damage)``.
    Raises :class:`~mmaplog.NeedKeyError` for encrypted input without a key and
    :class:`~mmaplog.MmapLogError` for a file that cannot be read.

    An ``s3://bucket/prefix`` path reads what ``mmaplog ship`` stored there: every
    host's records merged by time (needs ``mmaplog[s3]``; may raise
    :class:`~mmaplog.StorageError` and :class:`~mmaplog.MissingDependencyError`).
    """
    if any(p.startswith("s3://") for p in paths):
        # A bucket path that `mmaplog ship` filled: every host, merged by record time.
        for p in paths:
            yield from BucketSource(p, key=key, on_damage=on_damage)
        return
    reader = Reader(key, on_damage)
    for path in expand_paths(paths):
        try:
            data = read_file(path)
        except OSError as exc:
            raise MmapLogError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            for records in reader.record_batches(data, path):
                yield from records
        finally:
            if isinstance(data, mmap.mmap):
                data.close()


def data_kind(data: fmt.Buffer) -> str:
    """How :meth:`Reader.iter_data` reads ``data``: ``"cache"``, ``"xlog"`` or ``"log"``.

    ``"log"`` covers anything else too (``scan_blocks`` reports what is not a block).
    """
    if data[:4] == fmt.CACHE_MAGIC and _is_cache(data):
        return "cache"
    if data[:4] != fmt.BLOCK_MAGIC and data[:1] in _XLOG_MAGICS:
        from . import _xlog

        if _xlog.looks_like_xlog(_view(data)):
            return "xlog"
    return "log"


# -- folders: days, caches, time order --------------------------------------------------


def log_days_in(folder: str, prefix: str | None = None) -> list[list[str]]:
    """The log files in ``folder`` grouped by day (every prefix's), the days in order."""
    days: dict[str, list[str]] = {}
    for path in log_files_in(folder, prefix):
        m = _LOG_NAME.match(os.path.basename(path))
        assert m is not None
        days.setdefault(m.group("day"), []).append(path)
    return [days[d] for d in sorted(days)]


def cache_files_in(folder: str, prefix: str | None = None) -> list[str]:
    """The regular files in ``folder`` named like caches (``<prefix>[.N].mmap``), by name."""
    if prefix is None:
        pattern = re.compile(r"^.+\.mmap$")
    else:
        pattern = re.compile(rf"^{re.escape(prefix)}(?:\.\d+)?\.mmap$")
    names = sorted(n for n in os.listdir(folder) if pattern.match(n))
    paths = [os.path.join(folder, n) for n in names]
    # Never a FIFO or a device (an open could block) nor a link (not ours to follow).
    return [p for p in paths if os.path.isfile(p) and not os.path.islink(p)]


def cache_is_held(path: str) -> bool:
    """Whether a live process holds the cache at ``path`` (its exclusive lock is taken).

    Asks with a shared lock, taken without waiting and dropped at once: nothing
    is written, and a writer's exclusive lock is never in doubt.
    """
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock
    return False


# A cache is at most 64 MiB of slots and its header: anything larger is not one.
_MAX_CACHE_FILE = (64 << 20) + (1 << 20)


def read_cache_file(path: str) -> bytes | None:
    """A cache file's image, read (never mapped); None when it is not a cache.

    The head is read and checked first, so a large file that is not a cache is
    never read whole.
    """
    with open(path, "rb") as f:
        head = f.read(fmt.CACHE_HEADER_SIZE + 8)
        if head[:4] != fmt.CACHE_MAGIC or not _is_cache(head):
            return None
        if os.fstat(f.fileno()).st_size > _MAX_CACHE_FILE:
            return None
        return head + f.read()


@dataclass(frozen=True, slots=True)
class Waiting:
    """Records a dead process left in a cache: not in any log file yet."""

    path: str
    records: list[Record]
    pids: tuple[int, ...]


def waiting_records(
    reader: Reader, folder: str, in_logs: set[tuple[str, int]], prefix: str | None = None
) -> list[Waiting]:
    """The records in ``folder``'s caches that no live process holds, read without writing.

    Blocks named in ``in_logs`` (``(session, seq)``) are in a log file already (the
    process died after moving them, before freeing their slot) and are left out.
    Caches held by a live process are skipped: their records are on their way.
    """
    out = []
    for path in cache_files_in(folder, prefix):
        try:
            if cache_is_held(path):
                continue
            data = read_cache_file(path)
        except OSError:
            continue
        if data is None:
            continue
        records = [
            r
            for r in reader.iter_data(data, path)
            if isinstance(r, Record) and (r.session, r.seq) not in in_logs
        ]
        if records:
            pids = tuple(sorted({r.pid for r in records}))
            out.append(Waiting(path, records, pids))
    return out


def merge_by_time(
    items: Iterable[Record | Marker], keep: Callable[[Record], bool] | None = None
) -> Iterator[Record | Marker]:
    """The records of many processes in time order, each session's own order kept.

    A file holds blocks of every process that logged into it, one block after
    another; each session (one process) is a run of records in its own order.
    The sessions are merged by record time; a session's order is never changed
    (a record stamped earlier can follow a later one). Records without a session
    (xlog files) are one run per process of each file, by their pid (a line without
    xlog's header has its record's). A marker stays before the record that
    followed it. Everything is held in memory: give one day of files at a time.
    """
    runs: dict[tuple[str, str, int], list[tuple[Marker | None, Record]]] = {}
    pending: dict[str, Marker] = {}
    for item in items:
        if isinstance(item, Marker):
            pending[item.source] = item
            continue
        if keep is not None and not keep(item):
            continue
        key = (item.session, "", 0) if item.session else ("", item.source, item.pid)
        runs.setdefault(key, []).append((pending.pop(item.source, None), item))
    for marker, record in heapq.merge(*runs.values(), key=_entry_time):
        if marker is not None:
            yield marker
        yield record


def _entry_time(entry: tuple[Marker | None, Record]) -> float:
    return entry[1].time


@dataclass(frozen=True, slots=True)
class CacheCount:
    """What a cache holds, from its block templates (nothing decrypted, no key needed)."""

    path: str
    size: int
    live: bool
    blocks: int
    records: int
    pids: tuple[int, ...]
    first_us: int | None
    last_us: int | None


def count_caches(
    folder: str, in_logs: set[tuple[bytes, int]], prefix: str | None = None
) -> list[CacheCount]:
    """The caches of ``folder`` and what they hold that no log file has yet.

    A live process's cache is counted as live with nothing in it (its records are
    on their way to the log). Blocks named in ``in_logs`` (``(session, seq)``)
    are in a log file already and are not counted.
    """
    from ._recovery import RecoveryReport, _slots_of

    out = []
    for path in cache_files_in(folder, prefix):
        try:
            live = cache_is_held(path)
            data = None if live else read_cache_file(path)
        except OSError:
            continue
        if not live and data is None:
            continue
        blocks = records = 0
        pids: set[int] = set()
        first: int | None = None
        last: int | None = None
        if data is not None:
            _info, contents = _slots_of(data, RecoveryReport())
            for c in contents:
                t = c.template
                if not c.count or (t.session, t.seq) in in_logs:
                    continue
                blocks += 1
                records += c.count
                pids.add(t.pid)
                first = t.first_time_us if first is None else min(first, t.first_time_us)
                end = max(c.last_time_us, t.first_time_us)
                last = end if last is None else max(last, end)
        size = os.path.getsize(path)
        out.append(CacheCount(path, size, live, blocks, records, tuple(sorted(pids)), first, last))
    return out


def verify_caches(folder: str) -> list[str]:
    """The caches of ``folder`` that no live process holds and that hold records, or are
    damaged (cut short, say)."""
    from ._recovery import RecoveryReport, _slots_of

    found = []
    for path in cache_files_in(folder):
        try:
            data = None if cache_is_held(path) else read_cache_file(path)
        except OSError:
            continue
        if data is None:
            continue
        report = RecoveryReport()
        if any(c.count for c in _slots_of(data, report)[1]) or report.problems:
            found.append(path)
    return found


# -- object storage ------------------------------------------------------------------


class BucketSource:
    """The records of a bucket path that ``mmaplog ship`` filled, merged by record time.

    Objects are listed under ``<prefix>/<host>/<log file>/<start>-<end>``; ``hosts``
    limits the listing (nothing of the other hosts is downloaded), and ``since`` /
    ``until`` (seconds since the epoch) skip the log files of days well outside them.
    Each host's files of one prefix are read in order, one object at a time, by a
    :class:`Reader` of their own, so a block stored twice is read once (it is
    recognised by its session and sequence number). The streams are merged by record
    time with :func:`heapq.merge`: memory holds one object per stream.

    ``each_mismatch`` is passed to each stream's :class:`Reader`: with False, blocks
    the key does not open are counted in :attr:`Reader.mismatched` of :attr:`readers`
    rather than each reported to ``on_damage``.
    """

    def __init__(
        self,
        url: str,
        *,
        key: Any = None,
        on_damage: DamageCallback | None = None,
        hosts: Iterable[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        endpoint_url: str | None = None,
        each_mismatch: bool = True,
    ) -> None:
        from ._s3 import Store, parse_url

        self.url = parse_url(url)
        self._key = key
        self._on_damage = on_damage
        self._hosts = list(hosts) if hosts is not None else None
        self._since, self._until = since, until
        self._store = Store(self.url, endpoint_url=endpoint_url)
        self._each_mismatch = each_mismatch
        self.readers: list[Reader] = []
        """The readers of the streams read so far."""
        self._tail_readers: dict[tuple[str, str], Reader] = {}
        self._seen: set[str] = set()
        self.objects = 0
        """Objects downloaded so far."""
        self.bytes = 0
        """Bytes downloaded so far."""
        Reader(key)  # an unusable key fails here, before anything is listed

    @property
    def damaged(self) -> bool:
        return any(r.damaged for r in self.readers)

    @property
    def key_mismatch(self) -> bool:
        return any(r.key_mismatch for r in self.readers)

    def hosts(self) -> list[str]:
        """The hosts that have shipped to the bucket path, in name order."""
        base = self.url.key() + "/" if self.url.prefix else ""
        self._store.check_bucket()
        return sorted(
            k[len(base) :].rstrip("/")
            for k, size in self._store.list(base, delimiter="/")
            if size < 0
        )

    def _listing(
        self, *, every_day: bool = False
    ) -> list[tuple[str, str, str, tuple[str, int, int, int], str]]:
        """``(host, log prefix, file segment, order, key)`` of every object to read
        (``every_day``: also of the days ``since`` and ``until`` leave out)."""
        from ._s3 import S3Url

        hosts = self.hosts() if self._hosts is None else sorted(set(self._hosts))
        if self._hosts is not None:
            self._store.check_bucket()
        lo = None if every_day else _day_bound(self._since, -2)
        hi = None if every_day else _day_bound(self._until, 2)
        found = []
        for host in hosts:
            base = S3Url(self.url.bucket, self.url.key(host)).key() + "/"
            for k, _size in self._store.list(base):
                parts = k[len(base) :].split("/")
                if len(parts) != 2:
                    continue
                segment, span = parts
                name, _, gen = segment.partition("@")
                m = _LOG_NAME.match(name)
                r = re.match(r"^(\d{16})-(\d{16})$", span)
                if m is None or r is None:
                    continue
                day = m.group("day")
                if (lo is not None and day < lo) or (hi is not None and day > hi):
                    continue
                order = (day, int(m.group("part") or 0), int(gen or 0), int(r.group(1)))
                found.append((host, m.group("prefix"), segment, order, k))
        return found

    def _streams(self) -> list[list[tuple[str, str]]]:
        """Per (host, log prefix): the keys in reading order, with their host."""
        streams: dict[tuple[str, str], list[tuple[tuple[str, int, int, int], str]]] = {}
        for host, prefix, _segment, order, k in self._listing():
            streams.setdefault((host, prefix), []).append((order, k))
        return [[(host, k) for _o, k in sorted(v)] for (host, _p), v in sorted(streams.items())]

    def has_logs(self) -> bool:
        """Whether the bucket path holds any log file ``mmaplog ship`` stored there (of
        the hosts asked for, of any day)."""
        return bool(self._listing(every_day=True))

    def files(self) -> list[tuple[str, str, list[str]]]:
        """``(host, log file, keys in byte order)`` for each shipped log file, in
        host order, then in time order (a file shipped again after it was deleted
        is named ``FILE@N``)."""
        grouped: dict[tuple[str, tuple[str, int, int], str, str], list[tuple[int, str]]] = {}
        for host, prefix, segment, order, k in self._listing():
            grouped.setdefault((host, order[:3], prefix, segment), []).append((order[3], k))
        return [
            (host, segment, [k for _s, k in sorted(keys)])
            for (host, _o, _p, segment), keys in sorted(grouped.items())
        ]

    def fetch(self, key: str) -> tuple[bytes, dict[str, str]]:
        """The bytes and metadata of one object (counted in :attr:`objects`, :attr:`bytes`)."""
        data, meta = self._store.fetch(key)
        self.objects += 1
        self.bytes += len(data)
        return data, meta

    def _reader(self) -> Reader:
        reader = Reader(self._key, self._on_damage, each_mismatch=self._each_mismatch)
        self.readers.append(reader)
        return reader

    def _stream(self, keys: list[tuple[str, str]]) -> Iterator[Record]:
        reader = self._reader()
        for _host, k in keys:
            data, _meta = self.fetch(k)
            for item in reader.iter_data(data, f"s3://{self.url.bucket}/{k}"):
                if isinstance(item, Record):
                    yield item

    def _reader_for(self, stream: tuple[str, str]) -> Reader:
        reader = self._tail_readers.get(stream)
        if reader is None:
            reader = self._tail_readers[stream] = self._reader()
        return reader

    def _records_of(
        self, stream: tuple[str, str], key: str, keep: Callable[[Record], bool] | None
    ) -> list[Record]:
        data, _meta = self.fetch(key)
        source = f"s3://{self.url.bucket}/{key}"
        items = self._reader_for(stream).iter_data(data, source)
        return [r for r in items if isinstance(r, Record) and (keep is None or keep(r))]

    def newest(self, n: int, keep: Callable[[Record], bool] | None = None) -> list[Record]:
        """The ``n`` newest records of the bucket path (of those ``keep`` accepts),
        oldest first: each stream is read backwards from its last object until it has
        ``n`` records, so only the end of the bucket is downloaded. Objects read are
        remembered by :meth:`poll`."""
        self._seen.clear()
        streams: dict[tuple[str, str], list[tuple[tuple[str, int, int, int], str]]] = {}
        for host, prefix, _segment, order, k in self._listing():
            streams.setdefault((host, prefix), []).append((order, k))
            self._seen.add(k)
        tails = []
        for stream, keys in streams.items():
            got: list[Record] = []
            for _order, k in sorted(keys, reverse=True):
                if len(got) >= n:
                    break
                got = self._records_of(stream, k, keep) + got
            tails.append(got[-n:] if n else [])
        merged = list(heapq.merge(*tails, key=attrgetter("time")))
        return merged[max(0, len(merged) - n) :] if n else []

    def poll(self, keep: Callable[[Record], bool] | None = None) -> list[Record]:
        """The records of objects stored since the last :meth:`newest` or :meth:`poll`
        (of those ``keep`` accepts), in time order."""
        seen = self._seen
        new: list[Record] = []
        for host, prefix, _segment, _order, k in sorted(self._listing(), key=lambda t: t[3]):
            if k not in seen:
                seen.add(k)
                new += self._records_of((host, prefix), k, keep)
        new.sort(key=lambda r: r.time)
        return new

    def __iter__(self) -> Iterator[Record]:
        streams = [self._stream(keys) for keys in self._streams()]
        return heapq.merge(*streams, key=attrgetter("time"))


def _day_bound(when: float | None, days: int) -> str | None:
    if when is None:
        return None
    return (_dt.datetime.fromtimestamp(when) + _dt.timedelta(days=days)).strftime("%Y%m%d")


def host_of(source: str) -> str:
    """The host of a record read from a bucket (its source is the object's URL)."""
    parts = source.rsplit("/", 3)
    return parts[-3] if source.startswith("s3://") and len(parts) == 4 else ""
