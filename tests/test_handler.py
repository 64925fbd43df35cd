"""MmapHandler through the stdlib logging API, end to end with real files and a real mmap."""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
import subprocess
import sys
import threading

import pytest

import mmaplog
from mmaplog import _format as fmt

from .conftest import make_logger


def texts(path: str, **kw: object) -> list[str]:
    return [r.text for r in mmaplog.read_records(path, **kw)]  # type: ignore[arg-type]


def test_records_across_many_blocks_decode_in_order(make_handler, log_dir):
    """Thousands of records spread over many block moves all come back, in order."""
    h = make_handler(buffer_size=16 * 1024)
    h.setFormatter(logging.Formatter("%(message)s"))
    log = make_logger("many", h)
    for i in range(20000):
        log.info("record %d %s", i, "x" * (i % 97))
    h.close()
    got = texts(log_dir)
    assert got == [f"record {i} {'x' * (i % 97)}" for i in range(20000)]
    (name,) = [n for n in os.listdir(log_dir) if n.endswith(".mmlog")]
    with open(os.path.join(log_dir, name), "rb") as f:
        scanned = [b for b in fmt.scan_blocks(f.read()) if isinstance(b, fmt.ScannedBlock)]
    assert len(scanned) > 10


def test_flush_puts_every_emitted_record_in_the_log_file(make_handler, log_dir):
    """When flush() returns, every record emitted before it is in the log file."""
    h = make_handler()
    h.setFormatter(logging.Formatter("%(message)s"))
    log = make_logger("flush", h)
    for i in range(10):
        log.warning("m%d", i)
    h.flush()
    assert texts(log_dir) == [f"m{i}" for i in range(10)]
    log.warning("after")
    h.flush()
    assert texts(log_dir)[-1] == "after"


def test_default_formatter_renders_xlog_lines(make_handler, log_dir):
    """The default line is xlog's: level letter, date with zone, pid/tid, logger, place, message."""
    h = make_handler()
    log = make_logger("shop", h)
    log.warning("order %s failed", 42)
    h.flush()
    (line,) = texts(log_dir)
    assert line.startswith("[W][")
    stamp = line[4:].split("]", 1)[0]
    dt.datetime.strptime(stamp, "%Y-%m-%d %z %H:%M:%S.%f")
    assert f"[{os.getpid()}, {threading.get_ident()}][shop][test_handler.py:" in line
    assert line.endswith(", test_default_formatter_renders_xlog_lines][order 42 failed")


def _xlog_line(r: logging.LogRecord) -> str:
    """The xlog line of ``r``, rendered field by field with nothing reused."""
    stamp = dt.datetime.fromtimestamp(int(r.created)).astimezone().strftime("%Y-%m-%d %z %H:%M:%S")
    return (
        f"[{mmaplog.handler.level_letter(r.levelno)}][{stamp}.{int(r.msecs):03d}]"
        f"[{r.process}, {r.thread}][{r.name}]"
        f"[{r.filename}:{r.lineno}, {r.funcName}][{r.getMessage()}"
    )


def test_xlog_formatter_reuse_never_changes_a_line():
    """Reused date and call-site parts give the same line as rendering every field anew."""
    f = mmaplog.XlogFormatter()
    f._MAX_PLACES = 8  # type: ignore[misc]  # small, so the cache is cleared mid-run
    base = 1_764_000_000.0
    for i in range(200):
        r = logging.makeLogRecord(
            {
                "name": f"svc.{i % 3}",
                "levelno": (5, 10, 20, 30, 40, 50, 60)[i % 7],
                "pathname": f"/srv/app/mod{i % 5}.py",
                "filename": f"mod{i % 5}.py",
                "lineno": i % 11,
                "funcName": f"f{i % 4}",
                "msg": "event %d",
                "args": (i,),
                "created": base + i * 0.37,
                "msecs": (i * 370) % 1000,
                "thread": 1000 + i % 6,
                "process": 4242 + i % 2,
            }
        )
        assert f.format(r) == _xlog_line(r)
    assert len(f._places) <= 8


