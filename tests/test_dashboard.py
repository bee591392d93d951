"""The W&B workspace in code (selm.dashboard): it builds without network, and every key a panel
names is one that offline runs of this code logged (a training iteration, its evaluation, the report
stage's figures), read back from the runs' .wandb files; a renamed metric fails here."""

from pathlib import Path

import pytest

from conftest import make_pairs, write_jsonl
from selm import dashboard
from selm.io import DataError

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "experiments" / "toy.yaml"


def test_workspace_builds_offline():
    import wandb_workspaces.workspaces as ws

    space = dashboard.workspace("someone", "selm", SPEC)
    assert [s.name for s in space.sections] == ["Training (grouped by alpha)", "Evaluation per iteration",
                                                "Report figures"]
    assert space.runset_settings.groupby == [ws.Metric("Group")]  # runs grouped by experiment cell
    named = dashboard.panel_keys(space)
    assert named["config"] == {"train.alpha", "iteration"}
    assert {"train/loss", "train/loss/dpo", "train/loss/optimism", "train/logps/pi_response",
            "train/logps/ref_response", "train/rewards/chosen", "train/rewards/margins"} <= named["metrics"]
    assert {k for k in named["metrics"] if k.startswith("eval/")} == set(dashboard.EVAL_METRICS)
    assert named["media"] == {f"figures/{s}" for s in ("figure1_concept", "figure2_heatmap_tiny-sft",
                                                       "figure2_heatmap_tiny-instruct", "figure3_alpha", "figure4_ird",
                                                       "figure5_own_samples", "figure6_ablations", "regime_map")}
    view = space._to_model().model_dump_json(by_alias=True)  # what `save()` sends, built here offline
    assert view.count('"groupBy":"train.value.alpha"') == len(dashboard.TRAINING_PANELS)


def test_a_file_that_is_not_a_run_is_refused(tmp_path):
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"not a run")
    with pytest.raises(DataError, match=r"run-x.wandb: not a W&B run file"):
        dashboard.logged_keys(path)


@pytest.mark.slow
def test_every_panel_key_was_logged_by_an_offline_run(tiny_model, tmp_path, monkeypatch):
    from selm.config import compose_config
    from selm.evaluate import evaluate_checkpoint, log_eval_to_wandb
    from selm.loop import iteration_config
    from selm.report.build import _log_figures_to_wandb, make_figures
    from selm.train import train_iteration
    from selm.world.build import build_world

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    world = tmp_path / "world"
    # 12 AlpacaEval instructions: with 4, the length-controlled win rate came out undefined (not logged)
    build_world(world, seed=0, n_sft=10, n_train_prefs=8, n_test_prefs=4, n_eval=12, n_mt_bench=2, n_lmeval=4)
    cfg = compose_config("loop", [
        f"model.path={tiny_model}", "model.offline_dpo_iteration=false", "train.alpha=0.5",
        "train.global_batch_size=4", "train.per_device_batch_size=4", "train.learning_rates.1=1e-3",
        f"paths.ref_cache_dir={tmp_path}/cache", "logger=wandb", f"logger.dir={tmp_path}", "scale.max_new_tokens=6",
        f"eval.alpaca_eval.data={world}/alpaca_eval.jsonl", f"eval.mt_bench.questions={world}/mt_bench.jsonl",
        f"eval.lmeval.world={world}", "eval.lmeval.limit=2"])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))  # with y_ref, as the loop's ranked pairs
    model = train_iteration(iteration_config(cfg, 1, Path(tiny_model), Path(pairs), tmp_path / "iter1" / "model"))
    log_eval_to_wandb(cfg, 1, evaluate_checkpoint(cfg, model, tmp_path / "ev", "m/iter1"))
    pngs, _ = make_figures(ROOT / "results" / "toy" / "analysis", tmp_path / "figures")
    _log_figures_to_wandb(pngs, "toy", cfg.logger)

    runs = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 3  # the training run, its evaluation (same run id), the report's figures
    space = dashboard.workspace("someone", "selm", SPEC)
    assert dashboard.missing_keys(space, runs) == []
    # and the check has teeth: without the evaluation and report runs, their panels' keys are missing
    training_only = [r for r in runs if "report" not in r.name][:1]
    missing = dashboard.missing_keys(space, training_only)
    assert set(dashboard.EVAL_METRICS) <= set(missing) and "figures/figure1_concept" in missing
    assert not [k for k in missing if k.startswith("train/") or k.startswith("config:")]
