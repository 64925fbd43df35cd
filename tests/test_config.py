"""Standard logging configuration: dictConfig and fileConfig build MmapHandlers with any option."""

from __future__ import annotations

import logging
import logging.config
import os

import pytest

import mmaplog


def test_dict_config_with_every_option(tmp_path):
    """dictConfig builds an MmapHandler from a dict naming every option, and it logs."""
    log_dir = str(tmp_path / "logs")
    private, public = mmaplog.generate_keypair()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
            "handlers": {
                "mmap": {
                    "class": "mmaplog.MmapHandler",
                    "log_dir": log_dir,
                    "prefix": "svc",
                    "cache_dir": str(tmp_path / "cache"),
                    "buffer_size": 32 * 1024,
                    "compression": "zlib",
                    "compress_level": 6,
                    "mode": "async",
                    "flush_interval": 2.5,
                    "level": "INFO",
                    "max_record_size": 4096,
                    "block_timeout": 0.5,
                    "public_key": public,
                    "file_mode": 0o640,
                    "durable": False,
                    "max_file_size": 1 << 20,
                    "max_age_days": 30,
                    "on_full": "drop",
                    "formatter": "plain",
                }
            },
            "loggers": {"cfg": {"handlers": ["mmap"], "level": "DEBUG", "propagate": False}},
        }
    )
    log = logging.getLogger("cfg")
    (h,) = log.handlers
    assert isinstance(h, mmaplog.MmapHandler)
    assert (h.prefix, h.compression, h.flush_interval, h.max_age_days) == ("svc", "zlib", 2.5, 30)
    assert h.level == logging.INFO and h._cache is not None
    assert os.path.dirname(h._cache.path) == str(tmp_path / "cache")
    log.debug("filtered out")
    log.warning("configured")
    h.close()
    assert [r.text for r in mmaplog.read_records(log_dir, key=private)] == ["WARNING configured"]
    (name,) = os.listdir(log_dir)
    assert oct(os.stat(os.path.join(log_dir, name)).st_mode & 0o777) == oct(0o640)
    logging.getLogger("cfg").handlers.clear()


def test_file_config(tmp_path):
    """fileConfig builds an MmapHandler from an ini file with args and kwargs."""
    log_dir = str(tmp_path / "logs")
    ini = tmp_path / "logging.ini"
    ini.write_text(
        f"""
[loggers]
keys=root,ini

[handlers]
keys=mmap

[formatters]
keys=plain

[logger_root]
level=WARNING
handlers=

[logger_ini]
level=DEBUG
handlers=mmap
qualname=ini
propagate=0

[handler_mmap]
class=mmaplog.MmapHandler
level=DEBUG
formatter=plain
args=({log_dir!r},)
kwargs={{"prefix": "ini", "buffer_size": 65536, "compression": None, "mode": "sync"}}

[formatter_plain]
format=%(name)s: %(message)s
"""
    )
    logging.config.fileConfig(str(ini), disable_existing_loggers=False)
    log = logging.getLogger("ini")
    (h,) = log.handlers
    assert isinstance(h, mmaplog.MmapHandler) and h.mode == "sync" and h.compression is None
    log.info("from an ini file")
    h.close()
    assert [r.text for r in mmaplog.read_records(log_dir)] == ["ini: from an ini file"]
    log.handlers.clear()


def test_bad_option_in_dict_config_is_a_clear_error(tmp_path):
    """A bad option in dictConfig fails configuration with mmaplog's message in the chain."""
    import pytest

    bad = {"class": "mmaplog.MmapHandler", "log_dir": str(tmp_path), "compression": "lz4"}
    with pytest.raises(ValueError, match="Unable to configure handler 'm'") as info:
        logging.config.dictConfig({"version": 1, "handlers": {"m": bad}})
    cause = info.value.__cause__
    assert isinstance(cause, mmaplog.ConfigError) and "compression" in str(cause)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("durable", True),
        ("public_key", b"x" * 32),
        ("format", "xlog"),
        ("xlog_public_key", "00" * 64),
        ("compress_level", 1),
        ("buffer_size", 1 << 20),
    ],
)
def test_options_cannot_be_changed_on_a_running_handler(tmp_path, name, value):
    """Setting an option after construction raises instead of half-applying (or, for a key,
    silently writing plain text)."""
    h = mmaplog.MmapHandler(str(tmp_path))
    try:
        with pytest.raises(AttributeError, match="fixed when the handler is made"):
            setattr(h, name, value)
    finally:
        h.close()


@pytest.mark.parametrize(
    "bad",
    [
        {"flush_interval": float("inf")},
        {"flush_interval": 1e12},
        {"block_timeout": float("nan")},
        {"block_timeout": float("inf")},
        {"block_timeout": 1e9},
        {"file_mode": 0o7777},
        {"max_record_size": 10},
    ],
)
def test_options_that_could_hang_or_misbehave_are_refused(tmp_path, bad):
    """Unbounded waits, setuid file modes and record limits smaller than the cut marker
    are configuration errors."""
    with pytest.raises(mmaplog.ConfigError):
        mmaplog.MmapHandler(str(tmp_path), **bad)
