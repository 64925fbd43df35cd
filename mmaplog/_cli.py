"""The ``mmaplog`` command line: decode, tail, verify, stats, recover, keygen, ship.

The only module that touches ``argv`` and standard output. Errors are one line
on stderr with a documented exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from . import _format as fmt
from ._reader import (
    Marker,
    Reader,
    Record,
    data_kind,
    expand_paths,
    log_files_in,
    read_file,
)
from .exceptions import ConfigError, MmapLogError, NeedKeyError

EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_USAGE = 2
EXIT_STORAGE = 3
EXIT_NO_S3_CLIENT = 4

_STATUS_USAGE = "  2  bad usage, a file that cannot be read or is not a log, or an encrypted\n"
_STATUS_USAGE += "     log without --key\n"

MAIN_EPILOG = """\
exit status (every command):
  0  success
  1  damage was found, the key does not match, or recovery was refused (a live
     process holds the cache)
  2  bad usage, a missing or unreadable file, input that is not an mmaplog log,
     or an encrypted log without --key
  3  s3:// only: the object storage refused (bad credentials, a missing bucket)
     or stayed unreachable through the retries
  4  s3:// only: the S3 client is not installed (pip install "mmaplog[s3]")

Run `mmaplog COMMAND --help` for the options of a command.
"""

DECODE_EPILOG = (
    """\
Filters use each record's stored time and level (no text is parsed). T is an
ISO 8601 date or date and time (local time unless it has a zone: 2026-11-25,
2026-11-25T14:30, 2026-11-25 14:30:00+01:00) or a time ago: 30s, 10m, 2h, 3d,
1w. --since and --until are inclusive. LEVEL is a name (DEBUG, INFO, WARNING,
ERROR, CRITICAL, any case), xlog's letter (V D I W E F) or a number; records at
or above it are printed.

A progress bar is drawn on stderr when it is a terminal and stdout is not.

exit status:
  0  every block decoded
  1  damage was found (the damaged byte ranges are listed on stderr and every
     intact block is still printed) or the key does not match
"""
    + _STATUS_USAGE
)

TAIL_EPILOG = (
    """\
The newest records of the folder's log files and of the caches (*.mmap) in it,
including the records a running process has not moved to its log file yet.
Caches are read without their lock and never written. With -f, new records are
printed as they arrive (polled every 0.2 s) until Ctrl-C.

exit status:
  0  success (also when -f is stopped with Ctrl-C)
  1  damage was found (listed on stderr) or the key does not match
"""
    + _STATUS_USAGE
)

VERIFY_EPILOG = (
    """\
Every block is checked: header and payload checksums, decompression, record
framing, and decryption when --key is given. Without --key, encrypted blocks
are checked by their checksums only (the summary says how many). A progress bar
is drawn on stderr when it is a terminal.

exit status:
  0  every block is intact
  1  damage was found (the damaged byte ranges are listed) or the key does not
     match
"""
    + _STATUS_USAGE
)

STATS_EPILOG = """\
Counts come from the block headers: nothing is decompressed, so no key is
needed. The compression ratio is the records' raw size over the bytes the
blocks take on disk, for whole-form blocks (the ones a running process moves).
Blocks moved by recovery after a crash are in stream form, whose header does not
record the raw size: they are counted in blocks and records but left out of the
ratio, and listed on their own line.

exit status:
  0  success
  1  damage was found in a log file (run `mmaplog verify` for the ranges)
  2  bad usage, or a folder that is missing or cannot be read
"""

RECOVER_EPILOG = """\
exit status:
  0  recovered (or nothing to do)
  1  a cache is held by a live process, is of an unknown newer format, or could
     not be recovered
  2  bad usage, or a path (or --log-dir) that does not exist
"""

KEYGEN_EPILOG = """\
exit status:
  0  the key pair was made
  2  bad usage, or the key file exists already or cannot be created
"""

SHIP_EPILOG = """\
Uploads the whole blocks of the folder's log files (never the caches) to
URL/HOST/FILE/START-END, exactly as they are on disk: compressed, and encrypted
when the logs are. A state file in the folder (.mmaplog-ship-*.json) records how
far each file has gone, so a shipper killed at any moment and started again
leaves every block in the bucket exactly once. Storage settings are the AWS ones:
AWS_ENDPOINT_URL (or --endpoint-url), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or
~/.aws/credentials. Failures that may pass (connection refused, timeouts,
throttling, 5xx) are retried with backoff for --retry-for seconds; with --follow
an outage of any length is waited out.

With --delete-shipped, a log file of a past day is deleted once every byte of it
is in the bucket with the same size and SHA-256 (checked against the bucket
before deleting); today's files and files changed in the last minute are kept.

exit status:
  0  everything in the log files is shipped (with --follow: stopped by Ctrl-C)
  1  another shipper holds this folder, or its state file is unreadable
  2  bad usage: a malformed URL or host, or a missing log folder
  3  the storage refused (bad credentials, a missing bucket) or stayed
     unreachable through the retries
  4  the S3 client is not installed (pip install "mmaplog[s3]")
