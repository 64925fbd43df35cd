"""The ``mmaplog`` command line: decode, tail, verify, stats, recover, keygen, pubkey,
ship.

The only module that touches ``argv`` and standard output. Errors are one line
on stderr with a documented exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as _dt
import io
import json
import logging
import os
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from . import _format as fmt
from ._reader import (
    BucketSource,
    Marker,
    Reader,
    Record,
    Waiting,
    cache_files_in,
    count_caches,
    data_kind,
    expand_paths,
    host_of,
    log_days_in,
    log_files_in,
    merge_by_time,
    read_cache_file,
    read_file,
    verify_caches,
    waiting_records,
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
  0  success (also a folder or s3:// path with no log files, which is said)
  1  damage was found, the key does not match, or recover left a cache alone (a
     live process holds it, or it is of a newer format) or found it damaged;
     ship: another shipper holds the folder
  2  bad usage (an unknown option is named), a missing or unreadable file, input
     that is not an mmaplog log, an encrypted log without --key; recover: a file
     that is not a cache, or a cache named through a symbolic link
  3  s3:// only: the object storage refused (bad credentials, a missing bucket)
     or stayed unreachable through the retries
  4  s3:// only: the S3 client is not installed (pip install "mmaplog[s3]")

Run `mmaplog COMMAND --help` for the options of a command.
"""

DECODE_EPILOG = (
    """\
Records are printed in time order: those of the processes that wrote into the
same files (or the same day of a folder) are merged by time, each process's own
order kept. A folder's day is read into memory whole for this.

A folder's caches (*.mmap) that no running process holds are read too, never
written: their records are not in the log yet (a process died before moving
them). They are printed last, after a line naming the cache, and stderr says how
many there are and that `mmaplog recover FOLDER` moves them into the log. A
folder with neither logs nor such caches is said to have no log files.

Filters use each record's stored time and level (no text is parsed). T is an
ISO 8601 date or date and time (local time unless it has a zone: 2026-11-25,
2026-11-25T14:30, 2026-11-25 14:30:00+01:00) or a time ago: 30s, 10m, 2h, 3d,
1w. --since and --until are inclusive. LEVEL is a name (DEBUG, INFO, WARNING,
ERROR, CRITICAL, any case), xlog's letter (V D I W E F) or a number; records at
or above it are printed. --pid keeps the records of one process (repeat it for
more; in xlog files, the pid of the line's [pid, tid] field); --format json
prints one JSON object per line (JSON Lines): for a text record its time, level,
logger, pid, thread, session and message; a record logged as a JSON object
(structlog's JSONRenderer) is printed as that object, with logger, pid and thread
added where it has no such key. logger, pid and thread are null when not known (a
nameless structlog logger, an xlog line without xlog's header, or a log written
before mmaplog stored them with each record and not in the default line layout).

An encrypted log read without --key, or with a key that does not open it,
names the public key it was encrypted to by its fingerprint (SHA256:...), as
keygen and pubkey print it for a key file.

Files named on the command line may be symbolic links (decode only reads).

A progress bar is drawn on stderr when it is a terminal and stdout is not.
On a terminal, control characters in a record's text (escape sequences,
carriage returns; everything but tab and newline) are shown as \\xNN, and the
bidirectional overrides as \\uNNNN (in JSON Lines, as JSON escapes): --raw
prints them as they are. Characters the output's encoding cannot hold are
written as backslash escapes.

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
printed as they arrive (polled every 0.2 s) until Ctrl-C. Control characters
are escaped on a terminal as by decode (--raw prints them as they are).

exit status:
  0  success (also when -f is stopped with Ctrl-C)
  1  damage was found (listed on stderr) or the key does not match
"""
    + _STATUS_USAGE
)

