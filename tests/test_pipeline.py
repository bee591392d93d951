"""The DVC pipeline's wiring: params.yaml is the Hydra composition DVC would write, stages read it."""

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from selm.compose import run_config
from selm.config import compose_config

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_is_the_composed_loop_config():
    # DVC's Hydra composition writes exactly this on `dvc exp run`; a stale params.yaml would make
    # `dvc repro` track values that the stages do not use. Regenerate with `make params`.
    cfg = compose_config("loop")
    OmegaConf.resolve(cfg)
    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == OmegaConf.to_container(cfg)


def test_dvc_config_enables_hydra_on_loop():
    text = (ROOT / ".dvc" / "config").read_text()
    assert "[hydra]" in text and "enabled = true" in text and "config_name = loop" in text


def test_stage_config_takes_shared_values_from_params_and_grid_item(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"beta": 0.2}, "eval": {"n_prompts": 7}}))
    cfg = run_config(params, groups={"model": "tiny-instruct"}, alpha=0.01, seed=3)
    assert cfg.model.name == "tiny-instruct"
    assert (cfg.train.beta, cfg.train.alpha, cfg.train.seed, cfg.eval.n_prompts) == (0.2, 0.01, 3, 7)
    assert cfg.run_dir == "runs/adhoc/tiny-instruct/iterative/alpha0.01/seed3"
    # an alpha in params.yaml would be overridden by the grid item's: refused, not silently ignored
    params.write_text(yaml.safe_dump({"train": {"beta": 0.2, "alpha": 0.5}}))
    with pytest.raises(ValueError, match="train.alpha is set per run by the grid"):
        run_config(params, groups={"model": "tiny-instruct"}, alpha=0.01, seed=3)


def test_dvc_experiment_outs_hold_every_run_and_persist():
    from selm.experiments import expand, load_experiments

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    spec = load_experiments(ROOT / "experiments" / "toy.yaml")
    # one stage runs every experiment of the spec (`--all`): its outs must name each one, and
    # persist: DVC must not delete a crashed run's finished iterations before rerunning the stage
    assert stages["experiments"]["cmd"].endswith("experiment --all")
    assert stages["experiments"]["outs"] == [{f"{top}/{name}": {"persist": True}}
                                             for name in spec.experiments for top in ("runs", "evals")]
    for name in spec.experiments:
        for run in expand(spec, name):
            assert run.run_dir.parts[:2] == ("runs", name) and run.eval_dir.parts[:2] == ("evals", name)


def test_stage_set_overrides_after_params(tmp_path):
    cfg = run_config(tmp_path / "absent.yaml", groups={"model": "tiny-sft"}, dotlist=["eval.lmeval.config=evalcheck", "eval.alpaca_eval.limit=5"])
    assert (cfg.eval.lmeval.config, cfg.eval.alpaca_eval.limit) == ("evalcheck", 5)


def test_evalcheck_lmeval_suite_closes_choices_with_chatml_end():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lm_utils", ROOT / "eval" / "lm_eval_tasks" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    assert utils.choices_then_im_end({"choices": ["ab", "ba"]}) == ["ab<|im_end|>", "ba<|im_end|>"]
    evalcheck = yaml.safe_load((ROOT / "eval" / "lmeval" / "evalcheck.yaml").read_text())
    assert [t["name"] for t in evalcheck["tasks"]] == ["selm_toy_mc_chatml", "selm_toy_gen"]


def test_make_test_fast_leaves_out_the_slow_tests_and_make_test_runs_all():
    import re
    import tomllib

    makefile = (ROOT / "Makefile").read_text()
    recipes = dict(re.findall(r"^([\w-]+):[^\n]*\n\t([^\n]+)", makefile, flags=re.M))
    variables = dict(re.findall(r"^(\w+) [:?]?= (.+)$", makefile, flags=re.M))
    # the suite on TEST_WORKERS processes, a test file per process (module fixtures built once)
    assert variables["PYTEST"] == "$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile"
    assert variables["TEST_WORKERS"] == "2"
    assert recipes["test-fast"] == '$(PYTEST) -m "not slow"'
    assert recipes["test"] == "$(PYTEST)"  # no marker expression: every test
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("slow:") for m in markers)