"""

_POLL_INTERVAL = 0.2


def _err(prog: str, message: str) -> None:
    _Progress.clear_current()
    print(f"{prog}: {message}", file=sys.stderr)


def _read_key(value: str | None) -> str | bytes | None:
    if value is None:
        return None
    if os.path.exists(value):
        with open(value, "rb") as f:
            return f.read()
    return value


def _make_reader(
    prog: str, key: str | None, on_damage: Callable[[str, fmt.Damage], None] | None
) -> Reader | None:
    """A reader with the private key of ``--key``; None (reported) when the key is unusable."""
    try:
        return Reader(_read_key(key), on_damage, markers=True)
    except ConfigError as exc:
        _err(prog, f"--key: {exc}")
    except OSError as exc:
        _err(prog, f"--key: {exc.strerror or exc}")
    return None


def _format_text(item: Record | Marker) -> str:
    if isinstance(item, Marker):
        return item.text
    if item.kind == fmt.KIND_NOTE:
        return f"-- {item.text} --"
    return item.text


def _format_json(item: Record | Marker) -> str:
    if isinstance(item, Marker):
        return json.dumps({"marker": item.text})
    if item.kind == fmt.KIND_JSON:
        try:
            obj = json.loads(item.text)
            if isinstance(obj, dict):
                return json.dumps(obj, ensure_ascii=False)
        except ValueError:
            pass
    stamp = _dt.datetime.fromtimestamp(item.time).astimezone().isoformat(timespec="milliseconds")
    # Records keep the rendered line, not the logger's name: it is read back from
    # lines in xlog's layout (the default formatter's), and is null otherwise.
    m = _XLOG_LOGGER.match(item.text)
    return json.dumps(
        {
            "time": stamp,
            "level": item.levelname,
            "logger": m.group(1) if m else None,
            "pid": item.pid,
            "session": item.session,
            "message": item.text,
        },
        ensure_ascii=False,
    )


_XLOG_LOGGER = re.compile(r"\[[VDIWEF]\]\[[^\]]*\]\[[^\]]*\]\[([^\]]*)\]\[")


# -- argument types ---------------------------------------------------------------------

_LEVELS = {
    "NOTSET": logging.NOTSET,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
    # xlog's letters; V(erbose) is anything below DEBUG.
    "V": logging.NOTSET,
    "D": logging.DEBUG,
    "I": logging.INFO,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.CRITICAL,
}

_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_AGO_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_level(value: str) -> int:
    """A level name, xlog letter or number, as ``--level`` takes it."""
    text = value.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    level = _LEVELS.get(text.upper())
    if level is None:
        names = "DEBUG, INFO, WARNING, ERROR, CRITICAL, V/D/I/W/E/F or a number"
        raise argparse.ArgumentTypeError(f"unknown level {value!r} (expected {names})")
    return level


def parse_time(value: str, now: float | None = None) -> float:
    """Seconds since the epoch for an ISO 8601 date/time (local unless zoned) or ``10m`` ago."""
    m = _AGO.match(value)
    if m is not None:
        base = time.time() if now is None else now
        return base - float(m.group(1)) * _AGO_SECONDS[m.group(2)]
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {value!r} (expected an ISO 8601 date or date and time, "
            "e.g. 2026-11-25 or 2026-11-25T14:30:00, or a time ago: 30s, 10m, 2h, 3d, 1w)"
        ) from None
    # A naive time is local time: astimezone() on a naive datetime assumes exactly that.
    return when.astimezone().timestamp()


def parse_regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"bad regular expression {value!r}: {exc}") from None


def parse_count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of records >= 0, got {value!r}")
    return n


# -- progress bar -----------------------------------------------------------------------


class _Progress:
    """An ASCII progress bar on stderr, by bytes, for reads that take a while.

    Nothing is drawn unless ``enabled`` (stderr is a terminal), nor before
    ``_DELAY`` seconds have passed (short reads do not flicker); then at most
    ``_RATE`` times a second. ``close`` erases it.
    """

    _DELAY = 0.5
    _RATE = 5.0
    _current: _Progress | None = None

    def __init__(self, total: int, *, enabled: bool, label: str) -> None:
        self.total = total
        self.enabled = enabled and total > 0
        self.label = label
        self._shown = 0
        self._next = time.monotonic() + self._DELAY

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 1.0 / self._RATE
        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except OSError:
            width = 0
        width = width or 80  # a terminal that does not know its size says 0
        done = min(done, self.total)
        pct = done * 100 // self.total
        tail = f" {pct:3d}% {_human(done)}/{_human(self.total)}"
        bar_width = max(10, min(40, width - len(self.label) - len(tail) - 4))
        filled = bar_width * done // self.total
        line = f"{self.label} [{'#' * filled}{'.' * (bar_width - filled)}]{tail}"
        line = line[: max(1, width - 1)]
        pad = " " * max(0, self._shown - len(line))
        sys.stderr.write(f"\r{line}{pad}")
        sys.stderr.flush()
        self._shown = len(line)
        _Progress._current = self

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r" + " " * self._shown + "\r")
            sys.stderr.flush()
            self._shown = 0

    def close(self) -> None:
        self.clear()
        if _Progress._current is self:
            _Progress._current = None

    @classmethod
    def clear_current(cls) -> None:
        """Erase the bar before a message is printed on stderr (it is redrawn later)."""
        if cls._current is not None:
            cls._current.clear()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _total_size(paths: list[str]) -> int:
    total = 0
    for path in paths:
        if path != "-":
            with contextlib.suppress(OSError):
                total += os.path.getsize(path)
    return total


# -- reading inputs ---------------------------------------------------------------------


def _inputs(paths: list[str]) -> Iterator[tuple[str, bytes | Any]]:
    for path in expand_paths(paths):
        if path == "-":
            yield "<stdin>", sys.stdin.buffer.read()
            continue
        yield path, read_file(path)


def _close(data: object) -> None:
    close = getattr(data, "close", None)
    if close is not None:
        close()


def _is_log(data: fmt.Buffer) -> bool:
    """Whether ``data`` is empty, starts like a log or cache, or holds any intact block."""
    if not data or data[:4] in (fmt.BLOCK_MAGIC, fmt.CACHE_MAGIC):
        return True
    from ._xlog import looks_like_xlog

    if looks_like_xlog(data if isinstance(data, bytes) else memoryview(data)):
        return True
    return any(isinstance(item, fmt.ScannedBlock) for item in fmt.scan_blocks(data))


def _missing(prog: str, paths: list[str]) -> bool:
    """Report each path that does not exist; True when there was one."""
    missing = False
    for path in paths:
        if path != "-" and not os.path.exists(path):
            _err(prog, f"{path}: no such file or folder")
            missing = True
    return missing


def _iter_blocks(
    reader: Reader,
    data: fmt.Buffer,
    source: str,
    *,
    start: int = 0,
    base: int = 0,
    want: Callable[[fmt.BlockHeader], bool] | None = None,
) -> Iterator[tuple[fmt.ScannedBlock, list[Record | Marker]] | fmt.Damage]:
    """The intact blocks of a log image with their records, and the damage between them.

    Offsets in what is yielded are relative to ``data``; records and damage inside
    a block are reported at ``base`` + offset. A block ``want`` refuses is yielded
    with no records and not decoded.
    """
    for item in fmt.scan_blocks(data, start):
        if isinstance(item, fmt.Damage):
            yield item
        elif want is not None and not want(item.header):
            yield item, []
        else:
            h = item.header
            yield item, list(reader.iter_block(h, item.payload, base + item.offset, source))


# -- decode -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Filter:
    level: int | None
    since: float | None
    until: float | None
    grep: re.Pattern[str] | None

    @property
    def active(self) -> bool:
        return not (
            self.level is None and self.since is None and self.until is None and not self.grep
        )

    def keeps(self, r: Record) -> bool:
        if self.level is not None and r.level < self.level:
            return False
        if self.since is not None and r.time < self.since:
            return False
        if self.until is not None and r.time > self.until:
            return False
        return self.grep is None or self.grep.search(r.text) is not None

    def wants_block(self, h: fmt.BlockHeader) -> bool:
        # A whole-form block's last_time_us is the largest time in it, so a block
        # wholly before --since need not be decompressed. A recovered (stream-form)
        # block's may fall back to its first time after a torn commit: always read.
        return self.since is None or h.stream or h.last_time_us / 1e6 >= self.since


def cmd_decode(args: argparse.Namespace) -> int:
    prog = "mmaplog decode"

    def on_damage(src: str, d: fmt.Damage) -> None:
        _err(prog, f"{src}: bytes {d.start}-{d.end} skipped: {d.reason}")

    reader = _make_reader(prog, args.key, on_damage)
    if reader is None:
        return EXIT_USAGE
    filt = _Filter(args.level, args.since, args.until, args.grep)
    if any(f.startswith("s3://") for f in args.files):
        return _decode_bucket(args, filt, on_damage)
    render = _format_json if args.format == "json" else _format_text
    scan_damaged = False

    def decode_log(
        data: fmt.Buffer, source: str, progress: _Progress, done: int
    ) -> Iterator[Record | Marker]:
        nonlocal scan_damaged
        for item in _iter_blocks(reader, data, source, want=filt.wants_block):
            if isinstance(item, fmt.Damage):
                scan_damaged = True
                on_damage(source, item)
                continue
            block, records = item
            yield from records
            progress.update(done + block.end)

    out: IO[str]
    with contextlib.ExitStack() as stack:
        if args.output and args.output != "-":
            try:
                out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
            except OSError as exc:
                _err(prog, f"{args.output}: cannot write: {exc.strerror}")
                return EXIT_USAGE
        else:
            out = sys.stdout
        if _missing(prog, args.files):
            return EXIT_USAGE
        try:
            paths = expand_paths(args.files)
            # Records scrolling on the terminal are progress enough: no bar over them.
            on_tty = out is sys.stdout and sys.stdout.isatty()
            progress = _Progress(
                _total_size(paths), enabled=sys.stderr.isatty() and not on_tty, label="decode"
            )
            stack.callback(progress.close)
            done = 0
            pending: Marker | None = None
            for source, data in _inputs(paths):
                if not _is_log(data):
                    _close(data)
                    _err(prog, f"{source}: not an mmaplog file")
                    return EXIT_USAGE
                try:
                    if data_kind(data) == "log":
                        items = decode_log(data, source, progress, done)
                    else:
                        items = reader.iter_data(data, source)
                    for item in items:
                        if isinstance(item, Marker):
                            if filt.active:
                                # Printed only before a record that passes the filters.
                                pending = item
                                continue
                        elif not filt.keeps(item):
                            continue
                        elif pending is not None:
                            out.write(render(pending))
                            out.write("\n")
                            pending = None
                        out.write(render(item))
                        out.write("\n")
                finally:
                    if source != "<stdin>":
                        done += len(data)
                    progress.update(done)
                    _close(data)
        except (OSError, MmapLogError) as exc:
            return _reading_failed(prog, exc)
    if reader.key_mismatch:
        _err(prog, "the key does not match (no record of those blocks authenticates with it)")
    return EXIT_DAMAGED if reader.damaged or scan_damaged else EXIT_OK


def _storage_failed(prog: str, exc: MmapLogError) -> int:
    """One line for an error of the object storage path; its exit status."""
    from .exceptions import MissingDependencyError, StorageError

    _err(prog, str(exc))
    if isinstance(exc, MissingDependencyError):
        return EXIT_NO_S3_CLIENT
    if isinstance(exc, StorageError):
        return EXIT_STORAGE
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return EXIT_DAMAGED


def _decode_bucket(
    args: argparse.Namespace, filt: _Filter, on_damage: Callable[[str, fmt.Damage], None]
) -> int:
    """``mmaplog decode s3://...``: every host's records merged by time, host first."""
    from ._reader import BucketSource, host_of

    prog = "mmaplog decode"
    if not all(f.startswith("s3://") for f in args.files) or len(args.files) != 1:
        _err(prog, "give one s3:// URL, or local files and folders, not both")
        return EXIT_USAGE
    try:
        source = BucketSource(
            args.files[0],
            key=_read_key(args.key),
            on_damage=on_damage,
            hosts=args.host,
            since=args.since,
            until=args.until,
            endpoint_url=args.endpoint_url,
        )
        out: IO[str] = sys.stdout
        with contextlib.ExitStack() as stack:
            if args.output and args.output != "-":
                out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
            for r in source:
                if not filt.keeps(r):
                    continue
                host = host_of(r.source)
                if args.format == "json":
                    obj = json.loads(_format_json(r))
                    out.write(json.dumps({"host": host, **obj}, ensure_ascii=False))
                else:
                    out.write(f"{host} | {_format_text(r)}")
                out.write("\n")
    except OSError as exc:
        return _reading_failed(prog, exc)
    except MmapLogError as exc:
        return _storage_failed(prog, exc)
    if source.key_mismatch:
        _err(prog, "the key does not match (no record of those blocks authenticates with it)")
    return EXIT_DAMAGED if source.damaged else EXIT_OK


