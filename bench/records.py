"""Realistic log records for the benchmark, generated once from a fixed seed.

Each record is a ``(template, args)`` pair for ``logger.info(template, *args)``:
application-log messages of 80-200 bytes that mix uuids, numeric ids, durations,
sizes, IP addresses, paths and words, the way a web service's logs do. The
same records (and, for loguru, the same text through ``str.format`` templates)
go to every contender.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable
from typing import Any

Record = tuple[str, tuple[Any, ...]]

MIN_LEN = 80
MAX_LEN = 200

_WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "search",
    "billing",
    "checkout",
    "inventory",
    "shipping",
    "catalog",
    "profile",
    "session",
    "token",
    "refresh",
    "upstream",
    "downstream",
    "replica",
    "primary",
    "shard",
    "partition",
    "index",
    "compaction",
    "snapshot",
    "backup",
    "restore",
    "warmup",
    "eviction",
    "quota",
    "limit",
    "burst",
    "tenant",
    "region",
    "zone",
    "canary",
    "rollout",
    "feature",
    "flag",
    "experiment",
]
_USERS = [
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
]
_SERVICES = [
    "orders",
    "payments",
    "users",
    "search",
    "ledger",
    "notifier",
    "gateway",
    "auth",
    "cart",
    "pricing",
    "recommendations",
    "media",
]
_DIRS = [
    "var",
    "lib",
    "srv",
    "data",
    "app",
    "cache",
    "tmp",
    "uploads",
    "static",
    "releases",
    "current",
    "logs",
]
_EXTS = [".json", ".csv", ".png", ".jpg", ".parquet", ".gz", ".txt", ".yaml"]
_METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
_STATUS = (200, 200, 200, 200, 201, 204, 301, 304, 400, 401, 403, 404, 409, 500, 502, 503)
_ERRORS = (
    "ConnectionResetError",
    "TimeoutError",
    "IntegrityError",
    "KeyError",
    "ValueError",
    "ReadTimeout",
)


class _World(random.Random):
    """Random values with the locality of real logs: the same users, clients, files,
    orders and jobs come back over a stretch of lines, while most uuids are new."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self._recent: dict[str, list[Any]] = {}

    def _reuse(self, kind: str, make: Callable[[], Any], p_new: float, window: int) -> Any:
        pool = self._recent.setdefault(kind, [])
        if pool and self.random() >= p_new:
            # Recent values are likelier (squared: skewed towards the newest).
            return pool[-1 - int(self.random() ** 2 * min(window, len(pool)))]
        value = make()
        pool.append(value)
        if len(pool) > 2 * window:
            del pool[:window]
        return value

    def uuid(self) -> str:
        return self._reuse(  # type: ignore[no-any-return]
            "uuid", lambda: str(uuid.UUID(int=self.getrandbits(128), version=4)), 0.6, 64
        )

    def ip(self) -> str:
        return self._reuse(  # type: ignore[no-any-return]
            "ip",
            lambda: f"10.{self.randint(0, 255)}.{self.randint(0, 255)}.{self.randint(1, 254)}",
            0.1,
            300,
        )

    def path(self) -> str:
        def make() -> str:
            parts = [self.choice(_DIRS) for _ in range(self.randint(2, 4))]
            name = f"{self.choice(_WORDS)}_{self.randint(1, 9999)}{self.choice(_EXTS)}"
            return "/" + "/".join([*parts, name])

        return self._reuse("path", make, 0.2, 200)  # type: ignore[no-any-return]

    def ident(self, hi: int) -> int:
        return self._reuse(f"id{hi}", lambda: self.randint(1, hi), 0.3, 500)  # type: ignore[no-any-return]


def _words(r: random.Random, lo: int, hi: int) -> str:
    return " ".join(r.choice(_WORDS) for _ in range(r.randint(lo, hi)))


