"""Shipping log files to object storage exactly once, across kills of the shipper.

Owns what is shipped (whole blocks already in log files, never a cache), where
it goes (a deterministic key per byte range of a file), and the state file that
says how far each file has gone. The protocol for each object:

1. write the intent (file, byte range, checksum) into the state file;
2. upload the range to the key named by (host, file, range);
3. record the new shipped offset and clear the intent.

The state file is replaced atomically (temp file, fsync, rename) at steps 1 and
3. A shipper killed anywhere re-does the one intent it finds, which uploads the
same bytes to the same key again: an overwrite with identical content. Without
an intent, a restart could cut a different range (the file grew meanwhile) and
store a block in two objects.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import mmap
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _format as fmt
from ._reader import log_files_in, read_file
from ._s3 import S3Url, Store, parse_url
from .exceptions import ConfigError, MmapLogError, StorageError

OBJECT_SIZE = 4 * 1024 * 1024
"""Largest object, in bytes, unless a single block is larger."""
STATE_PREFIX = ".mmaplog-ship-"
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DAY = re.compile(r"_(\d{8})(?:_\d+)?\.(?:mmlog|xlog)$")
_RANGE = re.compile(r"^(\d{16})-(\d{16})$")
_STATE_VERSION = 1
_SETTLE_SECONDS = 60.0
"""A log file is deleted only once it has not changed for this long."""


@dataclass
class ShipReport:
    """What one pass of the shipper did."""

    url: str
    host: str
    files: int = 0
    """Log files looked at."""
    objects: int = 0
    """Objects uploaded in this pass."""
    bytes: int = 0
    """Bytes uploaded in this pass."""
    deleted: list[str] = field(default_factory=list)
    """Log files deleted after they were shipped and verified (``delete_shipped``)."""
    kept: list[str] = field(default_factory=list)
    """Why a shipped log file old enough to delete was kept (a failed verification)."""


def default_host() -> str:
    """This machine's name, cut at the first dot."""
    return socket.gethostname().split(".")[0] or "localhost"


def object_key(url: S3Url, host: str, segment: str, start: int, end: int) -> str:
    """The key of bytes ``[start, end)`` of a log file (``segment``: its name, and
    ``@N`` when a file of that name came back after it was deleted)."""
    return url.key(host, segment, f"{start:016d}-{end:016d}")


def parse_object_key(key: str) -> tuple[str, str, int, int] | None:
    """``(host, segment, start, end)`` from the last four parts of an object key."""
    parts = key.rsplit("/", 3)
    if len(parts) < 3:
        return None
    m = _RANGE.match(parts[-1])
    if m is None:
        return None
    host = parts[-3] if len(parts) >= 3 else ""
    return host, parts[-2], int(m.group(1)), int(m.group(2))


def block_ends(data: fmt.Buffer, start: int, *, xlog: bool) -> list[int]:
    """The end offsets of the intact blocks at or after ``start``.

    Damage followed by an intact block stays inside a range (it will never change:
    log files only grow); a torn or damaged tail is left for a later pass, when the
    block being written there is whole.
    """
    if xlog:
        from . import _xlog

        with memoryview(data) as view:
            tail = bytes(view[start:])
        return [start + b.end for b in _xlog.iter_blocks(tail)]
    return [b.end for b in fmt.scan_blocks(data, start) if isinstance(b, fmt.ScannedBlock)]


class _State:
    """The shipper's state file: how far each log file has gone, and the one intent."""

    def __init__(self, path: str, url: str, host: str) -> None:
        self.path = path
        self.files: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, Any] | None = None
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            if raw.get("version") != _STATE_VERSION:
                raise ValueError(f"version {raw.get('version')!r}")
            self.files = dict(raw["files"])
            self.pending = raw.get("pending")
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MmapLogError(
                f"{path}: unreadable shipping state ({exc}); move it away to ship "
                "every log file again (reading the bucket drops the duplicates)"
            ) from None
        self._head = {"version": _STATE_VERSION, "url": url, "host": host}

    def save(self) -> None:
        body = json.dumps(
            {**self._head, "files": self.files, "pending": self.pending}, sort_keys=True
        ).encode()
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _segment(name: str, entry: dict[str, Any]) -> str:
    gen = int(entry.get("gen", 0))
    return f"{name}@{gen}" if gen else name