@pytest.mark.parametrize("msecs", [-5, 999.9, 1000, 12345])
def test_xlog_formatter_renders_any_msecs(msecs):
    """A record whose msecs was set by hand outside 0..999 still renders, as int(msecs)."""
    r = logging.makeLogRecord(
        {"msg": "m", "levelno": 20, "msecs": msecs, "created": 1_764_000_000.5}
    )
    assert mmaplog.XlogFormatter().format(r) == _xlog_line(r)


def test_exception_text_is_kept(make_handler, log_dir):
    """logger.exception stores the traceback with the message."""
    h = make_handler()
    log = make_logger("exc", h)
    try:
        raise ValueError("bad thing")
    except ValueError:
        log.exception("it failed")
    h.flush()
    (line,) = texts(log_dir)
    assert "it failed\nTraceback (most recent call last):" in line
    assert line.endswith("ValueError: bad thing")


def test_levels_and_times_are_stored_in_binary(make_handler, log_dir):
    """Each record carries its level number and its creation time."""
    h = make_handler()
    log = make_logger("lv", h)
    log.setLevel(1)
    log.debug("d")
    log.error("e")
    log.log(5, "custom")
    h.flush()
    recs = list(mmaplog.read_records(log_dir))
    assert [r.level for r in recs] == [logging.DEBUG, logging.ERROR, 5]
    assert [r.text[:4] for r in recs] == ["[D][", "[E][", "[V]["]
    for r in recs:
        assert abs(r.time - dt.datetime.now().timestamp()) < 60


def test_records_go_to_the_file_of_their_own_day(make_handler, log_dir):
    """A record is filed under the local date of its own creation time, not today's."""
    h = make_handler()
    h.setFormatter(logging.Formatter("%(message)s"))
    old = dt.datetime(2024, 2, 29, 23, 59, 59, 500000).timestamp()
    for when, msg in ((old, "leap"), (old + 1.0, "march"), (None, "now")):
        rec = logging.LogRecord("d", logging.INFO, __file__, 1, msg, None, None)
        if when is not None:
            rec.created = when
        h.handle(rec)
    h.flush()
    today = dt.datetime.now().strftime("%Y%m%d")
    assert texts(os.path.join(log_dir, "app_20240229.mmlog")) == ["leap"]
    assert texts(os.path.join(log_dir, "app_20240301.mmlog")) == ["march"]
    assert texts(os.path.join(log_dir, f"app_{today}.mmlog")) == ["now"]


def test_record_larger_than_the_cache_is_stored_whole(make_handler, log_dir):
    """A record bigger than a cache slot is written whole, in order with the others."""
    h = make_handler(buffer_size=16 * 1024)
    h.setFormatter(logging.Formatter("%(message)s"))
    log = make_logger("big", h)
    big = "".join(chr(0x41 + i % 26) for i in range(300_000))
    log.info("before")
    log.info(big)
    log.info("after")
    h.close()
    assert texts(log_dir) == ["before", big, "after"]


def test_max_record_size_truncates_with_a_marker(make_handler, log_dir):
    """Records over max_record_size are cut, and the cut says how long they were."""
    h = make_handler(max_record_size=100)
    h.setFormatter(logging.Formatter("%(message)s"))
    log = make_logger("trunc", h)
    log.info("é" * 200)
    h.flush()
    (line,) = texts(log_dir)
    assert len(line.encode()) <= 100
    assert line.endswith(" [truncated: 400 bytes]")
    assert line.startswith("éé")


def test_a_block_never_holds_more_text_than_its_reader_takes(make_handler, log_dir):
    """Records that compress a thousandfold are moved before a block's text passes what the
    reader decompresses (MAX_BLOCK_RAW), not when their slot is full: none is lost."""
    h = make_handler(buffer_size=1024 * 1024, flush_interval=3600)
    h.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("big", logging.INFO, __file__, 1, "z" * 10_000, None, None)
    n = fmt.MAX_BLOCK_RAW // 10_000 + 100  # one block's worth of text and more
    for _ in range(n):
        h.handle(record)
    h.close()
    blocks = []
    for name in os.listdir(log_dir):
        if name.endswith(".mmlog"):
            with open(os.path.join(log_dir, name), "rb") as f:
                blocks += [b for b in fmt.scan_blocks(f.read()) if isinstance(b, fmt.ScannedBlock)]
    assert len(blocks) >= 2 and all(b.header.raw_len <= fmt.MAX_BLOCK_RAW for b in blocks)
    assert len(texts(log_dir)) == n


