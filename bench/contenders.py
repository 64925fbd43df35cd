"""The logging set-ups the benchmark compares, each behind one small interface.

``open_run(key, folder, ...)`` returns a :class:`Run`: ``info(template, *args)``
logs one record, ``drain()`` waits until every record is in the output file,
``close()`` releases everything, ``files()`` lists the output files (for mmaplog
the ``.mmlog`` log files, never the cache).
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import logging.handlers
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

MSG = "%(message)s"


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    text: str  # what each line holds: "message" or "xlog" (MmapHandler's default formatter)
    formatter: str  # the formatter, for the report
    ref: str  # the FileHandler with the same text: "file" or "file_xlog"
    stdlib: bool  # goes through logging.Logger (so the NullHandler floor applies)
    requires: tuple[str, ...] = ()
    brace: bool = False  # takes str.format templates (loguru)
    mmaplog: bool = False  # output read back with mmaplog.read_records
    encrypted: bool = False


CONTENDERS: list[Contender] = [
    Contender(
        "null",
        "logging.NullHandler (floor)",
        "message",
        "none (nothing is formatted)",
        "file",
        True,
    ),
    Contender("file", "FileHandler", "message", f'logging.Formatter("{MSG}")', "file", True),
    Contender(
        "file_xlog", "FileHandler, xlog text", "xlog", "mmaplog.XlogFormatter()", "file_xlog", True
    ),
    Contender(
        "rotating",
        "RotatingFileHandler (16 MiB x 3)",
        "message",
        f'logging.Formatter("{MSG}")',
        "file",
        True,
    ),
    Contender(
        "queue",
        "QueueHandler + QueueListener -> FileHandler",
        "message",
        f'logging.Formatter("{MSG}") (QueueHandler.prepare, then the FileHandler)',
        "file",
        True,
    ),
    Contender(
        "mmap",
        "MmapHandler zstd (default)",
        "xlog",
        "default (mmaplog.XlogFormatter)",
        "file_xlog",
        True,
        mmaplog=True,
    ),
    Contender(
        "mmap_msg",
        "MmapHandler zstd, message only",
        "message",
        f'logging.Formatter("{MSG}")',
        "file",
        True,
        mmaplog=True,
    ),
    Contender(
        "mmap_enc",
        "MmapHandler zstd + encryption",
        "xlog",
        "default (mmaplog.XlogFormatter)",
        "file_xlog",
        True,
        mmaplog=True,
        encrypted=True,
    ),
    Contender(
        "mmap_none",
        "MmapHandler compression=None",
        "xlog",
        "default (mmaplog.XlogFormatter)",
        "file_xlog",
        True,
        mmaplog=True,
    ),
    Contender(
        "mmap_sync",
        'MmapHandler mode="sync"',
        "xlog",
        "default (mmaplog.XlogFormatter)",
        "file_xlog",
        True,
        mmaplog=True,
    ),
    Contender(
        "loguru",
        "loguru file sink",
        "message",
        'format="{message}"',
        "file",
        False,
        requires=("loguru",),
        brace=True,
    ),
    Contender(
        "loguru_enqueue",
        "loguru file sink, enqueue=True",
        "message",
        'format="{message}"',
        "file",
        False,
        requires=("loguru",),
        brace=True,
    ),
    Contender(
        "structlog",
        "structlog WriteLogger -> file",
        "message",
        "processors: render the event only",
        "file",
        False,
        requires=("structlog",),
    ),
    Contender(
        "structlog_mmap",
        "structlog -> mmaplog.structlog.MmapLogger (direct)",
        "message",
        "processors: render the event only",
        "file",
        False,
        requires=("structlog",),
        mmaplog=True,
    ),
]
PURE_SUFFIX = "_py"
"""A contender's twin on mmaplog's pure-Python record path (the C path is the default)."""


def _pure_twins() -> list[Contender]:
    twins = []
    for c in CONTENDERS:
        if c.mmaplog and c.key != "mmap_sync":  # sync mode writes no cache: one path
            label = c.label.replace("MmapHandler", "MmapHandler (pure Python)", 1)
            if label == c.label:
                label += " (pure Python)"
            twins.append(replace(c, key=c.key + PURE_SUFFIX, label=label))
    return twins


CONTENDERS += _pure_twins()
BY_KEY = {c.key: c for c in CONTENDERS}


def missing(c: Contender) -> str | None:
    """The name of a package this contender needs that is not installed, or None."""
    for name in c.requires:
        if importlib.util.find_spec(name) is None:
            return name
    return None


@dataclass
class Run:
    info: Callable[..., Any]
    drain: Callable[[], None]
    close: Callable[[], None]
    folder: str
    mmaplog: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def files(self) -> list[str]:
        if self.mmaplog:
            return sorted(glob.glob(os.path.join(self.folder, "*.mmlog")))
        return sorted(
            os.path.join(self.folder, n)
            for n in os.listdir(self.folder)
            if os.path.isfile(os.path.join(self.folder, n))
        )

    def bytes_written(self) -> int:
        return sum(os.path.getsize(p) for p in self.files())


def _stdlib_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger("bench")
    logger.propagate = False
    logger.disabled = False
    logger.setLevel(logging.INFO)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    return logger


def _detach() -> None:
    logger = logging.getLogger("bench")
    for old in list(logger.handlers):
        logger.removeHandler(old)


class _DirectMmapLogger:
    """Fallback for mmaplog versions without ``mmaplog.structlog``: the rendered line
    straight to ``MmapHandler.write``."""

    def __init__(self, handler: Any) -> None:
        self._write = handler.write

    def info(self, message: str) -> None:
        self._write(message.encode("utf-8", "backslashreplace"), time.time(), logging.INFO)

    msg = info


def _render_event(logger: Any, method: str, event_dict: dict[str, Any]) -> str:
    return event_dict["event"]  # type: ignore[no-any-return]


def _structlog(target: Any) -> Any:
    import structlog

    return structlog.wrap_logger(
        target,
        processors=[_render_event],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )


def open_run(key: str, folder: str, *, public_key: str | None = None) -> Run:
    """Set up contender ``key`` writing into ``folder`` (which must exist).

    A key ending in ``_py`` is the same contender on mmaplog's pure-Python record path:
    its handler's cache is made while the C writer is hidden.
    """
    if key.endswith(PURE_SUFFIX):
        from mmaplog import _emitpath

        saved = _emitpath._WRITER
        _emitpath._WRITER = None
        try:
            return open_run(key[: -len(PURE_SUFFIX)], folder, public_key=public_key)
        finally:
            _emitpath._WRITER = saved
    path = os.path.join(folder, "bench.log")
    if key in ("null", "file", "file_xlog", "rotating"):
        if key == "null":
            h: logging.Handler = logging.NullHandler()
        elif key == "rotating":
            h = logging.handlers.RotatingFileHandler(path, maxBytes=16 * 1024 * 1024, backupCount=3)
        else:
            h = logging.FileHandler(path)
        if key == "file_xlog":
            import mmaplog

            h.setFormatter(mmaplog.XlogFormatter())
        elif key != "null":
            h.setFormatter(logging.Formatter(MSG))
        lg = _stdlib_logger(h)

        def close_std() -> None:
            _detach()
            h.close()

        return Run(lg.info, h.flush, close_std, folder, False)
    if key == "queue":
        q: queue.Queue[Any] = queue.Queue(-1)
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter(MSG))
        qh = logging.handlers.QueueHandler(q)
        listener = logging.handlers.QueueListener(q, fh)
        listener.start()
        lg = _stdlib_logger(qh)
        state = {"stopped": False}

        def drain_queue() -> None:
            if not state["stopped"]:
                state["stopped"] = True
                listener.stop()  # processes everything queued, then joins

        def close_queue() -> None:
            drain_queue()
            _detach()
            qh.close()
            fh.close()

        return Run(lg.info, drain_queue, close_queue, folder, False, {"queue": q})
    if key.startswith("mmap"):
        import mmaplog

        options: dict[str, Any] = {}
        if key == "mmap_enc":
            options["public_key"] = public_key
        elif key == "mmap_none":
            options["compression"] = None
        elif key == "mmap_sync":
            options["mode"] = "sync"
        mh = mmaplog.MmapHandler(folder, "bench", **options)
        if key == "mmap_msg":
            mh.setFormatter(logging.Formatter(MSG))
        lg = _stdlib_logger(mh)

        def close_mmap() -> None:
            _detach()
            mh.close()

        return Run(lg.info, mh.flush, close_mmap, folder, True, {"handler": mh})
    if key in ("loguru", "loguru_enqueue"):
        from loguru import logger as loguru_logger

        loguru_logger.remove()
        sink_id = loguru_logger.add(
            path,
            format="{message}",
            enqueue=key == "loguru_enqueue",
            colorize=False,
            backtrace=False,
            diagnose=False,
            catch=False,
        )
        state = {"removed": False}

        def close_loguru() -> None:
            if not state["removed"]:
                state["removed"] = True
                loguru_logger.remove(sink_id)

        return Run(loguru_logger.info, loguru_logger.complete, close_loguru, folder, False)
    if key == "structlog":
        import structlog

        f = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        log = _structlog(structlog.WriteLogger(f))
        return Run(log.info, f.flush, f.close, folder, False)
    if key == "structlog_mmap":
        import mmaplog

        mh = mmaplog.MmapHandler(folder, "bench")
        try:  # mmaplog's own direct path, when this version has it
            from mmaplog.structlog import MmapLogger

            target: Any = MmapLogger(mh)
        except ImportError:
            target = _DirectMmapLogger(mh)
        log = _structlog(target)
        return Run(log.info, mh.flush, mh.close, folder, True, {"handler": mh})
    raise ValueError(f"unknown contender {key!r}")
