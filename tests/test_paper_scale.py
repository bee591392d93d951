"""The paper scale's launch configs, DVC pipeline and entry config, checked as far as a CPU allows:
accelerate configs load and match the training config, the docs/paper-scale.md's launch command parses and
composes, scales/paper/dvc.yaml parses with dvc and every command names a module (or tool) that
exists and overrides that compose, and vLLM receives the configured tensor parallelism."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from selm.config import CONF_DIR, compose_config
from selm.train import gradient_accumulation_steps

ROOT = CONF_DIR.parent
ACCELERATE = {"zero3_8gpu.yaml": (1, 8), "zero3_multinode.yaml": (2, 16)}  # file -> (machines, processes)


@pytest.mark.parametrize("name", sorted(ACCELERATE))
def test_accelerate_configs(name):
    from accelerate.commands.config.config_args import load_config_from_file

    machines, processes = ACCELERATE[name]
    cfg = load_config_from_file(str(CONF_DIR / "accelerate" / name))  # accelerate's own loader: known keys only
    assert (cfg.num_machines, cfg.num_processes) == (machines, processes)
    assert cfg.distributed_type == "DEEPSPEED" and cfg.mixed_precision == "bf16"
    ds = cfg.deepspeed_config
    assert ds["zero_stage"] == 3
    assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
    for experiment in ("paper_zephyr", "paper_llama3"):
        train = compose_config("train", [f"preset={experiment}", "pairs=x"]).train
        assert ds["gradient_clipping"] == train.max_grad_norm and train.precision == "bf16"
        # the paper's global batch on this many GPUs (Zephyr 256 = 8 x 4 x 8; on 16 GPUs x 2)
        assert gradient_accumulation_steps(train, processes) * train.per_device_batch_size * processes \
            == train.global_batch_size
    if machines > 1:  # placeholders given on each node's command line, never a wrong default host
        assert cfg.machine_rank == 0 and cfg.main_process_ip is None


def paper_section() -> str:
    return (ROOT / "docs" / "paper-scale.md").read_text()


def test_readme_launch_command_parses_and_composes():
    from accelerate.commands.launch import launch_command_parser

    commands = [line.strip() for line in paper_section().splitlines() if line.strip().startswith("accelerate launch")]
    assert commands, "docs/paper-scale.md shows no accelerate launch command"
    for command in commands:
        args = launch_command_parser().parse_args(shlex.split(command)[2:])
        assert (ROOT / args.config_file).is_file(), args.config_file
        assert args.module and args.training_script == "selm.train"
        assert args.training_script_args[0] == "--config"  # the iteration config the loop writes
    # the launcher the paper's train configs give the loop is such a command, with a real config file
    for experiment in ("paper_zephyr", "paper_llama3"):
        launcher = compose_config("train", [f"preset={experiment}"]).train.launcher
        args = launch_command_parser().parse_args(shlex.split(launcher)[2:] + ["-m", "selm.train"])
        assert (ROOT / args.config_file).is_file() and args.config_file.endswith("zero3_8gpu.yaml")


def paper_stages():
    from dvc.repo import Repo

    return {s.name: s for s in Repo(str(ROOT)).stage.collect("scales/paper/dvc.yaml")}


def test_dvc_pipeline_parses_and_builds_a_graph():
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    dvc = [sys.executable, "-m", "dvc"]
    listed = subprocess.run([*dvc, "stage", "list", "scales/paper/dvc.yaml"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    for name in ("ultrafeedback", "alpaca_data", "mt_bench_data", "models@pairrm", "experiment@paper_main",
                 "experiment@paper_alpha", "experiment@paper_ablations", "analyze", "report",
                 "eval_base@llama3-8b-instruct"):
        assert f"scales/paper/dvc.yaml:{name} " in listed.stdout
    # the whole repository's graph (every dvc.yaml: no output claimed twice), upstream of the report
    dag = subprocess.run([*dvc, "dag", "--dot", "scales/paper/dvc.yaml:report"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert dag.returncode == 0, dag.stderr
    for upstream in ("experiment@paper_main", "models@zephyr-7b-sft", "models@pairrm", "ultrafeedback", "alpaca_data",
                     "analyze", "eval_base@zephyr-7b-sft"):
        assert upstream in dag.stdout


def _overrides(argv: list[str]) -> tuple[str, list[str]]:
    """--config-name and the Hydra overrides of a selm.cli.loop / selm.cli.evaluate command."""
    name = argv[argv.index("--config-name") + 1]
    rest = [a for a in argv[argv.index("--config-name") + 2:] if a != "--base" and not a.startswith("hydra.")]
    return name, rest


def test_every_stage_command_exists_and_composes():
    from selm.experiments import expand, load_experiments

    params = OmegaConf.load(ROOT / "scales/paper/params.yaml")
    spec = load_experiments(ROOT / "experiments/paper.yaml")
    stages = paper_stages()
    assert {n.split("@")[0] for n in stages} == {"ultrafeedback", "alpaca_data", "mt_bench_data", "models", "experiment",
                                                "analyze", "report", "eval_base"}
    for name, stage in stages.items():
        argv = shlex.split(stage.cmd)
        if argv[0] == "python":
            assert argv[1] == "-m" and importlib.util.find_spec(argv[2]) is not None, f"{name}: {argv[2]}"
        else:
            assert argv[:2] == ["hf", "download"] and (Path(sys.executable).parent / "hf").exists(), name
        outs = [str(o.def_path) for o in stage.outs]
        deps = [str(d.def_path) for d in stage.deps]
        kind, _, key = name.partition("@")
        if kind == "experiment":
            assert outs == [f"runs/{key}", f"evals/{key}"]
            for run in expand(spec, key):  # every run composes, lands in the stage's outputs, reads its deps
                cfg = run.config(None)
                assert cfg.run_dir.startswith(f"runs/{key}/") and cfg.model.path in deps and cfg.ranker.path in deps
                # the 61,135 rows split evenly over the run's slices (iteration 0 + SELM iterations): 15,283 for
                # Zephyr's 4, 20,378 for Llama-3's 3, 8,733 for Figure 6's six_iterations' 7
                slices = len(cfg.model.iterations) + int(cfg.model.offline_dpo_iteration)
                assert cfg.data.slice_size == 61_135 // slices and cfg.data.train_prefs.startswith("data/ultrafeedback")
        elif kind == "eval_base":
            cfg = compose_config(*_overrides(argv))
            assert cfg.model.path in deps and outs == [f"evals/base/{cfg.model.name}"]
        elif kind == "models":  # what is fetched is what the configs name
            hub_id = params.models[key].hub_id
            source = (OmegaConf.load(CONF_DIR / "ranker/pairrm.yaml") if key == "pairrm"
                      else OmegaConf.load(CONF_DIR / f"model/{key}.yaml")).path
            assert hub_id == source and outs == [f"models/{key}"]


def test_paper_grid_has_the_papers_alphas_and_hyperparameters():
    from selm.experiments import expand, load_experiments

    spec = load_experiments(ROOT / "experiments/paper.yaml")
    runs = {r.name: r.config(None) for n in spec.experiments for r in expand(spec, n)}
    main = {(c.model.name, c.train.alpha) for n, c in runs.items() if n.startswith("paper_main/")}
    assert main == {("zephyr-7b-sft", 0.0), ("zephyr-7b-sft", 0.001), ("llama3-8b-instruct", 0.0),
                    ("llama3-8b-instruct", 0.0001)}  # docs/paper.md: alpha 0.001 Zephyr, 0.0001 Llama-3; 0 = DPO
    fig3 = {c.train.alpha for n, c in runs.items() if n.startswith(("paper_alpha/", "paper_main/zephyr"))}
    # the searched {0.005, 0.001, 0.0005, 0.0001} and Figure 3's plotted {0.01, 0.001, 0.0005, 0.0001, 0}
    assert fig3 == {0.01, 0.005, 0.001, 0.0005, 0.0001, 0.0}
    assert {float(p.rsplit("alpha", 1)[1]) for p in spec.figures.figure3_alpha.cells} == fig3
    assert {c.variant.name for n, c in runs.items() if n.startswith("paper_ablations/")} == \
        {"rank_w_ref", "stepwise", "offline", "iterative"}
    for name, cfg in runs.items():
        assert cfg.train.beta == 0.01 and cfg.train.seed == 42 and cfg.ranker.name == "pairrm"
        if not name.startswith("paper_ablations/batch128/"):
            assert cfg.train.global_batch_size == (256 if cfg.model.name == "zephyr-7b-sft" else 128)
        assert cfg.eval.n_prompts == 2000 and cfg.eval.coverage_samples == 0  # the 2k test split, no r*



def test_figure6_panels_batch_schedule_and_iterations():
    """Figure 6's other panels as Zephyr cells: batch 128 vs 256, the same peak lr each iteration vs
    Llama-3's 5:3:1 decay, 6 iterations on smaller slices of the 61,135 rows."""
    from selm.experiments import expand, load_experiments
    from selm.loop import slice_index
    from selm.train import gradient_accumulation_steps

    spec = load_experiments(ROOT / "experiments/paper.yaml")
    cfg = {r.cell.split("/")[0]: r.config(None) for r in expand(spec, "paper_ablations")}
    main = next(r.config(None) for r in expand(spec, "paper_main") if r.cell == "zephyr-7b-sft/alpha0.0")
    # 128 pairs per step = 8 per device x 2 accumulation x 8 GPUs; paper_main's 256 = 8 x 4 x 8
    assert (cfg["batch128"].train.global_batch_size, main.train.global_batch_size) == (128, 256)
    assert gradient_accumulation_steps(cfg["batch128"].train, 8) == 2 and gradient_accumulation_steps(main.train, 8) == 4
    assert list(main.train.learning_rates) == [5e-7, 5e-7, 5e-7, 1e-7]  # the paper's Zephyr: neither end of the panel
    assert list(cfg["constant_lr"].train.learning_rates) == [5e-7] * 4
    decay = list(cfg["decaying_lr"].train.learning_rates)
    assert decay[0] == 5e-7 and [x / 1e-7 for x in decay[1:]] == pytest.approx([5, 3, 1])  # Llama-3's 5e-7, 3e-7, 1e-7
    six = cfg["six_iterations"]
    assert list(six.model.iterations) == [1, 2, 3, 4, 5, 6] and six.model.offline_dpo_iteration
    # 7 slices (iteration 0 + 6) of 61,135 // 7 = 8,733: the last one ends at row 7 x 8,733 = 61,131 <= 61,135,
    # 4 rows unused; paper_main's 4 slices of 15,283 use 61,132
    assert six.data.slice_size == 61_135 // 7 == 8_733 and (slice_index(6, True) + 1) * 8_733 == 61_131
    assert main.data.slice_size * 4 == 61_132
    assert len(six.train.learning_rates) == 7 and six.train.learning_rates[6] == 1e-7
    for name in ("batch128", "constant_lr", "decaying_lr", "six_iterations"):
        assert cfg[name].model.name == "zephyr-7b-sft" and cfg[name].train.alpha == 0.0
        assert cfg[name].train.lr_scheduler == "cosine"  # restarted every iteration in every cell
    variants = set(spec.figures.figure6_ablations.variants)
    assert {f"paper_ablations/{n}/alpha0.0" for n in cfg} == variants

