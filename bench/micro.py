"""The seed-article experiment: writing a file through an mmap vs ``write()`` calls.

For each record size, the same number of bytes is written sequentially into a
fresh file, three ways:

- ``write()``: ``os.write(fd, data)`` once per record on a plain descriptor;
- ``mmap``: the file is pre-allocated (``posix_fallocate``) and mapped
  ``MAP_SHARED``; each record is one slice assignment ``m[pos:pos + n] = data``
  (page faults on first touch included, as in the article);
- ``mmap+populate``: the same with ``MAP_POPULATE`` (pages faulted in at map
  time, outside the timed loop), which is what mmaplog's cache does.

No ``fsync``/``msync``: like the article, this measures getting bytes into the
page cache. Times are per record, medians over rounds.
"""

from __future__ import annotations

import mmap
import os
import statistics
import time
from typing import Any

SIZES = (1, 100, 512, 1024, 4096, 10240)


def _write_loop(path: str, data: bytes, count: int) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write = os.write
        t0 = time.perf_counter()
        for _ in range(count):
            write(fd, data)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def _mmap_loop(path: str, data: bytes, count: int, populate: bool) -> float:
    size = len(data)
    total = size * count
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, total)
        flags = mmap.MAP_SHARED
        if populate:
            flags |= getattr(mmap, "MAP_POPULATE", 0)
        m = mmap.mmap(fd, total, flags, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            t0 = time.perf_counter()
            for pos in range(0, total, size):
                m[pos : pos + size] = data
            return time.perf_counter() - t0
        finally:
            m.close()
    finally:
        os.close(fd)


def run(folder: str, *, max_ops: int, max_bytes: int, rounds: int) -> list[dict[str, Any]]:
    """Time the three ways for every size; return one row per size."""
    rows = []
    path = os.path.join(folder, "micro.bin")
    for size in SIZES:
        count = max(1, min(max_ops, max_bytes // size))
        data = os.urandom(size)
        times: dict[str, list[float]] = {"write": [], "mmap": [], "mmap_populate": []}
        for r in range(rounds):
            order = ["write", "mmap", "mmap_populate"]
            order = order[r % 3 :] + order[: r % 3]
            for how in order:
                if how == "write":
                    dt = _write_loop(path, data, count)
                else:
                    dt = _mmap_loop(path, data, count, how == "mmap_populate")
                times[how].append(dt)
                os.unlink(path)
        row: dict[str, Any] = {"size": size, "count": count, "bytes": size * count}
        for how, ts in times.items():
            med = statistics.median(ts)
            row[f"{how}_ns"] = med / count * 1e9
            row[f"{how}_mbs"] = size * count / med / 1e6
        row["write_over_mmap"] = row["write_ns"] / row["mmap_ns"]
        row["write_over_mmap_populate"] = row["write_ns"] / row["mmap_populate_ns"]
        rows.append(row)
    return rows
