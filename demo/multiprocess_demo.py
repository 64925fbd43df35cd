"""Four processes log into one folder; two are killed with SIGKILL; a third recovers them.

Each live process owns its own cache file (``app.mmap``, ``app.1.mmap``, ...) under an
exclusive ``flock`` and appends whole blocks to the shared dated log file with
``O_APPEND``. When a process is killed, the next handler started on the folder
recovers its cache.

    python demo/multiprocess_demo.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mmaplog
from torture import harness


def main() -> int:
    log_dir = tempfile.mkdtemp(prefix="mmaplog-multi-")
    results: dict[int, tuple[dict[int, list[int]], int]] = {}

    def worker(i: int) -> None:
        config = {
            "log_dir": log_dir,
            "thread_base": i * 10,
            "count": 0 if i < 2 else 4000,
            "handler": {"buffer_size": 32 * 1024},
        }
        results[i] = harness.run_writer(config, kill_after=1.5 if i < 2 else None)

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        caches = sorted(n for n in os.listdir(log_dir) if n.endswith(".mmap"))
        print(f"cache files used by the four processes: {', '.join(caches)}")
        code = "import mmaplog, sys; h = mmaplog.MmapHandler(sys.argv[1]); print(h.recovered)"
        env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(mmaplog.__file__))}
        out = subprocess.run(
            [sys.executable, "-c", code, log_dir], capture_output=True, text=True, env=env
        )
        print(f"a new process started a handler and recovered {out.stdout.strip()} records")
        texts = [r.text for r in mmaplog.read_records(log_dir)]
        acked: dict[int, list[int]] = {}
        for i in range(4):
            acked.update(results[i][0])
            fate = "killed" if results[i][1] == -9 else "exited"
            n = sum(len(v) for t, v in results[i][0].items())
            print(f"process {i}: {fate}, {n} records acknowledged")
        counts = harness.check_exactly_once(texts, acked)
        pids = {r.pid for r in mmaplog.read_records(log_dir)}
        print(
            f"all {counts['acknowledged']} acknowledged records are in the log exactly once "
            f"({len(texts)} records decoded, from {len(pids)} pids)"
        )
        return 0
    except AssertionError as exc:
        print(f"FAILED: {exc}")
        return 1
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
