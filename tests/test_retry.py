"""The one retry policy every client uses (inference server, Qdrant, Elasticsearch bulk): rules
that must hold for any setting, checked with hypothesis, and the behaviour callers rely on."""

from __future__ import annotations

import pytest
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.retry import RetriesExhausted, RetryPolicy
from hypothesis import given
from hypothesis import strategies as st

policies = st.builds(
    RetryPolicy,
    max_retries=st.integers(0, 12),
    backoff_initial_s=st.floats(0, 5, allow_nan=False),
    backoff_max_s=st.floats(0, 60, allow_nan=False),
    jitter=st.sampled_from(["equal", "full"]),
)


@given(policies, st.integers(0, 40))
def test_every_delay_lies_under_its_exponential_cap_and_equal_jitter_keeps_half(policy, retry) -> None:
    cap = min(policy.backoff_max_s, policy.backoff_initial_s * 2**retry)
    delay = policy.delay(retry)
    floor = cap / 2 if policy.jitter == "equal" else 0.0
    assert floor <= delay <= cap


class Flaky:
    """Fails transiently ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise TimeoutError(f"attempt {self.calls}")
        return "ok"


def transient(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError)


@given(max_retries=st.integers(0, 8), failures=st.integers(0, 12))
def test_a_call_succeeds_iff_its_failures_fit_in_the_retries(max_retries: int, failures: int) -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_retries=max_retries, backoff_initial_s=0.01, sleep=sleeps.append)
    retrier = policy.retrier(transient)
    flaky = Flaky(failures)
    if failures <= max_retries:
        assert retrier.call("probe", flaky) == "ok"
        assert flaky.calls == failures + 1 and retrier.retries == len(sleeps) == failures
    else:
        with pytest.raises(RetriesExhausted) as raised:
            retrier.call("probe", flaky)
        assert raised.value.attempts == flaky.calls == max_retries + 1
        assert isinstance(raised.value.last, TimeoutError) and len(sleeps) == max_retries


@given(deadline=st.floats(0.05, 30, allow_nan=False), initial=st.floats(0.01, 2, allow_nan=False))
def test_no_retry_starts_whose_wait_would_end_past_the_deadline(deadline: float, initial: float) -> None:
    """The waits of one call never add up to more than its deadline (the call itself takes ~0 s here)."""
    sleeps: list[float] = []
    policy = RetryPolicy(
        max_retries=100, backoff_initial_s=initial, backoff_max_s=10, deadline_s=deadline, sleep=sleeps.append
    )
    with pytest.raises(RetriesExhausted):
        policy.call("probe", Flaky(10_000), transient)
    assert sum(sleeps) <= deadline


def test_permanent_errors_pass_through_at_once() -> None:
    def refuse() -> None:
        raise PermissionError("401")

    sleeps: list[float] = []
    with pytest.raises(PermissionError):
        RetryPolicy(sleep=sleeps.append).call("probe", refuse, transient)
    assert sleeps == []


@pytest.mark.parametrize(
    "bad",
    [{"max_retries": -1}, {"backoff_initial_s": -0.1}, {"jitter": "none"}, {"deadline_s": 0}],
)
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**bad)


def test_each_caller_gets_its_retry_budget_and_the_environment_wins(monkeypatch) -> None:
    """Tasks wait up to two minutes for a restarting server; the interactive commands 15 s; an
    ``EMBEDDING_SERVER_RETRY_DEADLINE_S`` (or a Connection extra) overrides either."""
    from embedding_pipeline.cli.services import INTERACTIVE_RETRY_DEADLINE_S, interactive_server_settings
    from embedding_pipeline.settings import ServerSettings

    monkeypatch.delenv("EMBEDDING_SERVER_RETRY_DEADLINE_S", raising=False)
    assert ServerSettings.from_env().retry.deadline_s == 120.0
    assert interactive_server_settings("m").retry.deadline_s == INTERACTIVE_RETRY_DEADLINE_S == 15.0
    assert interactive_server_settings("m").model_name == "m"
    monkeypatch.setenv("EMBEDDING_SERVER_RETRY_DEADLINE_S", "42")
    assert ServerSettings.from_env().retry.deadline_s == 42.0
    assert interactive_server_settings().retry.deadline_s == 42.0
    with pytest.raises(ConfigError, match="retry_deadline_s must be > 0"):
        ServerSettings(retry_deadline_s=0)