@pytest.mark.parametrize("compression", ["zstd", "zlib", None])
def test_every_compression_round_trips(make_handler, log_dir, compression):
    """zstd, zlib and uncompressed logs all decode to the records written."""
    h = make_handler(compression=compression, buffer_size=16 * 1024)
    h.setFormatter(logging.Formatter("%(message)s"))
    log = make_logger(f"c{compression}", h)
    for i in range(3000):
        log.info("compressed %d", i)
    h.close()
    assert texts(log_dir) == [f"compressed {i}" for i in range(3000)]


def test_log_files_are_smaller_than_the_text(make_handler, log_dir):
    """Whole-block re-compression makes the log file much smaller than the plain text."""
    h = make_handler()
    log = make_logger("size", h)
    for i in range(5000):
        log.info("user %d bought item %d for %d.%02d EUR", i % 300, i * 7 % 1000, i % 90, i % 100)
    h.close()
    plain = sum(len(t) + 1 for t in texts(log_dir))
    on_disk = sum(
        os.path.getsize(os.path.join(log_dir, n))
        for n in os.listdir(log_dir)
        if n.endswith(".mmlog")
    )
    assert on_disk * 5 < plain


def test_sync_mode_writes_before_emit_returns(make_handler, log_dir):
    """In sync mode each record is in the log file as soon as emit returns, with no cache."""
    h = make_handler(mode="sync")
    h.setFormatter(logging.Formatter("%(message)s"))
    log = make_logger("sync", h)
    log.info("one")
    assert texts(log_dir) == ["one"]
    log.info("two")
    assert texts(log_dir) == ["one", "two"]
    assert not any(n.endswith(".mmap") for n in os.listdir(log_dir))


def test_close_is_idempotent_and_later_records_still_land(make_handler, log_dir):
    """close() twice is harmless, and a record emitted after close is still written."""
    h = make_handler()
    h.setFormatter(logging.Formatter("%(message)s"))
    log = make_logger("closing", h)
    log.info("before")
    h.close()
    h.close()
    log.info("late")
    assert texts(log_dir) == ["before", "late"]


def test_logging_shutdown_leaves_nothing_in_the_cache(tmp_path):
    """At interpreter exit logging.shutdown() moves every record into the log file."""
    code = (
        "import logging, mmaplog, sys\n"
        "h = mmaplog.MmapHandler(sys.argv[1], flush_interval=3600)\n"
        "logging.getLogger().addHandler(h)\n"
        "for i in range(500): logging.getLogger().warning('exit %d', i)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    got = texts(str(tmp_path))
    assert len(got) == 500 and got[-1].endswith("exit 499")
    assert mmaplog.recover(str(tmp_path)) == 0


def test_handler_errors_go_to_handle_error(make_handler):
    """A failure while emitting is passed to handleError and never raised to the caller."""
    seen: list[logging.LogRecord] = []

    class Recording(mmaplog.MmapHandler):
        def handleError(self, record: logging.LogRecord) -> None:
            seen.append(record)

    class Broken(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            raise RuntimeError("formatter broke")

    h = Recording(make_handler().log_dir, prefix="err")
    h.setFormatter(Broken())
    log = make_logger("err", h)
    log.info("x")
    h.close()
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buffer_size": 10}, "buffer_size"),
        ({"compression": "lz4"}, "compression"),
        ({"compress_level": 99}, "compress_level"),
        ({"mode": "fast"}, "mode"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"prefix": "../x"}, "prefix"),
        ({"public_key": "not a key"}, "key"),
    ],
)
def test_bad_options_raise_config_error(log_dir, kwargs, message):
    """Each invalid option is refused with a ConfigError naming it."""
    with pytest.raises(mmaplog.ConfigError, match=message):
        mmaplog.MmapHandler(log_dir, **kwargs)


