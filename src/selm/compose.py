"""One run's config: the entry config in conf/ with the run's config groups, params.yaml's shared
sections (where `dvc exp run -S key=value` edits land), alpha and seed, then the run's own values.

`run_config` is the one function that composes a run's config; the DVC stages (selm.cli.stage), the
experiments' runs (selm.experiments.Run.config) and the analyses (selm.report.analyze) all use it.
params.yaml is DVC's Hydra composition of conf/loop.yaml; only its SHARED_SECTIONS reach the runs,
and an edit anywhere else is refused with the key named, never silently ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selm import layout
from selm.config import ConfigError, compose_config, validate_config

# Sections of params.yaml that apply to every run of the grid; the grid item sets model, alpha, seed.
SHARED_SECTIONS = ("train", "generation", "ranker", "data", "eval", "judge", "sft", "scale", "paths")
# Keys of the shared sections that every grid item sets itself (experiments/*.yaml's alphas and seeds).
GRID_KEYS = ("train.alpha", "train.seed")


@functools.lru_cache(maxsize=4)
def _composed_params(config_name: str) -> dict:
    """params.yaml as DVC's Hydra composition writes it (resolved conf/<config_name>.yaml)."""
    cfg = compose_config(config_name)
    OmegaConf.resolve(cfg)
    return OmegaConf.to_container(cfg)


def _differences(ours, theirs, prefix: str) -> list[str]:
    """Dotted keys where two plain containers differ (a key only one of them has counts)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [d for k in sorted(set(ours) | set(theirs), key=str)
                for d in _differences(ours.get(k, "<absent>"), theirs.get(k, "<absent>"), f"{prefix}.{k}")]
    return [] if ours == theirs else [prefix]


def refuse_ignored_overrides(params: DictConfig, params_file: Path, config_name: str = "loop") -> None:
    """params.yaml's sections other than SHARED_SECTIONS (model, variant, run, logger, ...) are not
    applied to the runs: each run's model and variant come from its experiment cell. An edit there
    (`dvc exp run -S model.path=...`) would be silently ignored, so it is refused, naming the key."""
    composed = _composed_params(config_name)
    given = OmegaConf.to_container(params, resolve=True)
    for key in GRID_KEYS:
        section, name = key.split(".")
        if name in given.get(section, {}) and given[section][name] != composed[section][name]:
            raise ConfigError(f"{params_file}: {key} is set per run by the grid (experiments/*.yaml's alphas and "
                              f"seeds), so {given[section][name]!r} here would be ignored; change the experiment's "
                              "alphas / seeds instead")
    for section in sorted(set(given) - set(SHARED_SECTIONS), key=str):
        changed = _differences(given[section], composed.get(section, "<absent>"), section)
        if changed:
            raise ConfigError(
                f"{params_file}: {changed[0]} differs from conf/{config_name}.yaml's composition, but params.yaml's "
                f"'{section}' is not applied to the runs (only {', '.join(SHARED_SECTIONS)} are; each run's model "
                "and variant come from its cell in experiments/*.yaml). Set it in the experiment's cell or in conf/, "
                "or regenerate params.yaml (`make params`) if conf/ changed.")


def merge_shared_sections(cfg: DictConfig, params_file: Path | None) -> DictConfig:
    """Overlay params.yaml's shared sections (where DVC's `-S` edits land) on a composed config; an
    edit of any other section is refused (refuse_ignored_overrides), and so is a key the shared
    section does not have (a typo such as `-S train.bta=0.2`)."""
    if params_file is not None and Path(params_file).exists():
        params = OmegaConf.load(params_file)
        refuse_ignored_overrides(params, Path(params_file))
        for section in SHARED_SECTIONS:
            if section in params:
                unknown = _unknown_keys(cfg[section], params[section], section)
                if unknown:
                    raise ConfigError(f"{params_file}: {unknown[0]} is not a config key (conf/{section}/ has no such "
                                      "key), so it would be ignored")
                cfg[section] = OmegaConf.merge(cfg[section], params[section])
    return validate_config(cfg)


def _unknown_keys(have: DictConfig, given: DictConfig, prefix: str) -> list[str]:
    out = []
    for key in given:
        if key not in have:
            out.append(f"{prefix}.{key}")
        elif isinstance(given[key], DictConfig) and isinstance(have[key], DictConfig):
            out += _unknown_keys(have[key], given[key], f"{prefix}.{key}")
    return out


def run_config(params_file: Path | None, config_name: str = "loop", groups: Mapping | None = None,
               alpha: float | None = None, seed: int | None = None, values: Mapping | None = None,
               dotlist: Sequence[str] | None = None, base_seed: int | None = None) -> DictConfig:
    """conf/<config_name>.yaml composed for one run, in this order: the config `groups` (model,
    variant, experiment options), params.yaml's shared sections (None or an absent file: conf/
    alone), `alpha` and `seed` (None keeps the config's), the dotted `values` (a cell's settings, the
    run's names and folders), `dotlist` (KEY=VALUE strings from a command line), then the SFT base
    (with_base_seed; None: the model as configured). Validated: a nonsense value fails here, naming
    its key."""
    cfg = compose_config(config_name, [f"{k}={v}" for k, v in (groups or {}).items()])
    merge_shared_sections(cfg, params_file)
    if alpha is not None:
        cfg.train.alpha = alpha
    if seed is not None:
        cfg.train.seed = seed
    for key, value in (values or {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    if dotlist:
        cfg.merge_with_dotlist(list(dotlist))
    if base_seed is not None:
        with_base_seed(cfg, base_seed)
    return validate_config(cfg)


def with_base_seed(cfg: DictConfig, base_seed: int) -> DictConfig:
    """The toy base of SFT seed `base_seed` in place of cfg.model: trained by the `sft` stage with
    sft.seed = sft.init_seed = base_seed (same world, same recipe), named and placed by
    selm.layout.base_name / base_path (`tiny-sft.b1` at models/tiny-sft.b1). The default base seed
    changes nothing, so the default base's runs keep their config and identities; it must be the
    seeds the config trains the plain-named base with, else "base seed 0" would name another base."""
    b = int(base_seed)
    if b < 0:
        raise ConfigError(f"base seed {base_seed}: expected a non-negative integer")
    if (cfg.sft.seed, cfg.sft.init_seed) != (layout.DEFAULT_BASE_SEED, layout.DEFAULT_BASE_SEED):
        raise ConfigError(f"base seeds: sft.seed={cfg.sft.seed} and sft.init_seed={cfg.sft.init_seed} train the "
                          f"plain-named base {cfg.model.name}, but base seed {layout.DEFAULT_BASE_SEED} names it; "
                          "keep conf/sft's seeds when a spec gives base_seeds")
    if b == layout.DEFAULT_BASE_SEED:
        return cfg
    if not cfg.model.get("sft_data"):
        raise ConfigError(f"base seed {b}: model {cfg.model.name} is not trained by the sft stage (no model.sft_data), "
                          "so it has one base only")
    cfg.model.name = layout.base_name(cfg.model.name, b)
    cfg.model.path = layout.base_path(cfg.model.path, b)
    cfg.sft.seed, cfg.sft.init_seed = b, b
    return cfg
