"""The life around a log call: re-entry on one thread, close racing emits, fork, shutdown.

Each test runs the scenario in a child process with a watchdog: a hang is a failure
(the child's stacks are dumped by faulthandler), never a stuck test run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import mmaplog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}

# The watchdog is SIGALRM, not faulthandler.dump_traceback_later: that one's lock is
# inherited by a forked child, whose exit then waits on it forever (a CPython limit).
PRELUDE = """\
import faulthandler, logging, os, signal, sys, threading, time
def _watchdog(signum, frame):
    faulthandler.dump_traceback(all_threads=True)
    os._exit(70)
signal.signal(signal.SIGALRM, _watchdog)
signal.alarm({watchdog})
import mmaplog
d = sys.argv[1]
log = logging.getLogger("life")
log.propagate = False
log.setLevel(logging.DEBUG)
"""


def run_child(code: str, log_dir: str, *, watchdog: int = 60, args: tuple[str, ...] = ()):
    """Run ``code`` in a child with a faulthandler watchdog; return the finished process."""
    script = PRELUDE.format(watchdog=watchdog) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script, log_dir, *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=watchdog + 30,
    )


def texts(log_dir: str, key: str | None = None) -> list[str]:
    """The texts of every record in the folder's log files."""
    return [r.text for r in mmaplog.read_records(log_dir, key=key)]


def numbered(all_texts: list[str], tag: str) -> list[int]:
    """The numbers of the records ``<tag> <n>`` among ``all_texts``, in log order."""
    pattern = re.compile(re.escape(tag) + r" (\d+)\b")
    return [int(m.group(1)) for t in all_texts if (m := pattern.search(t))]


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    """The child finished by itself, with no logging error and no ignored exception."""
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stderr[-4000:]}"
    assert "Logging error" not in proc.stderr, proc.stderr[-4000:]
    assert "Exception ignored" not in proc.stderr, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]


SIGNAL_STORM = """
h = mmaplog.MmapHandler(d, **OPTIONS)
log.addHandler(h)
got = [0]
def on_signal(signum, frame):
    got[0] += 1
    log.warning("signal %d", got[0])
signal.signal(signal.SIGUSR1, on_signal)
stop = threading.Event()
def sender():
    while not stop.is_set():
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.002)
threading.Thread(target=sender, daemon=True).start()
for i in range(1, N + 1):
    log.info("main %d %s", i, "x" * (i % 300) if i % 997 else "y" * 40000)
stop.set()
time.sleep(0.05)
h.close()
print(got[0])
"""


@pytest.mark.parametrize(
    "options",
    [
        "{'buffer_size': 16 * 1024}",
        "{'mode': 'sync'}",
        "{'format': 'xlog', 'compression': 'zlib', 'buffer_size': 16 * 1024}",
    ],
    ids=["async", "sync", "xlog"],
)
def test_a_signal_handler_that_logs_mid_emit_neither_hangs_nor_loses(tmp_path, options):
    """A signal handler logging while the main thread is inside a log call is kept, once."""
    n = 3000 if "sync" in options else 20000
    code = f"OPTIONS = {options}\nN = {n}\n" + SIGNAL_STORM
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    signals = int(proc.stdout.split()[-1])
    assert signals > 10
    all_texts = texts(str(tmp_path))
    assert numbered(all_texts, "main") == list(range(1, n + 1))
    assert sorted(numbered(all_texts, "signal")) == list(range(1, signals + 1))


def test_finalizers_that_log_during_garbage_collection_are_kept(tmp_path):
    """``__del__`` methods run by the garbage collector inside a log call log without a hang."""
    code = """
    import gc
    h = mmaplog.MmapHandler(d, buffer_size=16 * 1024, flush_interval=0.001)
    log.addHandler(h)
    count = [0]
    class Noisy:
        def __init__(self):
            self.me = self  # a cycle: only the collector frees it, at any allocation
        def __del__(self):
            count[0] += 1
            log.warning("finalized %d", count[0])
    gc.set_threshold(50, 1, 1)
    def work(t):
        for i in range(1, 3001):
            Noisy()
            log.info("t%d %d", t, i)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads: t.start()
    for t in threads: t.join()
    gc.collect()
    h.close()
    print(count[0])
    """
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    finalized = int(proc.stdout.split()[-1])
    all_texts = texts(str(tmp_path))
    for t in range(3):
        assert numbered(all_texts, f"t{t}") == list(range(1, 3001))
    assert sorted(numbered(all_texts, "finalized")) == list(range(1, finalized + 1))