def test_files_are_private(make_handler, log_dir):
    """The cache and log files are created 0600 and the log folder 0700, whatever the umask."""
    old = os.umask(0)
    try:
        h = make_handler()
        make_logger("perm", h).info("x")
        h.flush()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(log_dir).st_mode) == 0o700
    for name in os.listdir(log_dir):
        assert stat.S_IMODE(os.stat(os.path.join(log_dir, name)).st_mode) == 0o600, name


def test_threads_keep_their_own_order(make_handler, log_dir):
    """Eight threads logging at once: every record once, each thread's in order."""
    h = make_handler(buffer_size=16 * 1024)
    h.setFormatter(logging.Formatter("%(message)s"))
    log = make_logger("threads", h)

    def work(t: int) -> None:
        for i in range(2000):
            log.info("t%d %d", t, i)
            if i % 500 == 0:
                h.flush()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h.close()
    got = texts(log_dir)
    assert len(got) == 16000
    for t in range(8):
        mine = [int(x.split()[1]) for x in got if x.startswith(f"t{t} ")]
        assert mine == list(range(2000))


def test_a_second_handler_on_the_same_prefix_uses_another_cache(make_handler, log_dir):
    """Two live handlers with one prefix never share a cache file."""
    a = make_handler()
    b = make_handler()
    assert a._cache.path != b._cache.path
    assert b._cache.path.endswith("app.1.mmap")


def test_a_block_past_its_threshold_is_sealed_by_the_next_record_which_opens_the_next(bare_cache):
    """The record after the threshold seals the block, opens the next and wakes the flusher once."""
    from mmaplog import _cache

    cache = bare_cache
    wakes: list[None] = []
    cache._wake = lambda: wakes.append(None)
    text = b"r" * 100
    n = 0
    while cache._w.pos < cache._w.seal_at or n == 0:
        assert cache.append(fmt.record_head(n, 20, 0, text), text, n, 0.0) == _cache.APPENDED
        n += 1
    assert cache.take_sealed() is None and not wakes  # the crossing record seals nothing
    assert cache.append(fmt.record_head(n, 20, 0, text), text, n, 0.0) == _cache.APPENDED
    block = cache.take_sealed()
    assert block is not None and block.count == n
    assert wakes == [None]
    assert cache._w.count == 1 and cache._template.first_time_us == n
    cache.release(block)


def test_a_block_past_its_threshold_keeps_filling_while_no_slot_is_free(bare_cache):
    """With the other slot still being moved, records go on into the open block until it is full."""
    from mmaplog import _cache

    cache = bare_cache
    text = b"r" * 100
    assert cache.append(fmt.record_head(0, 20, 0, text), text, 0, 0.0) == _cache.APPENDED
    cache.seal()
    moving = cache.take_sealed()  # the flusher holds the other slot
    assert moving is not None
    n = 1
    while n == 1 or cache._w.pos + 200 <= cache._w.limit:
        assert cache.append(fmt.record_head(n, 20, 0, text), text, n, 0.0) == _cache.APPENDED
        n += 1
    assert cache._w.pos > cache._w.seal_at and cache.take_sealed() is None
    cache.release(moving)
    assert cache.append(fmt.record_head(n, 20, 0, text), text, n, 0.0) == _cache.APPENDED
    block = cache.take_sealed()
    assert block is not None and block.count == n - 1
    cache.release(block)


def test_a_writer_waiting_for_a_slot_wakes_when_the_flusher_frees_one(bare_cache):
    """A record that found both slots waiting for the disk goes in as soon as one is freed."""
    import time

    from mmaplog import _cache

    cache = bare_cache
    text = b"r" * 100
    for slot in range(_cache.NSLOTS):  # one record per block, each block sealed
        assert cache.append(fmt.record_head(slot, 20, 0, text), text, slot, 0.0) == (
            _cache.APPENDED
        )
        cache.seal()
    result: list[int] = []
    started = time.monotonic()
    writer = threading.Thread(
        target=lambda: result.append(cache.append(fmt.record_head(9, 20, 0, text), text, 9, 30.0))
    )
    writer.start()
    time.sleep(0.2)  # the writer is waiting on the condition by now
    assert not result
    block = cache.take_sealed()
    assert block is not None
    cache.release(block)
    writer.join(10)
    assert result == [_cache.APPENDED]
    assert time.monotonic() - started < 10  # woken by release, not by the 30 s timeout