def _reading_failed(prog: str, exc: OSError | MmapLogError, name: str = "") -> int:
    """Say in one line what went wrong while reading input; return the exit status."""
    if isinstance(exc, BrokenPipeError):
        return _broken_pipe()
    if isinstance(exc, OSError):
        _err(prog, f"{exc.filename or name}: cannot read: {exc.strerror or exc}")
    else:  # NeedKeyError and the other mmaplog errors carry their own message
        _err(prog, str(exc))
    return EXIT_USAGE


def _broken_pipe() -> int:
    # The reader went away (`mmaplog decode logs | head`): stop quietly, and keep
    # the interpreter from complaining when it flushes stdout at exit.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


# -- tail -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    time: float
    record: Record
    marker: str | None = None


@dataclass(slots=True)
class _Tail:
    """Reads a log folder's new records: log files by offset, caches whole each time.

    A record moves from a cache to a log file (the flusher re-encodes its block
    whole; recovery copies it in stream form), so the same record can be seen
    twice. It is recognised by ``(session, seq, index in block)``: a block is
    named uniquely by ``(session, seq)`` (a forked child takes a new session),
    and both forms keep the block's records in the same order, so the index is
    stable. And any read of a block (a cache slot's chunk walk, a log block)
    yields a prefix of its records, so one number per block is enough: how many
    of its records have been seen. ``(session, time, text)`` was rejected: two
    identical messages in the same microsecond (a loop, a coarse clock, a
    caller-set ``created``) are distinct records it would merge, and it would
    have to keep every text. Records without a session (xlog) live in log files
    only and are read once by offset, so they need no key.
    """

    folder: str
    prefix: str | None
    log_reader: Reader
    cache_reader: Reader
    offsets: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    xlog_counts: dict[str, int] = field(default_factory=dict)
    seen: dict[tuple[str, int], int] = field(default_factory=dict)
    marked: set[str] = field(default_factory=set)
    unreadable: set[str] = field(default_factory=set)
    images: dict[str, bytes] = field(default_factory=dict)
    damaged: bool = False

    def log_files(self) -> list[str]:
        return log_files_in(self.folder, self.prefix)

    def cache_files(self) -> list[str]:
        if self.prefix is None:
            pattern = re.compile(r"^.+\.mmap$")
        else:
            pattern = re.compile(rf"^{re.escape(self.prefix)}(?:\.\d+)?\.mmap$")
        names = sorted(n for n in os.listdir(self.folder) if pattern.match(n))
        return [os.path.join(self.folder, n) for n in names]

    def _new(self, records: list[Record]) -> list[_Line]:
        """The records of one block not seen before."""
        if not records:
            return []
        first = records[0]
        if not first.session:
            return [_Line(r.time, r) for r in records]
        key = (first.session, first.seq)
        seen = self.seen.get(key, 0)
        if len(records) <= seen:
            return []
        self.seen[key] = len(records)
        lines = [_Line(r.time, r) for r in records[seen:]]
        if first.recovered and first.session not in self.marked:
            self.marked.add(first.session)
            lines[0].marker = f"-- recovered after a crash of pid {first.pid} --"
        return lines

    def read_log(self, path: str) -> list[_Line]:
        offset = self.offsets.get(path, 0)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            self.offsets.pop(path, None)
            self.sizes.pop(path, None)
            return []
        if size < offset:  # replaced or truncated: read it again
            offset = 0
        if size == offset or size == self.sizes.get(path):
            return []
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size - offset)
        self.sizes[path] = size
        if offset == 0 and data_kind(data) == "xlog":
            return self._read_xlog(path, data)
        lines: list[_Line] = []
        end = 0
        pending: fmt.Damage | None = None
        for item in _iter_blocks(self.log_reader, data, path, base=offset):
            if isinstance(item, fmt.Damage):
                pending = item
                continue
            block, records = item
            if pending is not None:
                # Damage followed by an intact block is for good; damage at the
                # end may be a block being written: wait for the rest of it.
                self._report(path, pending, offset)
                pending = None
            end = block.end
            lines.extend(self._new([r for r in records if isinstance(r, Record)]))
        self.offsets[path] = offset + end
        return lines

    def _read_xlog(self, path: str, data: bytes) -> list[_Line]:
        records = [r for r in self.log_reader.iter_data(data, path) if isinstance(r, Record)]
        seen = self.xlog_counts.get(path, 0)
        self.xlog_counts[path] = len(records)
        return [_Line(r.time, r) for r in records[seen:]]

    def _report(self, path: str, d: fmt.Damage, base: int) -> None:
        self.damaged = True
        _err("mmaplog tail", f"{path}: bytes {base + d.start}-{base + d.end} skipped: {d.reason}")

    def read_caches(self) -> list[_Line]:
        lines: list[_Line] = []
        for path in self.cache_files():
            try:
                # Plain reads, never a mapping (no SIGBUS) and never the lock: the
                # chunk checksums tell whole records from the one being written.
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            except OSError as exc:
                if path not in self.unreadable:
                    self.unreadable.add(path)
                    _err("mmaplog tail", f"{path}: cannot read: {exc.strerror or exc}")
                continue
            if data[:4] != fmt.CACHE_MAGIC or self.images.get(path) == data:
                continue  # not a cache, or nothing written since the last poll
            self.images[path] = data
            block: list[Record] = []
            for item in self.cache_reader.iter_data(data, path):
                if not isinstance(item, Record):
                    continue
                if block and (item.session, item.seq) != (block[0].session, block[0].seq):
                    lines.extend(self._new(block))
                    block = []
                block.append(item)
            lines.extend(self._new(block))
        return lines

    def snapshot(self, n: int) -> list[_Line]:
        """The newest ``n`` records, and every file's offset set to its end."""
        files = self.log_files()
        chunks: list[list[_Line]] = []
        count = 0
        for path in reversed(files):
            if count >= n and path.endswith(".mmlog"):
                # Older than the records wanted: only blocks added later will be read.
                with contextlib.suppress(OSError):
                    self.offsets[path] = self.sizes[path] = os.stat(path).st_size
                continue
            chunk = self.read_log(path)
            chunks.append(chunk)
            count += len(chunk)
        lines = [line for chunk in reversed(chunks) for line in chunk]
        lines.extend(self.read_caches())
        lines.sort(key=lambda line: line.time)
        return lines[len(lines) - n :] if n else []

    def poll(self) -> list[_Line]:
        lines: list[_Line] = []
        for path in self.log_files():
            lines.extend(self.read_log(path))
        lines.extend(self.read_caches())
        lines.sort(key=lambda line: line.time)
        return lines


