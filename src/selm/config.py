"""Where the Hydra config tree lives, and composition outside a `@hydra.main` app (tests, the loop)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

# conf/ sits at the repository root (the package is installed editable from it).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/<config_name>.yaml with Hydra overrides, e.g. ["train.alpha=0", "experiment=paper_zephyr"]."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [])
