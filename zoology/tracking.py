"""Optional Weights & Biases logging: touched only when ``[logging.wandb]`` is set."""

from __future__ import annotations

from typing import Any

from zoology.config import Experiment, to_dict


class Tracker:
    """Forwards metrics to wandb when the experiment asks for it; otherwise does nothing."""

    def __init__(self, exp: Experiment, run_dir: str, enabled: bool = True) -> None:
        self.run = None
        cfg = exp.logging.wandb
        if cfg is None or not enabled:
            return
        import wandb

        kwargs: dict[str, Any] = {}
        if cfg.mode is not None:  # an explicit mode overrides WANDB_MODE; pass it only when set
            kwargs["mode"] = cfg.mode
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=f"{exp.name}/{exp.run_id}",
            group=exp.name,
            tags=list(cfg.tags) or None,
            config=to_dict(exp),
            dir=run_dir,
            reinit=True,
            **kwargs,
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            for key in ("status", "num_parameters", "state_size", "epochs"):
                self.run.summary[key] = summary.get(key)
            for key, value in (summary.get("test") or {}).items():
                self.run.summary[key] = value
            self.run.finish(exit_code=0 if summary.get("status") == "done" else 1)
            self.run = None