VERIFY_EPILOG = (
    """\
A folder stands for its log files and for the caches in it that no running
process holds and that hold records (a process died before moving them) or are
damaged. Every block is checked: header and payload checksums, decompression,
record framing, and decryption when --key is given; a cache shorter than its
header says is damage (the missing range is listed). Without --key, encrypted blocks
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
needed. Caches of processes no longer running are counted too, on their own
rows (their records are not in the log yet: `mmaplog recover` moves them).
The compression ratio is the records' raw size over the bytes the blocks take
on disk, for whole-form blocks (the ones a running process moves).
Blocks moved by recovery after a crash are in stream form, whose header does not
record the raw size: they are counted in blocks and records but left out of the
ratio, and listed on their own line.

exit status:
  0  success
  1  damage was found in a log file: a block whose header or checksum fails (what
     is inside a block is checked by `mmaplog verify`, which also gives the ranges)
  2  bad usage, or a folder that is missing or cannot be read
"""

RECOVER_EPILOG = """\
Only files that start like a cache are read, moved or changed: a file named on
the command line that is not a cache (an empty file is not one) is left
untouched (status 2), and in a folder the *.mmap files that are not caches are
skipped (said on stderr). Symbolic links are never followed, as recover renames
and rewrites caches: a cache named through one is refused (status 2; give its
own path), and links in a folder are skipped. The folder itself may be a link.

A cache whose contents are damaged, or that is shorter than its header says
(cut short by another program), is moved aside to *.corrupt-<time>, never
deleted, after its intact records are recovered; stderr says what was lost.
Recovery never makes a cache file longer.

exit status:
  0  recovered (or nothing to do)
  1  a cache was damaged (its intact records recovered, the file moved aside),
     could not be read or its records written (an I/O error), is held by a live
     process, or is of an unknown newer format (these two are not touched)
  2  bad usage, a path (or --log-dir) that does not exist, a file that is not a
     cache, or a cache named through a symbolic link
"""

KEYGEN_EPILOG = """\
The private key is written only to the file -o names (mode 0600), never to the
terminal; the public key is printed, with its fingerprint (SHA256: and 11
characters): decode names an encrypted log's key by it. Keep the private key
off the devices that log: `mmaplog pubkey FILE` prints the public key of a
private key file and its fingerprint again.

exit status:
  0  the key pair was made
  2  bad usage, or the key file exists already or cannot be created
"""

PUBKEY_EPILOG = """\
The public key is what MmapHandler(public_key=...) takes. The fingerprint is
the one decode names when a log needs this key: the first 8 bytes of the
SHA-256 of the public key's 32 raw bytes, in base64.

exit status:
  0  the public key was printed
  2  bad usage, or a file that is missing or does not hold a private key
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
    # Escaped: a message may name a file, and a file name can hold escape sequences.
    _Progress.clear_current()
    print(f"{prog}: {escape_controls(message)}", file=sys.stderr)


def _read_key(value: str | None) -> str | bytes | None:
    if value is None:
        return None
    if os.path.exists(value):
        with open(value, "rb") as f:
            return f.read()
    return value


def _is_public_key(key: str | bytes) -> bool:
    text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    return text.lstrip().startswith("-----BEGIN PUBLIC KEY-----")


def _looks_like_base64_key(key: str | bytes) -> bool:
    text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    return re.fullmatch(r"\s*[A-Za-z0-9+/]{43}=\s*", text) is not None


def _make_reader(
    prog: str, key: str | None, on_damage: Callable[[str, fmt.Damage], None] | None
) -> Reader | None:
    """A reader with the private key of ``--key``; None (reported) when the key is unusable."""
    try:
        value = _read_key(key)
    except OSError as exc:
        _err(prog, f"--key {key}: cannot read: {exc.strerror or exc}")
        return None
    if value is not None and _is_public_key(value):
        _err(prog, f"--key {key}: this is a public key: decoding needs the private key")
        return None
    try:
        reader = Reader(value, on_damage, markers=True, each_mismatch=False)
    except ConfigError as exc:
        if key is not None and not os.path.exists(key):
            _err(prog, f"--key {key}: no such file (nor a key given as text)")
        else:
            _err(prog, f"--key: {exc}")
        return None
    return reader


def _report_mismatch(prog: str, key: str | None, *readers: Reader) -> None:
    """One line per file whose blocks the key does not open, with how many."""
    counts: dict[str, int] = {}
    for reader in readers:
        for source, n in reader.mismatched.items():
            counts[source] = counts.get(source, 0) + n
    from ._crypto import fingerprint_text

    written: dict[str, set[bytes]] = {}
    given: bytes | None = None
    for reader in readers:
        for source, fingerprints in reader.mismatched_keys.items():
            written.setdefault(source, set()).update(k for k in fingerprints if k)
        given = given or reader.key_fingerprint
    for source, n in counts.items():
        # Blocks of format version 2 say which key they were encrypted to.
        wanted = ", ".join(sorted(fingerprint_text(k) for k in written.get(source, ())))
        which = ""
        if wanted:
            which = f": they were encrypted to the key {wanted}"
            if given:
                which += f", the key given is {fingerprint_text(given)}"
        _err(
            prog,
            f"{source}: the key does not match: {n} encrypted block{'s' if n != 1 else ''} "
            f"skipped (no record of them authenticates with it){which}",
        )
    value = None
    with contextlib.suppress(OSError):
        value = _read_key(key)
    if counts and value is not None and _looks_like_base64_key(value):
        _err(
            prog,
            "a key given as base64 is taken as a private key: if it is the public key "
            "keygen printed, decoding needs the private key file it wrote",
        )


def _format_text(item: Record | Marker) -> str:
    if isinstance(item, Marker):
        return item.text
    if item.kind == fmt.KIND_NOTE:
        return f"-- {item.text} --"
    return item.text


# C0 controls but tab and newline, DEL and the C1 controls (CSI is 0x9b): what a
# terminal acts on; and the bidirectional overrides and isolates, which reorder what
# the operator reads (Unicode TR#9; CVE-2021-42574). A record's text comes from
# whoever could get a line logged.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# In JSON, C0 controls are escaped already; these are not.
_JSON_CONTROLS = re.compile(r"[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with the characters a terminal acts on written as ``\\xNN`` (or
    ``\\uNNNN`` for the bidirectional controls)."""
    return _CONTROLS.sub(_escaped, text)


def escape_json_controls(line: str) -> str:
    """A JSON line with DEL, the C1 controls and the bidirectional controls written as
    JSON escapes (``\\u009b``): the same JSON, harmless on a terminal."""
    return _JSON_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


_COLOURS = (
    (logging.CRITICAL, "\x1b[1;31m"),
    (logging.ERROR, "\x1b[31m"),
    (logging.WARNING, "\x1b[33m"),
    (logging.INFO, ""),
    (logging.NOTSET, "\x1b[2m"),
)


def _colour(item: Record | Marker) -> str:
    if isinstance(item, Marker) or item.kind == fmt.KIND_NOTE:
        return "\x1b[1m"
    for level, code in _COLOURS:
        if item.level >= level:
            return code
    return ""


def _use_colour(out: IO[str]) -> bool:
    # https://no-color.org: any non-empty NO_COLOR turns colour off.
    return out.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _text_renderer(out: IO[str], raw: bool) -> Callable[[Record | Marker], str]:
    """How records are written to ``out``: on a terminal, escaped unless ``raw``, and coloured."""
    if not out.isatty():
        return _format_text
    text = _format_text if raw else lambda item: escape_controls(_format_text(item))
    if not _use_colour(out):
        return text

    def coloured(item: Record | Marker) -> str:
        code = _colour(item)
        return f"{code}{text(item)}\x1b[0m" if code else text(item)

    return coloured


def _json_renderer(out: IO[str], raw: bool) -> Callable[[Record | Marker], str]:
    """How records are written as JSON Lines to ``out``: on a terminal, with the controls
    JSON leaves as they are escaped, unless ``raw``."""
    if raw or not out.isatty():
        return _format_json
    return lambda item: escape_json_controls(_format_json(item))


def _format_json(item: Record | Marker) -> str:
    if isinstance(item, Marker):
        return json.dumps({"marker": item.text})
    logger, thread = item.logger, item.thread
    if logger is None and thread is None:
        # A record written before format version 2 (or a Mars xlog line) carries
        # neither: they are read back from a line in xlog's layout (the default
        # formatter's), and are null otherwise.
        m = _XLOG_PLACE.match(item.text)
        if m:
            logger = m.group(2)
            thread = int(m.group(1)) if m.group(1) else None
    # A JSON object is printed as that object: marked as such by the direct structlog
    # path, or a text record whose whole text is one (structlog's ProcessorFormatter
    # with JSONRenderer, or any JSON formatter on the stdlib path). What the record
    # carries besides is added under keys the object does not have already.
    if item.kind == fmt.KIND_JSON or item.text[:1] == "{":
        try:
            obj = json.loads(item.text, parse_constant=_no_constant, object_pairs_hook=_no_dups)
            if isinstance(obj, dict):
                obj.setdefault("logger", logger)
                obj.setdefault("pid", item.pid)
                obj.setdefault("thread", thread)
                return json.dumps(obj, ensure_ascii=False)
        except ValueError:
            pass
    stamp = _iso_time(item.time)
    return json.dumps(
        {
            "time": stamp,
            "level": item.levelname,
            "logger": logger,
            "pid": item.pid or None,  # 0: the record does not say (an xlog line without it)
            "thread": thread,
            "session": item.session,
            "message": item.text,
        },
        ensure_ascii=False,
    )


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (jq and strict parsers refuse them): such a record is
    # printed as a text record, its text as it was logged.
    raise ValueError(f"{name} is not JSON")


def _no_dups(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A key twice: an object would keep only the last value; the text keeps both.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a key appears twice")
    return obj


# [W][2026-11-25 +0000 19:40:00.123][pid, tid][logger][: xlog's layout (Mars marks the
# main thread's tid with a *).
_XLOG_PLACE = re.compile(r"\[[VDIWEF]\]\[[^\]]*\]\[\s*\d*,\s*(?:(\d+)\*?)?[^\]]*\]\[([^\]]*)\]\[")


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


_UTC = False
"""``--utc``: times are shown, and naive times given are read, in UTC."""


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _local(when: float) -> _dt.datetime:
    """``when`` as an aware datetime in the zone times are shown in (local, or UTC).

    Raises ``ValueError``, ``OverflowError`` or ``OSError`` for a time outside what a
    datetime holds (years 1 to 9999): a record time can be any 64-bit count of µs.
    """
    # From the epoch by a timedelta (rounded to the µs as fromtimestamp rounds), not
    # through the C library's time_t, which cannot reach years 1 and 9999 everywhere.
    utc = _EPOCH + _dt.timedelta(seconds=when)
    return utc if _UTC else utc.astimezone()


def _iso_time(when: float) -> str:
    """``when`` in ISO 8601 (ms), or as seconds since the epoch when no date can hold it."""
    try:
        return _local(when).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):
        return f"{when:.6f}"


_AGO_WORDS = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?|w|weeks?)"
    r"\s+ago\s*$",
    re.IGNORECASE,
)
_DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}


