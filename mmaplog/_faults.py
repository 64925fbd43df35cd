"""Fault-injection points: where the crash tests make a process SIGKILL itself.

Not part of the public API. ``crash_at(step, nth)`` arms a step; the flusher, the
cache and recovery call :func:`point` at each step of moving a block, which costs a
dict lookup when nothing is armed. This module imports nothing of mmaplog, so the
cache and the reader can use it without depending on the logging side.
"""

from __future__ import annotations

import os
import signal

STEPS = (
    "after_append",  # the block is in the log file, its slot not yet released
    "mid_release",  # the slot is marked empty, its bytes not yet zeroed
    "after_release",
    "recover_after_append",  # recovery wrote a block, the cache is not yet cleared
)

_armed: dict[str, int] = {}


def crash_at(step: str, nth: int = 1) -> None:
    """SIGKILL this process the ``nth`` time it reaches ``step``.

    Raises ``ValueError`` for a step not in :data:`STEPS`.
    """
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; known: {', '.join(STEPS)}")
    _armed[step] = nth


def point(step: str) -> None:
    """A place where an armed crash happens (a dict lookup when nothing is armed)."""
    if _armed:
        left = _armed.get(step)
        if left is not None:
            if left <= 1:
                os.kill(os.getpid(), signal.SIGKILL)
            _armed[step] = left - 1
