"""Lifecycle torture: random schedules of what happens around log calls, under a watchdog.

Each schedule runs in a child process: threads that log numbered records, signals
delivered mid-emit by a handler that logs, garbage-collector finalizers that log,
``fork`` (the child logs, then exits through ``sys.exit`` or ``os._exit``), ``close()``
and a new handler, a ``dictConfig`` reload, the log file renamed or moved away, and
``chdir``. Every log call that returned is acknowledged (counted) by the child.

Invariants after every schedule:

- no step hangs: a watchdog (faulthandler) dumps every thread's stack and fails it;
- no logging error is printed;
- every acknowledged record is in the folder's logs exactly once (after the caches
  that killed or ``os._exit``-ed children left are recovered).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import mmaplog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = ("threads", "signals", "finalizers", "fork", "reopen", "dictconfig", "rename", "chdir")

# The child: runs the schedule given as JSON and prints what it acknowledged.
_CHILD = r"""
import faulthandler, gc, json, logging, logging.config, os, signal, sys, threading, time
# SIGALRM, not faulthandler.dump_traceback_later, whose lock a forked child inherits.
def _watchdog(signum, frame):
    faulthandler.dump_traceback(all_threads=True)
    sys.stderr.write("Timeout (watchdog)\n")
    os._exit(70)
signal.signal(signal.SIGALRM, _watchdog)
signal.alarm(int(float(sys.argv[3])))
import mmaplog
d, plan = sys.argv[1], json.loads(sys.argv[2])
acks = {}
lock = threading.RLock()  # a finalizer may run inside ack() on the same thread
def ack(tag, n):
    with lock:
        acks[tag] = max(acks.get(tag, 0), n)
def options():
    return {"buffer_size": 16 * 1024, "flush_interval": 0.05, **plan["options"]}
def config():
    return {"version": 1, "handlers": {"m": {"class": "mmaplog.MmapHandler", "log_dir": d,
            "prefix": "app", **options()}},
            "loggers": {"tt": {"handlers": ["m"], "level": "DEBUG", "propagate": False}}}
logging.config.dictConfig(config())
log = logging.getLogger("tt")
def handler():
    return log.handlers[0]
counters = {"S": 0, "G": 0}
def on_signal(signum, frame):
    counters["S"] += 1
    n = counters["S"]
    log.warning("S0 %d", n)
    ack("S0", n)
signal.signal(signal.SIGUSR1, on_signal)
class Noisy:
    def __init__(self):
        self.me = self
    def __del__(self):
        with lock:
            counters["G"] += 1
            n = counters["G"]
        tag = f"G{os.getpid()}"  # a forked child finalizes copies of the parent's objects
        log.warning("%s %d", tag, n)
        ack(tag, n)
stop = threading.Event()
def worker(tag, big):
    n = 0
    while not stop.is_set() and n < 30000:  # bounded: a hang must not fill the disk
        n += 1
        log.info("%s %d %s", tag, n, "b" * (20000 if big and n % 50 == 0 else n % 120))
        ack(tag, n)
        if n % 7 == 0:
            Noisy()
threads = []
for i, kind in enumerate(plan["steps"]):
    if kind == "threads":
        t = threading.Thread(target=worker, args=(f"T{i}", i % 2 == 0), daemon=True)
        t.start()
        threads.append(t)
    elif kind == "signals":
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.003)
    elif kind == "finalizers":
        gc.set_threshold(30, 2, 2)
        for _ in range(300):
            Noisy()
    elif kind == "fork":
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            signal.alarm(20)  # faulthandler is not fork-safe: its watchdog lock is inherited
            tag = f"F{i}"
            k = 0
            for k in range(1, 31):
                log.info("%s %d", tag, k)
            os.write(w, json.dumps({tag: 30}).encode())
            os.close(w)
            if i % 2:
                os._exit(0)  # no close: its cache is recovered by the parent
            sys.exit(0)
        os.close(w)
        got = b""
        while chunk := os.read(r, 4096):
            got += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert status == 0, f"child status {status}"
        for tag, n in json.loads(got or b"{}").items():
            ack(tag, n)
    elif kind == "reopen":
        h = handler()
        new = mmaplog.MmapHandler(d, "app", **options())
        log.handlers[:] = [new]
        h.close()
    elif kind == "dictconfig":
        logging.config.dictConfig(config())
    elif kind == "rename":
        handler().flush()
        gone = os.path.join(d, "gone")
        os.makedirs(gone, exist_ok=True)
        for name in os.listdir(d):
            if name.endswith(".mmlog"):
                os.rename(os.path.join(d, name), os.path.join(gone, f"{i}-{name}"))
    elif kind == "chdir":
        os.chdir("/")
    time.sleep(0.05)