def parse_time(value: str, now: float | None = None, *, utc: bool = False) -> float:
    """Seconds since the epoch for a time as ``--since`` takes it.

    An ISO 8601 date or date and time (local, or UTC with ``utc``, unless zoned),
    a time ago (``10m``, ``2h``, ``1 hour ago``), or a word: ``now``, ``today``,
    ``yesterday``, ``tomorrow`` (the days at midnight).
    """
    base = time.time() if now is None else now
    m = _AGO.match(value) or _AGO_WORDS.match(value)
    if m is not None:
        return base - float(m.group(1)) * _AGO_SECONDS[m.group(2)[0].lower()]
    text = value.strip()
    word = text.lower()
    zone = _dt.timezone.utc if utc else None
    if word == "now":
        return base
    if word in _DAYS:
        day = _dt.datetime.fromtimestamp(base, zone).date() + _dt.timedelta(days=_DAYS[word])
        midnight = _dt.datetime.combine(day, _dt.time(), zone)
        return midnight.timestamp() if utc else midnight.astimezone().timestamp()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {value!r} (expected an ISO 8601 date or date and time, "
            "e.g. 2026-11-25 or 2026-11-25T14:30:00; a time ago: 30s, 10m, 2h, 3d, 1w, "
            "'1 hour ago'; or now, today, yesterday)"
        ) from None
    if when.tzinfo is None and utc:
        when = when.replace(tzinfo=_dt.timezone.utc)
    # A naive time is local time: astimezone() on a naive datetime assumes exactly that.
    return when.astimezone().timestamp()


def _check_time(value: str) -> str:
    """Validate a ``--since``/``--until`` value; it is read after ``--utc`` is known."""
    parse_time(value)
    return value


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
    pids: list[int] | None = None

    def keeps(self, r: Record) -> bool:
        if self.pids and r.pid not in self.pids:
            return False
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


class _NotALog(Exception):
    """An input that is neither a log nor a cache: the command stops with status 2."""


def _decode_groups(files: list[str]) -> list[tuple[str | None, list[str]]]:
    """What is decoded, in order: a file alone, a folder day by day (with the folder)."""
    groups: list[tuple[str | None, list[str]]] = []
    for arg in files:
        if arg != "-" and os.path.isdir(arg):
            groups.extend((arg, day) for day in log_days_in(arg))
            groups.append((arg, []))  # its caches, after its days
        else:
            groups.append((None, [arg]))
    return groups


def cmd_decode(args: argparse.Namespace) -> int:
    prog = "mmaplog decode"
    if args.follow:
        one = args.files[0] if len(args.files) == 1 else ""
        if not (os.path.isdir(one) or _is_bucket(one)) or args.output:
            _err(prog, "-f follows one log folder and writes to stdout (give a folder, no -o)")
            return EXIT_USAGE
        # What tail -f does, from the first record on (or the last -n N).
        follow = argparse.Namespace(**vars(args))
        follow.log_dir, follow.prefix = args.files[0], None
        follow.lines = sys.maxsize if args.lines is None else args.lines
        return cmd_tail(follow, prog)

    def on_damage(src: str, d: fmt.Damage) -> None:
        _err(prog, f"{src}: bytes {d.start}-{d.end} skipped: {d.reason}")

    reader = _make_reader(prog, args.key, on_damage)
    if reader is None:
        return EXIT_USAGE
    filt = _Filter(args.level, args.since, args.until, args.grep, args.pid)
    if any(_is_bucket(f) for f in args.files):
        return _decode_bucket(args, filt, on_damage)
    scan_damaged = False
    in_logs: set[tuple[str, int]] = set()
    done = 0

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
            in_logs.add((block.header.session.hex(), block.header.seq))
            yield from records
            progress.update(done + block.end)

    def file_items(paths: list[str], progress: _Progress) -> Iterator[Record | Marker]:
        nonlocal done
        for source, data in _inputs(paths):
            if not _is_log(data):
                _close(data)
                raise _NotALog(f"{source}: not an mmaplog file")
            try:
                if data_kind(data) == "log":
                    yield from decode_log(data, source, progress, done)
                else:
                    yield from reader.iter_data(data, source)
            finally:
                if source != "<stdin>":
                    done += len(data)
                progress.update(done)
                _close(data)

    out: IO[str]
    with contextlib.ExitStack() as stack:
        if args.output and args.output != "-":
            if _missing(prog, args.files):
                return EXIT_USAGE
            created = _create_private(prog, args.output, args.force)
            if created is None:
                return EXIT_USAGE
            out = stack.enter_context(created)
        else:
            out = sys.stdout
        render = (
            _json_renderer(out, args.raw)
            if args.format == "json"
            else _text_renderer(out, args.raw)
        )
        shown: set[str] = set()
        # -n N: the last N records, each with the marker (if any) printed before it.
        last: collections.deque[tuple[Marker | None, Record]] | None = None
        if args.lines is not None:
            last = collections.deque(maxlen=args.lines)
        held: Marker | None = None

        def write(items: Iterator[Record | Marker]) -> None:
            nonlocal held
            for n, item in enumerate(items):
                if not n & 1023:
                    progress.update(done)  # drawn while a slow reader holds the output up
                if isinstance(item, Marker):
                    # The runs of a session merged with others may repeat its marker.
                    if item.text in shown:
                        continue
                    shown.add(item.text)
                if last is not None:
                    if isinstance(item, Marker):
                        held = item
                    else:
                        last.append((held, item))
                        held = None
                    continue
                out.write(render(item))
                out.write("\n")

        if _missing(prog, args.files):
            return EXIT_USAGE
        try:
            groups = _decode_groups(args.files)
            # Records scrolling on the terminal are progress enough: no bar over them.
            on_tty = out is sys.stdout and sys.stdout.isatty()
            progress = _Progress(
                _total_size([p for _folder, paths in groups for p in paths]),
                enabled=sys.stderr.isatty() and not on_tty,
                label="decode",
            )
            stack.callback(progress.close)
            for folder, paths in groups:
                if paths:
                    write(merge_by_time(file_items(paths, progress), filt.keeps))
                    continue
                assert folder is not None
                waiting = waiting_records(reader, folder, in_logs)
                if not waiting and not log_days_in(folder):
                    _err(prog, f"no log files in {folder}")
                for w in waiting:
                    _err(prog, _waiting_note(w, folder))
                    kept = list(merge_by_time(iter(w.records), filt.keeps))
                    if kept:
                        write(iter([Marker(_waiting_marker(w, folder), w.path), *kept]))
                in_logs.clear()
            for marker, record in last or ():
                if marker is not None:
                    out.write(render(marker))
                    out.write("\n")
                out.write(render(record))
                out.write("\n")
        except _NotALog as exc:
            _err(prog, str(exc))
            return EXIT_USAGE
        except (OSError, MmapLogError) as exc:
            return _reading_failed(prog, exc)
    _report_mismatch(prog, args.key, reader)
    return EXIT_DAMAGED if reader.damaged or scan_damaged else EXIT_OK


