"""Rate limits per account: requests per minute, tokens per minute, tokens per (UTC) day.

Algorithm: sliding windows of one-second buckets. A request may pass when the requests (tokens) counted in the
buckets of the last 60 seconds, plus its own cost, stay within the limit; the answer to one that may not is
429 with ``Retry-After``: the time until enough old buckets leave the window. Counting is exact (a minute never
admits more than ``rpm`` requests, wherever its boundaries fall), at the price of at most 60 counters per
account and window.

Tokens are not known before the generation, so :meth:`RateLimiter.check` reserves an estimate (prompt estimate
+ ``max_tokens`` × ``n``) together with the request, and :meth:`RateLimiter.commit` corrects the reservation to
the tokens actually used. Check and reservation are one atomic step: in process under a lock, in Redis as one
Lua script, so concurrent requests (and gateway replicas sharing one Redis) can never overshoot a limit.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from antidistill.extras import require
from antidistill.settings import Settings
from antidistill.store.api import Account

if TYPE_CHECKING:
    from redis.asyncio import Redis

WINDOW_S = 60
DAY_S = 86_400

#: the three limits, in the order they are checked, with the words used in error messages.
LIMIT_NAMES = {"rpm": "requests per minute", "tpm": "tokens per minute", "tokens_per_day": "tokens per day"}


@dataclass(frozen=True)
class Limits:
    """An account's limits; ``None`` is unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    tokens_per_day: int | None = None

    @classmethod
    def of(cls, account: Account) -> Limits:
        return cls(account.rpm, account.tpm, account.tokens_per_day)

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.tokens_per_day is None


@dataclass
class Reservation:
    """What :meth:`RateLimiter.check` counted for one request, to be corrected by :meth:`RateLimiter.commit`."""

    account_id: str
    limits: Limits
    tokens: int
    second: int
    day: int
    committed: bool = field(default=False)


class RateLimited(Exception):
    """A request over a limit.

    Args:
        limit: ``rpm``, ``tpm`` or ``tokens_per_day``.
        retry_after: seconds until the request could pass.
        value: the limit.
        requested: the cost of the request in the limit's unit.
        too_large: the request alone exceeds the limit (waiting will not help).
    """

    def __init__(self, limit: str, retry_after: float, value: int, requested: int, too_large: bool = False) -> None:
        self.limit = limit
        self.retry_after = max(1, math.ceil(retry_after))
        self.value = value
        self.requested = requested
        self.too_large = too_large
        if too_large:
            msg = (
                f"request too large for the account's limit of {value} {LIMIT_NAMES[limit]}: it may use up to "
                f"{requested} tokens (prompt + max_tokens × n); lower max_tokens or n"
            )
        else:
            msg = f"rate limit reached: {value} {LIMIT_NAMES[limit]}; retry after {self.retry_after} s"
        super().__init__(msg)


class LimiterUnavailable(Exception):
    """The shared counter store (Redis) cannot be reached; the gateway answers 503 rather than serve unlimited."""


def _too_large(limits: Limits, tokens: int) -> None:
    if limits.tpm is not None and tokens > limits.tpm:
        raise RateLimited("tpm", WINDOW_S, limits.tpm, tokens, too_large=True)
    if limits.tokens_per_day is not None and tokens > limits.tokens_per_day:
        raise RateLimited("tokens_per_day", DAY_S, limits.tokens_per_day, tokens, too_large=True)


