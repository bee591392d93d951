"""The experiments spec as both report stages read it: the entry config its stages composed (for the
logger settings) and a figure's SELM alpha per base. No statistics here, so the rendering stage can
import it without importing the analyses."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def spec_config(spec):
    """The spec's entry config as its stages see it (toy: conf/loop.yaml + params.yaml's sections)."""
    from selm.compose import merge_shared_sections
    from selm.config import compose_config

    cfg = compose_config(str(spec.get("config_name", "loop")))
    return merge_shared_sections(cfg, Path("params.yaml") if bool(spec.get("params", True)) else None)


def selm_alpha(fig, base: str) -> float:
    """`selm_alpha` of a figure: one value, or one per base (the paper: 0.001 Zephyr, 0.0001 Llama-3)."""
    value = fig.selm_alpha
    return float(value[base] if OmegaConf.is_dict(value) else value)
