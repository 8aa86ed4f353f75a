"""W&B mode selection and the promise that W&B trouble never fails a run."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

import emovec.tracking as tracking
from emovec.tracking import RunTracker, resolve_mode


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setattr(tracking, "_reachable", lambda timeout=2.0: pytest.fail("network checked without a key"))


def test_auto_is_offline_without_a_key(no_wandb_env):
    assert resolve_mode("auto") == "offline"


def test_auto_is_offline_with_a_key_but_no_network(no_wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking, "_reachable", lambda timeout=2.0: False)
    assert resolve_mode("auto") == "offline"


def test_auto_is_online_with_a_key_and_a_reachable_host(no_wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking, "_reachable", lambda timeout=2.0: True)
    assert resolve_mode("auto") == "online"


def test_environment_and_explicit_modes_win(no_wandb_env, monkeypatch):
    assert resolve_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("online") == "disabled"


def test_logger_none_logs_nothing(tmp_path):
    tracker = RunTracker({"name": "none"}, tmp_path, "x", {})
    assert tracker.mode == "disabled" and tracker.info()["run_id"] is None
    tracker.log_layers(pd.DataFrame({"layer": [0], "a": [1.0]}))  # a no-op, no error
    tracker.finish()


def test_a_failing_wandb_never_raises(tmp_path, monkeypatch, caplog):
    import lightning.pytorch.loggers as loggers

    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("W&B is down")

    monkeypatch.setattr(loggers, "WandbLogger", Broken)
    with caplog.at_level(logging.WARNING):
        tracker = RunTracker({"name": "wandb", "mode": "offline"}, tmp_path, "x", {})
    assert tracker.mode == "disabled" and "W&B could not start" in caplog.text


def test_a_failing_call_is_a_warning(tmp_path, caplog):
    tracker = RunTracker({"name": "wandb", "mode": "offline"}, tmp_path, "x", {})

    class Exploding:
        def __getattr__(self, name):
            raise RuntimeError("lost connection")

    tracker.logger.experiment.finish()
    tracker.logger = Exploding()
    with caplog.at_level(logging.WARNING):
        tracker.log_summary({"best/x": 1.0})
    assert "W&B log_summary failed (lost connection)" in caplog.text
