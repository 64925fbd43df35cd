"""Shared helpers: decoding a log folder and sorting damage reports into torn writes and faults."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import mmaplog
from mmaplog import _format as fmt

# The largest block header a writer produces: 64 bytes plus a 32-byte key.
MAX_HEADER = fmt.BLOCK_HEADER_SIZE + fmt.ENCRYPTION_EXTENSION


@dataclass
class Decoded:
    """What a log folder decodes to: the texts in order and every damage report."""

    texts: list[str] = field(default_factory=list)
    records: list[mmaplog.Record] = field(default_factory=list)
    damages: list[tuple[str, fmt.Damage]] = field(default_factory=list)
    torn: list[tuple[str, fmt.Damage]] = field(default_factory=list)
    bad: list[tuple[str, fmt.Damage]] = field(default_factory=list)
    duplicates: list[tuple[str, fmt.Damage]] = field(default_factory=list)


def finish_workdir(
    base: str,
    *,
    own_dir: bool,
    failed: bool,
    keep_failures: str | None,
    name: str,
    what: str,
    verbose: bool,
) -> None:
    """Remove a run's scratch folder when all went well; else keep (and copy) its failures."""
    if own_dir and not failed:
        shutil.rmtree(base, ignore_errors=True)
    elif failed:
        saved = os.path.join(base, "failures")
        if keep_failures and os.path.isdir(saved):
            dest = os.path.join(keep_failures, name)
            shutil.copytree(saved, dest, dirs_exist_ok=True)
            saved = dest
        if verbose:
            print(f"  failing {what} saved under {saved}")


def is_torn_write(data: bytes, d: fmt.Damage) -> bool:
    """Whether the damaged range ``d`` of ``data`` is a block cut short by a kill.

    A kill during the one ``write()`` of a block leaves a prefix of it: either a
    header fragment (shorter than any header) or a header whose checksums hold but
    which claims more bytes than the range holds. Later blocks may follow it.
    """
    size = d.end - d.start
    head = min(4, size)
    if size <= 0 or data[d.start : d.start + head] != fmt.BLOCK_MAGIC[:head]:
        return False
    if size < MAX_HEADER:
        # A header fragment, possibly followed by a later block's bytes.
        return True
    try:
        h = fmt.parse_header(data, d.start)
    except mmaplog.CorruptionError:
        return False
    return h.header_len + h.payload_len > size


def classify(decoded: Decoded) -> Decoded:
    """Sort ``decoded.damages`` into torn writes, duplicates and real faults."""
    cache: dict[str, bytes] = {}
    for source, d in decoded.damages:
        if "appears twice" in d.reason:
            decoded.duplicates.append((source, d))
            continue
        if source not in cache:
            with open(source, "rb") as f:
                cache[source] = f.read()
        if is_torn_write(cache[source], d):
            decoded.torn.append((source, d))
        else:
            decoded.bad.append((source, d))
    return decoded


def decode_dir(log_dir: str, key: Any = None) -> Decoded:
    """Decode every log file in ``log_dir`` and classify the damage reports."""
    out = Decoded()

    def on_damage(source: str, d: fmt.Damage) -> None:
        out.damages.append((source, d))

    if not os.path.isdir(log_dir):
        return out
    out.records = list(mmaplog.read_records(log_dir, key=key, on_damage=on_damage))
    out.texts = [r.text for r in out.records]
    return classify(out)


def in_write_order(records: list[mmaplog.Record]) -> list[str]:
    """The texts with blocks put back in the order they were written, whatever file holds them.

    Sessions are ordered by their earliest record, blocks by ``seq`` within a session;
    records keep their order inside a block. Used to tell a block that recovery
    put in the wrong file apart from records really out of order.
    """
    first: dict[str, float] = {}
    for r in records:
        first[r.session] = min(first.get(r.session, r.time), r.time)
    keyed = sorted(
        enumerate(records), key=lambda p: (first[p[1].session], p[1].session, p[1].seq, p[0])
    )
    return [r.text for _, r in keyed]


def describe(items: list[tuple[str, fmt.Damage]]) -> str:
    """One line per damage report."""
    return "; ".join(
        f"{os.path.basename(s)}[{d.start}:{d.end}] {d.reason}" for s, d in items[:5]
    ) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
