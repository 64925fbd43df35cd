"""The dated log files: naming, appending whole blocks, and finding blocks already there.

Each block goes into ``<log_dir>/<prefix>_<YYYYMMDD>.mmlog`` for the local date
of its first record, with one ``write()`` on a descriptor opened with
``O_APPEND``, so blocks of several processes never interleave.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import re
import stat
import time
from collections.abc import Callable

from . import _format as fmt

SUFFIX = ".mmlog"
XLOG_SUFFIX = ".xlog"
_TAIL_SCAN = 32 * 1024 * 1024


def day_of(time_us: int) -> str:
    """The local date of a time in µs, as ``YYYYMMDD``."""
    # time, not datetime: datetime's strftime imports a module, which fails in a
    # finalizer that logs while the interpreter shuts down.
    return time.strftime("%Y%m%d", time.localtime(time_us // 1_000_000))


def day_bounds(time_us: int) -> tuple[int, int]:
    """The local day holding ``time_us``, as ``[start, end)`` in µs."""
    t = time.localtime(time_us // 1_000_000)
    start = time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))
    end = time.mktime((t.tm_year, t.tm_mon, t.tm_mday + 1, 0, 0, 0, 0, 0, -1))
    return int(start) * 1_000_000, int(end) * 1_000_000


def log_file_re(prefix: str, suffix: str = SUFFIX) -> re.Pattern[str]:
    """Matches the names of ``prefix``'s log files; groups: date, part."""
    return re.compile(re.escape(prefix) + r"_(\d{8})(?:_(\d+))?" + re.escape(suffix) + r"\Z")


