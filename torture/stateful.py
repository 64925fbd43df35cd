"""A hypothesis state machine of the handler; the model is the list of acknowledged records.

Rules: ``emit`` (records through ``logging``), ``flush`` (then every record emitted
in this process must already be in the log files), ``close_reopen`` (the new
handler recovers what dead processes left), ``fork`` (a child logs a few records
and leaves with ``os._exit`` without closing), ``kill`` (a writer subprocess on the
same folder is SIGKILLed) and ``recover`` (``mmaplog.recover``, which must refuse
the cache our live handler holds and recover the others). After ``close_reopen``
and at the end: every acknowledged record exactly once, in order, byte-identical;
at most one more per killed thread; nothing damaged but torn writes.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import warnings

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import mmaplog
from torture import harness

from .common import decode_dir, describe
from .kills import analyze

_OPTIONS = st.fixed_dictionaries(
    {
        "buffer_size": st.sampled_from([16 * 1024, 40 * 1024, 150 * 1024]),
        "compression": st.sampled_from(["zstd", "zlib", None]),
        "flush_interval": st.sampled_from([0.001, 0.05, 3600.0]),
    }
)


class HandlerMachine(RuleBasedStateMachine):
    """Random interleavings of emit, flush, close+reopen, fork, kill and recover."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="torture-stateful-")
        self.acked: dict[int, list[int]] = {}
        self.complete: set[int] = set()  # threads with no record in flight at any kill
        self.local_thread = 0
        self.next_thread = 1
        self.handler: mmaplog.MmapHandler | None = None
        self.logger = logging.getLogger(f"torture.stateful.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.errors: list[str] = []

    # -- helpers -------------------------------------------------------------------------

    def _open(self) -> None:
        self.handler = mmaplog.MmapHandler(self.dir, "app", **self.options)
        self.handler.handleError = lambda record: self.errors.append(str(record))  # type: ignore[method-assign]
        self.logger.handlers[:] = [self.handler]
        self.local_thread = self.next_thread
        self.next_thread += 1
        self.complete.add(self.local_thread)

    def _check(self, *, final: bool = False) -> None:
        dec = decode_dir(self.dir)
        counts = analyze(dec.texts, self.acked)
        problems = [
            f"{k} {counts[k]}"
            for k in ("lost", "duplicated", "garbled", "out_of_order", "never_written")
            if counts[k]
        ]
        for t in self.complete:
            got = [x for x in dec.texts if f"][T{t} #" in x]
            if len(got) != len(self.acked.get(t, [])):
                problems.append(f"thread {t}: {len(got)} records for {len(self.acked.get(t, []))}")
        if problems:
            problems.append(f"files {sorted(os.listdir(self.dir))}, {len(dec.texts)} records")
        if dec.bad or dec.duplicates:
            problems.append(f"damage: {describe(dec.bad + dec.duplicates)}")
        if self.errors:
            problems.append(f"handleError called: {self.errors[:3]}")
        assert not problems, "; ".join(problems)

    # -- rules -----------------------------------------------------------------------------

    @initialize(options=_OPTIONS)
    def start(self, options: dict[str, object]) -> None:
        self.options = options
        self._open()

    @rule(n=st.integers(1, 40), size=st.sampled_from([1, 50, 400, 3000]))
    def emit(self, n: int, size: int) -> None:
        t = self.local_thread
        numbers = self.acked.setdefault(t, [])
        for _ in range(n):
            k = len(numbers) + 1
            self.logger.info("%s", harness.record_text(t, k, size))
            numbers.append(k)

    @rule()
    def flush(self) -> None:
        assert self.handler is not None
        self.handler.flush()
        texts = decode_dir(self.dir).texts
        t = self.local_thread
        got = [x for x in texts if f"][T{t} #" in x]
        assert len(got) == len(self.acked.get(t, [])), "flush() returned before the records moved"

    @rule()
    def close_reopen(self) -> None:
        assert self.handler is not None
        self.handler.close()
        self._open()  # recovers what forked children and killed writers left in their caches
        self._check()

    @rule(n=st.integers(1, 30))
    def fork(self, n: int) -> None:
        t = self.next_thread
        self.next_thread += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: log, then leave without closing anything
            code = 1
            try:
                for k in range(1, n + 1):
                    self.logger.info("%s", harness.record_text(t, k, 100))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the forked child failed"
        self.acked[t] = list(range(1, n + 1))
        self.complete.add(t)

    @rule(delay=st.floats(0.05, 0.6), threads=st.integers(1, 3))
    def kill(self, delay: float, threads: int) -> None:
        base = self.next_thread
        self.next_thread += threads
        config = {
            "log_dir": self.dir,
            "handler": self.options,
            "threads": threads,
            "sizes": [1, 500],
            "thread_base": base,
        }
        got, _status = harness.run_writer(config, kill_after=delay)
        for t in range(base, base + threads):
            self.acked[t] = got.get(t, [])

    @rule()
    def recover(self) -> None:
        try:
            mmaplog.recover(self.dir)
        except mmaplog.CacheLockedError:
            pass  # our own handler's cache: refused, as it must be
        else:
            raise AssertionError("recover() did not refuse the cache a live handler holds")

    @invariant()
    def handler_never_raised(self) -> None:
        assert not self.errors, self.errors[:3]

    def teardown(self) -> None:
        try:
            if self.handler is not None:
                self.handler.close()
                mmaplog.recover(self.dir)
                self._check(final=True)
        finally:
            self.logger.handlers[:] = []
            shutil.rmtree(self.dir, ignore_errors=True)


def machine_settings(examples: int, steps: int = 10) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def main_stateful(*, examples: int, seed: int) -> int:
    import time

    print(f"torture stateful: {examples} examples, seed {seed}")
    t0 = time.monotonic()
    random.seed(seed)
    try:
        run_state_machine_as_test(HandlerMachine, settings=machine_settings(examples))
    except Exception as exc:
        notes = "\n".join(getattr(exc, "__notes__", []))
        print(
            f"\n== torture stateful: FAILED after {time.monotonic() - t0:.0f} s ==\n{exc}\n{notes}"
        )
        return 1
    print(
        f"\n== torture stateful summary ==\n{examples} examples passed in "
        f"{time.monotonic() - t0:.0f} s"
    )
    return 0