def _pids(w: Waiting) -> str:
    return ("pid " if len(w.pids) == 1 else "pids ") + ", ".join(map(str, w.pids))


def _waiting_note(w: Waiting, folder: str) -> str:
    n = len(w.records)
    return (
        f"{w.path}: {n} record{'s' if n != 1 else ''} of {_pids(w)} (no longer running) "
        f"not recovered yet, shown last; `mmaplog recover {folder}` moves them into the log"
    )


def _waiting_marker(w: Waiting, folder: str) -> str:
    return (
        f"-- not recovered yet: left in {w.path} by {_pids(w)}; run `mmaplog recover {folder}` --"
    )


# -- object storage ---------------------------------------------------------------------


def _is_bucket(arg: str) -> bool:
    """Whether a command-line input names a bucket path that ``mmaplog ship`` filled."""
    return arg.startswith("s3://")


def _storage_failed(prog: str, exc: MmapLogError) -> int:
    """One line for an error of the object storage path; its exit status."""
    from .exceptions import MissingDependencyError, StorageError

    _err(prog, str(exc))
    if isinstance(exc, MissingDependencyError):
        return EXIT_NO_S3_CLIENT
    if isinstance(exc, StorageError):
        return EXIT_STORAGE
    if isinstance(exc, (ConfigError, NeedKeyError)):
        return EXIT_USAGE
    return EXIT_DAMAGED


def _host_renderer(
    render: Callable[[Record | Marker], str], json_lines: bool
) -> Callable[[Record], str]:
    """``render`` with the host a bucket record came from: a ``host`` field of the JSON
    object, or ``host | `` before the text line."""
    if json_lines:

        def with_host_json(r: Record) -> str:
            return json.dumps(
                {"host": host_of(r.source), **json.loads(render(r))}, ensure_ascii=False
            )

        return with_host_json

    def with_host(r: Record) -> str:
        return f"{escape_controls(host_of(r.source))} | {render(r)}"

    return with_host


def _bucket_source(
    args: argparse.Namespace,
    key: str | bytes | None = None,
    on_damage: Callable[[str, fmt.Damage], None] | None = None,
    *,
    times: bool = False,
) -> BucketSource:
    """The bucket path of a command's arguments (``--host``, ``--endpoint-url``)."""
    url = args.files[0] if "files" in args else args.log_dir
    return BucketSource(
        url,
        key=key,
        on_damage=on_damage,
        hosts=args.host,
        since=args.since if times else None,
        until=args.until if times else None,
        endpoint_url=args.endpoint_url,
        each_mismatch=False,
    )


def _decode_bucket(
    args: argparse.Namespace, filt: _Filter, on_damage: Callable[[str, fmt.Damage], None]
) -> int:
    """``mmaplog decode s3://...``: every host's records merged by time, host first."""
    prog = "mmaplog decode"
    if len(args.files) != 1:
        _err(prog, "give one s3:// URL, or local files and folders, not both")
        return EXIT_USAGE
    try:
        source = _bucket_source(args, _read_key(args.key), on_damage, times=True)
        with contextlib.ExitStack() as stack:
            out: IO[str] = sys.stdout
            if args.output and args.output != "-":
                created = _create_private(prog, args.output, args.force)
                if created is None:
                    return EXIT_USAGE
                out = stack.enter_context(created)
            plain = (
                _json_renderer(out, args.raw)
                if args.format == "json"
                else _text_renderer(out, args.raw)
            )
            render = _host_renderer(plain, args.format == "json")
            kept = (r for r in source if filt.keeps(r))
            # -n N: only the last N records (after the filters).
            for r in kept if args.lines is None else collections.deque(kept, args.lines):
                out.write(render(r))
                out.write("\n")
        if not source.objects and not source.has_logs():
            _err(prog, _no_bucket_logs(args))
    except OSError as exc:
        return _reading_failed(prog, exc)
    except MmapLogError as exc:
        return _storage_failed(prog, exc)
    _report_mismatch(prog, args.key, *source.readers)
    return EXIT_DAMAGED if source.damaged else EXIT_OK


