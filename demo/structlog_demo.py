"""structlog straight into mmaplog: JSON events that survive kill -9.

Part 1 logs a few structured events through ``MmapLoggerFactory`` and decodes
them back as JSON. Part 2 kills a process that logs through the same path and
counts what survived.

    python demo/structlog_demo.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import structlog

import mmaplog
from mmaplog.structlog import MmapLoggerFactory
from torture import harness


def main() -> int:
    log_dir = tempfile.mkdtemp(prefix="mmaplog-structlog-")
    try:
        handler = mmaplog.MmapHandler(log_dir, prefix="api")
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.processors.JSONRenderer(),
            ],
            logger_factory=MmapLoggerFactory(handler),
        )
        log = structlog.get_logger()
        log.info("order placed", order_id=1042, total_eur=99.5)
        log.warning("payment slow", order_id=1042, ms=2300)
        log.error("payment failed", order_id=1043, code="card_declined")
        handler.close()
        print("events read back from the compressed log:")
        for record in mmaplog.read_records(log_dir):
            print("  ", json.dumps(json.loads(record.text), sort_keys=True))

        crash_dir = os.path.join(log_dir, "crash")
        acked, status = harness.run_writer(
            {"log_dir": crash_dir, "via": "structlog"}, kill_after=1.0
        )
        recovered = mmaplog.recover(crash_dir)
        texts = [r.text for r in mmaplog.read_records(crash_dir)]
        harness.check_exactly_once(texts, acked)
        n = sum(len(v) for v in acked.values())
        print(
            f"killed a structlog writer with SIGKILL (exit {status}): {n} events acknowledged, "
            f"{recovered} recovered from its cache, {len(texts)} in the log, "
            "0 lost, 0 duplicated"
        )
        return 0
    except AssertionError as exc:
        print(f"FAILED: {exc}")
        return 1
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