def _tail_bucket(args: argparse.Namespace) -> int:
    """``mmaplog tail s3://...``: the newest records of every host, merged by time;
    with -f, the records of new objects as the shippers store them."""
    from ._reader import BucketSource, host_of

    prog = "mmaplog tail"

    def on_damage(src: str, d: fmt.Damage) -> None:
        _err(prog, f"{src}: bytes {d.start}-{d.end} skipped: {d.reason}")

    def show(records: list[Record]) -> None:
        for r in records:
            sys.stdout.write(f"{host_of(r.source)} | {_format_text(r)}\n")
        sys.stdout.flush()

    try:
        source = BucketSource(
            args.log_dir,
            key=_read_key(args.key),
            on_damage=on_damage,
            hosts=args.host,
            endpoint_url=args.endpoint_url,
        )
        show(source.newest(args.lines))
        while args.follow:
            time.sleep(_BUCKET_POLL_INTERVAL)
            show(source.poll())
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as exc:
        return _reading_failed(prog, exc)
    except NeedKeyError as exc:
        _err(prog, str(exc))
        return EXIT_USAGE
    except MmapLogError as exc:
        return _storage_failed(prog, exc)
    return EXIT_DAMAGED if source.damaged else EXIT_OK


_BUCKET_POLL_INTERVAL = 2.0


