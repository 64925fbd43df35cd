"""Turn the raw results of ``bench/run.py`` into docs/benchmarks.md and a PNG chart.

Every figure in the report is computed here from the measurements; nothing is
typed in by hand except the targets and the published xlog figure.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import statistics
import sys
from typing import Any

import contenders as C

XLOG_LINES_PER_S = 122_000  # Tencent's C++ xlog, async, zstd, one thread
MB = 1024 * 1024


# -- the machine ----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / MB:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _filesystem(path: str) -> str:
    best, fs, dev = "", "unknown", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                    best, fs, dev = mnt, parts[2], parts[0]
    except OSError:
        pass
    return f"{fs} ({dev} on {best})" if best else fs


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(scratch: str) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "memory": _mem_total(),
        "kernel": platform.release(),
        "python": sys.version.split()[0] + f" ({platform.python_implementation()})",
        "filesystem": _filesystem(os.path.realpath(scratch)),
        "scratch": scratch,
        "packages": {
            n: _version(n)
            for n in ("mmaplog", "zstandard", "cryptography", "loguru", "structlog", "matplotlib")
        },
    }


# -- analysis -------------------------------------------------------------------------


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def analyse_time(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    t = res["time"]
    n = t["records"]
    rounds: list[dict[str, dict[str, float]]] = t["rounds"]
    keys = list(rounds[0])
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        c = C.BY_KEY[key]
        emit = [r[key]["emit"] / n * 1e6 for r in rounds]
        drain = [r[key]["drain"] / n * 1e6 for r in rounds]
        row: dict[str, float] = {
            "emit_us": _med(emit),
            "emit_min": min(emit),
            "emit_max": max(emit),
            "drain_us": _med(drain),
            "bytes_per_rec": _med([r[key]["bytes"] / n for r in rounds]),
            "rps": 1e6 / _med(emit),
        }
        if c.ref in keys:
            row["ratio"] = _med([r[key]["emit"] / r[c.ref]["emit"] for r in rounds])
            row["ratio_drain"] = _med([r[key]["drain"] / r[c.ref]["drain"] for r in rounds])
            ref_bytes = _med([r[c.ref]["bytes"] / n for r in rounds])
            if row["bytes_per_rec"] > 0:
                row["bytes_fewer"] = ref_bytes / row["bytes_per_rec"]
        if c.stdlib and "null" in keys:
            row["own_us"] = _med([(r[key]["emit"] - r["null"]["emit"]) / n * 1e6 for r in rounds])
            if c.ref in keys:
                row["own_ratio"] = _med(
                    [
                        (r[key]["emit"] - r["null"]["emit"])
                        / (r[c.ref]["emit"] - r["null"]["emit"])
                        for r in rounds
                    ]
                )
        out[key] = row
    return out


def _trace_growth(r: dict[str, Any], start: float, end: float) -> float | None:
    """VmRSS change (MiB) between two fractions of the records, from the RSS child's samples."""
    trace = r.get("trace") or []
    if not trace:
        return None
    total = trace[-1][0]

    def at(frac: float) -> float:
        if frac <= 0:
            return float(r["base_kb"])
        for done, kb in trace:
            if done >= frac * total:
                return float(kb)
        return float(trace[-1][1])

    return (at(end) - at(start)) / 1024


