"""structlog output straight into an ``MmapHandler``, skipping the stdlib machinery.

::

    import structlog, mmaplog
    from mmaplog.structlog import MmapLoggerFactory

    handler = mmaplog.MmapHandler("logs", prefix="api")
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.JSONRenderer()],
        logger_factory=MmapLoggerFactory(handler),
    )
    structlog.get_logger().info("order placed", order=42)

The final processor's output (``str``, or ``bytes`` from an orjson renderer) is
stored as one record with the level of the method called and the current time,
with the same crash safety as the stdlib path. Output that is a JSON object is
marked as such, so ``mmaplog decode --format json`` prints the event dict.

A logger can be copied (``copy.copy``, ``copy.deepcopy``, as structlog's
``bind`` and some frameworks do): the copy is the same logger, writing into the
same handler. It cannot be pickled to another process: the handler's cache is
this process's own. Pickling raises ``pickle.PicklingError``; in the other
process, configure structlog with its own ``MmapLoggerFactory(MmapHandler(...))``
(each process gets its own cache, as always) and call ``structlog.get_logger()``
there.

This module does not import structlog: it only provides what structlog calls.
"""

from __future__ import annotations

import logging
import pickle
import sys
import time
from typing import Any

from ._format import KIND_JSON, KIND_TEXT
from .handler import MmapHandler

__all__ = ["MmapLogger", "MmapLoggerFactory"]

_NOT_PICKLED = (
    "{name} writes into this process's mmaplog cache and cannot be sent to another "
    "process; there, configure structlog with its own "
    "MmapLoggerFactory(MmapHandler(log_dir, prefix)) and call structlog.get_logger()"
)


class _SharedNotPickled:
    """Copies are the object itself (they share the handler); pickling is refused."""

    __slots__ = ()

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self

    def __reduce__(self) -> Any:
        raise pickle.PicklingError(_NOT_PICKLED.format(name=type(self).__name__))


class MmapLogger(_SharedNotPickled):
    """A structlog logger (the object at the end of the processor chain) writing to a handler.

    Each method takes the rendered event (``str`` or ``bytes``). Like the stdlib
    handlers it never raises into the application.
    """

    __slots__ = ("_clock", "_handler", "_write")

    def __init__(self, handler: MmapHandler) -> None:
        self._handler = handler
        self._write = handler.write
        self._clock = time.time

    def __repr__(self) -> str:
        return f"<MmapLogger {self._handler!r}>"

    def _log(self, message: str | bytes, level: int) -> None:
        try:
            if isinstance(message, str):
                data = message.encode("utf-8", "backslashreplace")
            elif isinstance(message, (bytes, bytearray, memoryview)):
                data = bytes(message)
            else:  # a renderer that returned something else: store its text
                data = str(message).encode("utf-8", "backslashreplace")
            kind = KIND_JSON if data[:1] == b"{" else KIND_TEXT
            self._write(data, self._clock(), level, kind)
        except RecursionError:
            raise
        except Exception:
            self._handler.handleError(
                logging.makeLogRecord({"msg": "structlog event", "exc_info": sys.exc_info()})
            )

    def msg(self, message: str | bytes) -> None:
        self._log(message, logging.INFO)

    def debug(self, message: str | bytes) -> None:
        self._log(message, logging.DEBUG)

    def info(self, message: str | bytes) -> None:
        self._log(message, logging.INFO)

    def warning(self, message: str | bytes) -> None:
        self._log(message, logging.WARNING)

    def error(self, message: str | bytes) -> None:
        self._log(message, logging.ERROR)

    def critical(self, message: str | bytes) -> None:
        self._log(message, logging.CRITICAL)

    log = msg
    warn = warning
    err = error
    exception = error
    fatal = critical
    failure = error


class MmapLoggerFactory(_SharedNotPickled):
    """A structlog ``logger_factory`` giving loggers that write into ``handler``."""

    __slots__ = ("_logger",)

    def __init__(self, handler: MmapHandler) -> None:
        if not isinstance(handler, MmapHandler):
            from .exceptions import ConfigError

            raise ConfigError(
                f"MmapLoggerFactory needs an mmaplog.MmapHandler, got {type(handler).__name__}"
            )
        self._logger = MmapLogger(handler)

    def __call__(self, *args: Any) -> MmapLogger:
        return self._logger