class Shipper:
    """Ships one log folder to ``s3://bucket/prefix/<host>/`` (see :func:`ship`).

    Holds a lock on its state file while open, so two shippers never share a folder
    and destination. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        log_dir: str,
        url: str,
        *,
        host: str | None = None,
        endpoint_url: str | None = None,
        delete_shipped: bool = False,
        object_size: int = OBJECT_SIZE,
        retry_for: float = 60.0,
    ) -> None:
        self.url = parse_url(url)
        self.host = host if host is not None else default_host()
        if not _HOST.match(self.host):
            raise ConfigError(
                f"host {self.host!r}: use 1-128 of A-Z, a-z, 0-9, '.', '_', '-' (not first)"
            )
        if not os.path.isdir(log_dir):
            raise ConfigError(f"{log_dir}: no such log folder")
        if object_size < 1:
            raise ConfigError(f"object_size must be positive, not {object_size}")
        self.log_dir = log_dir
        self.delete_shipped = delete_shipped
        self.object_size = object_size
        digest = hashlib.sha256(f"{self.url}\0{self.host}".encode()).hexdigest()[:16]
        state_path = os.path.join(log_dir, f"{STATE_PREFIX}{digest}.json")
        self._lock_fd = os.open(state_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise MmapLogError(
                    f"{log_dir}: another shipper is shipping this folder to {self.url}"
                ) from None
            raise
        try:
            self._state = _State(state_path, str(self.url), self.host)
            self._store = Store(self.url, endpoint_url=endpoint_url, retry_for=retry_for)
        except BaseException:
            self.close()
            raise
        self._bucket_checked = False

    def close(self) -> None:
        """Release the folder's lock (idempotent)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Shipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one pass --------------------------------------------------------------------

    def ship_once(self) -> ShipReport:
        """Upload every whole block not shipped yet; then delete what may be deleted.

        Raises :class:`~mmaplog.StorageError` when the storage refuses or stays
        unreachable past the retries; what was confirmed before stays shipped.
        """
        report = ShipReport(str(self.url), self.host)
        if not self._bucket_checked:
            self._store.check_bucket()
            self._bucket_checked = True
        self._finish_intent(report)
        for path in log_files_in(self.log_dir):
            report.files += 1
            self._ship_file(path, report)
        if self.delete_shipped:
            self._retire(report)
        return report

    def follow(
        self,
        *,
        interval: float = 2.0,
        stop: threading.Event | None = None,
        on_pass: Callable[[ShipReport], None] | None = None,
        on_outage: Callable[[StorageError], None] | None = None,
    ) -> None:
        """Ship, then again every ``interval`` seconds, until ``stop`` is set.

        An outage of the storage (retries exhausted) is passed to ``on_outage`` and
        the next pass resumes where this one stopped; a refusal (credentials, bucket)
        is raised.
        """
        stop = stop if stop is not None else threading.Event()
        while not stop.is_set():
            try:
                report = self.ship_once()
            except StorageError as exc:
                if not exc.transient:
                    raise
                if on_outage is not None:
                    on_outage(exc)
            else:
                if on_pass is not None:
                    on_pass(report)
            stop.wait(interval)

    # -- the protocol ------------------------------------------------------------------

    def _upload(self, name: str, entry: dict[str, Any], start: int, end: int, body: bytes) -> str:
        sha = hashlib.sha256(body).hexdigest()
        state = self._state
        # 1. the intent: a restart re-does exactly this range, under exactly this key
        state.pending = {
            "file": name,
            "gen": int(entry.get("gen", 0)),
            "start": start,
            "end": end,
            "sha256": sha,
        }
        state.save()
        key = self._put(name, entry, start, end, body, sha)
        # 3. confirmed: move the offset on and drop the intent
        entry["shipped"] = end
        state.files[name] = entry
        state.pending = None
        state.save()
        return key

    def _put(
        self, name: str, entry: dict[str, Any], start: int, end: int, body: bytes, sha: str
    ) -> str:
        key = object_key(self.url, self.host, _segment(name, entry), start, end)
        self._store.put(key, body, {"sha256": sha})
        return key

    def _finish_intent(self, report: ShipReport) -> None:
        state = self._state
        intent = state.pending
        if intent is None:
            return
        name, start, end = str(intent["file"]), int(intent["start"]), int(intent["end"])
        entry = dict(state.files.get(name, {"shipped": 0, "gen": 0}))
        entry["gen"] = int(intent.get("gen", 0))
        body = _read_range(os.path.join(self.log_dir, name), start, end)
        if body is not None and hashlib.sha256(body).hexdigest() == intent["sha256"]:
            self._put(name, entry, start, end, body, str(intent["sha256"]))
            report.objects += 1
            report.bytes += len(body)
            entry["shipped"] = end
            state.files[name] = entry
        # else: the file is gone or changed; what it held is shipped up to the offset
        state.pending = None
        state.save()

    def _ship_file(self, path: str, report: ShipReport) -> None:
        name = os.path.basename(path)
        state = self._state
        entry = dict(state.files.get(name, {"shipped": 0, "gen": 0}))
        try:
            data = read_file(path)
        except FileNotFoundError:
            return  # deleted meanwhile (max_age_days)
        except OSError as exc:
            raise MmapLogError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            size = len(data)
            if entry.get("deleted") or size < int(entry.get("shipped", 0)):
                # A new file under an old name: its own keys, so no object is overwritten.
                entry = {"shipped": 0, "gen": int(entry.get("gen", 0)) + 1}
            start = int(entry.get("shipped", 0))
            ends = block_ends(data, start, xlog=name.endswith(".xlog"))
            while ends:
                fits = [e for e in ends if e - start <= self.object_size]
                end = fits[-1] if fits else ends[0]
                self._upload(name, entry, start, end, bytes(data[start:end]))
                report.objects += 1
                report.bytes += end - start
                start = end
                ends = [e for e in ends if e > end]
        finally:
            if isinstance(data, mmap.mmap):
                data.close()

    # -- retention -------------------------------------------------------------------

    def _retire(self, report: ShipReport) -> None:
        today = _dt.date.today().strftime("%Y%m%d")
        now = time.time()
        for path in log_files_in(self.log_dir):
            name = os.path.basename(path)
            m = _DAY.search(name)
            entry = self._state.files.get(name)
            if m is None or m.group(1) >= today or entry is None:
                continue  # today's file is still being written
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_size != int(entry.get("shipped", -1)) or now - st.st_mtime < _SETTLE_SECONDS:
                continue  # not all shipped (a damaged tail), or written to just now
            problem = self._verify_file(path, name, entry, st.st_size)
            if problem:
                report.kept.append(f"{name}: {problem}")
                continue
            os.unlink(path)
            entry["deleted"] = True
            self._state.save()
            report.deleted.append(name)

    def _verify_file(self, path: str, name: str, entry: dict[str, Any], size: int) -> str:
        """Empty when the bucket holds ``path`` whole: ranges tiling ``[0, size)``, each
        of the right size and SHA-256; else what is wrong."""
        prefix = self.url.key(self.host, _segment(name, entry)) + "/"
        ranges = []
        for key, length in self._store.list(prefix):
            parsed = parse_object_key(key)
            if parsed is not None:
                ranges.append((parsed[2], parsed[3], key, length))
        ranges.sort()
        at = 0
        with open(path, "rb") as f:
            for start, end, key, length in ranges:
                if start != at:
                    return f"the bucket has bytes {start}-{end} where {at} was expected"
                if length != end - start:
                    return f"{key} holds {length} bytes, expected {end - start}"
                f.seek(start)
                local = hashlib.sha256(f.read(end - start)).hexdigest()
                _size, meta = self._store.head(key)
                if meta.get("sha256") != local:
                    return f"{key}: checksum differs from the local file"
                at = end
        if at != size:
            return f"the bucket holds bytes 0-{at} of {size}"
        return ""