def analyse_threads(res: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, by_t in res["threads"].items():
        out[key] = {t: {k: _med(v) for k, v in d.items()} for t, d in by_t.items()}
    return out


# -- formatting -----------------------------------------------------------------------


def _f(x: float | None, digits: int = 1, suffix: str = "") -> str:
    if x is None or x != x:
        return "–"
    return f"{x:,.{digits}f}{suffix}"


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _label(key: str) -> str:
    return C.BY_KEY[key].label


def _skip_rows(res: dict[str, Any], ncols: int) -> list[list[str]]:
    return [[_label(k), f"*{why}*"] + [""] * (ncols - 2) for k, why in res["skipped"].items()]


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**missed**"


def targets(res: dict[str, Any], tm: dict[str, dict[str, float]]) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(target: str, measured: str, ok: bool | None) -> None:
        rows.append([target, measured, _verdict(ok)])

    def get(key: str, field: str) -> float | None:
        v = tm.get(key, {}).get(field)
        return v if v is not None and v == v else None

    # The native record path's targets (default configuration: zstd, async).
    v = get("mmap", "own_ratio")
    add(
        "C path: own cost ≤ 0.8 × FileHandler's, same text (xlog formatter on both)",
        _f(v, 2, " ×") + _pure_beside(get("mmap_py", "own_ratio")),
        None if v is None else v <= 0.8,
    )
    v = get("mmap_enc", "own_ratio")
    add(
        "C path: own cost with encryption ≤ 1.0 × FileHandler's",
        _f(v, 2, " ×") + _pure_beside(get("mmap_enc_py", "own_ratio")),
        None if v is None else v <= 1.0,
    )
    if "threads" in res:
        th = analyse_threads(res)
        for t in ("4", "8"):
            mine = th.get("mmap", {}).get(t, {}).get("emit")
            ref = th.get("file_xlog", {}).get(t, {}).get("emit")
            pure = th.get("mmap_py", {}).get(t, {}).get("emit")
            ratio = mine / ref if mine and ref else None
            add(
                f"C path: throughput with {t} logging threads ≥ 2 × FileHandler's (xlog text)",
                f"{_f(mine, 0)} vs {_f(ref, 0)} records/s: {_f(ratio, 2, ' ×')}"
                + _pure_beside(pure / ref if pure and ref else None),
                None if ratio is None else ratio >= 2,
            )
    lat = res.get("latency", {}).get("mmap")
    if lat and lat.get("round_ratios"):
        rr = lat["round_ratios"]
        good = sum(x < 3 for x in rr)
        add(
            "C path: p99 emit latency < 3 × the median, in every round",
            f"{good} of {len(rr)} rounds ({', '.join(_f(x, 2, ' ×') for x in rr)})",
            good == len(rr),
        )
    v = get("structlog_mmap", "rps")
    if v is not None:
        add(
            f"C path: direct structlog path above C++ xlog's {XLOG_LINES_PER_S:,} lines/s "
            "(an absolute figure: it moves with the machine's load)",
            f"{_f(v, 0)} records/s",
            v >= XLOG_LINES_PER_S,
        )
    v = get("mmap", "own_ratio")
    add(
        "own cost (above the NullHandler floor) ≤ 0.5 × FileHandler's, same text "
        "(default: xlog formatter on both)",
        _f(v, 2, " ×"),
        None if v is None else v <= 0.5,
    )
    v = get("mmap_msg", "own_ratio")
    add(
        "… the same with `%(message)s` on both",
        _f(v, 2, " ×"),
        None if v is None else v <= 0.5,
    )
    v = get("mmap_enc", "own_ratio")
    add(
        "own cost with encryption ≤ 0.6 × FileHandler's (xlog formatter on both)",
        _f(v, 2, " ×"),
        None if v is None else v <= 0.6,
    )
    v = get("mmap", "bytes_fewer")
    add(
        "≥ 6× fewer bytes on disk per record than FileHandler, same text (xlog formatter)",
        _f(v, 1, "× fewer"),
        None if v is None else v >= 6,
    )
    v = get("mmap_msg", "bytes_fewer")
    add(
        "… the same with `%(message)s` on both",
        _f(v, 1, "× fewer"),
        None if v is None else v >= 6,
    )
    rss = res.get("rss", {}).get("by", {}).get("mmap", {})
    if "peak_kb" in rss:
        growth = (rss["during_kb"] - rss["base_kb"]) / 1024
        closing = (rss["peak_kb"] - rss["base_kb"]) / 1024
        n = res["rss"]["records"]
        add(
            f"RSS growth < 2 MB over 1M records (measured over {n:,}; peak while logging)",
            f"{_f(growth, 2, ' MiB')} ({_f(closing, 2, ' MiB')} including the final "
            "flush and close)",
            growth < 2,
        )
    else:
        add("RSS growth < 2 MB over 1M records", rss.get("error", "–"), None)
    lat = res.get("latency", {}).get("mmap")
    if lat:
        ratio = lat["p99"] / lat["p50"]
        add(
            "p99 emit latency < 3 × median, while blocks are moved",
            f"p50 {_f(lat['p50'], 1)} µs, p99 {_f(lat['p99'], 1)} µs: {_f(ratio, 2)} ×",
            ratio < 3,
        )
    dec = res.get("decode", {}).get("mmap")
    if dec:
        ratio = dec["decode_rps"] / dec["write_rps"]
        kept = dec.get("decode_list_rps")
        add(
            "decoding ≥ 10× faster than writing the same records (records read one by one, "
            "as `mmaplog decode` does)",
            f"{_f(dec['decode_rps'], 0)} vs {_f(dec['write_rps'], 0)} records/s: {_f(ratio, 1)} ×"
            + (
                f" (all kept in one list: {_f(kept, 0)} records/s, "
                f"{_f(kept / dec['write_rps'], 1)} ×)"
                if kept
                else ""
            ),
            ratio >= 10,
        )
    v = get("structlog_mmap", "rps")
    if v is not None:
        add(
            f"direct structlog path within 2× of C++ xlog ({XLOG_LINES_PER_S:,} lines/s): "
            f"≥ {XLOG_LINES_PER_S // 2:,} records/s, one thread (an absolute figure: "
            "it moves with the machine's load)",
            f"{_f(v, 0)} records/s ("
            + (
                f"{_f(v / XLOG_LINES_PER_S, 2)} × xlog's rate"
                if v >= XLOG_LINES_PER_S
                else f"{_f(XLOG_LINES_PER_S / v, 2)} × slower than xlog"
            )
            + ")",
            v >= XLOG_LINES_PER_S / 2,
        )
    else:
        add("direct structlog path within 2× of C++ xlog", "structlog not installed", None)
    plain, enc = res.get("decode", {}).get("mmap"), res.get("decode", {}).get("mmap_enc")
    if plain and enc:
        ratio = enc["log_bytes"] / plain["log_bytes"]
        add(
            "encrypted log files at most 5% larger (same records)",
            f"{_f((ratio - 1) * 100, 1)} % larger",
            ratio <= 1.05,
        )
    kills = res.get("kill", {}).get("by", {})
    mm = {k: v for k, v in kills.items() if C.BY_KEY[k].mmaplog}
    if mm:
        lost = sum(v["lost"] for v in mm.values())
        add(
            "no acknowledged record lost on SIGKILL (every mmaplog contender)",
            f"{lost} lost of {sum(v['acked'] for v in mm.values()):,} acknowledged",
            lost == 0,
        )
    return rows


def path_lines(res: dict[str, Any], tm: dict[str, dict[str, float]]) -> list[str]:
    """The two record paths side by side, and what the C path still pays."""
    native, pure = tm.get("mmap", {}).get("own_us"), tm.get("mmap_py", {}).get("own_us")
    file_own = tm.get("file_xlog", {}).get("own_us")
    if not (native and pure and file_own):
        return []
    floor = res.get("floor") or {}
    msg_us = floor.get("message")
    lines = [
        "**The two record paths.** Every MmapHandler contender runs twice: on the C record "
        "path (the default where the extension is built) and on the pure-Python path "
        f'("pure Python" in the tables). Own cost per record, default configuration: '
        f"C path {_f(native, 2)} µs, pure Python {_f(pure, 2)} µs, FileHandler writing the "
        f"same text {_f(file_own, 2)} µs. Neither path compresses a record: the cache holds "
        "records as they are (each decodes after a crash with no compressor to flush), and "
        "the flusher compresses each block whole when it moves it."
    ]
    if msg_us is not None:
        lines[0] += (
            " Of the C path's cost, the application's `%`-formatting in "
            f"`record.getMessage()` is {_f(msg_us, 2)} µs ({_f(msg_us / native, 2)} of it; "
            "FileHandler pays it too, inside its formatter)."
        )
    return [*lines, ""]


def _pure_beside(v: float | None) -> str:
    return "" if v is None else f" (pure Python path: {_f(v, 2, ' ×')})"


def floor_lines(floor: dict[str, Any], file_own: float) -> list[str]:
    """The parts of a record's cost timed alone, and handle() without a logger."""
    fmt_us, msg_us, seal_us = floor["format"], floor["message"], floor["seal"]
    seal_c = floor.get("seal_c")
    lines = [
        "**The parts, timed alone** in this run on the same records: rendering the xlog "
        f"line with `XlogFormatter` takes {_f(fmt_us, 2)} µs in Python (FileHandler, xlog "
        "text, runs that formatter; the C path renders the same line in C), of which "
        f"`getMessage` is {_f(msg_us, 2)} µs. Sealing a record when encrypted takes "
        f"{_f(seal_us, 2)} µs through the `Sealer` (pyca `cryptography`, from Python)"
        + (
            f" and {_f(seal_c, 2)} µs through the C path's libcrypto key, called from Python "
            "here (the C path calls it from C, without the call's cost)"
            if seal_c is not None
            else "; the C path seals through the `Sealer` too on this machine"
        )
        + f". FileHandler's own cost in the time phase was {_f(file_own, 2)} µs.",
        "",
    ]
    handle = floor.get("handle")
    if isinstance(handle, dict) and handle.get("file"):
        f_us = handle["file"]
        parts = [f"FileHandler {_f(f_us, 2)} µs"]
        for key, label in (("mmap", "MmapHandler, C path"), ("mmap_py", "pure Python")):
            if key in handle:
                parts.append(f"{label} {_f(handle[key], 2)} µs ({_f(handle[key] / f_us, 2)} ×)")
        lines += [
            "`handler.handle(record)` alone on the same records, with no logger around it, "
            "interleaved, medians: " + ", ".join(parts) + ".",
            "",
        ]
    return lines


def write(res: dict[str, Any], out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    png = os.path.splitext(out)[0] + ".png"
    tm = analyse_time(res)
    th = analyse_threads(res)
    chart = _chart(res, tm, th, png)
    md = _markdown(res, tm, th, os.path.basename(png) if chart else None)
    with open(out, "w") as f:
        f.write(md)


def _markdown(
    res: dict[str, Any],
    tm: dict[str, dict[str, float]],
    th: dict[str, dict[str, dict[str, float]]],
    png: str | None,
) -> str:
    p = res["params"]
    m = res["machine"]
    L: list[str] = []
    add = L.append
    when = res.get("finished") or _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    add("# Benchmarks")
    add("")
    # --json only keeps the raw results: it changes nothing measured.
    shown = []
    argv = iter(res["argv"])
    for arg in argv:
        if arg == "--json":
            next(argv, None)
        elif not arg.startswith("--json="):
            shown.append(arg)
    command = " ".join(["python", "bench/run.py", *shown])
    add(
        f"Generated by `{command}`"
        + f" on {when}, in {res['elapsed'] / 60:.1f} minutes"
        + (" (**--quick smoke run: small samples**)" if p["quick"] else "")
        + ". Do not edit by hand: run the benchmark again."
    )
    add("")
    add(
        "The machine is shared and noisy, so every comparison is a ratio taken inside "
        "one interleaved round (each round runs every contender once, in a rotated "
        "order, on the same records), then the median over rounds. Absolute times "
        "will differ elsewhere; the ratios are what to compare."
    )
    add("")
    cores = m.get("usable_cores") or m.get("cores") or 1
    before, after = res["load"]["before"][0], res["load"]["after"][0]
    # The load at the end includes the benchmark's own children (the RSS and kill
    # phases): only the load before the run says whether others were using the CPU.
    if before >= cores / 2:
        add(
            f"**This run was taken on a loaded machine**: 1-minute load average "
            f"{before:.1f} when it started, on {cores} cores ({after:.1f} at the end, the "
            "benchmark's own processes included): other processes competed for the CPU. "
            "Ratios inside a round suffer least; absolute figures (µs, records/s, the "
            "comparison with xlog's published lines/s) and tails (p99.9, max) suffer most."
        )
    else:
        add(
            f"The machine was quiet when the run started: 1-minute load average "
            f"{before:.1f} on {cores} cores ({after:.1f} at the end, the benchmark's own "
            "processes included)."
        )
    add("")
    if png:
        add(f"![benchmark chart]({png})")
        add("")

    # How to run
    add("## How to run")
    add("")
    add("```")
    add('pip install -e ".[bench]"      # matplotlib, loguru, structlog: each optional')
    add("python bench/run.py            # everything: this page and benchmarks.png")
    add("python bench/run.py --quick    # about a minute; report goes to a temp folder")
    add("python bench/run.py --records 50000 --rounds 7 --rss-records 1000000 --out results.md")
    add("```")
    add("")
    add(
        "The full run takes about 3 minutes on 2 cores (most of it the 1M-record RSS "
        "children), longer on a loaded machine. "
        "A contender whose package is missing is skipped and marked in the tables. "
        "`--json FILE` also saves the raw measurements."
    )
    add("")

    # Machine
    add("## Machine")
    add("")
    ncores = f"{m['cores']}" + (
        f" ({m['usable_cores']} usable)" if m["usable_cores"] not in (None, m["cores"]) else ""
    )
    rows = [
        ["CPU", m["cpu"]],
        ["cores", ncores],
        ["memory", m["memory"]],
        ["kernel", m["kernel"]],
        ["Python", m["python"]],
        ["scratch filesystem", m["filesystem"]],
        [
            "load average (1, 5, 15 min) before / after",
            " / ".join(", ".join(f"{x:.2f}" for x in res["load"][k]) for k in ("before", "after")),
        ],
    ]
    rows += [[f"`{k}`", v] for k, v in m["packages"].items()]
    L += _table(["", ""], rows, "ll")
    add("")

    # Records and parameters
    d = res["records"]
    add("## Records")
    add("")
    add(
        f"{d['count']:,} records generated once (seed {p['seed']}) from {d['templates']} "
        "application-log templates and fed to every contender through "
        '`logger.info("... %s ...", *args)` (loguru gets the same templates converted to '
        "`str.format`, checked to render identical text): HTTP requests, logins, orders, "
        "payments, cache misses, jobs, retries, queries, uploads, errors; "
        f"{d['with_uuid'] * 100:.0f} % hold a uuid, most hold ids, numbers, IPs, paths "
        f"and words. Message length: min {d['min']}, median {d['median']}, mean "
        f"{d['mean']:.0f}, max {d['max']} bytes. The first ones:"
    )
    add("")
    add("```")
    L.extend(d["samples"])
    add("```")
    add("")
    add(
        f"Parameters: {p['records']:,} records per contender per round, {p['rounds']} "
        f"rounds for time per record; RSS over {p['rss_records']:,} records (the pool "
        f"cycled); decode over {p['decode_records']:,} records."
    )
    add("")

    # Contenders
    add("## Contenders and formatters")
    add("")
    rows = []
    for c in C.CONTENDERS:
        note = res["skipped"].get(c.key, "")
        ref = "–" if c.key == c.ref else C.BY_KEY[c.ref].label
        rows.append(
            [
                f"`{c.key}`",
                c.label,
                c.formatter,
                "xlog line" if c.text == "xlog" else "message",
                ref,
                note,
            ]
        )
    L += _table(["key", "contender", "formatter", "each line", "compared with", ""], rows, "llllll")
    add("")
    add(
        "*xlog line* is MmapHandler's default `XlogFormatter`: "
        "`[I][2026-11-25 +0000 19:40:00.123][pid, tid][logger][file:line, func][message`; "
        '*message* is just the message (`logging.Formatter("%(message)s")` or the '
        "equivalent). Each contender is compared with the FileHandler that writes the same "
        "text, so the comparison is apples to apples. RotatingFileHandler rotates at 16 MiB "
        "(only the RSS run is long enough to rotate). The structlog contenders use "
        "`make_filtering_bound_logger(INFO)` with a processor chain that renders only the "
        "event; `structlog_mmap` ends the chain in mmaplog's direct path "
        "`mmaplog.structlog.MmapLogger(handler)` (zstd, async), skipping the stdlib "
        "machinery (`bench/contenders.py`; older mmaplog versions without that module get "
        "a ten-line adapter calling `MmapHandler.write()`). "
        "MmapHandler runs with its defaults (512 KiB cache, flush_interval 5 s) in a fresh "
        "folder each time."
    )
    add("")

    # Targets
    add("## Targets")
    add("")
    L += _table(["target", "measured", ""], targets(res, tm), "lrl")
    add("")
    floor = res.get("floor")
    file_own = tm.get("file_xlog", {}).get("own_us")
    L += path_lines(res, tm)
    if floor and file_own:
        L += floor_lines(floor, file_own)

    # Time per record
    add("## Time per record")
    add("")
    n = res["time"]["records"]
    add(
        f"Median over {len(res['time']['rounds'])} rounds of {n:,} records. *emit*: the "
        "caller's time per `logger.info` call (what the application pays); *own cost*: "
        "emit minus the NullHandler floor of the same round (stdlib contenders only: loguru "
        "and structlog do not pay that floor); *× FileHandler*: ratio to the FileHandler "
        "writing the same text, in the same round; *+drain*: including `flush()` / "
        "`listener.stop()` / `logger.complete()` at the end, i.e. until every record is in "
        "the file."
    )
    add("")
    rows = []
    for key, r in tm.items():
        rows.append(
            [
                _label(key),
                _f(r["emit_us"], 2),
                f"{_f(r['emit_min'], 1)}–{_f(r['emit_max'], 1)}",
                _f(r.get("own_us"), 2),
                _f(r.get("ratio"), 2, " ×"),
                _f(r.get("own_ratio"), 2, " ×"),
                _f(r["drain_us"], 2),
                _f(r.get("ratio_drain"), 2, " ×"),
                _f(r["rps"], 0),
            ]
        )
    header = [
        "contender",
        "emit µs/rec",
        "range",
        "own cost µs",
        "× FileHandler",
        "own cost × FileHandler's",
        "+drain µs/rec",
        "+drain × FileHandler",
        "records/s",
    ]
    L += _table(header, rows + _skip_rows(res, len(header)))
    add("")

    # Bytes
    add("## Bytes written to disk per record")
    add("")
    add(
        "Sizes of the output files after `close()` (for mmaplog the `.mmlog` log files, "
        "not the cache), per record, against the FileHandler writing the same text."
    )
    add("")
    rows = []
    for key, r in tm.items():
        if key == "null":
            continue
        fewer = (
            "(reference)" if C.BY_KEY[key].ref == key else _f(r.get("bytes_fewer"), 2, " × fewer")
        )
        rows.append([_label(key), _f(r["bytes_per_rec"], 1), fewer])
    L += _table(["contender", "bytes/record", "vs FileHandler, same text"], rows)
    add("")
    comp = res.get("compression", {})
    if comp:
        add(
            "What this text allows: the bytes FileHandler wrote in the first round, "
            "compressed here with zstd per record (each record flushed: what a cache that "
            "compressed its records would hold), in blocks (170 KiB is about where "
            "MmapHandler moves a block with the default 512 KiB cache), and as one whole "
            "file. Ratios of text bytes to compressed bytes; headers and checksums not "
            "counted."
        )
        add("")
        names = list(next(iter(comp.values()))["ratios"])
        rows = []
        for name in names:
            rows.append(
                [name]
                + [
                    _f(comp[k]["ratios"].get(name), 2, " ×")
                    for k in ("file", "file_xlog")
                    if k in comp
                ]
            )
        header = ["zstd"] + [
            "message only" if k == "file" else "xlog line"
            for k in ("file", "file_xlog")
            if k in comp
        ]
        L += _table(header, rows)
        add("")
        for ck, mk in (("file_xlog", "mmap"), ("file", "mmap_msg")):
            have = comp.get(ck, {}).get("ratios", {})
            got = tm.get(mk, {}).get("bytes_fewer")
            if have and got:
                best = max(have.values())
                add(
                    f"- {_label(mk)}: {got:.2f}× fewer bytes than FileHandler; the same text "
                    f"gives {have.get('170 KiB blocks, zstd-6', float('nan')):.2f}× in 170 KiB "
                    f"blocks at zstd-6, {have.get('512 KiB blocks, zstd-3', float('nan')):.2f}× "
                    f"in 512 KiB blocks at zstd-3, and at best {best:.2f}× (whole file, "
                    "zstd-19)."
                )
        add("")

    # Latency
    lat = res.get("latency", {})
    if lat:
        add("## Emit latency")
        add("")
        any_n = next(iter(lat.values()))["n"]
        add(
            f"`time.perf_counter_ns()` around each call, {any_n:,} calls per contender "
            "(the flusher moves blocks meanwhile: a block is sealed about every third of the "
            "cache), in µs."
        )
        add("")
        rows = []
        for key, s in lat.items():
            rows.append(
                [
                    _label(key),
                    _f(s["p50"], 1),
                    _f(s["p90"], 1),
                    _f(s["p99"], 1),
                    _f(s["p999"], 1),
                    _f(s["max"], 0),
                    _f(s["p99"] / s["p50"], 2, " ×"),
                ]
            )
        L += _table(["contender", "p50", "p90", "p99", "p99.9", "max", "p99 / p50"], rows)
        add("")
        m = lat.get("mmap", {})
        counted = ""
        if "over_3x_p50" in m and m.get("blocks"):
            over, n, blocks = m["over_3x_p50"], m["n"], m["blocks"]
            counted = (
                f"In this run {over:,} of the default MmapHandler's {n:,} records "
                f"({100 * over / n:.2f} %) took longer than 3 × p50; it moved {blocks:,} "
                f"blocks of about {n / blocks:,.0f} records, so {over / blocks:.1f} slow "
                "records per block. p99 stays under 3 × p50 only while fewer than 1 % of "
                "records are slow. "
            )
        add(
            "Where MmapHandler's tail comes from: the writer and the flusher share the GIL (the "
            "writer never lets go of it inside a record, but the interpreter takes it away "
            "every few milliseconds when another thread asks for it). Each time "
            "the flusher needs the GIL back (woken for a sealed block, after the whole-block "
            "compression, after the `write()`) the record being written waits for the "
            "flusher's step and for the OS to wake it again: three slow records per block. "
            "Sealing a block, waking the flusher and opening the next block cost one more "
            "(they happen in one call). Records written while the flusher compresses on the "
            "other core, and records with no flusher activity at all, make up the rest. "
            + counted
            + "(Measured while tuning, not by this run: with `buffer_size=64 MiB`, so that no "
            "block is moved during the loop, p99 was 1.7 × p50: the hand-overs, not the "
            "record path itself, make the tail.)"
        )
        add("")

    # Threads
    if th:
        add("## Throughput with 1, 4 and 8 threads")
        add("")
        add(
            f"{res.get('threads_records', 0):,} records per run, split between the threads; "
            "records per second (thousands) for all threads together; *emit*: until every "
            "thread returned from its last call; *drained*: until every record is in the "
            "file. Median of "
            f"{len(next(iter(res['threads'].values()))['1']['emit'])} rounds."
        )
        add("")
        rows = []
        for key, by_t in th.items():
            row = [_label(key)]
            for t in ("1", "4", "8"):
                row += [_f(by_t[t]["emit"] / 1000, 1), _f(by_t[t]["drained"] / 1000, 1)]
            rows.append(row)
        header = ["contender"] + [
            f"{t} thread{'s' if t != '1' else ''} {k}"
            for t in ("1", "4", "8")
            for k in ("emit", "drained")
        ]
        L += _table(header, rows)
        add("")

    # RSS
    rss = res.get("rss", {})
    if rss:
        add("## Peak RSS")
        add("")
        add(
            f"One child process per contender logs {rss['records']:,} records (the record "
            "pool cycled). After a 2,000-record warm-up the peak-RSS mark is reset (`5` to "
            "`/proc/self/clear_refs`) and the RSS read (base); the peak is `VmHWM` from "
            "`/proc/self/status`, read after the last record (*growth while logging*) and "
            "again after drain and close (*peak*, *growth incl. flush + close*). "
            "`resource.getrusage(RUSAGE_SELF).ru_maxrss` is shown too (*ru_maxrss delta*), "
            "but on Linux a child started by fork + exec inherits its parent's high-water "
            "mark (the benchmark process's), "
            "which hides any growth below it. The current RSS (`VmRSS`) is also sampled after "
            "every pass over the record pool: *RSS change, first 10 %* is from the base to "
            "10 % of the records, *second half* from 50 % to 100 %: a handler that keeps "
            "growing in the second half grows with the number of records. *Queue backlog*: "
            "records the QueueListener had not yet written when the last call returned."
        )
        add("")
        rows = []
        for c in C.CONTENDERS:
            r = rss["by"].get(c.key)
            if r is None:
                if c.key in res["skipped"]:
                    rows.append([c.label, f"*{res['skipped'][c.key]}*"] + [""] * 8)
                continue
            if "error" in r:
                rows.append([c.label, f"error: {r['error']}"] + [""] * 8)
                continue
            rows.append(
                [
                    c.label,
                    _f(r["base_kb"] / 1024, 1),
                    _f(r["peak_kb"] / 1024, 1),
                    _f((r["during_kb"] - r["base_kb"]) / 1024, 2),
                    _f((r["peak_kb"] - r["base_kb"]) / 1024, 2),
                    _f((r["ru_peak_kb"] - r["ru_base_kb"]) / 1024, 2),
                    _f(_trace_growth(r, 0.0, 0.1), 2),
                    _f(_trace_growth(r, 0.5, 1.0), 2),
                    "–" if r.get("queue_backlog") is None else f"{r['queue_backlog']:,}",
                    _f(r["emit_s"], 1),
                ]
            )
        L += _table(
            [
                "contender",
                "base MiB",
                "peak MiB",
                "growth while logging MiB",
                "growth incl. flush + close MiB",
                "ru_maxrss delta MiB",
                "RSS change, first 10 %",
                "RSS change, second half",
                "queue backlog",
                "logging s",
            ],
            rows,
        )
        add("")

    # Kill
    kill = res.get("kill", {})
    if kill:
        add("## Records lost on SIGKILL mid-stream")
        add("")
        add(
            "A child logs numbered records (`rec=N ...`) and writes each number to a pipe once "
            f"the call returned; the parent SIGKILLs it once "
            f"{' / '.join(f'{a:,}' for a in kill['after'])} numbers have "
            "arrived (once per target, a fresh child each time; totals shown), drains the pipe, "
            "then reads the output back: for mmaplog "
            "`mmaplog.recover(folder)` then `mmaplog.read_records(folder)`, for the others "
            "the text files. *lost*: acknowledged numbers missing from the output; "
            "*in flight*: records in the output beyond the last acknowledgement (at most one "
            "is allowed: its call had not returned)."
        )
        add("")
        rows = []
        for key, r in kill["by"].items():
            rows.append(
                [
                    _label(key),
                    f"{r['acked']:,}",
                    f"{r['found']:,}",
                    f"**{r['lost']:,}**" + (f" (error: {r['error']})" if "error" in r else ""),
                    str(r["duplicates"]),
                    str(r["in_flight"]),
                    "–" if r["recovered"] is None else f"{r['recovered']:,}",
                    "–" if r["recover_s"] is None else _f(r["recover_s"] * 1000, 1, " ms max"),
                ]
            )
        L += _table(
            [
                "contender",
                "acknowledged",
                "in the output",
                "lost",
                "duplicates",
                "in flight",
                "recovered from cache",
                "recovery",
            ],
            rows + _skip_rows(res, 8),
        )
        add("")

    # Decode
    dec = res.get("decode", {})
    if dec:
        add("## Decode speed and recovery")
        add("")
        add(
            "Records written through `logger.info` into MmapHandler (default xlog text), "
            "flushed and closed, then read back with `mmaplog.read_records(folder)` (median of "
            "3): *decode* reads them one by one, as `mmaplog decode` does; *decode into a list* "
            "keeps them all, so the cyclic GC walks the growing list (records are named "
            "tuples, which it never stops tracking). *write*: the `logger.info` calls plus the "
            "final `flush()`; MB/s counts the decoded text (UTF-8)."
        )
        add("")
        rows = []
        for key in ("mmap", "mmap_enc"):
            r = dec.get(key)
            if not r:
                continue
            rows.append(
                [
                    _label(key),
                    f"{r['records']:,}",
                    _f(r["write_rps"], 0),
                    _f(r["decode_rps"], 0),
                    _f(r["decode_mbs"], 1),
                    _f(r["decode_rps"] / r["write_rps"], 1, " ×"),
                    _f(r.get("decode_list_rps"), 0),
                    _f(r["log_bytes"] / r["records"], 1),
                ]
            )
        L += _table(
            [
                "",
                "records",
                "write records/s",
                "decode records/s",
                "decode MB/s of text",
                "decode / write",
                "decode into a list, records/s",
                "log bytes/record",
            ],
            rows,
        )
        add("")
        fills = dec.get("full_cache", [])
        if fills:
            add(
                "Recovery of a full cache: a child logs into MmapHandler while its log file "
                "cannot be written (a folder stands at its path), so the flusher keeps failing "
                "and both slots stay full; `block_timeout=0` drops what does not fit. The child "
                "is SIGKILLed, the obstacle removed, and `mmaplog.recover(folder)` timed; then "
                "the recovered log (blocks kept in their per-record stream form) is decoded."
            )
            add("")
            rows = []
            for f in fills:
                rows.append(
                    [
                        f"{f['buffer_size'] // 1024:,} KiB",
                        f"{f['recovered']:,}",
                        _f(f["recover_s"] * 1000, 1, " ms"),
                        _f(f["recovered"] / f["recover_s"] if f["recover_s"] else None, 0),
                        _f(f["decoded"] / f["decode_s"] if f["decode_s"] else None, 0),
                        _f(f["log_bytes"] / f["decoded"] if f["decoded"] else None, 1),
                    ]
                )
            L += _table(
                [
                    "buffer_size",
                    "records recovered",
                    "recovery time",
                    "recovered records/s",
                    "decode records/s (stream form)",
                    "log bytes/record (stream form)",
                ],
                rows,
            )
            add("")

    # Encryption
    add("## Encryption overhead")
    add("")
    rows = []
    a, b = tm.get("mmap"), tm.get("mmap_enc")
    if a and b:
        rounds = res["time"]["rounds"]
        ratio = _med([r["mmap_enc"]["emit"] / r["mmap"]["emit"] for r in rounds])
        rows.append(
            [
                "emit µs/record",
                _f(a["emit_us"], 2),
                _f(b["emit_us"], 2),
                f"{_f(ratio, 3, ' ×')} (+{_f(b['emit_us'] - a['emit_us'], 2)} µs)",
            ]
        )
        if "own_us" in a and "own_us" in b:
            rows.append(
                [
                    "own cost µs/record",
                    _f(a["own_us"], 2),
                    _f(b["own_us"], 2),
                    _f(b["own_us"] / a["own_us"], 2, " ×"),
                ]
            )
        rows.append(
            [
                "bytes/record on disk (time rounds)",
                _f(a["bytes_per_rec"], 2),
                _f(b["bytes_per_rec"], 2),
                _f(b["bytes_per_rec"] / a["bytes_per_rec"], 3, " ×"),
            ]
        )
    dp, de = dec.get("mmap"), dec.get("mmap_enc")
    if dp and de:
        rows.append(
            [
                f"log file size, {dp['records']:,} records",
                f"{dp['log_bytes']:,}",
                f"{de['log_bytes']:,}",
                _f(de["log_bytes"] / dp["log_bytes"], 3, " ×"),
            ]
        )
        rows.append(
            [
                "decode records/s",
                _f(dp["decode_rps"], 0),
                _f(de["decode_rps"], 0),
                _f(de["decode_rps"] / dp["decode_rps"], 2, " ×"),
            ]
        )
    L += _table(["", "zstd", "zstd + encryption", "ratio"], rows)
    add("")
    add("Target (brief): encrypted log files at most 5 % larger than plain ones.")
    add("")

    # Micro
    mic = res.get("micro")
    if mic:
        add("## mmap vs write() per record size")
        add("")
        add(
            "The experiment of a published comparison of mmap and write() (Go, 2 GB "
            "written sequentially, mmap 2.84 s vs write 22.86 s at 100 bytes, write faster "
            "from 2 KB up), in Python: per size, the same bytes written sequentially into a "
            "fresh file by `os.write(fd, data)` per record, or by slice assignment into a "
            "`MAP_SHARED` mapping of a `posix_fallocate`d file (page faults on first touch "
            "included, as in the article), or the same mapping prefaulted with "
            "`MAP_POPULATE` (as mmaplog's cache is). No fsync. Median of "
            f"{res.get('micro_rounds', '?')} rounds; ns per record."
        )
        add("")
        rows = []
        for r in mic:
            rows.append(
                [
                    f"{r['size']:,} B",
                    f"{r['count']:,}",
                    _f(r["write_ns"], 0),
                    _f(r["mmap_ns"], 0),
                    _f(r["mmap_populate_ns"], 0),
                    _f(r["write_over_mmap"], 2, " ×"),
                    _f(r["write_over_mmap_populate"], 2, " ×"),
                    _f(r["write_mbs"], 0),
                    _f(r["mmap_mbs"], 0),
                ]
            )
        L += _table(
            [
                "record size",
                "records",
                "write() ns",
                "mmap ns",
                "mmap+populate ns",
                "write / mmap",
                "write / mmap+populate",
                "write() MB/s",
                "mmap MB/s",
            ],
            rows,
        )
        add("")
        small = [r for r in mic if r["size"] <= 100]
        large = [r for r in mic if r["size"] >= 4096]
        small_ratio = min(r["write_over_mmap"] for r in small) if small else float("nan")
        large_ratio = max(r["write_over_mmap"] for r in large) if large else float("nan")
        if small_ratio >= 2:
            verdict = (
                f"**Reproduced**: at 1 and 100 bytes `write()` is at least {small_ratio:.1f}× "
                "slower than the mmap store, because each record pays a system call while the "
                "store is a memory copy."
            )
        elif small_ratio > 1.1:
            verdict = (
                f"**Partly reproduced**: mmap wins at small sizes, but only by "
                f"{small_ratio:.2f}× or more, not the article's 8-10×: in Python the "
                "interpreter's cost per call is comparable to the system call."
            )
        else:
            verdict = (
                f"**Not reproduced**: at small sizes mmap is not faster here "
                f"(write/mmap ≥ {small_ratio:.2f}×)."
            )
        add(verdict)
        if large_ratio == large_ratio:
            add(
                f"At 4 KiB and above `write()` is {large_ratio:.2f}× the mmap time at most "
                + (
                    "(write() catches up, as in the article)."
                    if large_ratio < 1.5
                    else "(mmap still ahead)."
                )
            )
        add("")

    # Profile
    prof = res.get("profile", {})
    if prof:
        add("## Profile of the MmapHandler emit path")
        add("")
        add(
            "cProfile around the `logger.info` loop (the caller's thread only: the flusher "
            "thread is not profiled), sorted by own time (tottime). cProfile inflates small "
            "functions; use it for where the time goes, not how much. Material for optimising."
        )
        add("")
        for key, pr in prof.items():
            add(
                f"### {_label(key)}: {pr['records']:,} records, "
                f"{pr['elapsed'] / pr['records'] * 1e6:.1f} µs/record under the profiler"
            )
            add("")
            groups = pr.get("groups")
            if groups:
                add(
                    "Own time by where the code lives: "
                    + "; ".join(
                        f"{name} {_f(v / pr['records'] * 1e6, 2)} µs/record"
                        for name, v in groups.items()
                    )
                    + "."
                )
                add("")
            rows = []
            for r in pr["rows"]:
                rows.append(
                    [
                        f"`{r['function']}`",
                        f"{r['ncalls']:,}",
                        _f(r["tottime"] * 1000, 1),
                        _f(r["per_record_us"], 2),
                        _f(r["share"] * 100, 1, " %"),
                        _f(r["cumtime"] * 1000, 1),
                    ]
                )
            L += _table(
                ["function", "calls", "tottime ms", "µs/record", "share", "cumtime ms"], rows
            )
            add("")
            inc = pr.get("inclusive")
            if inc:
                add(
                    "Inclusive time (cumtime) of mmaplog's functions and of the stdlib steps "
                    "around them, per record and as a share of the profiled loop:"
                )
                add("")
                rows = [
                    [
                        f"`{r['function']}`",
                        f"{r['ncalls']:,}",
                        _f(r["per_record_us"], 2),
                        _f(r["share"] * 100, 1, " %"),
                    ]
                    for r in inc
                ]
                L += _table(["function", "calls", "µs/record (inclusive)", "share"], rows)
                add("")

    # Timings
    add("## Run")
    add("")
    rows = [[k.replace("phase_", ""), _f(v, 1, " s")] for k, v in res["timings"].items()]
    L += _table(["phase", "time"], rows)
    add("")
    return "\n".join(L)


def _chart(
    res: dict[str, Any],
    tm: dict[str, dict[str, float]],
    th: dict[str, dict[str, dict[str, float]]],
    png: str,
) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    # The two bar charts take the whole width: their labels are long.
    fig = plt.figure(figsize=(15, 19), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[1.2, 1.2, 1])
    axes = [
        [fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, :])],
        [fig.add_subplot(grid[2, 0]), fig.add_subplot(grid[2, 1])],
    ]
    keys = list(tm)
    labels = [_label(k) for k in keys]
    colors = [
        ("navajowhite" if k.endswith(C.PURE_SUFFIX) else "tab:orange")
        if C.BY_KEY[k].mmaplog
        else "tab:blue"
        for k in keys
    ]

    ax = axes[0][0]
    emit = [tm[k]["emit_us"] for k in keys]
    errs = [
        [tm[k]["emit_us"] - tm[k]["emit_min"] for k in keys],
        [tm[k]["emit_max"] - tm[k]["emit_us"] for k in keys],
    ]
    ax.barh(labels, emit, xerr=errs, color=colors)
    if "null" in tm:
        ax.axvline(tm["null"]["emit_us"], color="grey", ls="--", lw=1, label="NullHandler floor")
        ax.legend(loc="upper right")
    ax.invert_yaxis()
    ax.set_xlabel("µs per logger.info call (median, min–max over rounds)")
    ax.set_title("Time per record (orange: mmaplog's C path; light: its pure-Python path)")

    ax = axes[0][1]
    bk = [k for k in keys if k != "null"]
    ax.barh(
        [_label(k) for k in bk],
        [tm[k]["bytes_per_rec"] for k in bk],
        color=[colors[keys.index(k)] for k in bk],
    )
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("bytes on disk per record (log scale)")
    ax.set_title("Bytes written per record")

    ax = axes[1][0]
    mic = res.get("micro") or []
    if mic:
        sizes = [r["size"] for r in mic]
        for field, name in (
            ("write_ns", "os.write()"),
            ("mmap_ns", "mmap slice store"),
            ("mmap_populate_ns", "mmap, MAP_POPULATE"),
        ):
            ax.plot(sizes, [r[field] for r in mic], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("record size, bytes")
        ax.set_ylabel("ns per record")
        ax.legend()
    ax.set_title("mmap vs write()")

    ax = axes[1][1]
    for key, by_t in th.items():
        if key == "null":
            continue
        ts = [1, 4, 8]
        ax.plot(
            ts,
            [by_t[str(t)]["drained"] / 1000 for t in ts],
            marker="o",
            label=_label(key),
            ls=(":" if key.endswith(C.PURE_SUFFIX) else "-") if C.BY_KEY[key].mmaplog else "--",
        )
    ax.set_xticks([1, 4, 8])
    ax.set_xlabel("logging threads")
    ax.set_ylabel("thousand records/s, until in the file")
    ax.set_title("Throughput with threads")
    # Below the plot, not over it: the lines of many handlers fill the axes.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)

    fig.suptitle(
        f"mmaplog benchmarks ({res['machine']['cpu']}, {res['machine']['cores']} cores, "
        f"Python {res['machine']['python'].split()[0]})"
    )
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return True