stop.set()
for t in threads:
    t.join()
logging.shutdown()
print(json.dumps(acks))
"""


@dataclass
class Outcome:
    """What one schedule did."""

    schedule: list[str]
    acknowledged: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_schedule(seed: int, work: str, *, watchdog: float = 60.0) -> Outcome:
    """Run the schedule of ``seed`` in a child in ``work`` and check the invariants."""
    rng = random.Random(seed)
    steps = [rng.choice(STEPS) for _ in range(rng.randint(3, 9))]
    steps.insert(0, "threads")
    options: dict[str, Any] = rng.choice(
        [{}, {"mode": "sync"}, {"compression": "zlib"}, {"public_key": _PUBLIC}]
    )
    out = Outcome(steps)
    d = os.path.join(work, f"s{seed}")
    os.makedirs(d)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    plan = json.dumps({"steps": steps, "options": options})
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, d, plan, str(watchdog)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=work,
        start_new_session=True,  # forked grandchildren too are ended on a hang
    )
    try:
        stdout, stderr = proc.communicate(timeout=watchdog + 15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        out.problems.append(f"hang: the child outlived its watchdog: {stderr[-6000:]}")
        return out
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc_status = proc.returncode
    out.seconds = time.monotonic() - started
    if "Timeout (" in stderr or proc_status != 0:
        kind = "hang" if "Timeout (" in stderr else "status"
        out.problems.append(f"{kind} {proc_status}: {stderr[-20000:]}")
        return out
    if "Logging error" in stderr or "Traceback" in stderr:
        out.problems.append(f"error printed: {stderr[-3000:]}")
    acks: dict[str, int] = json.loads(stdout.strip().splitlines()[-1])
    out.acknowledged = sum(acks.values())
    mmaplog.recover(d)  # what os._exit-ed children left
    key = _PRIVATE if "public_key" in options else None
    texts = [r.text for r in mmaplog.read_records(d, key=key)]
    gone = os.path.join(d, "gone")
    if os.path.isdir(gone):
        texts += [r.text for r in mmaplog.read_records(gone, key=key)]
    seen: dict[str, list[int]] = {}
    pattern = re.compile(r"\]\[([A-Z]\d+) (\d+)\b")
    for t in texts:
        m = pattern.search(t)
        if m:
            seen.setdefault(m.group(1), []).append(int(m.group(2)))
    for tag, top in acks.items():
        got = seen.get(tag, [])
        if len(got) != len(set(got)):
            out.problems.append(f"{tag}: duplicated records")
        missing = set(range(1, top + 1)) - set(got)
        if missing:
            out.problems.append(f"{tag}: {len(missing)} acknowledged records lost")
    return out


_PRIVATE, _PUBLIC = mmaplog.generate_keypair()


def main_lifecycle(
    *, schedules: int, seconds: float | None, seed: int, quiet: bool = False
) -> tuple[int, dict[str, int]]:
    """Run schedules until ``schedules`` or ``seconds``; return (exit status, summary)."""
    work = tempfile.mkdtemp(prefix="mmaplog-lifecycle-")
    deadline = time.monotonic() + seconds if seconds else None
    summary = {"schedules": 0, "hangs": 0, "failed": 0, "acknowledged": 0}
    try:
        n = 0
        while n < schedules and (deadline is None or time.monotonic() < deadline):
            out = run_schedule(seed + n, work)
            n += 1
            summary["schedules"] += 1
            summary["acknowledged"] += out.acknowledged
            if out.problems:
                summary["failed"] += 1
                summary["hangs"] += any("hang" in p or "Timeout" in p for p in out.problems)
                print(f"schedule {seed + n - 1} {out.schedule}: FAILED")
                for p in out.problems:
                    print(f"  {p[:2000]}")
            elif not quiet:
                print(
                    f"schedule {seed + n - 1} {out.schedule}: ok, "
                    f"{out.acknowledged} records, {out.seconds:.1f} s"
                )
    finally:
        if not summary["failed"]:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"lifecycle: {summary['schedules']} schedules, {summary['hangs']} hangs, "
        f"{summary['failed']} failed, {summary['acknowledged']} acknowledged records"
    )
    return (1 if summary["failed"] else 0), summary