def _print_lines(lines: list[_Line]) -> None:
    out = sys.stdout
    for line in lines:
        if line.marker is not None:
            out.write(line.marker)
            out.write("\n")
        out.write(_format_text(line.record))
        out.write("\n")
    out.flush()


def _is_log_folder(prog: str, folder: str) -> bool:
    """Whether ``folder`` is a folder; if not, say so in one line."""
    if not os.path.exists(folder):
        _err(prog, f"{folder}: no such folder")
        return False
    if not os.path.isdir(folder):
        _err(prog, f"{folder}: not a folder (give the log folder)")
        return False
    return True


def cmd_tail(args: argparse.Namespace) -> int:
    prog = "mmaplog tail"
    folder = args.log_dir
    if folder.startswith("s3://"):
        return _tail_bucket(args)
    if not _is_log_folder(prog, folder):
        return EXIT_USAGE

    def on_damage(src: str, d: fmt.Damage) -> None:
        _err(prog, f"{src}: bytes {d.start}-{d.end} skipped: {d.reason}")

    log_reader = _make_reader(prog, args.key, on_damage)
    # A cache is read while its writer works on it: a torn read is not damage.
    cache_reader = _make_reader(prog, args.key, None)
    if log_reader is None or cache_reader is None:
        return EXIT_USAGE
    log_reader.markers = cache_reader.markers = False
    tail = _Tail(folder, args.prefix, log_reader, cache_reader)
    stop = threading.Event()
    previous: Any = None
    if args.follow:
        # Ctrl-C sets a flag checked between polls, so it never lands mid-line.
        previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        _print_lines(tail.snapshot(args.lines))
        while args.follow and not stop.is_set():
            stop.wait(_POLL_INTERVAL)
            if not stop.is_set():
                _print_lines(tail.poll())
    except (OSError, MmapLogError) as exc:
        return _reading_failed(prog, exc, folder)
    finally:
        if args.follow:
            signal.signal(signal.SIGINT, previous)
    if log_reader.key_mismatch or cache_reader.key_mismatch:
        _err(prog, "the key does not match (no record of those blocks authenticates with it)")
        return EXIT_DAMAGED
    return EXIT_DAMAGED if tail.damaged or log_reader.damaged else EXIT_OK


# -- verify -----------------------------------------------------------------------------


@dataclass(slots=True)
class _FileCheck:
    path: str
    kind: str
    blocks: int = 0
    records: int = 0
    unverified: int = 0
    damage: list[fmt.Damage] = field(default_factory=list)


def _check_sealed_block(block: fmt.ScannedBlock, check: _FileCheck) -> None:
    """Without the key: the checksums of an encrypted block (its chunks' too, in stream form)."""
    h = block.header
    check.unverified += 1
    if not h.stream:
        check.records += h.count
        return
    bodies, end = fmt.walk_chunks(block.payload, fmt.chunk_seed(h.session, h.seq))
    check.records += len(bodies)
    if end != len(block.payload):
        start = block.offset + h.header_len + end
        check.damage.append(
            fmt.Damage(
                start,
                block.end,
                f"block at offset {block.offset}: chunk at payload offset {end} is damaged",
            )
        )


def cmd_verify(args: argparse.Namespace) -> int:
    prog = "mmaplog verify"
    checks: dict[str, _FileCheck] = {}

    def on_damage(src: str, d: fmt.Damage) -> None:
        check = checks.get(src)
        if check is not None:
            check.damage.append(d)

    reader = _make_reader(prog, args.key, on_damage)
    if reader is None:
        return EXIT_USAGE
    have_key = args.key is not None
    if any(f.startswith("s3://") for f in args.files):
        return _verify_bucket(args, reader, checks)
    status = EXIT_USAGE if _missing(prog, args.files) else EXIT_OK
    present = [p for p in args.files if p == "-" or os.path.exists(p)]
    try:
        paths = expand_paths(present)
    except OSError as exc:
        _err(prog, f"{exc.filename or ''}: cannot read: {exc.strerror or exc}")
        return EXIT_USAGE
    progress = _Progress(_total_size(paths), enabled=sys.stderr.isatty(), label="verify")
    done = 0
    try:
        for path in paths:
            source = "<stdin>" if path == "-" else path
            try:
                data = sys.stdin.buffer.read() if path == "-" else read_file(path)
            except OSError as exc:
                _err(prog, f"{source}: cannot read: {exc.strerror or exc}")
                status = EXIT_USAGE
                continue
            try:
                if not _is_log(data):
                    _err(prog, f"{source}: not an mmaplog file")
                    status = EXIT_USAGE
                    continue
                kind = data_kind(data)
                check = checks[source] = _FileCheck(source, kind)
                if kind == "log":
                    _verify_log(reader, data, check, have_key, progress, done)
                else:
                    blocks: set[tuple[str, int]] = set()
                    for item in reader.iter_data(data, source):
                        if isinstance(item, Record):
                            check.records += 1
                            blocks.add((item.session, item.seq))
                    check.blocks = len(blocks)
            except NeedKeyError as exc:
                _err(prog, str(exc))
                status = EXIT_USAGE
                checks.pop(source, None)
            finally:
                done += len(data)
                progress.update(done)
                _close(data)
    finally:
        progress.close()
    try:
        _print_verify(list(checks.values()), have_key)
    except BrokenPipeError:
        return _broken_pipe()
    if reader.key_mismatch:
        _err(prog, "the key does not match (no record of those blocks authenticates with it)")
    if status == EXIT_OK and any(c.damage for c in checks.values()):
        status = EXIT_DAMAGED
    return status


