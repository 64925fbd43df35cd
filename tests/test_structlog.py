"""structlog through the stdlib (ProcessorFormatter) and through mmaplog's direct logger factory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

import mmaplog
from mmaplog import _format as fmt
from torture import harness

structlog = pytest.importorskip("structlog")

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.fixture(autouse=True)
def _reset_structlog():
    """Leave structlog's global configuration as each test found it."""
    yield
    structlog.reset_defaults()


def test_stdlib_path_with_processor_formatter(make_handler, log_dir):
    """structlog.stdlib + ProcessorFormatter on an MmapHandler renders as structlog documents."""
    h = make_handler()
    h.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(sort_keys=True),
            foreign_pre_chain=[structlog.stdlib.add_log_level],
        )
    )
    std = logging.getLogger("sl-std")
    std.handlers[:] = [h]
    std.propagate = False
    std.setLevel(logging.DEBUG)
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    structlog.get_logger("sl-std").warning("order failed", order=42)
    std.info("plain stdlib line")
    h.flush()
    recs = list(mmaplog.read_records(log_dir))
    assert [json.loads(r.text) for r in recs] == [
        {"event": "order failed", "level": "warning", "order": 42},
        {"event": "plain stdlib line", "level": "info"},
    ]
    assert [r.level for r in recs] == [logging.WARNING, logging.INFO]


def test_direct_factory_stores_level_time_and_json(make_handler, log_dir):
    """MmapLoggerFactory stores structlog's rendered output with the method's level, as JSON."""
    from mmaplog.structlog import MmapLoggerFactory

    h = make_handler()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=MmapLoggerFactory(h),
    )
    log = structlog.get_logger()
    log.debug("d", n=1)
    log.info("i", n=2)
    log.warning("w", n=3)
    log.error("e", n=4)
    log.critical("c", n=5)
    h.flush()
    recs = list(mmaplog.read_records(log_dir))
    assert [r.level for r in recs] == [10, 20, 30, 40, 50]
    assert [json.loads(r.text)["n"] for r in recs] == [1, 2, 3, 4, 5]
    assert all(r.kind == fmt.KIND_JSON for r in recs)


def test_direct_factory_accepts_bytes_and_key_value(make_handler, log_dir):
    """bytes (as from an orjson renderer) and KeyValueRenderer text are stored as given."""
    from mmaplog.structlog import MmapLoggerFactory

    h = make_handler()

    def to_bytes(_logger, _name, event_dict):
        return json.dumps(event_dict, sort_keys=True).encode()

    structlog.configure(processors=[to_bytes], logger_factory=MmapLoggerFactory(h))
    structlog.get_logger().info("as bytes", x="é")
    structlog.configure(
        processors=[structlog.processors.KeyValueRenderer(sort_keys=True)],
        logger_factory=MmapLoggerFactory(h),
    )
    structlog.get_logger().info("as text", y=1)
    h.flush()
    recs = list(mmaplog.read_records(log_dir))
    assert recs[0].text == '{"event": "as bytes", "x": "\\u00e9"}'
    assert recs[0].kind == fmt.KIND_JSON
    assert recs[1].text == "event='as text' y=1" and recs[1].kind == fmt.KIND_TEXT


