"""A torture suite for mmaplog: kills, simulated kills at every byte, corruption, fuzzing.

``python -m torture --help`` lists the modes. Each mode is also a function the CI
tests in ``tests/test_torture.py`` call with small budgets:

- :mod:`torture.kills`: random SIGKILLs of writer and recoverer processes;
- :mod:`torture.protocol`: a kill simulated at every byte boundary of the commit
  protocol, of a slot release, of a flusher move and of recovery;
- :mod:`torture.corrupt`: byte flips, truncations and random damage of log and cache files;
- :mod:`torture.fuzz`: a coverage-guided fuzzer of the decoder (atheris) and its regressions;
- :mod:`torture.stateful`: a hypothesis state machine of the handler;
- :mod:`torture.resources`: a thread storm, a full disk and injected I/O errors.
"""

from __future__ import annotations

__all__ = ["common", "corrupt", "fuzz", "kills", "protocol", "resources", "stateful"]
