"""W&B logging through Lightning's WandbLogger. Any W&B failure is a warning, never a failed run."""

from __future__ import annotations

import functools
import logging
import netrc
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

log = logging.getLogger(__name__)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(timeout: float = 2.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_mode(requested: str = "auto") -> str:
    """online, offline or disabled: `auto` goes online only with an API key and a reachable host."""
    env = os.environ.get("WANDB_MODE")
    if env in ("offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    if requested in ("online", "offline", "disabled"):
        return requested
    return "online" if _has_api_key() and _reachable() else "offline"


def _never_fails(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(self: RunTracker, *args: Any, **kwargs: Any) -> Any:
        if self.logger is None:
            return None
        try:
            return fn(self, *args, **kwargs)
        except Exception as err:  # W&B trouble must never kill a run that has computed its results
            log.warning("W&B %s failed (%s); the run goes on, results are in the run dir", fn.__name__, err)
            return None
    return wrapper


class RunTracker:
    """One W&B run per train job; a no-op when logging is off."""

    def __init__(self, cfg: Mapping[str, Any], run_dir: Path, name: str, config: dict[str, Any]) -> None:
        self.mode = "disabled"
        self.logger = None
        if cfg.get("name", "none") == "none":
            return
        self.mode = resolve_mode(cfg.get("mode", "auto"))
        if self.mode == "disabled":
            return
        try:
            from lightning.pytorch.loggers import WandbLogger

            self.logger = WandbLogger(
                project=cfg.get("project", "emovec"), entity=cfg.get("entity"), name=name,
                save_dir=str(run_dir), offline=self.mode == "offline", tags=list(cfg.get("tags") or []),
                group=cfg.get("group"), config=config, reinit="finish_previous",
            )
            _ = self.logger.experiment  # start the run now, so a failure shows here
        except Exception as err:
            log.warning("W&B could not start (%s); the run goes on without it", err)
            self.logger, self.mode = None, "disabled"
        self.log_artifacts = bool(cfg.get("log_artifacts", True))

    @_never_fails
    def log_layers(self, table: pd.DataFrame) -> None:
        """Every layer's metrics as series over a `layer` step metric, and as one table."""
        run = self.logger.experiment
        run.define_metric("layer")
        run.define_metric("layer/*", step_metric="layer")
        for row in table.to_dict("records"):
            run.log({"layer": int(row["layer"]), **{f"layer/{k}": v for k, v in row.items() if k != "layer"}})
        self.logger.log_table(key="layers", dataframe=table)

    @_never_fails
    def log_summary(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self.logger.experiment.summary[key] = value

    @_never_fails
    def log_image(self, key: str, path: Path) -> None:
        import wandb

        self.logger.experiment.log({key: wandb.Image(str(path))})

    @_never_fails
    def log_artifact(self, paths: list[Path], name: str, kind: str, metadata: Mapping[str, Any]) -> None:
        if not self.log_artifacts:
            return
        import wandb

        artifact = wandb.Artifact(name=name, type=kind, metadata=dict(metadata))
        for path in paths:
            artifact.add_file(str(path), name=path.name)
        self.logger.experiment.log_artifact(artifact)

    def info(self) -> dict[str, Any]:
        if self.logger is None:
            return {"mode": self.mode, "dir": None, "url": None, "run_id": None, "project": None}
        try:
            run = self.logger.experiment
            return {"mode": self.mode, "dir": str(Path(run.dir).parent), "url": run.url if self.mode == "online" else None,
                    "run_id": run.id, "project": run.project}
        except Exception:
            return {"mode": self.mode, "dir": None, "url": None, "run_id": None, "project": None}

    @_never_fails
    def finish(self, exit_code: int = 0) -> None:
        self.logger.experiment.finish(exit_code=exit_code)