def _verify_bucket(args: argparse.Namespace, reader: Reader, checks: dict[str, _FileCheck]) -> int:
    """``mmaplog verify s3://...``: each object's SHA-256 against the one stored at
    upload, every block in it, and each log file's objects meeting end to end."""
    import hashlib

    from ._reader import BucketSource
    from ._ship import parse_object_key

    prog = "mmaplog verify"
    if len(args.files) != 1 or not args.files[0].startswith("s3://"):
        _err(prog, "give one s3:// URL, or local files and folders, not both")
        return EXIT_USAGE
    have_key = args.key is not None
    progress = _Progress(0, enabled=False, label="verify")
    try:
        source = BucketSource(args.files[0], hosts=args.host, endpoint_url=args.endpoint_url)
        for _host, _name, keys in source.files():
            at = 0
            for k in keys:
                data, meta = source.fetch(k)
                url = f"s3://{source.url.bucket}/{k}"
                check = checks[url] = _FileCheck(url, data_kind(data))
                span = parse_object_key(k)
                if span is not None and span[2] > at:
                    check.damage.append(
                        fmt.Damage(
                            at, span[2], f"bytes {at}-{span[2]} of the file are not in the bucket"
                        )
                    )
                at = max(at, span[3] if span is not None else at)
                stored = meta.get("sha256")
                if stored is not None and hashlib.sha256(data).hexdigest() != stored:
                    check.damage.append(
                        fmt.Damage(0, len(data), "SHA-256 differs from the one stored at upload")
                    )
                if check.kind == "log":
                    _verify_log(reader, data, check, have_key, progress, 0)
                else:
                    check.records += sum(
                        1 for r in reader.iter_data(data, url) if isinstance(r, Record)
                    )
    except OSError as exc:
        return _reading_failed(prog, exc)
    except NeedKeyError as exc:
        _err(prog, str(exc))
        return EXIT_USAGE
    except MmapLogError as exc:
        return _storage_failed(prog, exc)
    _print_verify(list(checks.values()), have_key)
    if reader.key_mismatch:
        _err(prog, "the key does not match (no record of those blocks authenticates with it)")
    return EXIT_DAMAGED if any(c.damage for c in checks.values()) else EXIT_OK


def _verify_log(
    reader: Reader,
    data: fmt.Buffer,
    check: _FileCheck,
    have_key: bool,
    progress: _Progress,
    done: int,
) -> None:
    def want(h: fmt.BlockHeader) -> bool:
        return have_key or not h.encrypted

    for item in _iter_blocks(reader, data, check.path, want=want):
        if isinstance(item, fmt.Damage):
            check.damage.append(item)
            continue
        block, records = item
        check.blocks += 1
        if want(block.header):
            check.records += sum(1 for r in records if isinstance(r, Record))
        else:
            _check_sealed_block(block, check)
        progress.update(done + block.end)


def _print_verify(checks: list[_FileCheck], have_key: bool) -> None:
    out = sys.stdout
    for c in checks:
        what = "cache file: " if c.kind == "cache" else "xlog file: " if c.kind == "xlog" else ""
        ranges = len(c.damage)
        state = "ok" if not ranges else f"{ranges} damaged range{'s' if ranges != 1 else ''}"
        out.write(f"{c.path}: {what}{c.blocks} blocks, {c.records} records: {state}\n")
        for d in sorted(c.damage, key=lambda d: d.start):
            out.write(f"  bytes {d.start}-{d.end} ({d.end - d.start} bytes): {d.reason}\n")
    ranges = sum(len(c.damage) for c in checks)
    damaged_bytes = sum(d.end - d.start for c in checks for d in c.damage)
    out.write(
        f"total: {len(checks)} files, {sum(c.blocks for c in checks)} blocks, "
        f"{sum(c.records for c in checks)} records, {ranges} damaged "
        f"range{'s' if ranges != 1 else ''} ({damaged_bytes} bytes)\n"
    )
    unverified = sum(c.unverified for c in checks)
    if unverified and not have_key:
        out.write(
            f"{unverified} encrypted blocks were checked by their checksums only "
            "(give --key to decrypt and check their records)\n"
        )
    out.flush()


# -- stats ------------------------------------------------------------------------------


@dataclass(slots=True)
class _FileStats:
    path: str
    size: int
    blocks: int = 0
    records: int = 0
    stream_blocks: int = 0
    stream_bytes: int = 0
    whole_raw: int = 0
    whole_bytes: int = 0
    first_us: int | None = None
    last_us: int | None = None
    damaged_bytes: int = 0
    note: str = ""


