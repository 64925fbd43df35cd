"""The command line: ``python -m torture [MODE] [options]`` (or ``python torture/run.py``).

Modes (default ``kills``):

- ``kills``: random SIGKILLs of writers and recoverers (``--kills N``, ``--seconds S``);
- ``protocol``: a kill simulated at every byte boundary of the commit protocol,
  slot release, flusher move and recovery (``--records N``);
- ``corrupt``: every single-byte flip and truncation of a small log and cache
  file, and random damage in large ones;
- ``fuzz``: atheris on the decoder for ``--seconds`` (crashes go to
  ``tests/fuzz/regressions/``);
- ``stateful``: the hypothesis state machine of the handler (``--examples N``);
- ``resources``: a 16-thread storm, a full tmpfs and injected I/O errors;
- ``lifecycle``: random schedules of threads, signals and finalizers that log, fork,
  close and reopen, dictConfig reloads, renamed log files and chdir, each under a
  watchdog (``--schedules N``, ``--seconds S``);
- ``all``: every mode with small budgets.

Every mode prints a summary and exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: python torture/run.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODES = ("kills", "protocol", "corrupt", "fuzz", "stateful", "resources", "lifecycle", "all")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m torture",
        description="Attack mmaplog: kills, simulated kills at every byte, corruption, fuzzing.",
    )
    p.add_argument("mode", nargs="?", default="kills", choices=MODES)
    p.add_argument("--kills", type=int, help="kills: stop after this many kills (default 50)")
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the time)")
    p.add_argument(
        "--round",
        type=int,
        action="append",
        dest="rounds",
        help="kills: run only this round of --seed (repeatable), to reproduce one",
    )
    p.add_argument(
        "--failures",
        default=os.path.join(tempfile.gettempdir(), "torture-failures"),
        help="where failing rounds' folders and inputs are saved",
    )
    p.add_argument("--work", default=None, help="kills: the scratch folder (default: a temp dir)")
    p.add_argument("--summary-json", default=None, help="write the summary figures here")
    p.add_argument("--records", type=int, default=40, help="protocol: records per configuration")
    p.add_argument(
        "--subsets",
        type=int,
        default=3,
        help="protocol: random byte subsets per store (besides every prefix)",
    )
    p.add_argument(
        "--cache-stride",
        type=int,
        default=16,
        help="corrupt: flip every Nth byte of a cache's free (zero) space "
        "(every byte of its header, templates and chunks is always flipped)",
    )
    p.add_argument(
        "--large-records",
        type=int,
        default=2500,
        help="corrupt: records in the large log and cache",
    )
    p.add_argument("--examples", type=int, default=60, help="stateful: hypothesis examples")
    p.add_argument(
        "--schedules", type=int, default=100, help="lifecycle: schedules to run (default 100)"
    )
    p.add_argument(
        "--large",
        type=int,
        default=200,
        help="corrupt: random multi-byte damages of the large files",
    )
    p.add_argument(
        "--tolerate",
        action="append",
        default=[],
        choices=["split-order", "recovery-order", "fsync-dup", "short-write"],
        help="do not fail on this known bug (still counted and reported): "
        "split-order and recovery-order (kills), fsync-dup and short-write (resources)",
    )
    p.add_argument(
        "--no-split",
        action="store_true",
        help="kills: never set max_file_size (avoids the known split-order bug)",
    )
    p.add_argument(
        "--extended",
        action="store_true",
        help="kills: also rounds with the cache in its own folder and two writers "
        "at once (changes nothing in the other rounds of a seed)",
    )
    p.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    mode = args.mode
    status = 0
    if mode in ("kills", "all"):
        from .kills import main_kills

        kills = args.kills if args.kills is not None else (20 if mode == "all" else None)
        status |= main_kills(
            kills=kills,
            seconds=args.seconds,
            seed=seed,
            failures=args.failures,
            work=args.work,
            rounds=args.rounds,
            quiet=args.quiet,
            summary_json=args.summary_json,
            tolerate=frozenset(args.tolerate),
            no_split=args.no_split,
            extended=args.extended,
        )
    if mode in ("protocol", "all"):
        from .protocol import main_protocol

        status |= main_protocol(
            records=args.records, subsets=args.subsets, seed=seed, failures=args.failures
        )
    if mode in ("corrupt", "all"):
        from .corrupt import main_corrupt

        status |= main_corrupt(
            seed=seed,
            large=args.large,
            failures=args.failures,
            cache_stride=args.cache_stride,
            large_records=args.large_records,
        )
    if mode in ("fuzz", "all"):
        from .fuzz import main_fuzz

        status |= main_fuzz(seconds=args.seconds or (20 if mode == "all" else 60), seed=seed)
    if mode in ("stateful", "all"):
        from .stateful import main_stateful

        status |= main_stateful(examples=args.examples, seed=seed)
    if mode in ("resources", "all"):
        from .resources import main_resources

        status |= main_resources(seed=seed, tolerate=frozenset(args.tolerate))
    if mode in ("lifecycle", "all"):
        from .lifecycle import main_lifecycle

        schedules = 10 if mode == "all" else args.schedules
        lifecycle_status, _summary = main_lifecycle(
            schedules=schedules, seconds=args.seconds, seed=seed, quiet=args.quiet
        )
        status |= lifecycle_status
    print(f"\ntorture {mode}: {'FAILED' if status else 'passed'} (seed {seed})")
    return status


if __name__ == "__main__":
    if __package__ in (None, ""):
        from torture.run import main as _main  # the package's copy, so relative imports work

        sys.exit(_main())
    sys.exit(main())