def test_the_first_block_moved_allocates_no_compression_tables(make_handler, log_dir):
    """A handler's start sizes the whole-block zstd context, so moving blocks takes no memory."""
    from mmaplog import _codec

    h = make_handler()
    ctx = _codec._whole_contexts[None]
    before = ctx.memory_size()
    log = make_logger("mem", h)
    for i in range(3000):
        log.info("record %d of a block that is moved %s", i, "x" * (i % 90))
    h.flush()
    assert texts(log_dir)
    assert ctx.memory_size() == before


def test_every_record_carries_its_logger_name_and_thread_whatever_the_formatter(
    make_handler, log_dir
):
    """Records carry the logger's name and the logging thread, with any formatter, on the
    fast path, the path of records too large for a slot, and in sync mode."""
    for mode in ("async", "sync"):
        h = make_handler(mode=mode, prefix=mode, max_record_size=200)
        h.setFormatter(logging.Formatter("%(message)s"))
        log = make_logger(f"shop.orders.{mode}", h)
        log.warning("on the fast path")
        log.warning("cut " + "x" * 500)
        seen: list[int] = []

        def other(h: mmaplog.MmapHandler, seen: list[int]) -> None:
            seen.append(threading.get_ident())
            make_logger("ünïcödé", h).error("from another thread")

        t = threading.Thread(target=other, args=(h, seen))
        t.start()
        t.join()
        h.close()
        got = [
            (r.text[:15], r.logger, r.thread)
            for r in mmaplog.read_records(os.path.join(log_dir, f"{mode}_{_today()}.mmlog"))
        ]
        me = threading.get_ident()
        assert got == [
            ("on the fast pat", f"shop.orders.{mode}", me),
            ("cut xxxxxxxxxxx", f"shop.orders.{mode}", me),
            ("from another th", "ünïcödé", seen[0]),
        ]


def _today() -> str:
    return dt.datetime.now().strftime("%Y%m%d")


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("é" * 600, "é" * 512),  # 1200 bytes of UTF-8: cut at 1024, on a character boundary
        ("a" + "é" * 600, "a" + "é" * 511),  # the cut falls inside a character: before it
        ("bad \udcff name", "bad \\udcff name"),  # a lone surrogate, backslash-escaped
        (None, None),  # no name
        (42, "42"),  # not a str: its str()
        ("", None),  # an empty name is no name
    ],
)
def test_logger_names_are_stored_within_the_limit(make_handler, log_dir, name, stored):
    """A logger name is stored as UTF-8 of at most 1024 bytes; no name reads back as None."""
    h = make_handler()
    h.setFormatter(logging.Formatter("%(message)s"))
    record = logging.makeLogRecord({"msg": "m", "name": name, "levelno": 20})
    h.handle(record)
    h.close()
    (r,) = mmaplog.read_records(log_dir)
    assert r.logger == stored
    assert len((r.logger or "").encode()) <= fmt.MAX_LOGGER_NAME


@pytest.mark.parametrize("thread", [None, "not a number", -1, 2**64])
def test_a_thread_id_that_is_not_a_u64_is_stored_as_unknown(make_handler, log_dir, thread):
    """A record whose thread is None (logThreads off) or not a u64 (set by hand) is stored,
    with no thread."""
    h = make_handler()
    h.setFormatter(logging.Formatter("%(message)s"))
    h.handle(logging.makeLogRecord({"msg": "m", "name": "n", "levelno": 20, "thread": thread}))
    h.close()
    (r,) = mmaplog.read_records(log_dir)
    assert (r.text, r.logger, r.thread) == ("m", "n", None)