def test_decode_json_prints_the_event_dict(make_handler, log_dir):
    """decode --format json prints the event dict of JSON records, with the logger name (when
    the logger has one), pid and calling thread added, and a dict for plain ones."""
    import threading

    from mmaplog.structlog import MmapLoggerFactory

    h = make_handler()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=MmapLoggerFactory(h),
    )
    structlog.get_logger().info("placed", order=7)
    threads = []

    def other_thread() -> None:
        threads.append(threading.get_ident())
        structlog.get_logger("orders").info("shipped", order=8, logger="the event's own")

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    h.write(b"a plain line", time.time(), logging.WARNING, logger="plain")
    h.close()
    res = subprocess.run(
        [sys.executable, "-m", "mmaplog", "decode", "--format", "json", log_dir],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert res.returncode == 0, res.stderr
    first, second, third = (json.loads(line) for line in res.stdout.splitlines())
    me, pid = threading.get_ident(), os.getpid()
    assert first == {"event": "placed", "order": 7, "level": "info", "logger": None,
                     "pid": pid, "thread": me}  # fmt: skip
    # A key of the event's own is kept: the record's fields fill only what is missing.
    assert second == {"event": "shipped", "order": 8, "logger": "the event's own",
                      "level": "info", "pid": pid, "thread": threads[0]}  # fmt: skip
    assert third["message"] == "a plain line" and third["level"] == "WARNING"
    assert (third["logger"], third["pid"], third["thread"]) == ("plain", pid, me)
    assert {"time", "level", "message", "session"} <= set(third)


def test_named_loggers_carry_their_name(make_handler):
    """structlog.get_logger(name) stores the name with each record; copies keep it."""
    import copy

    from mmaplog.structlog import MmapLoggerFactory

    h = make_handler()
    factory = MmapLoggerFactory(h)
    named = factory("api")
    assert named.name == "api" and factory("api") is named and factory().name is None
    assert copy.deepcopy(named) is named
    named.info("one")
    factory().info("two")
    h.close()
    got = [(r.text, r.logger) for r in mmaplog.read_records(h.log_dir)]
    assert got == [("one", "api"), ("two", None)]


def test_direct_path_never_raises(make_handler):
    """A failure inside the direct logger goes to handleError, not to the caller."""
    from mmaplog.structlog import MmapLogger

    seen = []

    class Recording(mmaplog.MmapHandler):
        def handleError(self, record: logging.LogRecord) -> None:
            seen.append(record)

    h = Recording(make_handler().log_dir, prefix="sl-err")
    logger = MmapLogger(h)

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("cannot render")

    logger.info(12345)  # type: ignore[arg-type]  # stored as its text
    logger.info(Unprintable())  # type: ignore[arg-type]
    h.close()
    assert len(seen) == 1


def test_factory_needs_an_mmap_handler():
    """MmapLoggerFactory refuses anything but an MmapHandler with a ConfigError."""
    from mmaplog.structlog import MmapLoggerFactory

    with pytest.raises(mmaplog.ConfigError, match="MmapHandler"):
        MmapLoggerFactory(logging.NullHandler())  # type: ignore[arg-type]


@pytest.mark.slow
def test_kill_through_the_direct_path_loses_nothing(tmp_path):
    """A process logging through the direct structlog path, killed with SIGKILL, loses nothing."""
    log_dir = str(tmp_path)
    config = {"log_dir": log_dir, "via": "structlog", "handler": {"buffer_size": 32 * 1024}}
    acked, status = harness.run_writer(config, kill_after=0.8)
    assert status == -9
    mmaplog.recover(log_dir)
    harness.check_exactly_once([r.text for r in mmaplog.read_records(log_dir)], acked)


def test_mmaplog_imports_without_structlog():
    """import mmaplog (and mmaplog.structlog) works when structlog is not installed."""
    code = (
        "import sys; sys.modules['structlog'] = None\n"
        "import mmaplog, mmaplog.structlog\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


_COPY_AND_PICKLE = """
import copy, pickle, sys
import structlog, mmaplog
from mmaplog.structlog import MmapLoggerFactory

handler = mmaplog.MmapHandler(sys.argv[1], prefix="api")
structlog.configure(
    processors=[structlog.processors.JSONRenderer()],
    logger_factory=MmapLoggerFactory(handler),
    cache_logger_on_first_use=True,
)
log = structlog.get_logger().bind(service="orders")
log.info("first")
copied = copy.deepcopy(log)
copied.info("from the copy")
copy.copy(log).info("from a shallow copy")
try:
    pickle.dumps(log)
except pickle.PicklingError as exc:
    print("refused:", exc)
handler.close()
"""


def test_loggers_copy_and_refuse_pickling_with_a_message(tmp_path):
    """A bound logger deep-copies, sharing the handler; pickling it raises a PicklingError."""
    log_dir = str(tmp_path)
    res = subprocess.run(
        [sys.executable, "-c", _COPY_AND_PICKLE, log_dir],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout.startswith("refused: MmapLogger writes into this process's mmaplog cache")
    assert "MmapLoggerFactory(MmapHandler(log_dir, prefix))" in res.stdout
    events = [json.loads(r.text) for r in mmaplog.read_records(log_dir)]
    assert [e["event"] for e in events] == ["first", "from the copy", "from a shallow copy"]
    assert all(e["service"] == "orders" for e in events)