def _read_range(path: str, start: int, end: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start)
    except OSError:
        return None
    return body if len(body) == end - start else None


def ship(
    log_dir: str,
    url: str,
    *,
    host: str | None = None,
    endpoint_url: str | None = None,
    delete_shipped: bool = False,
    object_size: int = OBJECT_SIZE,
    retry_for: float = 60.0,
) -> ShipReport:
    """Upload the whole blocks of ``log_dir``'s log files to ``url`` (``s3://bucket/prefix``).

    Objects go to ``<prefix>/<host>/<log file name>/<start>-<end>`` (byte range,
    16 digits each), holding whole blocks exactly as in the file, encrypted or not.
    Caches are never read. A state file in ``log_dir`` records what is shipped, so
    a call after a crash or kill goes on where the last one stopped and every block
    lands in the bucket exactly once. ``host`` defaults to this machine's name.

    With ``delete_shipped``, log files of past days that are wholly shipped, and
    whose objects match their size and SHA-256, are deleted.

    Raises :class:`~mmaplog.ConfigError` (a malformed URL or host, a missing folder),
    :class:`~mmaplog.MissingDependencyError` (boto3 is not installed: ``mmaplog[s3]``),
    :class:`~mmaplog.StorageError` (bad credentials, a missing bucket, storage
    unreachable for ``retry_for`` seconds) and :class:`~mmaplog.MmapLogError`
    (another shipper holds the folder, unreadable state).
    """
    with Shipper(
        log_dir,
        url,
        host=host,
        endpoint_url=endpoint_url,
        delete_shipped=delete_shipped,
        object_size=object_size,
        retry_for=retry_for,
    ) as shipper:
        return shipper.ship_once()