def test_loop_paper_entry_config():
    for experiment, name in (("paper_zephyr", "zephyr-7b-sft"), ("paper_llama3", "llama3-8b-instruct")):
        cfg = compose_config("loop_paper", [f"preset={experiment}"])
        assert (cfg.model.name, cfg.model.path) == (name, f"models/{name}")
        assert cfg.data.train_prefs == "data/ultrafeedback/train_prefs.jsonl"
        assert (cfg.ranker.name, cfg.eval.lmeval.config, cfg.judge.name) == ("pairrm", "paper", "openai")
        assert cfg.scale.generation_backend == "vllm" and cfg.scale.max_new_tokens == 1024
        assert cfg.generation.do_sample is False  # greedy y_ref, as the authors
    assert compose_config("loop").ranker.name == "oracle"  # the default (toy) composition is untouched


def test_vllm_gets_tensor_parallelism_from_config(monkeypatch):
    from selm.generation import VLLMBackend, backend_from_config

    calls = []

    class FakeLLM:  # records what the backend passes to vllm.LLM
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def get_tokenizer(self):
            return None

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    paper = compose_config("loop_paper", ["preset=paper_llama3"])
    assert paper.generation.data_parallel == 8 and paper.scale.backend_kwargs.tensor_parallel_size == 1  # a GPU each
    cfg = compose_config("loop_paper", ["preset=paper_llama3", "scale.data_parallel=1",
                                        "scale.backend_kwargs.tensor_parallel_size=2"])
    backend = backend_from_config(cfg, "models/llama3-8b-instruct")
    assert isinstance(backend, VLLMBackend)
    assert calls == [{"model": "models/llama3-8b-instruct", "tensor_parallel_size": 2, "dtype": "bfloat16",
                      "gpu_memory_utilization": 0.9}]


def test_evaluate_cli_mirrors_run_folders():
    from selm.layout import eval_dir_of  # what the command's evaluations of a run folder go to

    assert eval_dir_of("runs/paper/zephyr-selm") == Path("evals/paper/zephyr-selm")
    with pytest.raises(ValueError, match=re.escape("run_dir=elsewhere/x: expected a folder under runs/")):
        eval_dir_of("elsewhere/x")
    from selm.experiments import evaluate_run  # what the command calls for a run's checkpoints

    assert callable(evaluate_run)
