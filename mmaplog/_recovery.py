"""Recovery: moving what a dead process left in its cache into the log files.

The library side of ``mmaplog recover`` and of :func:`mmaplog.recover`: it
returns reports and raises, and prints nothing. A cache held by a live process
is refused; a file that does not start like a cache is never touched. Blocks
keep the form they had in the cache (one chunk per record) and are marked as
recovered; a block the log already holds (the process died after writing it,
before freeing its slot) is skipped, so running recovery twice adds nothing. A cache written with
``format="xlog"`` yields Mars xlog blocks, appended to
``<prefix>_<YYYYMMDD>.xlog``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace

from . import _format as fmt
from ._blocks import build_xlog_block
from ._cache import NSLOTS, open_locked, read_image
from ._faults import point
from ._logfile import XLOG_SUFFIX, LogFiles
from .exceptions import (
    CacheLockedError,
    CorruptionError,
    MmapLogError,
    UnsupportedVersionError,
)

__all__ = ["PathReport", "RecoveryReport", "is_cache_image", "recover", "recover_path"]


@dataclass(slots=True)
class RecoveryReport:
    """What one recovery did."""

    records: int = 0
    blocks: int = 0
    skipped_blocks: int = 0
    problems: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    cut: fmt.Damage | None = None
    """The byte range a cache cut short lacks (its header says how long it is)."""


def recovered_block(content: fmt.SlotContent) -> bytes:
    """The log-file block for what a slot held: stream form, marked recovered."""
    t = content.template
    header = replace(
        t,
        flags=t.flags | fmt.FLAG_RECOVERED,
        last_time_us=max(content.last_time_us, t.first_time_us),
        count=content.count,
        raw_len=0,
    )
    return fmt.encode_block(header, content.payload)


def recovered_xlog_block(content: fmt.SlotContent) -> bytes:
    """The xlog block for what an xlog slot (``FLAG_XLOG``) held: its chunks joined.

    It has the bytes the flusher would have written for the same chunks, which is
    how a block already appended before the crash is recognised. No key is needed:
    encrypted chunks are joined as they are, never decrypted. Raises
    ``CorruptionError`` for chunks that cannot be an xlog payload.
    """
    t = content.template
    bodies, _end = fmt.walk_chunks(content.payload, fmt.chunk_seed(t.session, t.seq))
    return build_xlog_block(t, bodies, content.last_time_us)


def _slots_of(
    image: bytes, report: RecoveryReport
) -> tuple[fmt.CacheInfo | None, list[fmt.SlotContent]]:
    try:
        info = fmt.parse_cache_header(image)
    except UnsupportedVersionError:
        raise
    except CorruptionError as exc:
        report.problems.append(str(exc))
        return None, _salvage_slots(image, report)
    expected = info.header_size + info.nslots * info.slot_size
    if len(image) < expected:
        # Cut short by another program (a truncating log rotation, a copy that ran out
        # of room): the slots are read as far as they go; the rest is lost.
        report.cut = fmt.Damage(
            len(image),
            expected,
            f"cache file cut short: {len(image)} bytes, but its header says {expected} "
            f"({info.nslots} slots of {info.slot_size} bytes); whatever was in bytes "
            f"{len(image)}-{expected} is lost",
        )
        report.problems.append(report.cut.reason)
    found = []
    for i in range(info.nslots):
        try:
            content = fmt.read_slot(image, info, i)
        except CorruptionError as exc:
            report.problems.append(str(exc))
            continue
        if content is not None:
            found.append(content)
    return info, found


def _salvage_slots(image: bytes, report: RecoveryReport) -> list[fmt.SlotContent]:
    # The cache header is unreadable: look for block templates at page boundaries.
    page = 4096
    starts = [
        off - fmt.SLOT_BLOCK_OFFSET
        for off in range(fmt.CACHE_HEADER_SIZE + fmt.SLOT_BLOCK_OFFSET, len(image), page)
        if image[off : off + 4] == fmt.BLOCK_MAGIC
    ]
    found = []
    for n, base in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(image)
        info = fmt.CacheInfo(fmt.FORMAT_VERSION, 1, base, end - base, 0, 0, "", "")
        try:
            content = fmt.read_slot(image, info, 0)
        except CorruptionError as exc:
            report.problems.append(str(exc))
            continue
        if content is not None:
            found.append(content)
    return found


def _block_order(content: fmt.SlotContent) -> tuple[bytes, int]:
    return content.template.session, content.template.seq


def _default_prefix(path: str) -> str:
    name = os.path.basename(path)
    stem = name[: -len(".mmap")] if name.endswith(".mmap") else name
    head, _, tail = stem.rpartition(".")
    return head if head and tail.isdigit() else stem


def recover_image(
    image: bytes,
    cache_path: str,
    *,
    log_dir: str | None = None,
    file_mode: int = 0o600,
    durable: bool = False,
) -> RecoveryReport:
    """Append the blocks held in a cache image to their log files (the cache is not changed)."""
    report = RecoveryReport()
    if not image.strip(b"\0"):
        return report
    info, contents = _slots_of(image, report)
    target = log_dir or (info.log_dir if info and info.log_dir else None)
    if not target or not os.path.isdir(target):
        target = os.path.dirname(os.path.abspath(cache_path))
    prefix = info.prefix if info and info.prefix else _default_prefix(cache_path)
    logs = LogFiles(target, prefix, file_mode=file_mode, durable=durable)
    xlogs = LogFiles(target, prefix, file_mode=file_mode, durable=durable, suffix=XLOG_SUFFIX)
    try:
        # In sequence order: a record stamped earlier can open a later block (its time is
        # taken before the cache lock), so first times do not order a cache's blocks.
        for content in sorted(contents, key=_block_order):
            if content.count == 0:
                continue
            t = content.template
            if t.flags & fmt.FLAG_XLOG:
                try:
                    block = recovered_xlog_block(content)
                except CorruptionError as exc:
                    report.problems.append(f"cache slot {content.index}: {exc}")
                    continue
                if xlogs.contains_xlog(block, t.first_time_us):
                    report.skipped_blocks += 1
                    continue
                xlogs.append(block, t.first_time_us)
                point("recover_after_append")
                report.blocks += 1
                report.records += content.count
                continue
            if logs.contains(t.session, t.seq, t.first_time_us):
                report.skipped_blocks += 1
                continue
            logs.append(recovered_block(content), t.first_time_us)
            point("recover_after_append")
            report.blocks += 1
            report.records += content.count
    finally:
        logs.close()
        xlogs.close()
    return report


def clear_slots(fd: int, image: bytes) -> None:
    """Empty the slots of a recovered cache file, keeping its header.

    Only bytes the file has are written: the file never grows.
    """
    try:
        info = fmt.parse_cache_header(image)
        slot_size, nslots = info.slot_size, info.nslots
    except CorruptionError:
        slot_size, nslots = (len(image) - fmt.CACHE_HEADER_SIZE) // NSLOTS, NSLOTS
    size = len(image)
    for i in range(nslots):
        magic_at = fmt.CACHE_HEADER_SIZE + i * slot_size + fmt.SLOT_BLOCK_OFFSET
        if magic_at + 4 <= size:
            os.pwrite(fd, b"\0\0\0\0", magic_at)
    for i in range(nslots):
        base = fmt.CACHE_HEADER_SIZE + i * slot_size
        if base < size:
            os.pwrite(fd, bytes(min(slot_size, size - base)), base)


def quarantine(path: str) -> str:
    """Move a cache that is not ours aside, never deleting it; one moved aside already
    (``*.corrupt-<time>``) stays where it is, under its name."""
    if ".corrupt-" in os.path.basename(path):
        return path
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.lexists(dest):
        dest = f"{path}.corrupt-{stamp}.{n}"
        n += 1
    os.rename(path, dest)
    return dest


def recover_fd(
    fd: int, path: str, *, log_dir: str | None, file_mode: int, durable: bool = False
) -> RecoveryReport:
    """Recover an open, locked cache file, then empty its slots (or quarantine it)."""
    image = read_image(fd)
    if not image.strip(b"\0"):
        return RecoveryReport()
    report = recover_image(image, path, log_dir=log_dir, file_mode=file_mode, durable=durable)
    if report.problems and image.strip(b"\0"):
        try:
            report.quarantined.append(quarantine(path))
        except OSError as exc:
            report.problems.append(f"cannot move {path} aside: {exc}")
    else:
        clear_slots(fd, image)
    return report


def is_cache_image(data: fmt.Buffer) -> bool:
    """Whether ``data`` is a cache file's image, by its magic.

    One bit separates the cache magic from the log block magic, so a damaged log
    file is not taken for a cache: a cache whose header does not parse still has
    its first block template past the header, where a log file has one at 0.
    """
    if bytes(data[:4]) != fmt.CACHE_MAGIC:
        return False
    try:
        fmt.parse_cache_header(bytes(data[: fmt.CACHE_HEADER_SIZE]))
        return True
    except UnsupportedVersionError:
        return True
    except CorruptionError:
        pass
    first = data.find(fmt.BLOCK_MAGIC)
    return first < 0 or first >= fmt.CACHE_HEADER_SIZE


def _is_blank(data: bytes) -> bool:
    # A cache made but never written (the process died between creating and
    # stamping it): nothing to recover, and nothing to move.
    return not data.strip(b"\0")


def cache_files(path: str) -> list[str]:
    """The files named by ``path``: the file itself, or the ``*.mmap`` files in a folder."""
    if os.path.isdir(path):
        return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".mmap"))
    if not os.path.lexists(path):
        raise MmapLogError(f"{path}: no such file or folder")
    return [path]


@dataclass(slots=True)
class PathReport:
    """What a recovery of a file or folder did, cache by cache."""

    caches: dict[str, RecoveryReport] = field(default_factory=dict)
    """The caches recovered (or found empty), by path."""
    locked: list[str] = field(default_factory=list)
    """Caches held by a live process: not touched."""
    not_caches: dict[str, str] = field(default_factory=dict)
    """Files that are not caches, with the reason: not touched."""
    links: list[str] = field(default_factory=list)
    """Symbolic links: never followed, not touched."""
    newer: dict[str, str] = field(default_factory=dict)
    """Caches of an unknown newer format, with the reason: not touched."""

    @property
    def records(self) -> int:
        return sum(r.records for r in self.caches.values())


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(fmt.CACHE_HEADER_SIZE + 8)


def recover_path(path: str, log_dir: str | None = None) -> PathReport:
    """Recover the cache file at ``path``, or every ``*.mmap`` cache in the folder ``path``.

    Each file is established to be a cache by its magic before anything is read
    with its lock taken, let alone written or renamed; other files are listed in
    ``not_caches`` and left as they are, an empty file among them. A symbolic link
    is never followed (recovery renames and rewrites what it acts on): links are
    listed in ``links``. Caches held by a live process are listed in ``locked``.
    Raises :class:`MmapLogError` for a path that is not there and ``OSError`` for
    a file that cannot be read.
    """
    out = PathReport()
    for cache_path in cache_files(path):
        if os.path.islink(cache_path):
            out.links.append(cache_path)
            continue
        if not os.path.isfile(cache_path):
            out.not_caches[cache_path] = "not a regular file"
            continue
        head = _head(cache_path)
        if not head:
            out.not_caches[cache_path] = "an empty file"
            continue
        if not _is_blank(head) and not is_cache_image(head):
            out.not_caches[cache_path] = "no cache magic"
            continue
        fd = open_locked(cache_path, 0o600, create=False)
        if fd is None:
            out.locked.append(cache_path)
            continue
        try:
            # Read again under the lock: the file may have changed since.
            image = read_image(fd)
            if _is_blank(image):
                out.caches[cache_path] = RecoveryReport()
                continue
            if not image:
                out.not_caches[cache_path] = "an empty file"
                continue
            if not is_cache_image(image):
                out.not_caches[cache_path] = "no cache magic"
                continue
            try:
                out.caches[cache_path] = recover_fd(
                    fd, cache_path, log_dir=log_dir, file_mode=0o600
                )
            except UnsupportedVersionError as exc:
                out.newer[cache_path] = str(exc)
        finally:
            os.close(fd)
    return out


_log = logging.getLogger("mmaplog.recover")


def recover(path: str, log_dir: str | None = None) -> int:
    """Move what dead processes left in the cache file(s) at ``path`` into the log files.

    ``path`` is a cache file or a folder of them. Without ``log_dir`` the records
    go to the log folder recorded in the cache (where the dead process would have
    put them) or, failing that, beside the cache. Files in the folder that are
    not caches are left alone. Returns the number of records recovered; damage
    found on the way is logged as warnings on the ``mmaplog.recover`` logger.
    Raises :class:`CacheLockedError` when a live process holds a cache,
    :class:`UnsupportedVersionError` for a cache of a newer format, and
    :class:`MmapLogError` for a path that is not there, or a file given by name
    that is not a cache or is a symbolic link (never followed).
    """
    report = recover_path(path, log_dir)
    for cache_path, r in report.caches.items():
        for problem in r.problems:
            _log.warning("%s: %s", cache_path, problem)
        for dest in r.quarantined:
            _log.warning("%s: damaged cache moved to %s", cache_path, dest)
    if report.locked:
        raise CacheLockedError(
            f"{', '.join(report.locked)}: held by a live process (its lock is taken); not touched"
        )
    if report.newer:
        cache_path, reason = next(iter(report.newer.items()))
        raise UnsupportedVersionError(f"{cache_path}: {reason}")
    if not os.path.isdir(path):
        if report.links:
            raise MmapLogError(link_refusal(path))
        for why in report.not_caches.values():
            raise MmapLogError(f"{path}: not a cache ({why}); not touched")
    return report.records


def link_refusal(path: str) -> str:
    """Why recovery does not act on ``path``, a symbolic link, and what to give instead."""
    return (
        f"{path}: a symbolic link (to {os.path.realpath(path)}); recover does not act "
        "through links, as it renames and rewrites caches: give the cache's own path; "
        "not touched"
    )