def _file_stats(path: str, data: bytes | Any = None) -> _FileStats:
    data = read_file(path) if data is None else data
    try:
        st = _FileStats(path, len(data))
        if data and data_kind(data) != "log":
            st.note = "not counted (not an mmaplog log file)"
            return st
        for item in fmt.scan_blocks(data):
            if isinstance(item, fmt.Damage):
                st.damaged_bytes += item.end - item.start
                continue
            h = item.header
            st.blocks += 1
            st.records += h.count
            on_disk = h.header_len + h.payload_len
            if h.stream:
                st.stream_blocks += 1
                st.stream_bytes += on_disk
            else:
                st.whole_raw += h.raw_len
                st.whole_bytes += on_disk
            first = h.first_time_us
            last = max(h.last_time_us, first)
            st.first_us = first if st.first_us is None else min(st.first_us, first)
            st.last_us = last if st.last_us is None else max(st.last_us, last)
        return st
    finally:
        _close(data)


def _stamp(time_us: int | None) -> str:
    if time_us is None:
        return "-"
    when = _dt.datetime.fromtimestamp(time_us / 1e6).astimezone()
    return (
        when.strftime("%Y-%m-%d %H:%M:%S.")
        + f"{when.microsecond // 1000:03d}"
        + when.strftime(" %z")
    )


