"""Kill a logging process with SIGKILL mid-stream and show that no record is lost.

A child process logs numbered records through MmapHandler and tells us each
number once ``emit`` returned. We kill it at a random moment, recover its cache
(``mmaplog.recover``), decode the log, and count.

    python demo/crash_demo.py [--kills N] [--encrypt]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mmaplog
from torture import harness


def one_round(round_no: int, public_key: str | None, private_key: str | None) -> bool:
    log_dir = tempfile.mkdtemp(prefix="mmaplog-demo-")
    try:
        handler: dict[str, object] = {"buffer_size": 64 * 1024}
        if public_key:
            handler["public_key"] = public_key
        config = {"log_dir": log_dir, "handler": handler, "sizes": [20, 400]}
        delay = random.uniform(0.3, 1.5)
        acked, status = harness.run_writer(config, kill_after=delay)
        recovered = mmaplog.recover(log_dir)
        texts = [r.text for r in mmaplog.read_records(log_dir, key=private_key)]
        acknowledged = sum(len(v) for v in acked.values())
        top = max(acked.get(0, [0]))
        numbers = [int(t.split(" #", 1)[1].split(" ", 1)[0]) for t in texts]
        lost = len(set(range(1, top + 1)) - set(numbers))
        duplicated = len(numbers) - len(set(numbers))
        try:
            harness.check_exactly_once(texts, acked)
            verdict = "ok"
        except AssertionError as exc:
            verdict = f"FAILED: {exc}"
        print(
            f"round {round_no}: killed after {delay:.2f}s (exit {status}); "
            f"acknowledged {acknowledged}, recovered from the cache {recovered}, "
            f"in the log {len(texts)}, lost {lost}, duplicated {duplicated}: {verdict}"
        )
        return verdict == "ok"
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="how many rounds (default 5)")
    parser.add_argument("--encrypt", action="store_true", help="encrypt the records too")
    args = parser.parse_args()
    private_key = public_key = None
    if args.encrypt:
        private_key, public_key = mmaplog.generate_keypair()
    results = [one_round(i + 1, public_key, private_key) for i in range(args.kills)]
    good = sum(results)
    print(f"{good} of {len(results)} kill -9 rounds lost nothing and duplicated nothing")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