def test_a_formatter_that_logs_does_not_hang(tmp_path):
    """A formatter that logs to the same handler neither hangs nor loses: its record is
    stored at once, before the outer one (so a kill in between cannot lose it)."""
    code = """
    h = mmaplog.MmapHandler(d)
    class Chatty(logging.Formatter):
        def format(self, record):
            if not record.getMessage().startswith("inner"):
                log.info("inner for %s", record.getMessage())
            return super().format(record)
    h.setFormatter(Chatty("%(message)s"))
    log.addHandler(h)
    for i in range(100):
        log.info("outer %d", i)
    h.close()
    """
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    all_texts = texts(str(tmp_path))
    assert all_texts[:4] == ["inner for outer 0", "outer 0", "inner for outer 1", "outer 1"]
    assert len(all_texts) == 200


def test_a_formatter_that_logs_every_record_it_formats_neither_raises_nor_hangs(tmp_path):
    """A formatter that logs for every record it formats (each record it logs is one
    more to format): every call returns, nothing is raised into the application, the
    chain is cut after a bounded number of records, and stderr says so once."""
    code = """
    h = mmaplog.MmapHandler(d)
    class Chatty(logging.Formatter):
        def format(self, record):
            log.info("said while formatting %s", record.getMessage()[:24])
            return super().format(record)
    h.setFormatter(Chatty("%(message)s"))
    log.addHandler(h)
    for i in range(5):
        log.info("call %d", i)
    h.close()
    print("returned")
    """
    proc = run_child(code, str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.strip() == "returned", proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
    assert proc.stderr.count("logs every record it handles") == 1
    all_texts = texts(str(tmp_path))
    assert [t for t in all_texts if t.startswith("call")] == [f"call {i}" for i in range(5)]
    assert len(all_texts) < 5 * 1100


def test_a_burst_logged_inside_a_record_inside_another_is_all_written(tmp_path):
    """1,500 records logged in one __str__ two levels deep (queued, not a chain that
    never ends) are all written."""
    code = """
    h = mmaplog.MmapHandler(d)
    log.addHandler(h)
    class Many:
        def __str__(self):
            for k in range(1500):
                log.info("burst %d", k)
            return "many"
    class Inner:
        def __str__(self):
            log.info("inner %s", Many())
            return "inner"
    log.info("outer %s", Inner())
    h.close()
    """
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    assert sorted(numbered(texts(str(tmp_path)), "burst")) == list(range(1500))


def test_records_logged_inside_others_keep_the_order_of_their_calls(tmp_path):
    """With a signal handler logging every 0.1 ms while the main thread logs
    (records stored at once inside others, or queued), no record is in the log before
    one whose call had returned before its own call began, and each is there once."""
    code = """
    import itertools, json
    h = mmaplog.MmapHandler(d, buffer_size=16 * 1024)
    log.addHandler(h)
    tick = itertools.count().__next__
    span = {}
    def on_signal(*_):
        b = tick(); log.info("SIG %d", b); span["SIG %d" % b] = (b, tick())
    signal.alarm(0)  # SIGALRM is the storm's here (the subprocess timeout stays)
    signal.signal(signal.SIGALRM, on_signal)
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
    class Arg:
        def __str__(self):
            return "m"
    for _ in range(30000):
        b = tick(); log.info("MAIN %d %s", b, Arg()); span["MAIN %d m" % b] = (b, tick())
    signal.setitimer(signal.ITIMER_REAL, 0)
    h.close()
    print(json.dumps(span))
    """
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    span = json.loads(proc.stdout.strip().splitlines()[-1])
    order = [t.rsplit("][", 1)[-1] for t in texts(str(tmp_path))]
    assert sorted(order) == sorted(span)
    assert any(t.startswith("SIG") for t in order)
    # Walking back from the end: a record whose call began after the earliest end of
    # the records after it is out of order.
    earliest_end = float("inf")
    for text in reversed(order):
        begin, end = span[text]
        assert earliest_end > begin, f"{text} is after a record logged once its call ended"
        earliest_end = min(earliest_end, end)


def test_structlog_direct_path_survives_a_signal_storm(tmp_path):
    """structlog's direct path, re-entered by a signal handler, neither hangs nor loses."""
    pytest.importorskip("structlog")
    code = """
    import structlog
    from mmaplog.structlog import MmapLoggerFactory
    h = mmaplog.MmapHandler(d, buffer_size=16 * 1024)
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        logger_factory=MmapLoggerFactory(h))
    slog = structlog.get_logger()
    got = [0]
    def on_signal(signum, frame):
        got[0] += 1
        slog.warning("signal", n=got[0])
    signal.signal(signal.SIGUSR1, on_signal)
    stop = threading.Event()
    def sender():
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.002)
    threading.Thread(target=sender, daemon=True).start()
    for i in range(1, 20001):
        slog.info("main", n=i)
    stop.set()
    time.sleep(0.05)
    h.close()
    print(got[0])
    """
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    signals = int(proc.stdout.split()[-1])
    import json

    events = [json.loads(t) for t in texts(str(tmp_path))]
    assert [e["n"] for e in events if e["event"] == "main"] == list(range(1, 20001))
    assert sorted(e["n"] for e in events if e["event"] == "signal") == list(range(1, signals + 1))


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_close_racing_emits_loses_nothing(tmp_path, mode):
    """Threads logging while another thread closes the handler lose no record and see no
    error; records after close() are written directly."""
    code = f"""
    h = mmaplog.MmapHandler(d, buffer_size=16 * 1024, mode={mode!r})
    log.addHandler(h)
    done = {{}}
    def work(t):
        n = 0
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            n += 1
            log.info("T%d %d", t, n)
        done[t] = n
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads: t.start()
    time.sleep(0.3)
    h.close()
    for t in threads: t.join()
    print(repr(done))
    """
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    done = eval(proc.stdout.strip().splitlines()[-1])
    all_texts = texts(str(tmp_path))
    for t, n in done.items():
        assert sorted(numbered(all_texts, f"T{t}")) == list(range(1, n + 1)), f"thread {t}"


def test_logging_shutdown_with_daemon_threads_still_logging_loses_nothing(tmp_path):
    """Interpreter exit closes the handler while daemon threads log: no error, nothing lost
    of what was acknowledged."""
    code = """
    h = mmaplog.MmapHandler(d, buffer_size=16 * 1024)
    log.addHandler(h)
    ack = open(os.path.join(d, "acked.txt"), "w", buffering=1)
    lock = threading.Lock()
    def work(t):
        n = 0
        while True:
            n += 1
            log.info("D%d %d", t, n)
            with lock:
                ack.write(f"{t} {n}\\n")
    for t in range(3):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    time.sleep(0.3)
    """
    proc = run_child(code, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Logging error" not in proc.stderr, proc.stderr[-3000:]
    acked: dict[int, int] = {}
    with open(tmp_path / "acked.txt") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                acked[int(parts[0])] = max(acked.get(int(parts[0]), 0), int(parts[1]))
    all_texts = texts(str(tmp_path))
    for t, n in acked.items():
        got = numbered(all_texts, f"D{t}")
        assert len(got) == len(set(got))
        assert set(range(1, n + 1)) <= set(got), f"thread {t} lost records"


def test_a_dictconfig_reload_while_threads_log_loses_nothing(tmp_path):
    """Replacing the configuration (which closes the old handler) while threads log loses
    no record and raises no logging error."""
    code = """
    import logging.config
    def config(prefix):
        return {"version": 1, "handlers": {"m": {"class": "mmaplog.MmapHandler",
                "log_dir": d, "prefix": prefix, "buffer_size": 16384}},
                "loggers": {"life": {"handlers": ["m"], "level": "DEBUG", "propagate": False}}}
    logging.config.dictConfig(config("a"))
    done = {}
    def work(t):
        n = 0
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            n += 1
            logging.getLogger("life").info("R%d %d", t, n)
        done[t] = n
    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads: t.start()
    time.sleep(0.3)
    logging.config.dictConfig(config("b"))
    for t in threads: t.join()
    logging.shutdown()
    print(repr(done))
    """
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    done = eval(proc.stdout.strip().splitlines()[-1])
    all_texts = texts(str(tmp_path))
    for t, n in done.items():
        assert sorted(numbered(all_texts, f"R{t}")) == list(range(1, n + 1)), f"thread {t}"


@pytest.mark.parametrize(
    "options",
    ["{'mode': 'sync'}", "{'buffer_size': 16 * 1024}", "{'format': 'xlog', 'mode': 'sync'}"],
    ids=["sync", "oversize", "xlog-sync"],
)
def test_a_forked_child_that_exits_without_logging_never_hangs(tmp_path, options):
    """Children forked while another thread holds the handler's locks exit at once."""
    code = f"""
    h = mmaplog.MmapHandler(d, **{options})
    log.addHandler(h)
    stop = threading.Event()
    def work():
        i = 0
        while not stop.is_set() and i < 2000:  # bounded: a hang must not fill the disk
            i += 1
            log.info("bg %d %s", i, "z" * (40000 if i % 2 else 10))
    threading.Thread(target=work, daemon=True).start()
    time.sleep(0.05)
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    for k in range(10):
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # faulthandler is not fork-safe: its watchdog lock is inherited
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, f"child {{k}}: status {{status}}"
    stop.set()
    h.close()
    print("ok")
    """
    proc = run_child(code, str(tmp_path), watchdog=90)
    assert_clean(proc)
    assert proc.stdout.strip().endswith("ok")


def test_a_relative_log_dir_is_resolved_once(tmp_path):
    """``MmapHandler("logs")`` keeps writing to the same folder after ``os.chdir``."""
    code = """
    os.chdir(d)
    h = mmaplog.MmapHandler("logs", buffer_size=16 * 1024)
    log.addHandler(h)
    log.info("before chdir")
    other = os.path.join(d, "elsewhere")
    os.makedirs(os.path.join(other, "logs"))
    os.chdir(other)
    log.info("after chdir")
    h.flush()
    log.info("after flush")
    h.close()
    """
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    got = [t.rsplit("][", 1)[-1] for t in texts(str(tmp_path / "logs"))]
    assert got == ["before chdir", "after chdir", "after flush"]
    assert os.listdir(tmp_path / "elsewhere" / "logs") == []


def test_records_logged_by_finalizers_at_interpreter_shutdown_are_kept(tmp_path):
    """A ``__del__`` that logs while the interpreter shuts down still gets its record in."""
    code = """
    h = mmaplog.MmapHandler(d, buffer_size=16 * 1024)
    log.addHandler(h)
    class Late:
        def __del__(self):
            log.warning("from __del__ at shutdown")
    keep = Late()  # a module global: finalized late in interpreter shutdown
    log.info("main done")
    """
    proc = run_child(code, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Error" not in proc.stderr, proc.stderr[-3000:]
    mmaplog.recover(str(tmp_path))
    got = [t.rsplit("][", 1)[-1] for t in texts(str(tmp_path))]
    assert got == ["main done", "from __del__ at shutdown"]


@pytest.mark.parametrize(
    "bad",
    ["public_key='not a key'", "buffer_size=1", "prefix='a/b'", "format='nope'"],
)
def test_a_configuration_error_leaves_nothing_for_shutdown(tmp_path, bad):
    """A handler whose construction failed raises ConfigError once and nothing at exit."""
    code = f"""
    try:
        mmaplog.MmapHandler(d, {bad})
    except mmaplog.ConfigError as exc:
        print("ConfigError:", exc)
    """
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    assert proc.stdout.startswith("ConfigError:")
    assert proc.stderr == ""


def test_records_of_forked_pool_workers_are_in_the_log_after_join_and_flush(tmp_path):
    """multiprocessing workers' records are in the log once the pool is joined and the
    parent's handler flushed."""
    code = """
    import multiprocessing as mp
    h = mmaplog.MmapHandler(d, buffer_size=16 * 1024)
    log.addHandler(h)
    def task(i):
        log.info("worker %d", i)
        return i
    if __name__ == "__main__":
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        pool = mp.get_context("fork").Pool(2)
        assert sorted(pool.map(task, range(1, 9))) == list(range(1, 9))
        pool.close()
        pool.join()
        h.flush()
        got = [r.text for r in mmaplog.read_records(d)]
        print(sum("worker" in t for t in got))
        h.close()
    """
    proc = run_child(code, str(tmp_path))
    assert_clean(proc)
    assert proc.stdout.split()[-1] == "8"


def test_a_record_logged_in_a_child_before_mmaplogs_fork_hook_is_kept(tmp_path):
    """A record logged in a forked child before mmaplog's at-fork hook has run (as a
    finalizer set off by another module's hook does) is kept, with a key of the child's
    own, and the child's handler works after (its flusher starts only then)."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        # Registered before threading and mmaplog are imported, so that in a child it
        # runs before both of their at-fork hooks, as a finalizer set off there would.
        def early():
            log = sys.modules["logging"].getLogger("early")
            for n in range(2):
                log.warning("early %d in %d", n, os.getpid())
        assert "threading" not in sys.modules
        os.register_at_fork(after_in_child=early)
        import logging, threading
        import mmaplog
        log = logging.getLogger("early")
        signal.alarm(60)
        log.propagate = False
        log.setLevel(logging.DEBUG)
        h = mmaplog.MmapHandler(sys.argv[1], buffer_size=16 * 1024, public_key=sys.argv[2])
        log.addHandler(h)
        stop = threading.Event()
        def work():
            i = 0
            while not stop.is_set() and i < 5000:
                i += 1
                log.info("bg %d", i)
        t = threading.Thread(target=work)
        t.start()
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        pids = []
        for k in range(5):
            pid = os.fork()
            if pid == 0:
                signal.alarm(20)
                for i in range(30):
                    log.info("child%d %d", k, i)
                h.close()
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert status == 0, status
            pids.append(pid)
        stop.set()
        t.join()
        h.close()
        print(" ".join(map(str, pids)))
        """
    )
    private, public = mmaplog.generate_keypair()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), public],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert_clean(proc)
    pids = [int(p) for p in proc.stdout.split()]
    all_texts = texts(str(tmp_path), key=private)
    for k, pid in enumerate(pids):
        assert numbered(all_texts, f"child{k}") == list(range(30))
        for n in range(2):
            assert sum(t.endswith(f"early {n} in {pid}") for t in all_texts) == 1
