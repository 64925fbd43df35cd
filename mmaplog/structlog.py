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
stored as one record with the level of the method called, the current time, the
calling thread and the logger's name when it has one (``structlog.get_logger("api")``
names it ``api``), with the same crash safety as the stdlib path. Output that is a
JSON object is marked as such, so ``mmaplog decode --format json`` prints the event
dict.

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

    Each method takes the rendered event (``str`` or ``bytes``). ``name``, if given,
    is stored with each record as its logger name. Like the stdlib handlers it never
    raises into the application.
    """

    __slots__ = ("_clock", "_handler", "_name", "_write")

    def __init__(self, handler: MmapHandler, name: str | None = None) -> None:
        self._handler = handler
        self._write = handler.write
        self._clock = time.time
        self._name = name

    @property
    def name(self) -> str | None:
        """The logger name stored with each record (None: none)."""
        return self._name

    def __repr__(self) -> str:
        named = f" {self._name!r}" if self._name is not None else ""
        return f"<MmapLogger{named} {self._handler!r}>"

    def _log(self, message: str | bytes, level: int) -> None:
        try:
            if isinstance(message, str):
                data = message.encode("utf-8", "backslashreplace")
            elif isinstance(message, (bytes, bytearray, memoryview)):
                data = bytes(message)
            else:  # a renderer that returned something else: store its text
                data = str(message).encode("utf-8", "backslashreplace")
            kind = KIND_JSON if data[:1] == b"{" else KIND_TEXT
            self._write(data, self._clock(), level, kind, self._name)
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
    """A structlog ``logger_factory`` giving loggers that write into ``handler``.

    ``structlog.get_logger("api")`` gives a logger whose records carry the name
    ``api`` (the first argument, when it is a ``str``); ``structlog.get_logger()``
    one whose records carry no name.
    """

    __slots__ = ("_handler", "_logger", "_named")

    _MAX_NAMED = 1024  # named loggers kept; past it each call makes a new one

    def __init__(self, handler: MmapHandler) -> None:
        if not isinstance(handler, MmapHandler):
            from .exceptions import ConfigError

            raise ConfigError(
                f"MmapLoggerFactory needs an mmaplog.MmapHandler, got {type(handler).__name__}"
            )
        self._handler = handler
        self._logger = MmapLogger(handler)
        self._named: dict[str, MmapLogger] = {}

    def __call__(self, *args: Any) -> MmapLogger:
        if not args or not isinstance(args[0], str):
            return self._logger
        name = args[0]
        logger = self._named.get(name)
        if logger is None:
            logger = MmapLogger(self._handler, name)
            if len(self._named) < self._MAX_NAMED:
                self._named[name] = logger
        return logger