def test_the_logger_names_kept_encoded_are_bounded(make_handler):
    """The handler keeps at most _MAX_NAMES encoded logger names, however many loggers log."""
    from mmaplog import handler as handler_module

    h = make_handler()
    h.setFormatter(logging.Formatter("%(message)s"))
    for i in range(handler_module._MAX_NAMES * 2 + 5):
        h.handle(logging.makeLogRecord({"msg": "m", "name": f"logger.{i}", "levelno": 20}))
    assert len(h._names) <= handler_module._MAX_NAMES
    h.close()


@pytest.mark.parametrize("compression", ["zstd", "zlib", None])
def test_cache_records_are_uncompressed_and_moved_blocks_compressed_whole(
    tmp_path: os.PathLike[str], compression: str | None
) -> None:
    """The cache holds each record uncompressed (it reads back after a crash with no
    compressor to flush), and the block moved into the log is compressed whole with
    the handler's compression."""
    handler = mmaplog.MmapHandler(tmp_path, "app", compression=compression)
    logger = make_logger("test.cache.stream", handler)
    logger.info("first record %d", 1)
    with open(os.path.join(tmp_path, "app.mmap"), "rb") as f:
        image = f.read()
    info = fmt.parse_cache_header(image)
    slots = [fmt.read_slot(image, info, i) for i in range(info.nslots)]
    held = [s for s in slots if s is not None and s.count]
    assert len(held) == 1
    assert held[0].template.compression == fmt.COMP_NONE and held[0].template.stream
    assert b"first record 1" in held[0].payload
    handler.flush()
    handler.close()
    codec = {"zstd": fmt.COMP_ZSTD, "zlib": fmt.COMP_ZLIB, None: fmt.COMP_NONE}[compression]
    (log,) = [p for p in os.listdir(tmp_path) if p.endswith(".mmlog")]
    with open(os.path.join(tmp_path, log), "rb") as f:
        data = f.read()
    blocks = [b for b in fmt.scan_blocks(data) if isinstance(b, fmt.ScannedBlock)]
    assert blocks and all(b.header.compression == codec for b in blocks)
    assert all(not b.header.stream for b in blocks)
    (record,) = mmaplog.read_records(os.path.join(tmp_path, log))
    assert record.text.endswith("first record 1")


def test_a_keyboard_interrupt_in_a_move_gives_the_block_back(tmp_path, monkeypatch):
    """A KeyboardInterrupt in the middle of moving a block (a signal handler's, during
    flush() on the main thread) ends the flush only: the block is moved later, and
    records logged afterwards are written."""
    from mmaplog import _flusher

    handler = mmaplog.MmapHandler(tmp_path, "app", flush_interval=3600)
    logger = make_logger("test.ki.move", handler)
    logger.info("before")
    real = _flusher.Flusher._move
    calls = {"n": 0}

    def interrupted(self, block):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(self, block)

    monkeypatch.setattr(_flusher.Flusher, "_move", interrupted)
    with pytest.raises(KeyboardInterrupt):
        handler.flush()
    assert not handler._file_lock._is_owned()
    for i in range(3):
        logger.info("after %d", i)
    handler.close()
    texts = [r.text.rsplit("][", 1)[-1] for r in mmaplog.read_records(str(tmp_path))]
    assert texts == ["before", "after 0", "after 1", "after 2"]


def test_a_keyboard_interrupt_while_queued_records_are_written_stops_nothing(tmp_path):
    """A KeyboardInterrupt while a thread writes the records it queued (raised by one
    of them) leaves the thread neither marked as writing them nor queuing: the records
    after it are written."""
    handler = mmaplog.MmapHandler(tmp_path, "app")
    logger = make_logger("test.ki.replay", handler)

    class Raises:
        def __str__(self):
            raise KeyboardInterrupt

    class Deep:
        def __str__(self):
            logger.info("queued %s", Raises())  # two levels deep: queued, then raises
            return "d"

    class Outer:
        def __str__(self):
            logger.info("inner %s", Deep())
            return "o"

    with pytest.raises(KeyboardInterrupt):
        logger.info("outer %s", Outer())
    assert not handler._replaying and not handler._deferred
    logger.info("after")
    handler.close()
    texts = [r.text.rsplit("][", 1)[-1] for r in mmaplog.read_records(str(tmp_path))]
    assert texts[-1] == "after"
