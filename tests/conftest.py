"""Shared fixtures: every test gets a fresh folder and leaves logging as it found it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

import mmaplog
from tests._weed import WeedServer


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


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """A SeaweedFS server with an S3 gateway on free localhost ports, for the session
    (started by the first test that asks for it)."""
    server = WeedServer(str(tmp_path_factory.mktemp("weed")))
    server.start()
    yield server
    server.stop()


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


def new_cache(folder: str) -> Any:
    """A real cache file of 16 KiB in ``folder``, with no flusher (wake does nothing)."""
    from mmaplog import _cache
    from mmaplog import _format as fmt
    from mmaplog._blocks import BlockSession

    path = os.path.join(folder, "app.mmap")
    fd = _cache.open_locked(path, 0o600, create=True)
    assert fd is not None
    return _cache.Cache(
        path,
        fd,
        buffer_size=16 * 1024,
        log_dir=folder,
        prefix="app",
        blocks=BlockSession(codec=fmt.COMP_NONE),
        wake=lambda: None,
    )


@pytest.fixture
def bare_cache(tmp_path: Any) -> Iterator[Any]:
    """``new_cache`` in ``tmp_path``; afterwards its sealed blocks are released and it is closed."""
    cache = new_cache(str(tmp_path))
    yield cache
    while (b := cache.take_sealed()) is not None:
        cache.release(b)
    cache.close()