def _span(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s"


def cmd_stats(args: argparse.Namespace) -> int:
    prog = "mmaplog stats"
    folder = args.log_dir
    if folder.startswith("s3://"):
        return _stats_bucket(args)
    if not _is_log_folder(prog, folder):
        return EXIT_USAGE
    try:
        stats = [_file_stats(p) for p in log_files_in(folder, args.prefix)]
    except OSError as exc:
        _err(prog, f"{exc.filename or folder}: cannot read: {exc.strerror or exc}")
        return EXIT_USAGE
    try:
        _print_stats(folder, stats)
    except BrokenPipeError:
        return _broken_pipe()
    return EXIT_DAMAGED if any(s.damaged_bytes for s in stats) else EXIT_OK


def _stats_bucket(args: argparse.Namespace) -> int:
    """``mmaplog stats s3://...``: a table per host, from the block headers of the
    objects (one log file's objects in memory at a time)."""
    from ._reader import BucketSource

    prog = "mmaplog stats"
    try:
        source = BucketSource(args.log_dir, hosts=args.host, endpoint_url=args.endpoint_url)
        per_host: dict[str, list[_FileStats]] = {}
        for host, name, keys in source.files():
            if args.prefix is not None and not name.startswith(args.prefix + "_"):
                continue
            data = b"".join(source.fetch(k)[0] for k in keys)
            per_host.setdefault(host, []).append(_file_stats(name, data))
        for host, stats in per_host.items():
            sys.stdout.write(f"== {source.url}/{host}\n")
            _print_stats(f"{source.url}/{host}", stats)
        if not per_host:
            sys.stdout.write(f"{source.url}: no shipped log files\n")
    except OSError as exc:
        return _reading_failed(prog, exc)
    except MmapLogError as exc:
        return _storage_failed(prog, exc)
    damaged = any(s.damaged_bytes for stats in per_host.values() for s in stats)
    return EXIT_DAMAGED if damaged else EXIT_OK


def _print_stats(folder: str, stats: list[_FileStats]) -> None:
    out = sys.stdout
    if not stats:
        out.write(f"{folder}: no log files\n")
        return
    name_width = max(len(os.path.basename(s.path)) for s in stats)
    out.write(
        f"{'file':<{name_width}}  {'size':>10}  {'blocks':>7}  {'records':>9}  "
        f"{'first record':<29}  last record\n"
    )
    for s in stats:
        name = os.path.basename(s.path)
        if s.note:
            out.write(f"{name:<{name_width}}  {_human(s.size):>10}  {s.note}\n")
            continue
        out.write(
            f"{name:<{name_width}}  {_human(s.size):>10}  {s.blocks:>7}  {s.records:>9}  "
            f"{_stamp(s.first_us):<29}  {_stamp(s.last_us)}\n"
        )
    size = sum(s.size for s in stats)
    blocks = sum(s.blocks for s in stats)
    records = sum(s.records for s in stats)
    out.write(
        f"total: {len(stats)} files, {_human(size)} ({size} bytes) on disk, "
        f"{blocks} blocks, {records} records\n"
    )
    firsts = [s.first_us for s in stats if s.first_us is not None]
    lasts = [s.last_us for s in stats if s.last_us is not None]
    if firsts and lasts:
        first, last = min(firsts), max(lasts)
        out.write(f"time span: {_stamp(first)} .. {_stamp(last)} ({_span((last - first) / 1e6)})\n")
    raw = sum(s.whole_raw for s in stats)
    packed = sum(s.whole_bytes for s in stats)
    if packed:
        out.write(
            f"compression: {_human(raw)} of records in {_human(packed)} of whole-form "
            f"blocks, ratio {raw / packed:.2f}\n"
        )
    stream = sum(s.stream_blocks for s in stats)
    if stream:
        stream_bytes = sum(s.stream_bytes for s in stats)
        out.write(
            f"recovered: {stream} stream-form blocks, {_human(stream_bytes)} on disk "
            "(counted in blocks and records, not in the ratio: their raw size is not "
            "recorded)\n"
        )
    damaged = sum(s.damaged_bytes for s in stats)
    if damaged:
        out.write(f"damaged: {damaged} bytes are not intact blocks (run mmaplog verify)\n")
    out.flush()


# -- recover, keygen --------------------------------------------------------------------


def cmd_ship(args: argparse.Namespace) -> int:
    from ._ship import Shipper, ShipReport
    from .exceptions import StorageError

    prog = "mmaplog ship"

    def said(r: ShipReport) -> None:
        if r.objects or not args.follow:
            print(
                f"shipped {r.objects} objects ({_human(r.bytes)}) from {r.files} log files "
                f"to {r.url}/{r.host}",
                flush=True,
            )
        for name in r.deleted:
            print(f"deleted {name} (shipped and verified)", flush=True)
        for why in r.kept:
            _err(prog, f"kept {why}")

    def outage(exc: StorageError) -> None:
        _err(prog, f"{exc}; trying again")

    try:
        with Shipper(
            args.log_dir,
            args.url,
            host=args.host,
            endpoint_url=args.endpoint_url,
            delete_shipped=args.delete_shipped,
            object_size=args.object_size,
            retry_for=args.retry_for,
        ) as shipper:
            if args.follow:
                shipper.follow(interval=args.interval, on_pass=said, on_outage=outage)
            else:
                said(shipper.ship_once())
    except OSError as exc:
        return _reading_failed(prog, exc)
    except MmapLogError as exc:
        return _storage_failed(prog, exc)
    return EXIT_OK


def cmd_recover(args: argparse.Namespace) -> int:
    from .recover import main as recover_main

    argv = [args.path] + (["--log-dir", args.log_dir] if args.log_dir else [])
    return recover_main(argv)


def cmd_keygen(args: argparse.Namespace) -> int:
    from ._crypto import generate_keypair

    private, public = generate_keypair()
    if args.output:
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            _err("mmaplog keygen", f"{args.output}: already exists (not overwritten)")
            return EXIT_USAGE
        except OSError as exc:
            _err("mmaplog keygen", f"{args.output}: cannot create: {exc.strerror}")
            return EXIT_USAGE
        with os.fdopen(fd, "w") as f:
            f.write(private)
    else:
        sys.stdout.write(private)
    print(f"public key: {public}")
    return EXIT_OK


# -- the parser -------------------------------------------------------------------------


def _sub(
    sub: Any, name: str, help: str, epilog: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=help[:1].upper() + help[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmaplog",
        description="Read, check, recover and manage mmaplog logs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=MAIN_EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    key_help = "private key file (or its text) for encrypted logs"

    p = _sub(sub, "decode", "print the records of log files as text", DECODE_EPILOG, cmd_decode)
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="log files, folders of them (in time order), cache files, - for stdin, or one "
        "s3://BUCKET/PREFIX that mmaplog ship filled (every host, merged by time)",
    )
    p.add_argument("--key", help=key_help)
    p.add_argument("--level", type=parse_level, metavar="LEVEL", help="records at or above LEVEL")
    p.add_argument("--since", type=parse_time, metavar="T", help="records at or after T")
    p.add_argument("--until", type=parse_time, metavar="T", help="records at or before T")
    p.add_argument(
        "--grep", type=parse_regex, metavar="RE", help="records whose text matches RE (Python re)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("-o", "--output", help="write here instead of stdout")
    p.add_argument(
        "--host",
        action="append",
        metavar="HOST",
        help="s3:// only: this host's records (repeat for more); others are not downloaded",
    )
    p.add_argument("--endpoint-url", metavar="URL", help="s3:// only: the storage endpoint")

    p = _sub(
        sub,
        "ship",
        "upload the blocks of a log folder's files to S3-compatible storage, exactly once",
        SHIP_EPILOG,
        cmd_ship,
    )
    p.add_argument("log_dir", metavar="LOG_DIR", help="the log folder")
    p.add_argument("url", metavar="URL", help="s3://BUCKET[/PREFIX]")
    p.add_argument("--host", help="the name objects are stored under (default: this machine's)")
    p.add_argument("--follow", action="store_true", help="keep shipping as blocks are moved")
    p.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="S",
        help="with --follow: seconds between passes (default 2)",
    )
    p.add_argument(
        "--endpoint-url", metavar="URL", help="the storage endpoint (else AWS_ENDPOINT_URL)"
    )
    p.add_argument(
        "--delete-shipped",
        action="store_true",
        help="delete log files of past days once shipped and verified",
    )
    p.add_argument(
        "--retry-for",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to retry an unreachable or busy storage before giving up (default 60)",
    )
    p.add_argument(
        "--object-size", type=parse_count, default=4 << 20, metavar="BYTES", help=argparse.SUPPRESS
    )

    p = _sub(
        sub,
        "tail",
        "print the newest records of a log folder, live caches included",
        TAIL_EPILOG,
        cmd_tail,
    )
    p.add_argument(
        "log_dir",
        metavar="LOG_DIR",
        help="the log folder (where the caches are too), or s3://BUCKET/PREFIX",
    )
    p.add_argument(
        "-n",
        "--lines",
        type=parse_count,
        default=10,
        metavar="N",
        help="how many records (default 10)",
    )
    p.add_argument("-f", "--follow", action="store_true", help="print new records as they come")
    p.add_argument("--prefix", help="only the logs and caches of this prefix")
    p.add_argument("--key", help=key_help)
    p.add_argument("--host", action="append", metavar="HOST", help="s3:// only: this host")
    p.add_argument("--endpoint-url", metavar="URL", help="s3:// only: the storage endpoint")

    p = _sub(sub, "verify", "check every block of log files", VERIFY_EPILOG, cmd_verify)
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="log files, folders of them, cache files, - for stdin, or one s3://BUCKET/PREFIX",
    )
    p.add_argument("--key", help=key_help + " (to check decryption too)")
    p.add_argument("--host", action="append", metavar="HOST", help="s3:// only: this host")
    p.add_argument("--endpoint-url", metavar="URL", help="s3:// only: the storage endpoint")

    p = _sub(
        sub,
        "stats",
        "count the files, blocks and records of a log folder",
        STATS_EPILOG,
        cmd_stats,
    )
    p.add_argument("log_dir", metavar="LOG_DIR", help="the log folder, or s3://BUCKET/PREFIX")
    p.add_argument("--prefix", help="only the log files of this prefix")
    p.add_argument("--host", action="append", metavar="HOST", help="s3:// only: this host")
    p.add_argument("--endpoint-url", metavar="URL", help="s3:// only: the storage endpoint")

    p = _sub(
        sub,
        "recover",
        "move what a dead process left in a cache into the log",
        RECOVER_EPILOG,
        cmd_recover,
    )
    p.add_argument("path", help="a cache file (.mmap) or a folder of them")
    p.add_argument("--log-dir", help="where to write the records")

    p = _sub(sub, "keygen", "make a key pair for encrypted logs", KEYGEN_EPILOG, cmd_keygen)
    p.add_argument("-o", "--output", help="write the private key here (mode 0600)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        _Progress.clear_current()
        return 130
    except BrokenPipeError:
        return _broken_pipe()


def decode_main(argv: list[str] | None = None) -> int:
    """``python -m mmaplog.decode``: the same as ``mmaplog decode``."""
    return main(["decode", *(sys.argv[1:] if argv is None else argv)])
