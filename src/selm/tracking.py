"""W&B tracking: one run per training iteration, opened with the whole composed config, its group
and name (`logger.*`). The run id is a hash of project, group and name, so the evaluation of a
checkpoint (selm.evaluate) logs into the run that trained it."""

from __future__ import annotations

import hashlib
import os

from omegaconf import DictConfig, OmegaConf


def wandb_run_id(cfg: DictConfig) -> str:
    """A W&B run id fixed by project, group and name, so the evaluation of a checkpoint logs into
    the run that trained it (offline runs with one id are merged by `wandb sync` in start order)."""
    key = f"{cfg.logger.project}/{cfg.logger.group}/{cfg.logger.name}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def init_wandb(cfg: DictConfig):
    """Open the W&B run ourselves so it carries the whole composed config, group and name."""
    if not cfg.logger.wandb:
        return None
    import wandb

    os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
    return wandb.init(
        project=cfg.logger.project,
        group=cfg.logger.group,
        name=cfg.logger.name,
        id=wandb_run_id(cfg),
        resume="allow",
        dir=cfg.logger.dir,
        config=OmegaConf.to_container(cfg, resolve=True),
        reinit="finish_previous",
        # no system-metrics sampler, code snapshot or pip list (requirements.txt: ~1-3 s per run on 2
        # cores; the versions that matter are in every checkpoint's train_metrics.json)
        settings=wandb.Settings(x_disable_stats=True, x_disable_meta=True, save_code=False, console="off",
                                silent=True, x_save_requirements=False),
    )
