"""Recovery: moving what a dead process left in its cache into the log files.

``python -m mmaplog.recover PATH [--log-dir DIR]`` and :func:`recover`. A cache
held by a live process is refused. Blocks keep the form they had in the cache
(one chunk per record) and are marked as recovered; a block the log already
holds (the process died after writing it, before freeing its slot) is skipped,
so running recovery twice adds nothing. A cache written with ``format="xlog"``
yields Mars xlog blocks, appended to ``<prefix>_<YYYYMMDD>.xlog``.
"""

from __future__ import annotations

import argparse
import os
import sys
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

__all__ = ["RecoveryReport", "recover"]


@dataclass(slots=True)
class RecoveryReport:
    """What one recovery did."""

    records: int = 0
    blocks: int = 0
    skipped_blocks: int = 0
    problems: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)


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
    """Empty the slots of a recovered cache file, keeping its header."""
    try:
        info = fmt.parse_cache_header(image)
        slot_size, nslots = info.slot_size, info.nslots
    except CorruptionError:
        slot_size, nslots = (len(image) - fmt.CACHE_HEADER_SIZE) // NSLOTS, NSLOTS
    for i in range(nslots):
        base = fmt.CACHE_HEADER_SIZE + i * slot_size
        os.pwrite(fd, b"\0\0\0\0", base + fmt.SLOT_BLOCK_OFFSET)
    for i in range(nslots):
        base = fmt.CACHE_HEADER_SIZE + i * slot_size
        os.pwrite(fd, bytes(max(0, min(slot_size, len(image) - base))), base)


def quarantine(path: str) -> str:
    """Move a cache that is not ours aside, never deleting it."""
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


def cache_files(path: str) -> list[str]:
    """The cache files named by ``path``: the file itself, or the ``*.mmap`` files in a folder."""
    if os.path.isdir(path):
        return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".mmap"))
    if not os.path.lexists(path):
        raise MmapLogError(f"{path}: no such file or folder")
    return [path]


def recover(path: str, log_dir: str | None = None) -> int:
    """Move what dead processes left in the cache file(s) at ``path`` into the log files.

    ``path`` is a cache file or a folder of them. Without ``log_dir`` the records
    go to the log folder recorded in the cache (where the dead process would have
    put them) or, failing that, beside the cache. Returns the number of records
    recovered. Raises :class:`CacheLockedError` when a live process holds a cache,
    and :class:`MmapLogError` for a path that is not there.
    """
    total = 0
    locked = []
    for cache_path in cache_files(path):
        fd = open_locked(cache_path, 0o600, create=False)
        if fd is None:
            locked.append(cache_path)
            continue
        try:
            report = recover_fd(fd, cache_path, log_dir=log_dir, file_mode=0o600)
        finally:
            os.close(fd)
        for problem in report.problems:
            print(f"mmaplog recover: {cache_path}: {problem}", file=sys.stderr)
        for dest in report.quarantined:
            print(f"mmaplog recover: {cache_path}: damaged cache moved to {dest}", file=sys.stderr)
        total += report.records
    if locked:
        raise CacheLockedError(
            f"{', '.join(locked)}: held by a live process (its lock is taken); not touched"
        )
    return total


def main(argv: list[str] | None = None) -> int:
    """``python -m mmaplog.recover``: exit 0 done, 1 refused or failed, 2 bad usage or path."""
    parser = argparse.ArgumentParser(
        prog="python -m mmaplog.recover",
        description="Move what a dead process left in an mmaplog cache into the log files.",
        epilog="exit status: 0 recovered (or nothing to do), 1 a cache is held by a live "
        "process, is of an unknown newer format, or could not be recovered, 2 bad usage "
        "or a path that does not exist",
    )
    parser.add_argument("path", help="a cache file (.mmap) or a folder of them")
    parser.add_argument(
        "--log-dir",
        help="where to write the records (default: the log "
        "folder recorded in the cache, else beside the cache)",
    )
    args = parser.parse_args(argv)
    if not os.path.lexists(args.path):
        print(f"mmaplog recover: {args.path}: no such file or folder", file=sys.stderr)
        return 2
    if args.log_dir is not None and not os.path.isdir(args.log_dir):
        print(f"mmaplog recover: --log-dir {args.log_dir}: not a folder", file=sys.stderr)
        return 2
    try:
        n = recover(args.path, args.log_dir)
    except CacheLockedError as exc:
        print(f"mmaplog recover: {exc}", file=sys.stderr)
        return 1
    except (MmapLogError, OSError) as exc:
        print(f"mmaplog recover: {exc}", file=sys.stderr)
        return 1
    print(f"recovered {n} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
