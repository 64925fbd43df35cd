"""The life around the log: threads sharing caches, files and folders changed underneath."""

from __future__ import annotations

import logging
import sys
import threading
import time

import mmaplog

# -- threads sharing the formatter's caches ------------------------------------------------


def test_xlog_formatter_stamps_every_record_with_its_own_second():
    """Threads formatting records of alternating seconds never get another record's second."""
    formatter = mmaplog.XlogFormatter()
    base = 1_764_000_000
    wrong: list[tuple[str, str]] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait()
        for i in range(4000):
            second = base + (i + t) % 4
            r = logging.makeLogRecord(
                {"msg": "m", "levelno": 20, "created": second + 0.25, "msecs": 250.0}
            )
            line = formatter.format(r)
            want = time.strftime("%Y-%m-%d %z %H:%M:%S", time.localtime(second))
            got = line[4 : 4 + len(want)]
            if got != want:
                wrong.append((got, want))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    assert not wrong, f"{len(wrong)} records stamped with another second, e.g. {wrong[0]}"
