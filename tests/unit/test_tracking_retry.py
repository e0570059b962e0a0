"""tracking._retry: rides out a short outage, gives up once its time budget is spent."""

from __future__ import annotations

import pytest

from robustsweep import tracking


class FakeClock:
    """monotonic() and sleep() on a virtual clock, so the test takes no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(tracking.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(tracking.time, "sleep", fake.sleep)
    return fake


def test_a_server_back_within_the_budget_loses_nothing(clock: FakeClock) -> None:
    def flaky() -> str:
        if clock.now < 150.0:  # down for 150 s, like the restart in the fault test
            raise ConnectionError("connection refused")
        return "logged"

    assert tracking._retry(flaky, "log metrics", budget_s=300) == "logged"
    assert max(clock.sleeps) <= tracking.MAX_RETRY_DELAY_S


def test_a_dead_server_fails_once_the_budget_is_spent(clock: FakeClock) -> None:
    def dead() -> None:
        raise ConnectionError("connection refused\nlong detail")

    with pytest.raises(tracking.TrackingError, match=r"gave up after 60 s of retries\): connection refused$"):
        tracking._retry(dead, "log metrics", budget_s=60)
    assert clock.now == pytest.approx(60.0)


def test_zero_budget_tries_once(clock: FakeClock) -> None:
    calls = []

    def dead() -> None:
        calls.append(1)
        raise RuntimeError("no")

    with pytest.raises(tracking.TrackingError):
        tracking._retry(dead, "get run", budget_s=0)
    assert calls == [1] and clock.sleeps == []


def test_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracking.RETRY_BUDGET_ENV, "42")
    assert tracking.retry_budget_s() == 42.0
    monkeypatch.setenv(tracking.RETRY_BUDGET_ENV, "soon")
    assert tracking.retry_budget_s() == tracking.DEFAULT_RETRY_BUDGET_S


def test_mlflow_http_retries_are_bounded_unless_the_user_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    tracking.client("sqlite:///unused.db")
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
