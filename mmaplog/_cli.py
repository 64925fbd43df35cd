"""The ``mmaplog`` command line: decode, recover, keygen.

The only module that touches ``argv`` and standard output. Errors are one line
on stderr with a documented exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import sys
from collections.abc import Iterator
from typing import IO

from . import _format as fmt
from ._reader import Marker, Reader, Record, expand_paths, read_file
from .exceptions import ConfigError, MmapLogError, NeedKeyError

EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_USAGE = 2

DECODE_EPILOG = """\
exit status:
  0  every block decoded
  1  damage was found (the damaged byte ranges are listed on stderr and every
     intact block is still printed) or the key does not match
  2  bad usage, a file that cannot be read or is not a log, or an encrypted
     log without --key
"""


def _err(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)


def _read_key(value: str | None) -> str | bytes | None:
    if value is None:
        return None
    if os.path.exists(value):
        with open(value, "rb") as f:
            return f.read()
    return value


def _format_text(item: Record | Marker) -> str:
    if isinstance(item, Marker):
        return item.text
    if item.kind == fmt.KIND_NOTE:
        return f"-- {item.text} --"
    return item.text


def _format_json(item: Record | Marker) -> str:
    if isinstance(item, Marker):
        return json.dumps({"marker": item.text})
    if item.kind == fmt.KIND_JSON:
        try:
            obj = json.loads(item.text)
            if isinstance(obj, dict):
                return json.dumps(obj, ensure_ascii=False)
        except ValueError:
            pass
    stamp = _dt.datetime.fromtimestamp(item.time).astimezone().isoformat(timespec="milliseconds")
    return json.dumps(
        {"time": stamp, "level": item.levelname, "pid": item.pid, "message": item.text},
        ensure_ascii=False,
    )


def _inputs(paths: list[str]) -> Iterator[tuple[str, bytes | object]]:
    for path in expand_paths(paths):
        if path == "-":
            yield "<stdin>", sys.stdin.buffer.read()
            continue
        yield path, read_file(path)


def cmd_decode(args: argparse.Namespace) -> int:
    prog = "mmaplog decode"
    try:
        key = _read_key(args.key)
        reader = Reader(
            key,
            lambda src, d: _err(prog, f"{src}: bytes {d.start}-{d.end} skipped: {d.reason}"),
            markers=True,
        )
    except ConfigError as exc:
        _err(prog, f"--key: {exc}")
        return EXIT_USAGE
    except OSError as exc:
        _err(prog, f"--key: {exc.strerror or exc}")
        return EXIT_USAGE
    render = _format_json if args.format == "json" else _format_text
    out: IO[str]
    with contextlib.ExitStack() as stack:
        if args.output and args.output != "-":
            try:
                out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
            except OSError as exc:
                _err(prog, f"{args.output}: cannot write: {exc.strerror}")
                return EXIT_USAGE
        else:
            out = sys.stdout
        for path in args.files:
            if path != "-" and not os.path.exists(path):
                _err(prog, f"{path}: no such file or folder")
                return EXIT_USAGE
        try:
            for source, data in _inputs(args.files):
                if not _is_log(data):  # type: ignore[arg-type]
                    _err(prog, f"{source}: not an mmaplog file")
                    return EXIT_USAGE
                try:
                    for item in reader.iter_data(data, source):  # type: ignore[arg-type]
                        out.write(render(item))
                        out.write("\n")
                finally:
                    close = getattr(data, "close", None)
                    if close is not None:
                        close()
        except NeedKeyError as exc:
            _err(prog, str(exc))
            return EXIT_USAGE
        except OSError as exc:
            _err(prog, f"{exc.filename or ''}: cannot read: {exc.strerror or exc}")
            return EXIT_USAGE
        except MmapLogError as exc:
            _err(prog, str(exc))
            return EXIT_USAGE
        except BrokenPipeError:
            return EXIT_OK
    if reader.key_mismatch:
        _err(prog, "the key does not match (no record of those blocks authenticates with it)")
    return EXIT_DAMAGED if reader.damaged else EXIT_OK


def _is_log(data: bytes) -> bool:
    """Whether ``data`` is empty, starts like a log or cache, or holds any intact block."""
    if not data or data[:4] in (fmt.BLOCK_MAGIC, fmt.CACHE_MAGIC):
        return True
    from ._xlog import looks_like_xlog

    if looks_like_xlog(data):
        return True
    return any(isinstance(item, fmt.ScannedBlock) for item in fmt.scan_blocks(data))


def cmd_recover(args: argparse.Namespace) -> int:
    from .recover import main as recover_main

    argv = [args.path] + (["--log-dir", args.log_dir] if args.log_dir else [])
    return recover_main(argv)


def cmd_keygen(args: argparse.Namespace) -> int:
    from ._crypto import generate_keypair

    private, public = generate_keypair()
    if args.output:
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            _err("mmaplog keygen", f"{args.output}: already exists (not overwritten)")
            return EXIT_USAGE
        except OSError as exc:
            _err("mmaplog keygen", f"{args.output}: cannot create: {exc.strerror}")
            return EXIT_USAGE
        with os.fdopen(fd, "w") as f:
            f.write(private)
    else:
        sys.stdout.write(private)
    print(f"public key: {public}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmaplog",
        description="Read, recover and manage mmaplog logs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 success, 1 damage found or refused, 2 bad usage or input",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "decode",
        help="print the records of log files as text",
        epilog=DECODE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="log files, folders of them (in time order), cache files, or - for stdin",
    )
    p.add_argument("--key", help="private key file (or its text) for encrypted logs")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("-o", "--output", help="write here instead of stdout")
    p.set_defaults(func=cmd_decode)
    p = sub.add_parser("recover", help="move what a dead process left in a cache into the log")
    p.add_argument("path", help="a cache file (.mmap) or a folder of them")
    p.add_argument("--log-dir", help="where to write the records")
    p.set_defaults(func=cmd_recover)
    p = sub.add_parser("keygen", help="make a key pair for encrypted logs")
    p.add_argument("-o", "--output", help="write the private key here (mode 0600)")
    p.set_defaults(func=cmd_keygen)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


def decode_main(argv: list[str] | None = None) -> int:
    """``python -m mmaplog.decode``: the same as ``mmaplog decode``."""
    return main(["decode", *(sys.argv[1:] if argv is None else argv)])
