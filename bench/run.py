"""Benchmark mmaplog against the usual ways of writing logs.

    pip install -e ".[bench]"        # matplotlib, loguru, structlog (each optional)
    python bench/run.py              # everything, a few minutes: docs/benchmarks.md + .png
    python bench/run.py --quick      # ~1 minute smoke run; the report goes to a temp folder
    python bench/run.py --records 50000 --rounds 7 --rss-records 2000000

The same generated records go to every contender, in interleaved rounds; the
report gives medians and ratios taken inside each round (the machines are
shared and noisy: compare ratios, not absolute times).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import logging
import os
import platform
import pstats
import random
import re
import resource
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import contenders as C
import micro
import records as R
import report

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ACK = struct.Struct("<I")
_REC = re.compile(r"rec=(\d+) ")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _feed(info: Any, recs: list[R.Record]) -> None:
    for template, args in recs:
        info(template, *args)


def _feed_timed(info: Any, recs: list[R.Record], out: list[int]) -> None:
    clock = time.perf_counter_ns
    append = out.append
    for template, args in recs:
        t0 = clock()
        info(template, *args)
        append(clock() - t0)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scratch = args.dir
        self.recs = R.generate(args.records, seed=args.seed)
        self.brace = R.brace_variant(self.recs)
        import mmaplog

        self.private_key, self.public_key = mmaplog.generate_keypair()
        self.active: list[C.Contender] = []
        self.skipped: dict[str, str] = {}
        for c in C.CONTENDERS:
            gone = C.missing(c)
            if gone:
                self.skipped[c.key] = f"skipped: {gone} is not installed"
            else:
                self.active.append(c)
        self.results: dict[str, Any] = {
            "params": {
                k: getattr(args, k)
                for k in ("quick", "records", "rounds", "rss_records", "seed", "decode_records")
            },
            "skipped": self.skipped,
            "contenders": [c.__dict__ for c in C.CONTENDERS],
            "records": R.describe(self.recs),
            "timings": {},
        }
        self._n = 0
        self._folder_lock = threading.Lock()
        self.texts: dict[str, bytes] = {}

    def folder(self, tag: str) -> str:
        with self._folder_lock:
            self._n += 1
            path = os.path.join(self.scratch, f"{self._n:04d}-{tag}")
        os.makedirs(path)
        return path

    def recs_for(self, c: C.Contender) -> list[R.Record]:
        return self.brace if c.brace else self.recs

    # -- time per record, bytes per record ------------------------------------------

    def one_run(self, c: C.Contender, recs: list[R.Record]) -> dict[str, float]:
        folder = self.folder(c.key)
        run = C.open_run(c.key, folder, public_key=self.public_key)
        gc.collect()
        t0 = time.perf_counter()
        _feed(run.info, recs)
        t1 = time.perf_counter()
        run.drain()
        t2 = time.perf_counter()
        run.close()
        out = {"emit": t1 - t0, "drain": t2 - t0, "bytes": run.bytes_written()}
        if c.key in ("file", "file_xlog") and len(recs) == len(self.recs):
            with open(run.files()[0], "rb") as f:
                self.texts[c.key] = f.read()
        shutil.rmtree(folder, ignore_errors=True)
        return out

    def phase_time(self) -> None:
        n, rounds = self.args.records, self.args.rounds
        log(f"time per record: {len(self.active)} contenders x {rounds} rounds x {n} records")
        for c in self.active:  # warm-up: imports, first-use caches
            self.one_run(c, self.recs_for(c)[:500])
        per_round: list[dict[str, dict[str, float]]] = []
        for r in range(rounds):
            order = self.active[r % len(self.active) :] + self.active[: r % len(self.active)]
            row = {}
            for c in order:
                row[c.key] = self.one_run(c, self.recs_for(c))
            per_round.append(row)
            log(f"  round {r + 1}/{rounds} done")
        self.results["time"] = {"records": n, "rounds": per_round}
        self.results["compression"] = {k: compression_study(v) for k, v in self.texts.items()}

    # -- emit latency ------------------------------------------------------------------

    def phase_latency(self) -> None:
        rounds = self.args.latency_rounds
        log(f"emit latency: {rounds} rounds x {self.args.records} records, each call timed")
        from mmaplog import _format as F

        samples: dict[str, list[int]] = {c.key: [] for c in self.active}
        # p99 / p50 of each round on its own: the target holds in every round, or not.
        per_round: dict[str, list[float]] = {c.key: [] for c in self.active}
        blocks: dict[str, int] = {}
        for r in range(rounds):
            order = self.active[r % len(self.active) :] + self.active[: r % len(self.active)]
            for c in order:
                folder = self.folder(c.key)
                run = C.open_run(c.key, folder, public_key=self.public_key)
                gc.collect()
                these: list[int] = []
                _feed_timed(run.info, self.recs_for(c), these)
                samples[c.key] += these
                these.sort()
                per_round[c.key].append(these[int(0.99 * len(these))] / these[len(these) // 2])
                run.drain()
                run.close()
                if run.mmaplog:  # blocks moved: each costs the writer a few slow records
                    for path in run.files():
                        with open(path, "rb") as f:
                            found = F.scan_blocks(f.read())
                        n = sum(not isinstance(item, F.Damage) for item in found)
                        blocks[c.key] = blocks.get(c.key, 0) + n
                shutil.rmtree(folder, ignore_errors=True)
        out = {}
        for key, s in samples.items():
            s.sort()
            k = len(s)

            def pct(p: float, s: list[int] = s, k: int = k) -> float:
                return s[min(k - 1, int(p * k))] / 1000.0

            out[key] = {
                "n": k,
                "p50": pct(0.50),
                "p90": pct(0.90),
                "p99": pct(0.99),
                "p999": pct(0.999),
                "max": s[-1] / 1000.0,
                "over_3x_p50": sum(x > 3 * s[k // 2] for x in s),
                "round_ratios": per_round[key],
            }
            if key in blocks:
                out[key]["blocks"] = blocks[key]
        self.results["latency"] = out

    # -- throughput with threads -------------------------------------------------------

    def threads_run(self, c: C.Contender, nthreads: int) -> tuple[float, float]:
        recs = self.recs_for(c)[: self.args.threads_records]
        folder = self.folder(f"{c.key}-t{nthreads}")
        run = C.open_run(c.key, folder, public_key=self.public_key)
        barrier = threading.Barrier(nthreads + 1)

        def work(chunk: list[R.Record]) -> None:
            barrier.wait()
            _feed(run.info, chunk)

        workers = [
            threading.Thread(target=work, args=(recs[i::nthreads],)) for i in range(nthreads)
        ]
        for w in workers:
            w.start()
        gc.collect()
        barrier.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        t1 = time.perf_counter()
        run.drain()
        t2 = time.perf_counter()
        run.close()
        shutil.rmtree(folder, ignore_errors=True)
        return len(recs) / (t1 - t0), len(recs) / (t2 - t0)

    def phase_threads(self) -> None:
        rounds = self.args.threads_rounds
        log(
            f"throughput with 1, 4, 8 threads: {rounds} rounds x "
            f"{self.args.threads_records} records"
        )
        out: dict[str, dict[str, dict[str, list[float]]]] = {
            c.key: {str(t): {"emit": [], "drained": []} for t in (1, 4, 8)} for c in self.active
        }
        for r in range(rounds):
            for t in (1, 4, 8):
                order = self.active[r % len(self.active) :] + self.active[: r % len(self.active)]
                for c in order:
                    emit, drained = self.threads_run(c, t)
                    out[c.key][str(t)]["emit"].append(emit)
                    out[c.key][str(t)]["drained"].append(drained)
        self.results["threads"] = out
        self.results["threads_records"] = self.args.threads_records

    # -- child processes: RSS, SIGKILL, full cache ----------------------------------------

    def child_cmd(self, cfg: dict[str, Any], *extra: str) -> list[str]:
        cfg = {"records": self.args.records, "seed": self.args.seed, **cfg}
        return [sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg), *extra]

    def phase_rss(self) -> None:
        n = self.args.rss_records
        jobs = self.args.rss_jobs
        log(f"peak RSS over {n} records, one child per contender, {jobs} at a time")
        # Longest first (by the time-per-record rounds), so the jobs end together.
        rounds = self.results.get("time", {}).get("rounds", [{}])
        pending = sorted(self.active, key=lambda c: -rounds[0].get(c.key, {}).get("drain", 0.0))
        running: list[tuple[C.Contender, subprocess.Popen[str], float]] = []
        out: dict[str, Any] = {}
        while pending or running:
            while pending and len(running) < jobs:
                c = pending.pop(0)
                cfg = {
                    "mode": "rss",
                    "key": c.key,
                    "n": n,
                    "folder": self.folder(f"rss-{c.key}"),
                    "public_key": self.public_key,
                }
                proc = subprocess.Popen(
                    self.child_cmd(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
                running.append((c, proc, time.perf_counter()))
            time.sleep(0.05)
            for item in list(running):
                c, proc, start = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                stdout, stderr = proc.communicate()
                if proc.returncode != 0:
                    out[c.key] = {"error": (stderr.strip().splitlines() or ["?"])[-1]}
                else:
                    out[c.key] = json.loads(stdout.strip().splitlines()[-1])
                out[c.key]["wall"] = time.perf_counter() - start
                log(f"  rss {c.key}: {out[c.key]}")
        self.results["rss"] = {"records": n, "by": out}

    def kill_test(self, c: C.Contender, target: int) -> dict[str, Any]:
        folder = self.folder(f"kill-{c.key}")
        rfd, wfd = os.pipe()
        cfg = {"mode": "kill", "key": c.key, "folder": folder, "public_key": self.public_key}
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                self.child_cmd(cfg, str(wfd)), pass_fds=(wfd,), stdout=err, stderr=err
            )
            os.close(wfd)
            buf = bytearray()
            deadline = time.monotonic() + 120
            try:
                while len(buf) // ACK.size < target and time.monotonic() < deadline:
                    ready, _, _ = select.select([rfd], [], [], 0.5)
                    if ready:
                        chunk = os.read(rfd, 1 << 16)
                        if not chunk:
                            break
                        buf += chunk
                proc.send_signal(signal.SIGKILL)
                status = proc.wait()
                while True:  # what the child acknowledged before it died is still in the pipe
                    chunk = os.read(rfd, 1 << 16)
                    if not chunk:
                        break
                    buf += chunk
            finally:
                os.close(rfd)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            err.seek(0)
            child_err = err.read().decode(errors="replace").strip()
        acked = len(buf) // ACK.size
        if acked:
            last = ACK.unpack_from(buf, (acked - 1) * ACK.size)[0]
            if last != acked:
                raise RuntimeError(f"{c.key}: acks out of order ({last} != {acked})")
        recovered = None
        recover_s = None
        found: list[int] = []
        if c.mmaplog:
            import mmaplog

            t0 = time.perf_counter()
            recovered = mmaplog.recover(folder)
            recover_s = time.perf_counter() - t0
            key = self.private_key if c.encrypted else None
            for rec in mmaplog.read_records(folder, key=key):
                m = _REC.search(rec.text)
                if m:
                    found.append(int(m.group(1)))
        else:
            for name in sorted(os.listdir(folder)):
                with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                    found.extend(int(x) for x in _REC.findall(f.read()))
        got = set(found)
        lost = sum(1 for i in range(1, acked + 1) if i not in got)
        extra = sorted(n for n in got if n > acked)
        shutil.rmtree(folder, ignore_errors=True)
        result = {
            "status": status,
            "acked": acked,
            "found": len(found),
            "lost": lost,
            "duplicates": len(found) - len(got),
            "in_flight": len(extra),
            "recovered": recovered,
            "recover_s": recover_s,
        }
        if acked == 0:
            result["error"] = child_err.splitlines()[-1] if child_err else "no acknowledgement"
        return result

    def phase_kill(self) -> None:
        targets = self.args.kill_targets
        log(f"SIGKILL after {targets} acknowledged records, per contender")
        out = {}
        for c in self.active:
            if c.key == "null":
                continue
            kills = [self.kill_test(c, t) for t in targets]
            total: dict[str, Any] = {"kills": kills}
            for field in ("acked", "found", "lost", "duplicates", "in_flight"):
                total[field] = sum(k[field] for k in kills)
            total["max_lost"] = max(k["lost"] for k in kills)
            if c.mmaplog:
                total["recovered"] = sum(k["recovered"] or 0 for k in kills)
                total["recover_s"] = max(k["recover_s"] or 0.0 for k in kills)
            else:
                total["recovered"] = total["recover_s"] = None
            errors = [k["error"] for k in kills if "error" in k]
            if errors:
                total["error"] = errors[0]
            out[c.key] = total
            log(f"  kill {c.key}: {[(k['acked'], k['lost']) for k in kills]}")
        self.results["kill"] = {"after": targets, "by": out}

    def phase_kill_and_rss(self) -> None:
        """The two phases that measure no time, run together to save wall-clock time."""
        errors: list[BaseException] = []

        def rss() -> None:
            try:
                t0 = time.perf_counter()
                self.phase_rss()
                self.results["timings"]["phase_rss (beside kill)"] = time.perf_counter() - t0
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=rss)
        worker.start()
        t0 = time.perf_counter()
        self.phase_kill()
        self.results["timings"]["phase_kill (beside rss)"] = time.perf_counter() - t0
        worker.join()
        if errors:
            raise errors[0]

    def full_cache_recovery(self, buffer_size: int) -> dict[str, Any]:
        """Fill a cache whose log file cannot be written, SIGKILL, time the recovery."""
        import mmaplog

        folder = self.folder(f"fill-{buffer_size}")
        # A folder where the log file should be: the flusher cannot write a block, so
        # both slots stay full (block_timeout=0 drops what does not fit).
        blockers = []
        for days in (-1, 0, 1):
            day = time.strftime("%Y%m%d", time.localtime(time.time() + days * 86400))
            blockers.append(os.path.join(folder, f"bench_{day}.mmlog"))
        for b in blockers:
            os.makedirs(b, exist_ok=True)
        n = max(2000, buffer_size // 20)
        rfd, wfd = os.pipe()
        cfg = {"mode": "fill", "folder": folder, "buffer_size": buffer_size, "n": n}
        proc = subprocess.Popen(
            self.child_cmd(cfg, str(wfd)),
            pass_fds=(wfd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(wfd)
        try:
            ready, _, _ = select.select([rfd], [], [], 300)
            if not ready or not os.read(rfd, 64):
                raise RuntimeError("the cache-filling child did not finish")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            os.close(rfd)
        for b in blockers:
            os.rmdir(b)
        cache = os.path.join(folder, "bench.mmap")
        cache_size = os.path.getsize(cache) if os.path.exists(cache) else 0
        t0 = time.perf_counter()
        recovered = mmaplog.recover(folder)
        t1 = time.perf_counter()
        texts = [r.text for r in mmaplog.read_records(folder)]
        t2 = time.perf_counter()
        log_bytes = sum(
            os.path.getsize(os.path.join(folder, f))
            for f in os.listdir(folder)
            if f.endswith(".mmlog")
        )
        shutil.rmtree(folder, ignore_errors=True)
        text_bytes = sum(len(t.encode()) for t in texts)
        return {
            "buffer_size": buffer_size,
            "cache_file": cache_size,
            "written": n,
            "recovered": recovered,
            "recover_s": t1 - t0,
            "decoded": len(texts),
            "decode_s": t2 - t1,
            "text_bytes": text_bytes,
            "log_bytes": log_bytes,
        }

    # -- decode speed, encryption, full-cache recovery ------------------------------------

    def phase_decode(self) -> None:
        import mmaplog

        n = self.args.decode_records
        log(f"decode speed: {n} records written, then read back (x3)")
        out: dict[str, Any] = {}
        for key in ("mmap", "mmap_enc"):
            c = C.BY_KEY[key]
            folder = self.folder(f"decode-{key}")
            run = C.open_run(key, folder, public_key=self.public_key)
            gc.collect()
            t0 = time.perf_counter()
            left = n
            while left > 0:
                chunk = self.recs if left >= len(self.recs) else self.recs[:left]
                _feed(run.info, chunk)
                left -= len(chunk)
            t1 = time.perf_counter()
            run.drain()
            t2 = time.perf_counter()
            run.close()
            size = run.bytes_written()
            key_arg = self.private_key if c.encrypted else None
            dec, streamed = [], []
            count = text_bytes = 0
            for _ in range(3):
                gc.collect()
                d0 = time.perf_counter()
                got = list(mmaplog.read_records(folder, key=key_arg))
                dec.append(time.perf_counter() - d0)
                count = len(got)
                text_bytes = sum(len(r.text.encode()) for r in got)
                del got
                gc.collect()
                d0 = time.perf_counter()
                seen = sum(1 for _ in mmaplog.read_records(folder, key=key_arg))
                streamed.append(time.perf_counter() - d0)
                assert seen == count
            shutil.rmtree(folder, ignore_errors=True)
            d = statistics.median(streamed)
            dl = statistics.median(dec)
            out[key] = {
                "records": n,
                "write_emit_s": t1 - t0,
                "write_s": t2 - t0,
                "log_bytes": size,
                "decoded": count,
                "text_bytes": text_bytes,
                "decode_s": d,
                "decode_rps": count / d,
                "decode_mbs": text_bytes / d / 1e6,
                "decode_list_s": dl,
                "decode_list_rps": count / dl,
                "write_rps": n / (t2 - t0),
            }
            log(f"  decode {key}: {out[key]}")
        log("recovery of a full cache")
        fills = [self.full_cache_recovery(512 * 1024)]
        if not self.args.quick:
            fills.append(self.full_cache_recovery(4 * 1024 * 1024))
        for f in fills:
            log(f"  full cache: {f}")
        out["full_cache"] = fills
        self.results["decode"] = out

    # -- mmap vs write() -----------------------------------------------------------------

    def phase_micro(self) -> None:
        log("mmap vs write() per record size")
        folder = self.folder("micro")
        self.results["micro_rounds"] = self.args.micro_rounds
        self.results["micro"] = micro.run(
            folder,
            max_ops=self.args.micro_ops,
            max_bytes=self.args.micro_bytes,
            rounds=self.args.micro_rounds,
        )
        shutil.rmtree(folder, ignore_errors=True)

    # -- profile -------------------------------------------------------------------------

    def phase_floor(self) -> None:
        """What a record costs in parts, timed alone in this process on the benchmark's
        records: rendering the xlog line (the same formatter FileHandler gets in the
        *xlog text* comparison), the application's ``getMessage``, sealing a record
        when encrypted (by the Sealer, and by the C path's libcrypto where it seals),
        and ``handle(record)`` alone for FileHandler and MmapHandler on each path.
        """
        import mmaplog
        from mmaplog import _format as F
        from mmaplog._crypto import Sealer, load_public_key

        log("floor: formatter, getMessage, record seal, handle() alone")
        lg = logging.Logger("bench.floor")
        records = [
            lg.makeRecord("bench.floor", logging.INFO, __file__, 52, t, a, None, "_feed")
            for t, a in self.recs[:5000]
        ]
        formatter = mmaplog.XlogFormatter()
        texts = [formatter.format(r).encode() for r in records]
        bodies = [F.encode_record(1, 20, 0, t) for t in texts]  # what the cache seals
        sealer = Sealer(load_public_key(self.public_key))
        aead = sealer.native_aead
        nonces = [struct.pack("<QI", 1, i) for i in range(len(bodies))]

        def fmt_all() -> None:
            for r in records:
                formatter.format(r)

        def seal_all() -> None:
            for i, body in enumerate(bodies):
                sealer.seal(1, i, body, b"aad")

        def seal_c_all() -> None:
            encrypt = aead.encrypt
            for nonce, body in zip(nonces, bodies, strict=True):
                encrypt(nonce, body, b"aad")

        def message_all() -> None:
            for r in records:
                r.getMessage()

        parts: list[tuple[str, Any]] = [
            ("format", fmt_all),
            ("message", message_all),
            ("seal", seal_all),
        ]
        if aead is not None:
            parts.append(("seal_c", seal_c_all))
        out: dict[str, Any] = {}
        for name, fn in parts:
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[name] = statistics.median(times) / len(records) * 1e6
        out["handle"] = self.handle_alone(records)
        self.results["floor"] = out
        log(f"  floor µs/record: {out}")

    def handle_alone(self, records: list[logging.LogRecord]) -> dict[str, float]:
        """``handle(record)`` timed for FileHandler (xlog text) and MmapHandler on the C
        and the pure path: no logger, no NullHandler floor. Interleaved rounds, medians."""
        import mmaplog
        from mmaplog import _emitpath

        work = tempfile.mkdtemp(prefix="mmaplog-handle-")
        try:
            file_handler = logging.FileHandler(os.path.join(work, "file.log"))
            file_handler.setFormatter(mmaplog.XlogFormatter())
            handlers: dict[str, Any] = {"file": file_handler}
            if _emitpath.EMIT_PATH == "native":
                handlers["mmap"] = mmaplog.MmapHandler(os.path.join(work, "c"), "bench")
            writer = _emitpath._WRITER
            _emitpath._WRITER = None  # the next handler takes the pure path
            try:
                handlers["mmap_py"] = mmaplog.MmapHandler(os.path.join(work, "py"), "bench")
            finally:
                _emitpath._WRITER = writer
            times: dict[str, list[float]] = {k: [] for k in handlers}
            for _ in range(7):
                for key, h in handlers.items():
                    handle = h.handle
                    gc.collect()
                    t0 = time.perf_counter()
                    for r in records:
                        handle(r)
                    times[key].append((time.perf_counter() - t0) / len(records) * 1e6)
                    h.flush()
            for h in handlers.values():
                h.close()
            return {k: statistics.median(v) for k, v in times.items()}
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def phase_profile(self) -> None:
        log("cProfile of the MmapHandler emit path")
        out = {}
        for key in ("mmap", "mmap_enc"):
            folder = self.folder(f"profile-{key}")
            run = C.open_run(key, folder, public_key=self.public_key)
            _feed(run.info, self.recs[:1000])
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            _feed(run.info, self.recs)
            prof.disable()
            elapsed = time.perf_counter() - t0
            run.drain()
            run.close()
            shutil.rmtree(folder, ignore_errors=True)
            stats = pstats.Stats(prof)
            total_tt = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
            rows = []
            items = sorted(
                stats.stats.items(),  # type: ignore[attr-defined]
                key=lambda kv: kv[1][2],
                reverse=True,
            )
            for (filename, line, func), (_cc, ncalls, tt, ct, _callers) in items[:22]:
                rows.append(
                    {
                        "function": _where(filename, line, func),
                        "ncalls": ncalls,
                        "tottime": tt,
                        "cumtime": ct,
                        "per_record_us": tt / len(self.recs) * 1e6,
                        "share": tt / total_tt if total_tt else 0.0,
                    }
                )
            groups: dict[str, float] = {}
            for (filename, _line, func), v in stats.stats.items():  # type: ignore[attr-defined]
                if "/mmaplog/" in filename:
                    g = "mmaplog (Python)"
                elif "logging/" in filename:
                    g = "stdlib logging"
                elif filename == "~" and ("zstd" in func.lower() or "compress" in func):
                    g = "zstd (C)"
                elif filename == "~" and ("encrypt" in func or "ChaCha" in func):
                    g = "ChaCha20-Poly1305 (C)"
                elif filename == "~" and "lock" in func:
                    g = "lock acquire/release"
                elif filename.endswith("run.py"):
                    g = "benchmark loop"
                else:
                    g = "other (os.path in LogRecord/findCaller, struct, builtins, ...)"
                groups[g] = groups.get(g, 0.0) + v[2]
            groups = dict(sorted(groups.items(), key=lambda kv: -kv[1]))
            inclusive = []
            for (filename, line, func), v in stats.stats.items():  # type: ignore[attr-defined]
                stdlib_step = "logging/__init__" in filename and func in (
                    "makeRecord",
                    "callHandlers",
                    "findCaller",
                    "__init__",
                )
                if "/mmaplog/" in filename or stdlib_step:
                    inclusive.append(
                        {
                            "function": _where(filename, line, func),
                            "ncalls": v[1],
                            "cumtime": v[3],
                            "per_record_us": v[3] / len(self.recs) * 1e6,
                            "share": v[3] / elapsed if elapsed else 0.0,
                        }
                    )
            inclusive.sort(key=lambda r: -r["cumtime"])
            out[key] = {
                "records": len(self.recs),
                "elapsed": elapsed,
                "rows": rows,
                "groups": groups,
                "inclusive": inclusive[:12],
            }
        self.results["profile"] = out


def compression_study(text: bytes) -> dict[str, Any]:
    """How well a FileHandler's output compresses: per record flushed, per block, whole.

    Upper bounds for the log files' size, computed from the very bytes FileHandler wrote.
    """
    import zstandard

    lines = text.splitlines(keepends=True)
    out: dict[str, Any] = {"bytes": len(text), "records": len(lines), "ratios": {}}
    for level in (3, 6):
        obj = zstandard.ZstdCompressor(level=level).compressobj()
        size = sum(
            len(obj.compress(line)) + len(obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
            for line in lines
        )
        out["ratios"][f"per record (flushed), zstd-{level}"] = len(text) / size
    for chunk in (170 * 1024, 512 * 1024, len(text)):
        for level in (3, 6, 19):
            cctx = zstandard.ZstdCompressor(level=level)
            size = sum(len(cctx.compress(text[i : i + chunk])) for i in range(0, len(text), chunk))
            name = "whole file" if chunk == len(text) else f"{chunk // 1024} KiB blocks"
            out["ratios"][f"{name}, zstd-{level}"] = len(text) / size
    return out


def _where(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func
    for marker in ("/mmaplog/", "/bench/", "/site-packages/", "/lib/python3"):
        i = filename.rfind(marker)
        if i >= 0:
            filename = filename[i + 1 :]
            if marker == "/lib/python3":
                filename = filename.split("/", 1)[1] if "/" in filename else filename
            break
    return f"{filename}:{line}({func})"


# -- child processes ------------------------------------------------------------------------


def child_main(cfg: dict[str, Any], extra: list[str]) -> None:
    mode = cfg["mode"]
    if mode == "fill":
        return _child_fill(cfg, int(extra[0]))
    c = C.BY_KEY[cfg["key"]]
    recs = R.generate(int(cfg["records"]), seed=int(cfg["seed"]))
    if c.brace:
        recs = R.brace_variant(recs)
    run = C.open_run(c.key, cfg["folder"], public_key=cfg.get("public_key"))
    if mode == "rss":
        n = int(cfg["n"])
        _feed(run.info, recs[:2000])
        gc.collect()
        reset = _reset_peak_rss()
        base = _rss_kb() if reset else _rss_kb("VmHWM")
        ru_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        left = n
        trace = []  # (records so far, VmRSS KiB) after each pass over the pool
        while left > 0:
            chunk = recs if left >= len(recs) else recs[:left]
            _feed(run.info, chunk)
            left -= len(chunk)
            trace.append((n - left, _rss_kb()))
        t1 = time.perf_counter()
        backlog = run.extra["queue"].qsize() if "queue" in run.extra else None
        during = _rss_kb("VmHWM")
        run.drain()
        run.close()
        peak = _rss_kb("VmHWM")
        ru_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            json.dumps(
                {
                    "base_kb": base,
                    "during_kb": during,
                    "peak_kb": peak,
                    "hwm_reset": reset,
                    "ru_base_kb": ru_base,
                    "ru_peak_kb": ru_peak,
                    "end_kb": _rss_kb(),
                    "emit_s": t1 - t0,
                    "queue_backlog": backlog,
                    "trace": trace,
                }
            )
        )
        return None
    if mode == "kill":
        fd = int(extra[0])
        head = "rec={} " if c.brace else "rec=%d "
        numbered = [(head + t, a) for t, a in recs]
        info = run.info
        write = os.write
        pack = ACK.pack
        n = 0
        while True:
            for template, args in numbered:
                n += 1
                info(template, n, *args)
                write(fd, pack(n))
    raise ValueError(mode)


def _rss_kb(field: str = "VmRSS") -> int:
    """This process's resident set (or its high-water mark, VmHWM) in KiB, from /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child_fill(cfg: dict[str, Any], fd: int) -> None:
    import logging

    import mmaplog

    recs = R.generate(int(cfg["records"]), seed=int(cfg["seed"]))
    h = mmaplog.MmapHandler(
        cfg["folder"],
        "bench",
        buffer_size=int(cfg["buffer_size"]),
        block_timeout=0,
        flush_interval=3600,
    )
    logger = logging.getLogger("bench")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(h)
    left = int(cfg["n"])
    while left > 0:
        chunk = recs if left >= len(recs) else recs[:left]
        _feed(logger.info, chunk)
        left -= len(chunk)
    os.write(fd, b"done")
    time.sleep(3600)


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    p.add_argument("--records", type=int, help="records per contender per round")
    p.add_argument("--rounds", type=int, help="interleaved rounds of the time-per-record test")
    p.add_argument("--rss-records", type=int, help="records per RSS child (default 1M)")
    p.add_argument("--decode-records", type=int, help="records written then decoded")
    p.add_argument("--seed", type=int, default=6, help="seed of the record generator")
    p.add_argument("--out", help="markdown report (default docs/benchmarks.md; --quick: tmp)")
    p.add_argument("--dir", help="scratch folder for the log files (default: a temp folder)")
    p.add_argument("--json", help="also write the raw results as JSON here")
    p.add_argument(
        "--report-only",
        metavar="JSON",
        help="only rewrite the report (--out) from results saved earlier with --json",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.records = args.records or (4000 if q else 20000)
    args.rounds = args.rounds or (2 if q else 5)
    args.rss_records = args.rss_records or (50_000 if q else 1_000_000)
    args.decode_records = args.decode_records or (20_000 if q else 100_000)
    args.latency_rounds = 1 if q else 3  # the p99 target holds in three runs of three
    args.threads_rounds = 1 if q else 2
    args.threads_records = args.records if q else args.records // 2
    args.kill_targets = [args.records] if q else [args.records // 2, args.records]
    args.rss_jobs = 2
    args.micro_ops = 30_000 if q else 200_000
    args.micro_bytes = (8 if q else 64) * 1024 * 1024
    args.micro_rounds = 1 if q else 3
    if args.out is None:
        if q:
            args.out = os.path.join(tempfile.gettempdir(), "mmaplog-bench-quick", "benchmarks.md")
        else:
            args.out = os.path.join(ROOT, "docs", "benchmarks.md")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child), args.child_args)
        return 0
    if args.report_only:
        with open(args.report_only) as f:
            report.write(json.load(f), args.out)
        log(f"report: {args.out}")
        return 0
    own_scratch = args.dir is None
    if own_scratch:
        args.dir = tempfile.mkdtemp(prefix="mmaplog-bench-")
    else:
        os.makedirs(args.dir, exist_ok=True)
    random.seed(args.seed)
    started = time.perf_counter()
    load_before = os.getloadavg()
    bench = Bench(args)
    log(
        f"{len(bench.active)} contenders ({len(bench.skipped)} skipped); "
        f"scratch {args.dir}; report {args.out}"
    )
    try:
        for phase in (
            bench.phase_time,
            bench.phase_latency,
            bench.phase_threads,
            bench.phase_decode,
            bench.phase_micro,
            bench.phase_floor,
            bench.phase_profile,
            bench.phase_kill_and_rss,
        ):
            t0 = time.perf_counter()
            phase()
            bench.results["timings"][phase.__name__] = time.perf_counter() - t0
    finally:
        if own_scratch:
            shutil.rmtree(args.dir, ignore_errors=True)
    bench.results["elapsed"] = time.perf_counter() - started
    bench.results["finished"] = time.strftime("%Y-%m-%d %H:%M")
    bench.results["load"] = {"before": load_before, "after": os.getloadavg()}
    scratch_root = tempfile.gettempdir() if own_scratch else args.dir
    bench.results["machine"] = report.machine(scratch_root)
    bench.results["argv"] = sys.argv[1:] if argv is None else argv
    bench.results["platform"] = platform.platform()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bench.results, f, indent=1, default=str)
    report.write(bench.results, args.out)
    log(f"done in {bench.results['elapsed']:.0f} s; report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