def _no_bucket_logs(args: argparse.Namespace) -> str:
    """What an empty bucket path is told, as an empty folder is ("no log files in ...")."""
    url = args.files[0] if "files" in args else args.log_dir
    hosts = sorted(set(args.host or ()))
    where = f" from host{'s' if len(hosts) > 1 else ''} {', '.join(hosts)}" if hosts else ""
    return f"no log files in {url}{where}"


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
    keep: Callable[[Record], bool] | None = None

    def log_files(self) -> list[str]:
        return log_files_in(self.folder, self.prefix)

    def cache_files(self) -> list[str]:
        return cache_files_in(self.folder, self.prefix)

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
                data = read_cache_file(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if path not in self.unreadable:
                    self.unreadable.add(path)
                    _err("mmaplog tail", f"{path}: cannot read: {exc.strerror or exc}")
                continue
            if data is None or self.images.get(path) == data:
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
            chunk = self._kept(self.read_log(path))
            chunks.append(chunk)
            count += len(chunk)
        lines = [line for chunk in reversed(chunks) for line in chunk]
        lines.extend(self._kept(self.read_caches()))
        lines.sort(key=lambda line: line.time)
        return lines[-n:] if n else []

    def _kept(self, lines: list[_Line]) -> list[_Line]:
        if self.keep is None:
            return lines
        keep = self.keep
        return [line for line in lines if keep(line.record)]

    def poll(self) -> list[_Line]:
        lines: list[_Line] = []
        for path in self.log_files():
            lines.extend(self.read_log(path))
        lines.extend(self.read_caches())
        lines = self._kept(lines)
        lines.sort(key=lambda line: line.time)
        return lines


def _print_lines(lines: list[_Line], render: Callable[[Record | Marker], str]) -> None:
    out = sys.stdout
    for line in lines:
        if line.marker is not None:
            out.write(line.marker)
            out.write("\n")
        out.write(render(line.record))
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


def cmd_tail(args: argparse.Namespace, prog: str = "mmaplog tail") -> int:
    folder = args.log_dir
    if _is_bucket(folder):
        return _tail_bucket(args, prog)
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
    tail.keep = _Filter(args.level, args.since, args.until, args.grep, args.pid).keeps
    stop = threading.Event()
    previous: Any = None
    if args.follow:
        # Ctrl-C sets a flag checked between polls, so it never lands mid-line.
        previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        render: Callable[[Record | Marker], str]
        if getattr(args, "format", "text") == "json":
            render = _format_json
        else:
            render = _text_renderer(sys.stdout, args.raw)
        _print_lines(tail.snapshot(args.lines), render)
        if not tail.log_files() and not tail.cache_files():
            of = f" of prefix {args.prefix}" if args.prefix else ""
            _err(prog, f"no log files{of} in {folder}")
        while args.follow and not stop.is_set():
            stop.wait(_POLL_INTERVAL)
            if not stop.is_set():
                _print_lines(tail.poll(), render)
    except (OSError, MmapLogError) as exc:
        return _reading_failed(prog, exc, folder)
    finally:
        if args.follow:
            signal.signal(signal.SIGINT, previous)
    if log_reader.key_mismatch or cache_reader.key_mismatch:
        _report_mismatch(prog, args.key, log_reader, cache_reader)
        return EXIT_DAMAGED
    return EXIT_DAMAGED if tail.damaged or log_reader.damaged else EXIT_OK


def _tail_bucket(args: argparse.Namespace, prog: str) -> int:
    """``mmaplog tail s3://...``: the newest records of every host, merged by time;
    with -f, the records of new objects as the shippers store them."""

    def on_damage(src: str, d: fmt.Damage) -> None:
        _err(prog, f"{src}: bytes {d.start}-{d.end} skipped: {d.reason}")

    if _make_reader(prog, args.key, None) is None:
        return EXIT_USAGE
    keep = _Filter(args.level, args.since, args.until, args.grep, args.pid).keeps
    stop = threading.Event()
    previous: Any = None
    if args.follow:
        # Ctrl-C sets a flag checked between polls, so it never lands mid-line.
        previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        source = _bucket_source(args, _read_key(args.key), on_damage)
        plain: Callable[[Record | Marker], str]
        if getattr(args, "format", "text") == "json":
            plain = _format_json
        else:
            plain = _text_renderer(sys.stdout, args.raw)
        render = _host_renderer(plain, plain is _format_json)

        def show(records: list[Record]) -> None:
            for r in records:
                sys.stdout.write(render(r))
                sys.stdout.write("\n")
            sys.stdout.flush()

        show(source.newest(args.lines, keep))
        if not source.objects and not source.has_logs():
            _err(prog, _no_bucket_logs(args))
        while args.follow and not stop.is_set():
            stop.wait(_BUCKET_POLL_INTERVAL)
            if not stop.is_set():
                show(source.poll(keep))
    except OSError as exc:
        return _reading_failed(prog, exc, args.log_dir)
    except MmapLogError as exc:
        return _storage_failed(prog, exc)
    finally:
        if args.follow:
            signal.signal(signal.SIGINT, previous)
    _report_mismatch(prog, args.key, *source.readers)
    return EXIT_DAMAGED if source.damaged else EXIT_OK


_BUCKET_POLL_INTERVAL = 2.0


# -- verify -----------------------------------------------------------------------------


@dataclass(slots=True)
class _FileCheck:
    path: str
    kind: str
    blocks: int = 0
    records: int = 0
    unverified: int = 0
    mismatched: int = 0
    damage: list[fmt.Damage] = field(default_factory=list)
    keys: set[bytes] = field(default_factory=set)  # fingerprints of the unverified blocks' keys


def _check_sealed_block(block: fmt.ScannedBlock, check: _FileCheck) -> None:
    """Without the key: the checksums of an encrypted block (its chunks' too, in stream form)."""
    h = block.header
    check.unverified += 1
    if h.key_fingerprint:
        check.keys.add(h.key_fingerprint)
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
    if any(_is_bucket(f) for f in args.files):
        return _verify_bucket(args, reader, checks)
    status = EXIT_USAGE if _missing(prog, args.files) else EXIT_OK
    present = [p for p in args.files if p == "-" or os.path.exists(p)]
    found_caches: dict[str, str] = {}  # a dead process's cache found in a folder: the folder
    try:
        paths = []
        for arg in present:
            if arg != "-" and os.path.isdir(arg):
                logs = expand_paths([arg])
                caches = verify_caches(arg)
                if not logs and not caches:
                    _err(prog, f"no log files in {arg}")
                paths.extend(logs + caches)
                found_caches.update(dict.fromkeys(caches, arg))
            else:
                paths.append(arg)
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
                elif kind == "xlog":
                    for _block, records in reader.iter_xlog_blocks(data, source):
                        check.blocks += 1
                        check.records += len(records)
                else:
                    blocks: set[tuple[str, int]] = set()
                    for item in reader.iter_data(data, source):
                        if isinstance(item, Record):
                            check.records += 1
                            blocks.add((item.session, item.seq))
                    check.blocks = len(blocks)
            except NeedKeyError as exc:
                if source in found_caches:
                    # Found in a folder, not asked for by name: count it from its
                    # block templates, as the encrypted log blocks without --key.
                    _count_sealed_cache(data, checks[source])
                else:
                    _err(prog, str(exc))
                    status = EXIT_USAGE
                    checks.pop(source, None)
            finally:
                if source in checks:
                    checks[source].mismatched = reader.mismatched.get(source, 0)
                done += len(data)
                progress.update(done)
                _close(data)
    finally:
        progress.close()
    try:
        _print_verify(list(checks.values()), have_key)
        waiting = [path for path in found_caches if path in checks and checks[path].records]
        for folder in dict.fromkeys(found_caches[path] for path in waiting):
            n = sum(1 for path in waiting if found_caches[path] == folder)
            sys.stdout.write(
                f"{n} cache{'s' if n != 1 else ''} in {folder} of processes no longer running "
                f"hold{'s' if n == 1 else ''} records not recovered yet: "
                f"`mmaplog recover {folder}` moves them into the log\n"
            )
    except BrokenPipeError:
        return _broken_pipe()
    _report_mismatch(prog, args.key, reader)
    if status == EXIT_OK and (reader.key_mismatch or any(c.damage for c in checks.values())):
        status = EXIT_DAMAGED
    return status


def _verify_bucket(args: argparse.Namespace, reader: Reader, checks: dict[str, _FileCheck]) -> int:
    """``mmaplog verify s3://...``: each object's SHA-256 against the one stored at
    upload, every block in it, and each log file's objects meeting end to end."""
    import hashlib

    from ._ship import parse_object_key

    prog = "mmaplog verify"
    if len(args.files) != 1:
        _err(prog, "give one s3:// URL, or local files and folders, not both")
        return EXIT_USAGE
    have_key = args.key is not None
    progress = _Progress(0, enabled=False, label="verify")
    try:
        source = _bucket_source(args)
        files = source.files()
        if not files:
            _err(prog, _no_bucket_logs(args))
        for _host, _name, keys in files:
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
                    blocks: set[tuple[str, int]] = set()
                    for item in reader.iter_data(data, url):
                        if isinstance(item, Record):
                            check.records += 1
                            blocks.add((item.session, item.seq))
                    check.blocks = len(blocks)
                check.mismatched = reader.mismatched.get(url, 0)
    except OSError as exc:
        return _reading_failed(prog, exc)
    except MmapLogError as exc:
        return _storage_failed(prog, exc)
    try:
        _print_verify(list(checks.values()), have_key)
    except BrokenPipeError:
        return _broken_pipe()
    _report_mismatch(prog, args.key, reader)
    damaged = reader.key_mismatch or any(c.damage for c in checks.values())
    return EXIT_DAMAGED if damaged else EXIT_OK


def _count_sealed_cache(data: fmt.Buffer, check: _FileCheck) -> None:
    """Without the key: a cache's blocks and records by their templates and chunk walks."""
    from ._recovery import RecoveryReport, _slots_of

    check.blocks = check.records = 0
    _info, contents = _slots_of(bytes(data), RecoveryReport())
    for c in contents:
        if c.count:
            check.blocks += 1
            check.records += c.count
            check.unverified += 1
            if c.template.key_fingerprint:
                check.keys.add(c.template.key_fingerprint)


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
        if c.mismatched:
            n = c.mismatched
            state += f", {n} block{'s' if n != 1 else ''} the key does not open"
        out.write(
            f"{escape_controls(c.path)}: {what}{c.blocks} blocks, {c.records} records: {state}\n"
        )
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
        from ._crypto import fingerprint_text

        keys = sorted(fingerprint_text(k) for c in checks for k in c.keys)
        of = f" of {', '.join(dict.fromkeys(keys))}" if keys else ""
        out.write(
            f"{unverified} encrypted blocks were checked by their checksums only "
            f"(give --key the private key{of} to decrypt and check their records)\n"
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
    waiting: bool = False
    """A cache of a dead process: its records are not in the log yet."""
    sealed_blocks: int = 0
    """Encrypted xlog blocks: counted, their lines not (stats takes no key)."""


def _file_stats(
    path: str, in_logs: set[tuple[bytes, int]], image: bytes | None = None
) -> _FileStats:
    """What a log file holds, from its block headers (``image``: its bytes, if read already)."""
    data = read_file(path) if image is None else image
    try:
        st = _FileStats(path, len(data))
        kind = data_kind(data) if data else "log"
        if kind == "xlog":
            _xlog_file_stats(data, st)
            return st
        if kind != "log":
            st.note = "not counted (not an mmaplog log file)"
            return st
        for item in fmt.scan_blocks(data):
            if isinstance(item, fmt.Damage):
                st.damaged_bytes += item.end - item.start
                continue
            h = item.header
            in_logs.add((h.session, h.seq))
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


def _xlog_file_stats(data: fmt.Buffer, st: _FileStats) -> None:
    """An xlog file's blocks and lines (the lines of encrypted blocks are not counted:
    stats takes no key)."""

    def on_damage(_src: str, d: fmt.Damage) -> None:
        st.damaged_bytes += d.end - d.start

    reader = Reader(None, on_damage)
    for block, records in reader.iter_xlog_blocks(data, st.path, skip_sealed=True):
        st.blocks += 1
        if block.encrypted:
            st.sealed_blocks += 1
            continue
        st.records += len(records)
        for r in records:
            t = round(r.time * 1e6)
            st.first_us = t if st.first_us is None else min(st.first_us, t)
            st.last_us = t if st.last_us is None else max(st.last_us, t)


def _stamp(time_us: int | None) -> str:
    if time_us is None:
        return "-"
    try:
        when = _local(time_us / 1e6)
    except (ValueError, OverflowError, OSError):
        return f"{time_us} µs since the epoch"
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
    if _is_bucket(folder):
        return _stats_bucket(args)
    if not _is_log_folder(prog, folder):
        return EXIT_USAGE
    in_logs: set[tuple[bytes, int]] = set()
    try:
        stats = [_file_stats(p, in_logs) for p in log_files_in(folder, args.prefix)]
        caches = count_caches(folder, in_logs, args.prefix)
    except OSError as exc:
        _err(prog, f"{exc.filename or folder}: cannot read: {exc.strerror or exc}")
        return EXIT_USAGE
    for c in caches:
        if c.records:
            stats.append(
                _FileStats(
                    c.path,
                    c.size,
                    blocks=c.blocks,
                    records=c.records,
                    first_us=c.first_us,
                    last_us=c.last_us,
                    waiting=True,
                )
            )
        elif c.live:
            stats.append(_FileStats(c.path, c.size, note="cache of a running process"))
    try:
        _print_stats(folder, stats)
    except BrokenPipeError:
        return _broken_pipe()
    return EXIT_DAMAGED if any(s.damaged_bytes for s in stats) else EXIT_OK


def _stats_bucket(args: argparse.Namespace) -> int:
    """``mmaplog stats s3://...``: a table per host, from the block headers of the
    objects (one log file's objects in memory at a time)."""
    prog = "mmaplog stats"
    try:
        source = _bucket_source(args)
        per_host: dict[str, list[_FileStats]] = {}
        for host, name, keys in source.files():
            if args.prefix is not None and not name.startswith(args.prefix + "_"):
                continue
            data = b"".join(source.fetch(k)[0] for k in keys)
            per_host.setdefault(host, []).append(_file_stats(name, set(), data))
        for host, stats in per_host.items():
            sys.stdout.write(f"== {source.url}/{host}\n")
            _print_stats(f"{source.url}/{host}", stats)
        if not per_host:
            sys.stdout.write(_no_bucket_logs(args) + "\n")
    except BrokenPipeError:
        return _broken_pipe()
    except OSError as exc:
        return _reading_failed(prog, exc)
    except MmapLogError as exc:
        return _storage_failed(prog, exc)
    damaged = any(s.damaged_bytes for stats in per_host.values() for s in stats)
    return EXIT_DAMAGED if damaged else EXIT_OK


def _print_stats(folder: str, stats: list[_FileStats]) -> None:
    out = sys.stdout
    if not stats:
        out.write(f"no log files in {folder}\n")
        return
    name_width = max(len(escape_controls(os.path.basename(s.path))) for s in stats)
    out.write(
        f"{'file':<{name_width}}  {'size':>10}  {'blocks':>7}  {'records':>9}  "
        f"{'first record':<29}  last record\n"
    )
    for s in stats:
        name = escape_controls(os.path.basename(s.path))
        if s.note:
            out.write(f"{name:<{name_width}}  {_human(s.size):>10}  {s.note}\n")
            continue
        out.write(
            f"{name:<{name_width}}  {_human(s.size):>10}  {s.blocks:>7}  {s.records:>9}  "
            f"{_stamp(s.first_us):<29}  {_stamp(s.last_us)}"
            + ("  (cache, not recovered)" if s.waiting else "")
            + "\n"
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
    sealed = sum(s.sealed_blocks for s in stats)
    if sealed:
        out.write(
            f"xlog: the lines of {sealed} encrypted block{'s' if sealed != 1 else ''} are not "
            "counted in records (decode --key reads them)\n"
        )
    waiting = [s for s in stats if s.waiting]
    if waiting:
        n = sum(s.records for s in waiting)
        out.write(
            f"not recovered: {n} records in {len(waiting)} cache{'s' if len(waiting) != 1 else ''} "
            f"of processes no longer running (counted above); `mmaplog recover {folder}` moves "
            "them into the log\n"
        )
    damaged = sum(s.damaged_bytes for s in stats)
    if damaged:
        out.write(f"damaged: {damaged} bytes are not intact blocks (run mmaplog verify)\n")
    out.flush()


# -- ship, recover, keygen --------------------------------------------------------------


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
                try:
                    shipper.follow(interval=args.interval, on_pass=said, on_outage=outage)
                except KeyboardInterrupt:  # the documented way to stop a sidecar: exit 0
                    return EXIT_OK
            else:
                said(shipper.ship_once())
    except OSError as exc:
        return _reading_failed(prog, exc)
    except MmapLogError as exc:
        return _storage_failed(prog, exc)
    return EXIT_OK


def cmd_recover(args: argparse.Namespace) -> int:
    from ._recovery import link_refusal, recover_path

    prog = "mmaplog recover"
    if not os.path.lexists(args.path):
        _err(prog, f"{args.path}: no such file or folder")
        return EXIT_USAGE
    if args.log_dir is not None and not os.path.isdir(args.log_dir):
        _err(prog, f"--log-dir {args.log_dir}: not a folder")
        return EXIT_USAGE
    try:
        report = recover_path(args.path, args.log_dir)
    except (OSError, MmapLogError) as exc:
        if isinstance(exc, OSError):
            _err(prog, f"{exc.filename or args.path}: {exc.strerror or exc}")
        else:
            _err(prog, str(exc))
        return EXIT_DAMAGED
    status = EXIT_OK
    by_name = not os.path.isdir(args.path)
    for path in report.links:
        if by_name:
            _err(prog, link_refusal(path))
            status = EXIT_USAGE
        else:
            _err(prog, f"{path}: skipped: a symbolic link (not followed)")
    for path, why in report.not_caches.items():
        if by_name:
            _err(prog, f"{path}: not a cache ({why}); not touched")
            status = EXIT_USAGE
        else:
            _err(prog, f"{path}: skipped: not a cache ({why})")
    for path, r in report.caches.items():
        for problem in r.problems:
            _err(prog, f"{path}: {problem}")
        for dest in r.quarantined:
            if dest == path:
                _err(prog, f"{path}: damaged cache, moved aside already: left as it is")
            else:
                _err(prog, f"{path}: damaged cache moved to {dest}")
        if r.problems:
            status = max(status, EXIT_DAMAGED)
    for path, reason in report.newer.items():
        _err(prog, f"{path}: {reason}; not touched")
        status = max(status, EXIT_DAMAGED)
    if report.locked:
        _err(
            prog,
            f"{', '.join(report.locked)}: held by a live process (its lock is taken); not touched",
        )
        status = max(status, EXIT_DAMAGED)
    if status != EXIT_USAGE:
        print(f"recovered {report.records} records")
    return status


def recover_main(argv: list[str] | None = None) -> int:
    """``python -m mmaplog.recover``: the same as ``mmaplog recover``."""
    return main(["recover", *(sys.argv[1:] if argv is None else argv)])


def _is_log_data(path: str) -> bool:
    """Whether ``path`` is an existing mmaplog log or cache file, or a Mars xlog file."""
    from ._xlog import looks_like_xlog

    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return head[:4] in (fmt.BLOCK_MAGIC, fmt.CACHE_MAGIC) or (bool(head) and looks_like_xlog(head))


def _create_private(
    prog: str, path: str, force: bool = False, hint: str = "--force to replace it"
) -> IO[str] | None:
    """A new file of mode 0600 for secrets; None (reported) when it exists or cannot be made.

    Even with ``force`` only a regular file is replaced (never a device, a FIFO or a
    socket, whose mode would change for everyone), and never a log or cache file: it may
    be an input, or records not yet recovered.
    """
    if path == "-":
        _err(prog, "-: output goes to a file here, not to standard output; give a file name")
        return None
    if force:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            _err(prog, f"{path}: cannot create: {exc.strerror or exc}")
            return None
        else:
            if not stat.S_ISREG(st.st_mode):
                _err(
                    prog,
                    f"{path}: exists and is not a regular file; not replaced, even with --force",
                )
                return None
            if _is_log_data(path):
                _err(prog, f"{path}: is a log or cache file; not replaced, even with --force")
                return None
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    flags |= os.O_TRUNC if force else os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        _err(prog, f"{path}: already exists (not overwritten; {hint})")
        return None
    except OSError as exc:
        _err(prog, f"{path}: cannot create: {exc.strerror or exc}")
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced by something else meanwhile
        os.close(fd)
        _err(prog, f"{path}: is not a regular file; not written")
        return None
    os.set_blocking(fd, True)
    if force:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_TRUNC
    return os.fdopen(fd, "w", encoding="utf-8")


def _print_public_key(private: Any) -> None:
    """The two lines keygen and pubkey print: the public key and its fingerprint."""
    from ._crypto import public_key_fingerprint, public_key_text

    print(f"public key: {public_key_text(private)}")
    print(f"fingerprint: {public_key_fingerprint(private)}")


def cmd_keygen(args: argparse.Namespace) -> int:
    from ._crypto import generate_keypair, load_private_key

    private, _public = generate_keypair()
    f = _create_private(
        "mmaplog keygen", args.output, hint="remove it or choose another name first"
    )
    if f is None:
        return EXIT_USAGE
    with f:
        f.write(private)
    _print_public_key(load_private_key(private))
    return EXIT_OK


def cmd_pubkey(args: argparse.Namespace) -> int:
    from ._crypto import load_private_key

    prog = "mmaplog pubkey"
    try:
        with open(args.keyfile, "rb") as f:
            value = f.read()
    except OSError as exc:
        what = "no such file" if isinstance(exc, FileNotFoundError) else "cannot read"
        _err(
            prog,
            f"{args.keyfile}: {what}" + ("" if what == "no such file" else f": {exc.strerror}"),
        )
        return EXIT_USAGE
    if _is_public_key(value):
        _err(prog, f"{args.keyfile}: this is a public key already")
        return EXIT_USAGE
    try:
        key = load_private_key(value)
    except ConfigError as exc:
        _err(prog, f"{args.keyfile}: {exc}")
        return EXIT_USAGE
    _print_public_key(key)
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
    p.set_defaults(func=func, parser=p)
    return p


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--level", type=parse_level, metavar="LEVEL", help="records at or above LEVEL")
    p.add_argument("--since", type=_check_time, metavar="T", help="records at or after T")
    p.add_argument("--until", type=_check_time, metavar="T", help="records at or before T")
    p.add_argument(
        "--grep", type=parse_regex, metavar="RE", help="records whose text matches RE (Python re)"
    )
    p.add_argument(
        "--pid",
        type=int,
        action="append",
        metavar="PID",
        help="records of this process (repeat for more)",
    )


def _add_display(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--raw",
        action="store_true",
        help="print control characters as they are (on a terminal they are escaped as \\xNN)",
    )
    p.add_argument(
        "--utc",
        action="store_true",
        help="read times without a zone given to --since/--until as UTC, and show the times "
        "mmaplog prints itself (json) in UTC; record text is printed as logged",
    )


def _add_bucket(p: argparse.ArgumentParser, host_help: str = "s3:// only: this host") -> None:
    p.add_argument("--host", action="append", metavar="HOST", help=host_help)
    p.add_argument("--endpoint-url", metavar="URL", help="s3:// only: the storage endpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmaplog",
        description="Read, check, recover and manage mmaplog logs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=MAIN_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"mmaplog {_version()}")
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
    _add_filters(p)
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: each record's line as logged (default); json: one JSON object per "
        "record and line (JSON Lines)",
    )
    p.add_argument(
        "-n",
        "--lines",
        type=parse_count,
        metavar="N",
        help="only the last N records (after the filters)",
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print new records as they come, as tail -f (one folder)",
    )
    _add_display(p)
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write here instead of stdout (a new file, mode 0600: it may hold decrypted text)",
    )
    p.add_argument("--force", action="store_true", help="let -o replace an existing file")
    _add_bucket(p, "s3:// only: this host's records (repeat for more); others are not downloaded")

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
    _add_filters(p)
    _add_display(p)
    _add_bucket(p)

    p = _sub(sub, "verify", "check every block of log files", VERIFY_EPILOG, cmd_verify)
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="log files, folders of them, cache files, - for stdin, or one s3://BUCKET/PREFIX",
    )
    p.add_argument("--key", help=key_help + " (to check decryption too)")
    _add_bucket(p)

    p = _sub(
        sub,
        "stats",
        "count the files, blocks and records of a log folder",
        STATS_EPILOG,
        cmd_stats,
    )
    p.add_argument("log_dir", metavar="LOG_DIR", help="the log folder, or s3://BUCKET/PREFIX")
    p.add_argument("--prefix", help="only the log files of this prefix")
    p.add_argument("--utc", action="store_true", help="show times in UTC")
    _add_bucket(p)

    p = _sub(
        sub,
        "recover",
        "move what a dead process left in a cache into the log",
        RECOVER_EPILOG,
        cmd_recover,
    )
    p.add_argument("path", help="a cache file (.mmap) or a folder of them")
    p.add_argument(
        "--log-dir",
        help="where to write the records (default: the log folder recorded in the cache, "
        "else beside the cache)",
    )

    p = _sub(sub, "keygen", "make a key pair for encrypted logs", KEYGEN_EPILOG, cmd_keygen)
    p.add_argument("-o", "--output", required=True, help="write the private key here (mode 0600)")

    p = _sub(
        sub,
        "pubkey",
        "print the public key of a private key file and its fingerprint",
        PUBKEY_EPILOG,
        cmd_pubkey,
    )
    p.add_argument("keyfile", metavar="KEYFILE", help="the private key file keygen wrote")
    return parser


def _tolerant_stdout() -> None:
    # Text the stream's encoding cannot hold (CJK on a latin-1 terminal) is written
    # as escapes: a record must never turn into a traceback or a lost line.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


def _version() -> str:
    from . import __version__
    from ._emitpath import EMIT_PATH, REASON, SEAL_IN_C

    if EMIT_PATH != "native":
        return f"{__version__} (pure-Python emit path: {REASON})"
    seal = "sealing with libcrypto" if SEAL_IN_C else "sealing in Python: no usable libcrypto"
    return f"{__version__} (native emit path; {seal})"


def _unknown_top_option(argv: list[str]) -> str | None:
    """The option before the command that ``mmaplog`` itself does not take, if any.

    argparse reports such an option as a missing command (it checks for the
    command first), which names the wrong mistake.
    """
    for arg in argv:
        if arg == "--" or not arg.startswith("-") or arg == "-":
            return None  # the command (or the end of options) comes first
        name = arg.split("=", 1)[0]
        if name in ("-h", "--version") or (
            name.startswith("--")
            and len(name) > 2
            and ("--help".startswith(name) or "--version".startswith(name))
        ):
            return None  # argparse acts on it (also its unambiguous abbreviations)
        return arg
    return None


def main(argv: list[str] | None = None) -> int:
    global _UTC
    _tolerant_stdout()
    parser = build_parser()
    unknown = _unknown_top_option(sys.argv[1:] if argv is None else argv)
    if unknown is not None:
        parser.error(f"unrecognized arguments: {unknown}")
    args, extra = parser.parse_known_args(argv)
    sub: argparse.ArgumentParser = args.parser
    if extra:
        # argparse leaves what a subcommand does not know to the top level, whose
        # usage does not help: say it with the subcommand's.
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    _UTC = bool(getattr(args, "utc", False))
    for name in ("since", "until"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(args, name, parse_time(value, utc=_UTC))
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
