"""The crash harness: a numbered-record writer child and the exactly-once check.

:func:`run_writer` starts the child process of the crash tests and demos: it logs
numbered records and writes each number to a pipe once ``emit`` returned, so the
parent knows what was acknowledged before the kill. :func:`check_exactly_once`
compares what decodes with what was acknowledged. Kill points inside the protocol
are armed with ``mmaplog._faults.crash_at`` (config key ``crash_at``).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import struct
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

from mmaplog._faults import crash_at

ACK = struct.Struct("<HI")
"""What the writer sends per acknowledged record: thread number, record number."""
NESTED_BASE = 1000
"""Added to a thread's number for the records logged inside its records' formatting."""


def record_text(thread: int, n: int, size: int) -> str:
    """The message of record ``n`` of ``thread``: a recognisable head and filler."""
    head = f"T{thread} #{n} "
    rnd = random.Random(n * 7919 + thread)
    words = ("order", "user", "payment", "cache", "GET", "/api/v1/items", "ok", "retry")
    filler = []
    length = len(head)
    while length < size:
        w = rnd.choice(words) + str(rnd.randint(0, 99999))
        filler.append(w)
        length += len(w) + 1
    return head + " ".join(filler)


def writer_main(config: dict[str, object], ack_fd: int) -> None:
    """Log numbered records forever (or ``count`` of them), acknowledging each."""
    import faulthandler

    faulthandler.enable()
    from mmaplog import MmapHandler

    for step, nth in dict(config.get("crash_at", {})).items():  # type: ignore[call-overload]
        crash_at(step, int(nth))
    options = dict(config.get("handler", {}))  # type: ignore[call-overload]
    handler = MmapHandler(str(config["log_dir"]), str(config.get("prefix", "app")), **options)
    logger: Any
    if config.get("via") == "structlog":
        import structlog

        from mmaplog.structlog import MmapLoggerFactory

        def render(_logger: object, _name: str, event_dict: MutableMapping[str, Any]) -> str:
            return str(event_dict["event"])

        structlog.configure(
            processors=[render],
            logger_factory=MmapLoggerFactory(handler),
            cache_logger_on_first_use=True,
        )
        logger = structlog.get_logger()
    else:
        logger = logging.getLogger("crash")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    count = int(config.get("count", 0))  # type: ignore[call-overload]
    sizes: Any = config.get("sizes", (20, 200))
    lo, hi = int(sizes[0]), int(sizes[1])
    threads = int(config.get("threads", 1))  # type: ignore[call-overload]
    flush_every = int(config.get("flush_every", 0))  # type: ignore[call-overload]
    # Every nested_every-th record's message logs a record of its own while it is
    # formatted (thread number + NESTED_BASE), acknowledged as soon as that call returns.
    nested_every = int(config.get("nested_every", 0))  # type: ignore[call-overload]
    # SIGKILL right after the nested_kill-th of those is acknowledged, before the record
    # being formatted is stored: a kill in the one window where only the inner is done.
    nested_kill = int(config.get("nested_kill", 0))  # type: ignore[call-overload]
    nested_done = itertools.count(1).__next__
    ack_lock = threading.Lock()

    def ack(t: int, n: int) -> None:
        with ack_lock:
            os.write(ack_fd, ACK.pack(t, n))

    class Nested:
        def __init__(self, text: str, t: int, n: int) -> None:
            self.text, self.t, self.n = text, t, n

        def __str__(self) -> str:
            logger.info("%s", record_text(self.t, self.n, 40 + self.n % 60))
            ack(self.t, self.n)
            if nested_kill and nested_done() == nested_kill:
                os.kill(os.getpid(), signal.SIGKILL)
            return self.text

    def run(t: int) -> None:
        rnd = random.Random(t)
        n = inner = 0
        while not count or n < count:
            n += 1
            text = record_text(t, n, rnd.randint(lo, hi))
            if nested_every and n % nested_every == 0:
                inner += 1
                logger.info("%s", Nested(text, t + NESTED_BASE, inner))
            else:
                logger.info("%s", text)
            ack(t, n)
            if flush_every and n % flush_every == 0:
                handler.flush()

    base = int(config.get("thread_base", 0))  # type: ignore[call-overload]
    workers = [threading.Thread(target=run, args=(base + t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if config.get("close", True):
        handler.close()
    os.close(ack_fd)


_CHILD = (
    "import json, sys; from torture.harness import writer_main; "
    "writer_main(json.loads(sys.argv[1]), int(sys.argv[2]))"
)


def run_writer(
    config: dict[str, object], *, kill_after: float | None, timeout: float = 60.0
) -> tuple[dict[int, list[int]], int]:
    """Run a writer child; SIGKILL it ``kill_after`` seconds after its first acknowledged
    record (None: let it finish).

    The clock starts at the first acknowledgement, not at the start of the process, so
    a slow start on a loaded machine does not turn the kill into a kill before logging.
    Returns the acknowledged record numbers per thread and the child's exit status.
    """
    import select
    import subprocess
    import time

    rfd, wfd = os.pipe()
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(config), str(wfd)],
        pass_fds=(wfd,),
        env=env,
    )
    os.close(wfd)
    acked: dict[int, list[int]] = {}
    buf = b""
    deadline = time.monotonic() + timeout
    armed = False
    os.set_blocking(rfd, False)
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                proc.kill()
                if kill_after is None or not armed:
                    raise TimeoutError(f"writer did not finish in {timeout} s")
                break
            ready, _, _ = select.select([rfd], [], [], min(0.05, deadline - now))
            if ready:
                try:
                    chunk = os.read(rfd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                if kill_after is not None and not armed:
                    armed = True
                    deadline = time.monotonic() + kill_after
                buf += chunk
                whole = len(buf) - len(buf) % ACK.size
                for t, n in ACK.iter_unpack(buf[:whole]):
                    acked.setdefault(t, []).append(n)
                buf = buf[whole:]
        status = proc.wait(timeout=timeout)
        # Whatever the child acknowledged before it died is still in the pipe.
        os.set_blocking(rfd, True)
        while True:
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            buf += chunk
        whole = len(buf) - len(buf) % ACK.size
        for t, n in ACK.iter_unpack(buf[:whole]):
            acked.setdefault(t, []).append(n)
    finally:
        os.close(rfd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return acked, status


def check_exactly_once(
    texts: list[str], acked: dict[int, list[int]], *, complete: bool = False
) -> dict[str, int]:
    """Check the records decoded against the acknowledged ones; raise AssertionError if lost.

    Per thread: every acknowledged number appears exactly once, in order, and at
    most one more (the record in flight at the kill). Returns counts for a report.
    """
    import re

    pattern = re.compile(r"T(\d+) #(\d+) ")
    seen: dict[int, list[int]] = {}
    for text in texts:
        m = pattern.search(text)
        if m is None:
            raise AssertionError(f"a decoded record is not one the writer wrote: {text[:80]!r}")
        t, n = int(m.group(1)), int(m.group(2))
        message = text[m.start() :]
        if message != record_text(t, n, len(message)):
            raise AssertionError(f"record T{t} #{n} is garbled: {text[:120]!r}")
        seen.setdefault(t, []).append(n)
    acked_total = recovered_total = 0
    for t, numbers in acked.items():
        got = seen.get(t, [])
        top = max(numbers) if numbers else 0
        acked_total += len(numbers)
        if len(got) != len(set(got)):
            dups = sorted({n for n in got if got.count(n) > 1})[:10]
            raise AssertionError(f"thread {t}: records duplicated: {dups}")
        if got != sorted(got):
            raise AssertionError(f"thread {t}: records out of order")
        missing = sorted(set(range(1, top + 1)) - set(got))
        if missing:
            raise AssertionError(
                f"thread {t}: {len(missing)} acknowledged records lost, first {missing[:10]}"
            )
        extra = [n for n in got if n > top]
        if len(extra) > (0 if complete else 1):
            raise AssertionError(f"thread {t}: records never written appear: {extra[:10]}")
        recovered_total += len(got)
    for t in seen:
        if t not in acked and seen[t] != [1]:
            raise AssertionError(f"thread {t}: records of a thread that acknowledged nothing")
    return {"acknowledged": acked_total, "decoded": recovered_total}
