"""Shared fixtures: every test gets a fresh folder and leaves logging as it found it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

import mmaplog


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Close every handler a test attached and restore the root logger."""
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    saved_level = root.level
    yield
    for h in root.handlers[:]:
        if h not in saved_handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(saved_level)


@pytest.fixture
def log_dir(tmp_path: os.PathLike[str]) -> str:
    """A fresh, empty log folder."""
    path = os.path.join(os.fspath(tmp_path), "logs")
    return path


@pytest.fixture
def make_handler(log_dir: str) -> Iterator[object]:
    """Build MmapHandlers on the test's folder and close them all afterwards."""
    made: list[mmaplog.MmapHandler] = []

    def make(**kwargs: object) -> mmaplog.MmapHandler:
        kwargs.setdefault("prefix", "app")
        h = mmaplog.MmapHandler(log_dir, **kwargs)  # type: ignore[arg-type]
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def make_logger(name: str, handler: logging.Handler) -> logging.Logger:
    """A logger that sends everything to ``handler`` only."""
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger
