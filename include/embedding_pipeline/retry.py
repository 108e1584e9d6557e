"""One retry policy for every external call: the inference server, Qdrant and Elasticsearch.

Transient errors (timeouts, connection resets, 429/502/503/504, gRPC UNAVAILABLE) are retried
inside the task with exponential backoff and jitter; what counts as transient is the caller's
question (each client library has its own exceptions), so :meth:`RetryPolicy.call` takes it as a
predicate. Permanent errors pass through at once. Airflow's task retries sit above this and cover
process-level failures.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal, TypeVar

from embedding_pipeline.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)
T = TypeVar("T")

Jitter = Literal["equal", "full"]


class RetriesExhausted(PipelineError):
    """A call kept failing transiently; carries the last error and the number of attempts.

    Callers turn it into their own "service unavailable" error, naming what they were doing.
    """

    def __init__(self, last: BaseException, attempts: int) -> None:
        super().__init__(f"{attempts} attempts, last error: {last}")
        self.last, self.attempts = last, attempts


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, backoff, jitter and an optional time budget.

    The delay before retry ``n`` (0-based) is drawn below ``cap = min(backoff_max_s,
    backoff_initial_s * 2**n)``: ``equal`` jitter waits in ``[cap/2, cap]`` (a floor under every
    wait gives a struggling server real relief; the random half spreads parallel tasks apart),
    ``full`` in ``[0, cap]`` (the client of a single server, where spreading matters most).
    ``deadline_s`` bounds the total time of one call including its waits: no retry starts whose
    wait would end past it. ``sleep`` is injectable so tests observe the waits without waiting.
    """

    max_retries: int = 5
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    jitter: Jitter = "equal"
    deadline_s: float | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_initial_s < 0 or self.backoff_max_s < 0:
            raise ConfigError("max_retries, backoff_initial_s and backoff_max_s must be >= 0")
        if self.jitter not in ("equal", "full"):
            raise ConfigError(f"jitter must be 'equal' or 'full', got {self.jitter!r}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ConfigError(f"deadline_s must be > 0 when set, got {self.deadline_s}")

    def with_sleep(self, sleep: Callable[[float], None]) -> RetryPolicy:
        return replace(self, sleep=sleep)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        cap = min(self.backoff_max_s, self.backoff_initial_s * 2**retry)
        floor = cap / 2 if self.jitter == "equal" else 0.0
        return floor + random.uniform(0, cap - floor)

    def retrier(self, is_transient: Callable[[BaseException], bool]) -> Retrier:
        """A :class:`Retrier` that counts the retries of every call made through it."""
        return Retrier(self, is_transient)

    def call(self, what: str, fn: Callable[[], T], is_transient: Callable[[BaseException], bool]) -> T:
        """``fn()``, retried while it raises what ``is_transient`` accepts; see :class:`Retrier`."""
        return self.retrier(is_transient).call(what, fn)


@dataclass(frozen=True)
class RetrySettings:
    """The retry fields of a client's settings (Connection extras or environment variables), and
    the policy they make. ``JITTER`` is the client's choice (see :class:`RetryPolicy`);
    ``retry_deadline_s`` (None: attempts only) bounds the time one call may spend retrying."""

    JITTER: ClassVar[Jitter] = "equal"

    max_retries: int = 5
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    retry_deadline_s: float | None = None

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            self.max_retries,
            self.backoff_initial_s,
            self.backoff_max_s,
            jitter=self.JITTER,
            deadline_s=self.retry_deadline_s,
        )


@dataclass
class Retrier:
    """A policy bound to one notion of "transient", with a retry counter for the run's report."""

    policy: RetryPolicy
    is_transient: Callable[[BaseException], bool]
    retries: int = 0

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``; transient failures are retried, then :class:`RetriesExhausted` is raised.

        Any other exception passes through unchanged on the first attempt.
        """
        policy = self.policy
        spent = 0.0  # in calls and waits, counted apart so an injected sleep keeps the budget exact
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                return fn()
            except Exception as exc:
                spent += time.monotonic() - started
                if not self.is_transient(exc):
                    raise
                wait = policy.delay(attempt)
                out_of_time = policy.deadline_s is not None and spent + wait > policy.deadline_s
                if attempt >= policy.max_retries or out_of_time:
                    raise RetriesExhausted(exc, attempt + 1) from exc
                attempt += 1
                self.retries += 1
                log.warning("%s: transient error (%s); retry %d in %.2fs", what, exc, attempt, wait)
                policy.sleep(wait)
                spent += wait