# (template, argument maker): printf-style templates as applications write them.
_TEMPLATES: list[tuple[str, Callable[[_World], tuple[Any, ...]]]] = [
    (
        "%s /api/v1/%s/%d/items?page=%d&limit=%d -> %d in %.1f ms (client %s)",
        lambda r: (
            r.choice(_METHODS),
            r.choice(_SERVICES),
            r.ident(10**6),
            r.randint(1, 40),
            r.choice((20, 50, 100)),
            r.choice(_STATUS),
            r.uniform(0.3, 900),
            r.ip(),
        ),
    ),
    (
        "user %s (id %d) logged in from %s, session %s",
        lambda r: (r.choice(_USERS), r.ident(10**7), r.ip(), r.uuid()),
    ),
    (
        "order %s placed by customer %d: %d items, total %.2f EUR, payment method %s",
        lambda r: (
            r.uuid(),
            r.ident(10**6),
            r.randint(1, 12),
            r.uniform(3, 900),
            r.choice(("card", "paypal", "sepa", "voucher")),
        ),
    ),
    (
        "cache miss for key %s:%d, loaded from %s in %.3f ms (size %d bytes)",
        lambda r: (
            r.choice(_SERVICES),
            r.ident(10**6),
            r.choice(("postgres", "redis-replica", "s3", "origin")),
            r.uniform(0.05, 80),
            r.randint(100, 200000),
        ),
    ),
    (
        "worker-%d finished job %s (%s) in %.3f s, queue depth %d, retries %d",
        lambda r: (
            r.randint(1, 32),
            r.uuid(),
            r.choice(_WORDS),
            r.uniform(0.001, 30),
            r.randint(0, 5000),
            r.randint(0, 3),
        ),
    ),
    (
        "retrying request to https://%s.internal:%d%s after %s (attempt %d of %d)",
        lambda r: (
            r.choice(_SERVICES),
            r.choice((443, 8080, 8443, 9000)),
            r.path(),
            r.choice(_ERRORS),
            r.randint(1, 5),
            5,
        ),
    ),
    (
        "wrote %d bytes to %s (%d rows, checksum %08x)",
        lambda r: (r.randint(10, 10**8), r.path(), r.ident(10**6), r.getrandbits(32)),
    ),
    (
        "payment %s for order %d authorized by %s: amount %.2f, auth code %06d",
        lambda r: (
            r.uuid(),
            r.ident(10**8),
            r.choice(("visa", "mastercard", "amex", "adyen", "stripe")),
            r.uniform(1, 2000),
            r.randint(0, 999999),
        ),
    ),
    (
        "query on table %s_%s took %.2f ms and returned %d rows (plan: %s)",
        lambda r: (
            r.choice(_SERVICES),
            r.choice(_WORDS),
            r.uniform(0.1, 3000),
            r.randint(0, 100000),
            r.choice(("index scan", "seq scan", "bitmap heap scan", "nested loop")),
        ),
    ),
    (
        "file %s not found, falling back to %s for tenant %d",
        lambda r: (r.path(), r.path(), r.randint(1, 5000)),
    ),
    (
        "feature flag %s-%s evaluated to %s for user %d in region %s",
        lambda r: (
            r.choice(_WORDS),
            r.choice(_WORDS),
            r.choice(("on", "off", "variant-b")),
            r.ident(10**7),
            r.choice(("eu-west-1", "us-east-1", "ap-south-1")),
        ),
    ),
    (
        "health check of %s at %s:%d: %s, latency %.1f ms, %d/%d replicas ready",
        lambda r: (
            r.choice(_SERVICES),
            r.ip(),
            r.choice((80, 8080, 9090)),
            r.choice(("ok", "ok", "ok", "degraded", "failing")),
            r.uniform(0.2, 400),
            r.randint(0, 5),
            5,
        ),
    ),
    (
        "processed batch %d of %s: %d events, %d duplicates dropped, lag %d ms, note: %s",
        lambda r: (
            r.ident(10**6),
            r.choice(_SERVICES),
            r.randint(1, 5000),
            r.randint(0, 50),
            r.randint(0, 20000),
            _words(r, 2, 6),
        ),
    ),
    (
        "uploaded %s (%d KiB) to bucket %s-%s as %s",
        lambda r: (
            r.path(),
            r.randint(1, 500000),
            r.choice(_SERVICES),
            r.choice(("prod", "staging")),
            r.uuid(),
        ),
    ),
    (
        "%s: %s while handling %s %s for user %d, request id %s",
        lambda r: (
            r.choice(_SERVICES),
            r.choice(_ERRORS),
            r.choice(_METHODS),
            r.path(),
            r.ident(10**7),
            r.uuid(),
        ),
    ),
]

_CONV = re.compile(r"%(0?\d*)(?:\.(\d+))?([sdfx])")


def to_brace(template: str) -> str:
    """The ``str.format`` template that renders the same text as ``template % args``."""

    def conv(m: re.Match[str]) -> str:
        width, prec, kind = m.group(1), m.group(2), m.group(3)
        if kind == "s" and not width and not prec:
            return "{}"
        spec = width + (f".{prec}" if prec else "") + ("" if kind == "s" else kind)
        return "{:" + spec + "}"

    return _CONV.sub(conv, template)


def generate(n: int, seed: int = 6) -> list[Record]:
    """``n`` records whose rendered messages are MIN_LEN to MAX_LEN bytes long."""
    r = _World(seed)
    out: list[Record] = []
    context: tuple[str, int] = ("", 0)
    context_left = 0
    while len(out) < n:
        template, make = r.choice(_TEMPLATES)
        args = make(r)
        if context_left == 0 and r.random() < 0.12:  # a request logs 1-5 lines with its ids
            context = (f"{r.randint(0, 16**6):06x}", r.getrandbits(64))
            context_left = r.randint(1, 5)
        if context_left:
            context_left -= 1
            template += " [req=%s trace=%016x]"
            args = (*args, *context)
        text = template % args
        if MIN_LEN <= len(text.encode()) <= MAX_LEN:
            out.append((template, args))
    return out


def brace_variant(records: list[Record]) -> list[Record]:
    """The same records as ``str.format`` templates (for loguru), checked to render alike."""
    cache: dict[str, str] = {}
    out = []
    for template, args in records:
        brace = cache.get(template)
        if brace is None:
            brace = cache[template] = to_brace(template)
        if brace.format(*args) != template % args:
            raise AssertionError(f"brace template renders differently: {template!r}")
        out.append((brace, args))
    return out


def describe(records: list[Record]) -> dict[str, Any]:
    lengths = sorted(len((t % a).encode()) for t, a in records)
    n = len(lengths)
    return {
        "count": n,
        "templates": len({t for t, _ in records}),
        "min": lengths[0],
        "median": lengths[n // 2],
        "mean": sum(lengths) / n,
        "max": lengths[-1],
        "with_uuid": sum(1 for t, a in records if _has_uuid(t % a)) / n,
        "samples": [t % a for t, a in records[:5]],
    }


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _has_uuid(text: str) -> bool:
    return _UUID_RE.search(text) is not None