def open_no_follow(path: str, flags: int, mode: int) -> int:
    """Open ``path`` without following a symlink at it, refusing anything but a regular file."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:
            # A hard link planted at our path would make us write into someone else's file.
            raise OSError(errno.EPERM, "has other hard links, refusing to write to it", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


class LogFiles:
    """Appends blocks to one prefix's dated log files.

    With ``max_file_size`` a day's file is split: when a block would take the file
    past the limit it goes to ``<prefix>_<YYYYMMDD>_1.mmlog``, then ``_2``, and so on
    (a block is never split, so a file holding one large block may pass the limit).
    ``suffix=".xlog"`` names Mars xlog files instead (``<prefix>_<YYYYMMDD>.xlog``).

    The open file is checked before each block (one ``lstat`` of its path): if it was
    deleted, renamed away or replaced, or its folder was, a new file is opened at the
    path (the folder made again if it is gone) and ``on_warning`` is told, as
    ``WatchedFileHandler`` does.
    """

    __slots__ = (
        "_day",
        "_fd",
        "_ident",
        "_part",
        "_size",
        "durable",
        "file_mode",
        "log_dir",
        "max_file_size",
        "on_warning",
        "prefix",
        "suffix",
    )

    def __init__(
        self,
        log_dir: str,
        prefix: str,
        *,
        file_mode: int = 0o600,
        durable: bool = False,
        max_file_size: int = 0,
        suffix: str = SUFFIX,
        on_warning: Callable[[str], None] | None = None,
    ):
        self.log_dir = log_dir
        self.suffix = suffix
        self.prefix = prefix
        self.file_mode = file_mode
        self.durable = durable
        self.max_file_size = max_file_size
        self._fd = -1
        self._day = ""
        self._part = 0
        self._size = 0
        self._ident = (0, 0)  # (st_dev, st_ino) of the open file
        self.on_warning = on_warning

    def path_for(self, day: str, part: int = 0) -> str:
        tail = f"_{part}" if part else ""
        return os.path.join(self.log_dir, f"{self.prefix}_{day}{tail}{self.suffix}")

    def _last_part(self, day: str) -> int:
        pattern = log_file_re(self.prefix, self.suffix)
        last = 0
        try:
            names = os.listdir(self.log_dir)
        except FileNotFoundError:
            return 0
        for name in names:
            m = pattern.match(name)
            if m and m.group(1) == day:
                last = max(last, int(m.group(2) or 0))
        return last

    def _open(self, day: str, part: int) -> None:
        self.close()
        path = self.path_for(day, part)
        created = not os.path.lexists(path)
        self._fd = open_no_follow(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, self.file_mode)
        self._day = day
        self._part = part
        st = os.fstat(self._fd)
        self._size = st.st_size
        self._ident = (st.st_dev, st.st_ino)
        if created and self.durable:
            _fsync_dir(self.log_dir)

    def append(self, block: bytes, first_time_us: int) -> str:
        """Append one whole block to the file of its day; return that file's path.

        Raises ``OSError`` when the block could not be written whole; a part that
        did get written is cut off again where that is safe.
        """
        day = day_of(first_time_us)
        if day != self._day or self._fd < 0:
            # Always the newest part of the day: a recovery (which knows no size limit)
            # must not put late blocks into an earlier part, or reading order breaks.
            self._open(day, self._last_part(day))
        elif self._replaced():
            path = self.path_for(day, self._part)
            if self.on_warning is not None:
                self.on_warning(
                    f"mmaplog: the log file {path} was deleted or replaced while in use; "
                    "writing to a new file at that path"
                )
            os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
            self._open(day, self._part)
        if self.max_file_size:
            # Other processes append too: the file's real size decides.
            self._size = os.fstat(self._fd).st_size
            if self._size and self._size + len(block) > self.max_file_size:
                self._open(day, max(self._part, self._last_part(day)) + 1)
        fd = self._fd
        n = os.write(fd, block)
        if n != len(block):
            # A short write (disk full): take the torn part back if nobody wrote after it.
            end = os.fstat(fd).st_size
            if 0 < n <= end and _ends_with_prefix(fd, end, block[:n]):
                os.ftruncate(fd, end - n)
            raise OSError(errno.ENOSPC, f"short write ({n} of {len(block)} bytes)")
        self._size += n
        if self.durable:
            os.fsync(fd)
        return self.path_for(day, self._part)

    def _replaced(self) -> bool:
        """Whether the open file is no longer the one at its path (one ``lstat``)."""
        try:
            st = os.lstat(self.path_for(self._day, self._part))
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:
            return False  # cannot tell: keep the file we have
        return (st.st_dev, st.st_ino) != self._ident

    def _day_files(self, first_time_us: int) -> list[str]:
        """The paths of this prefix's log files (all parts) for the day of ``first_time_us``."""
        day = day_of(first_time_us)
        pattern = log_file_re(self.prefix, self.suffix)
        try:
            names = os.listdir(self.log_dir)
        except FileNotFoundError:
            return []
        return [
            os.path.join(self.log_dir, name)
            for name in names
            if (m := pattern.match(name)) is not None and m.group(1) == day
        ]

    def contains(self, session: bytes, seq: int, first_time_us: int) -> bool:
        """Whether a block ``(session, seq)`` is already in the log files of its day."""
        return any(_file_has_block(p, session, seq) for p in self._day_files(first_time_us))

    def contains_xlog(self, block: bytes, first_time_us: int) -> bool:
        """Whether the xlog ``block`` is already in the ``.xlog`` files of its day.

        A block counts as there when the same start magic, seq, begin hour, length,
        client key, payload and end magic are found: the payload holds every line
        with its time, pid and thread, so another block with equal bytes would be a
        block with equal lines. The end hour is not compared.
        """
        return any(_file_has_xlog_block(p, block) for p in self._day_files(first_time_us))

    def remove_old(self, max_age_days: int, now: float) -> list[str]:
        """Delete this prefix's log files dated more than ``max_age_days`` days before ``now``.

        Files of other prefixes and files that are not log files are never touched.
        Returns the paths removed.
        """
        if max_age_days <= 0:
            return []
        oldest = _dt.datetime.fromtimestamp(now).date() - _dt.timedelta(days=max_age_days)
        keep_from = oldest.strftime("%Y%m%d")
        pattern = log_file_re(self.prefix, self.suffix)
        removed = []
        try:
            names = os.listdir(self.log_dir)
        except FileNotFoundError:
            return []
        for name in names:
            m = pattern.match(name)
            if m and m.group(1) < keep_from:
                path = os.path.join(self.log_dir, name)
                try:
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        os.unlink(path)
                        removed.append(path)
                except OSError:
                    continue
        return removed

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._day = ""


def _file_has_block(path: str, session: bytes, seq: int) -> bool:
    try:
        fd = open_no_follow(path, os.O_RDONLY, 0)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - _TAIL_SCAN)
        data = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    first = data.find(fmt.BLOCK_MAGIC) if start else 0
    if first < 0:
        return False
    for item in fmt.scan_blocks(data, first):
        if (
            isinstance(item, fmt.ScannedBlock)
            and item.header.session == session
            and item.header.seq == seq
        ):
            return True
    return False


def _file_has_xlog_block(path: str, block: bytes) -> bool:
    # Bytes 0-3: magic, seq, begin hour; 4: end hour (not compared); from 5: length, key,
    # payload, end magic.
    head, needle = block[:4], block[5:]
    try:
        fd = open_no_follow(path, os.O_RDONLY, 0)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - _TAIL_SCAN - len(block))
        data = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    at = data.find(needle, 5)
    while at >= 0:
        if data[at - 5 : at - 1] == head:
            return True
        at = data.find(needle, at + 1)
    return False


def _ends_with_prefix(fd: int, end: int, part: bytes) -> bool:
    return os.pread(fd, len(part), end - len(part)) == part


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