class RateLimiter(ABC):
    """Checks and counts requests and tokens per account."""

    @abstractmethod
    async def check(self, account_id: str, limits: Limits, tokens: int) -> Reservation:
        """Count one request reserving ``tokens``, or raise :class:`RateLimited` (and count nothing)."""

    @abstractmethod
    async def commit(self, reservation: Reservation, used_tokens: int) -> None:
        """Replace the reserved tokens by the tokens actually used (0 when the request failed)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# ---- in process -------------------------------------------------------------------------------------
@dataclass
class _AccountWindows:
    requests: dict[int, int] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    day: int = -1
    day_tokens: int = 0


def _window_total(buckets: dict[int, int], sec: int) -> int:
    for b in [b for b in buckets if b <= sec - WINDOW_S]:
        del buckets[b]
    return sum(buckets.values())


def _wait(buckets: dict[int, int], used: int, need: int, limit: int, now: float) -> float:
    """Seconds until enough of the oldest buckets leave the window for ``need`` more to fit."""
    freed = 0
    for b in sorted(buckets):
        freed += buckets[b]
        if used - freed + need <= limit:
            return b + WINDOW_S - now
    return WINDOW_S


class InMemoryLimiter(RateLimiter):
    """Counters in this process (one gateway process). Thread- and task-safe: each check is one locked step.

    Args:
        clock: seconds since the epoch (tests pass a fake clock).

    Example:
        >>> import asyncio
        >>> lim = InMemoryLimiter(clock=lambda: 1000.0)
        >>> r = asyncio.run(lim.check("a", Limits(rpm=1), 10))
        >>> try:
        ...     asyncio.run(lim.check("a", Limits(rpm=1), 10))
        ... except RateLimited as e:
        ...     print(e.limit, e.retry_after)
        rpm 60
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _AccountWindows] = {}

    async def check(self, account_id: str, limits: Limits, tokens: int) -> Reservation:
        return self.check_sync(account_id, limits, tokens)

    def check_sync(self, account_id: str, limits: Limits, tokens: int) -> Reservation:
        _too_large(limits, tokens)
        now = self._clock()
        sec, day = int(now), int(now // DAY_S)
        with self._lock:
            w = self._accounts.setdefault(account_id, _AccountWindows())
            if limits.rpm is not None:
                used = _window_total(w.requests, sec)
                if used + 1 > limits.rpm:
                    raise RateLimited("rpm", _wait(w.requests, used, 1, limits.rpm, now), limits.rpm, 1)
            if limits.tpm is not None:
                used = _window_total(w.tokens, sec)
                if used + tokens > limits.tpm:
                    raise RateLimited("tpm", _wait(w.tokens, used, tokens, limits.tpm, now), limits.tpm, tokens)
            if w.day != day:
                w.day, w.day_tokens = day, 0
            if limits.tokens_per_day is not None and w.day_tokens + tokens > limits.tokens_per_day:
                raise RateLimited("tokens_per_day", (day + 1) * DAY_S - now, limits.tokens_per_day, tokens)
            if limits.rpm is not None:
                w.requests[sec] = w.requests.get(sec, 0) + 1
            if limits.tpm is not None:
                w.tokens[sec] = w.tokens.get(sec, 0) + tokens
            w.day_tokens += tokens
        return Reservation(account_id, limits, tokens, sec, day)

    async def commit(self, reservation: Reservation, used_tokens: int) -> None:
        if reservation.committed:
            return
        reservation.committed = True
        delta = used_tokens - reservation.tokens
        if delta == 0:
            return
        with self._lock:
            w = self._accounts.get(reservation.account_id)
            if w is None:
                return
            if reservation.limits.tpm is not None and reservation.second in w.tokens:
                w.tokens[reservation.second] += delta
            if w.day == reservation.day:
                w.day_tokens += delta


# ---- Redis --------------------------------------------------------------------------------------------
# KEYS: requests hash, tokens hash, day counter prefix. ARGV: rpm, tpm, tokens_per_day (-1: unlimited), cost.
# Redis' own clock (TIME) is the clock of every replica, so replicas with skewed clocks still share windows.
_CHECK_LUA = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local W = 60
local rpm, tpm, tpd, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local day = math.floor(sec / 86400)
local daykey = KEYS[3] .. ':' .. day

local function load(key)
  local vals = redis.call('HGETALL', key)
  local total, buckets, stale = 0, {}, {}
  for i = 1, #vals, 2 do
    local b, v = tonumber(vals[i]), tonumber(vals[i + 1])
    if b <= sec - W then stale[#stale + 1] = vals[i] else total = total + v; buckets[#buckets + 1] = {b, v} end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return total, buckets
end

local function wait(buckets, used, need, limit)
  table.sort(buckets, function(x, y) return x[1] < y[1] end)
  local freed = 0
  for _, bv in ipairs(buckets) do
    freed = freed + bv[2]
    if used - freed + need <= limit then return bv[1] + W - now end
  end
  return W
end

if rpm >= 0 then
  local used, b = load(KEYS[1])
  if used + 1 > rpm then return {0, 1, math.ceil(wait(b, used, 1, rpm) * 1000)} end
end
if tpm >= 0 then
  local used, b = load(KEYS[2])
  if used + cost > tpm then return {0, 2, math.ceil(wait(b, used, cost, tpm) * 1000)} end
end
if tpd >= 0 then
  local used = tonumber(redis.call('GET', daykey) or '0')
  if used + cost > tpd then return {0, 3, math.ceil(((day + 1) * 86400 - now) * 1000)} end
end
if rpm >= 0 then redis.call('HINCRBY', KEYS[1], sec, 1); redis.call('EXPIRE', KEYS[1], W + 5) end
if tpm >= 0 then redis.call('HINCRBY', KEYS[2], sec, cost); redis.call('EXPIRE', KEYS[2], W + 5) end
if tpd >= 0 then redis.call('INCRBY', daykey, cost); redis.call('EXPIRE', daykey, 2 * 86400) end
return {1, sec, day}
"""

# KEYS: tokens hash, day counter prefix. ARGV: second, day, delta, has tpm, has tokens_per_day.
_COMMIT_LUA = """
local t = redis.call('TIME')
local sec, day, delta = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
if ARGV[4] == '1' and sec > tonumber(t[1]) - 60 and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], delta)
end
local daykey = KEYS[2] .. ':' .. day
if ARGV[5] == '1' and redis.call('EXISTS', daykey) == 1 then redis.call('INCRBY', daykey, delta) end
return 1
"""

_KINDS = {1: "rpm", 2: "tpm", 3: "tokens_per_day"}


class RedisLimiter(RateLimiter):
    """Counters in Redis, shared by every gateway replica that uses the same URL and prefix.

    Args:
        url: ``redis://host:port/db``.
        prefix: namespace of the keys (``{prefix}:rl:{account}:…``).
        client: a ``redis.asyncio.Redis`` to use instead of connecting to ``url`` (tests).
    """

    def __init__(self, url: str | None = None, prefix: str = "antidistill", client: Redis | None = None) -> None:
        require("redis", "Redis rate limits")
        # the redis extra is optional (and 0.15 s to import): only a gateway whose limits are in Redis needs it
        import redis.asyncio

        self._owned = client is None
        if client is None:
            if not url:
                raise ValueError("RedisLimiter needs a url or a client")
            client = redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._redis = client
        self._unreachable: type[Exception] = redis.RedisError
        self.prefix = prefix
        self._check = self._redis.register_script(_CHECK_LUA)
        self._commit = self._redis.register_script(_COMMIT_LUA)

    def _keys(self, account_id: str) -> tuple[str, str, str]:
        # the hash tag {account} keeps an account's keys in one slot of a Redis Cluster
        base = f"{self.prefix}:rl:{{{account_id}}}"
        return f"{base}:req", f"{base}:tok", f"{base}:day"

    async def check(self, account_id: str, limits: Limits, tokens: int) -> Reservation:
        _too_large(limits, tokens)

        def arg(v: int | None) -> int:
            return -1 if v is None else v

        try:
            ok, a, b = await self._check(
                keys=list(self._keys(account_id)),
                args=[arg(limits.rpm), arg(limits.tpm), arg(limits.tokens_per_day), tokens],
            )
        except self._unreachable as exc:
            raise LimiterUnavailable(f"rate-limit store unreachable: {type(exc).__name__}") from exc
        if ok:
            return Reservation(account_id, limits, tokens, int(a), int(b))
        kind = _KINDS[int(a)]
        value = {"rpm": limits.rpm, "tpm": limits.tpm, "tokens_per_day": limits.tokens_per_day}[kind]
        raise RateLimited(kind, int(b) / 1000, value or 0, 1 if kind == "rpm" else tokens)

    async def commit(self, reservation: Reservation, used_tokens: int) -> None:
        if reservation.committed:
            return
        reservation.committed = True
        delta = used_tokens - reservation.tokens
        lim = reservation.limits
        if delta == 0 or (lim.tpm is None and lim.tokens_per_day is None):
            return
        _, tok, day = self._keys(reservation.account_id)
        try:
            await self._commit(
                keys=[tok, day],
                args=[
                    reservation.second,
                    reservation.day,
                    delta,
                    int(lim.tpm is not None),
                    int(lim.tokens_per_day is not None),
                ],
            )
        except self._unreachable:
            # the request was served; a lost correction only leaves the reservation counted
            return

    async def aclose(self) -> None:
        if self._owned:
            await self._redis.aclose()


def make_limiter(settings: Settings) -> RateLimiter:
    """Redis when ``ANTIDISTILL_REDIS_URL`` is set, else in process."""
    if settings.redis_url:
        return RedisLimiter(settings.redis_url, settings.rate_limit_prefix)
    return InMemoryLimiter()
