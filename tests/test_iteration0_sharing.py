"""Which runs of a grid share one offline-DPO iteration 0: those whose iteration-0 settings agree
(selm.loop.iteration0_identity), whatever their later iterations' learning rates, alphas or variants."""

from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from selm.experiments import expand, load_experiments
from selm.loop import iteration0_identity, iteration0_train
from selm.provenance import digest

ROOT = Path(__file__).resolve().parents[1]


def iteration0_groups(spec_file: str, seed: int) -> list[set[str]]:
    """The grid's runs of `seed` with an iteration 0, grouped by its identity. The base's fingerprint and
    the slice's rows (files the test does not have) are stood in for by what selects them in the config."""
    spec = load_experiments(ROOT / spec_file)
    groups = defaultdict(set)
    for name in spec.experiments:
        for run in expand(spec, name):
            if run.seed != seed:
                continue
            cfg = run.config(ROOT / "params.yaml")
            if not cfg.model.offline_dpo_iteration:
                continue
            data = OmegaConf.to_container(cfg.data, resolve=True)
            rows = [{"train_prefs": data["train_prefs"], "families": data["families"], "slice_size": data["slice_size"]}]
            identity = iteration0_identity(cfg, cfg.model.path, rows, code="this checkout")
            groups[digest(identity)].add(f"{name}/{run.cell}")
    return sorted(groups.values(), key=len, reverse=True)


def test_the_paper_grid_trains_one_zephyr_iteration0_for_every_cell_whose_settings_agree():
    # experiments/paper.yaml: every Zephyr cell starts from paper_zephyr's iteration 0 except batch128
    # (global batch 128) and six_iterations (slices of 8,733 rows); constant_lr and decaying_lr change
    # only the learning rates of iterations 1..3 (their iteration 0 is 5e-7, as paper_main's).
    assert iteration0_groups("experiments/paper.yaml", seed=42) == [
        {"paper_main/zephyr-7b-sft/alpha0.0", "paper_main/zephyr-7b-sft/alpha0.001",
         "paper_alpha/zephyr-7b-sft/alpha0.01", "paper_alpha/zephyr-7b-sft/alpha0.005",
         "paper_alpha/zephyr-7b-sft/alpha0.0005", "paper_alpha/zephyr-7b-sft/alpha0.0001",
         "paper_ablations/rank_w_ref/alpha0.0", "paper_ablations/stepwise/alpha0.0", "paper_ablations/offline/alpha0.0",
         "paper_ablations/constant_lr/alpha0.0", "paper_ablations/decaying_lr/alpha0.0"},
        {"paper_ablations/batch128/alpha0.0"},
        {"paper_ablations/six_iterations/alpha0.0"},
    ]


def test_the_toy_grid_shares_as_before_and_decaying_lr_joins_main():
    # experiments/toy.yaml, one seed: main's tiny-sft, the alpha sweep, the label/reference variants and
    # sampled_y_ref (generation only) share; batch32, six_iterations, weak_corpus (another corpus) and
    # hard_tasks (other families) train their own; decaying_lr (3e-5 at iteration 0, as main) now shares.
    main = {"main/tiny-sft/alpha0.0", "main/tiny-sft/alpha0.1",
            *(f"alpha/tiny-sft/alpha{a}" for a in ("0.005", "0.01", "0.3", "1.0")),
            "ablations/rank_w_ref/alpha0.0", "ablations/stepwise/alpha0.0", "ablations/offline/alpha0.0",
            "ablations/decaying_lr/alpha0.0", *(f"regimes/sampled_y_ref/alpha{a}" for a in ("0.0", "0.1", "1.0"))}
    assert iteration0_groups("experiments/toy.yaml", seed=43) == [
        main,
        {f"regimes/weak_corpus/alpha{a}" for a in ("0.0", "0.1", "1.0")},
        {f"regimes/hard_tasks/alpha{a}" for a in ("0.0", "0.1", "1.0")},
        {"ablations/batch32/alpha0.0"},
        {"ablations/six_iterations/alpha0.0"},
    ]


def test_iteration0_keeps_its_own_learning_rate_only():
    cfg = OmegaConf.create({"train": {"alpha": 0.1, "beta": 0.1, "learning_rates": [3e-5, 1e-4, 2e-5]}})
    assert iteration0_train(cfg) == {"beta": 0.1, "learning_rate": 3e-5}
