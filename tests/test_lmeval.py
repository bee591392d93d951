"""lm-eval: the toy tasks through the real harness (hf backend, no mocks), and the paper suite's config.

The scoring tests use two tiny Llamas whose answers are known by construction, not by training:
every decoder layer is zeroed, so the residual stream at a position is that position's token
embedding and the model is a bigram table (next token from the current token only). Embeddings of
`<|assistant|>` and of the model's answer character are orthogonal unit vectors; the untied lm_head
maps the first to the answer character and the second to EOS, with margin ~28 nats over the other
101 tokens. The "right" model answers "a" then EOS after any prompt, the "wrong" one "b" then EOS.
Task data in the world's schema makes "a" the gold answer: generation and every multiple-choice row
(choices a, b, ab, ba, in rotating order so a positional bug cannot pass).
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from selm.benchmarks import lmeval
from selm.benchmarks.lmeval import TaskSpec, load_lmeval_config, run_lmeval, run_suite
from selm.tiny import build_tokenizer, build_tiny_model
from selm.world.build import build_world

ROOT = Path(__file__).resolve().parents[1]

# docs/paper.md section 3, typed in by hand: GSM8K 8-shot CoT, HellaSwag 10-shot, ARC-Challenge 25-shot,
# TruthfulQA 0-shot (mc2), EQ-Bench 0-shot, OpenBookQA 10-shot.
PAPER_FEWSHOT = {"gsm8k_cot": 8, "hellaswag": 10, "arc_challenge": 25, "truthfulqa_mc2": 0, "eq_bench": 0, "openbookqa": 10}
N_ROWS = 8


def bigram_model(out_dir, answer: str):
    """A tiny Llama that answers `answer` (one character) then EOS after `<|assistant|>`, whatever the prompt."""
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    assistant, char = tokenizer.convert_tokens_to_ids(["<|assistant|>", answer])
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.model.norm.weight.fill_(1.0)
        model.model.embed_tokens.weight[assistant, 0] = 1.0
        model.model.embed_tokens.weight[char, 1] = 1.0
        # After the final RMSNorm a unit basis vector becomes sqrt(32) ~ 5.7 times itself.
        model.lm_head.weight[char, 0] = 5.0
        model.lm_head.weight[tokenizer.eos_token_id, 1] = 5.0
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build_world(out, seed=0, n_sft=20, n_train_prefs=20, n_test_prefs=10, n_eval=10, n_mt_bench=4, n_lmeval=12)
    return out


@pytest.fixture(scope="module")
def gold_a_world(tmp_path_factory, tiny_world):
    """lm-eval files in the world's schema (checked against the real world's) whose gold answer is "a"."""
    out = tmp_path_factory.mktemp("gold_a")
    choices = ["a", "b", "ab", "ba"]
    mc, gen = [], []
    for i in range(N_ROWS):
        shown = choices[i % 4:] + choices[: i % 4]
        mc.append({"query": f"copy: a{i}", "choices": shown, "gold": shown.index("a"), "family": "copy"})
        gen.append({"query": f"copy: a{i}", "answer": "a", "family": "copy"})
    for name, rows in (("lmeval_mc.jsonl", mc), ("lmeval_gen.jsonl", gen)):
        real = json.loads((tiny_world / name).read_text().splitlines()[0])
        assert set(rows[0]) == set(real) and all(type(rows[0][k]) is type(real[k]) for k in real)
        write_rows(out / name, rows)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigram")
    return {"right": bigram_model(root / "right", "a"), "wrong": bigram_model(root / "wrong", "b")}


@pytest.fixture(scope="module")
def toy_runs(models, gold_a_world, tmp_path_factory):
    """Both models on both toy tasks, with the settings of eval/lmeval/toy.yaml."""
    out = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, model in models.items():
        record = run_suite(model, "toy", world=gold_a_world, out=out / f"{name}.json",
                            samples_out=out / f"{name}_samples.jsonl", batch_size=4)
        assert json.loads((out / f"{name}.json").read_text()) == record
        record["samples"] = [json.loads(line) for line in (out / f"{name}_samples.jsonl").read_text().splitlines()]
        runs[name] = record
    return runs


def test_right_model_scores_100_and_wrong_model_0(toy_runs):
    for name, expected in (("right", 1.0), ("wrong", 0.0)):
        tasks = toy_runs[name]["tasks"]
        assert tasks["selm_toy_mc"]["metrics"]["acc,none"] == expected
        assert tasks["selm_toy_mc"]["metrics"]["acc_norm,none"] == expected
        assert tasks["selm_toy_gen"]["metrics"]["exact_match,none"] == expected
        assert toy_runs[name]["mean"]["score"] == 100 * expected
        assert tasks["selm_toy_mc"]["n_samples"]["effective"] == N_ROWS


def test_prompts_go_through_the_chat_template_and_choices_end_with_eos(toy_runs):
    samples = toy_runs["right"]["samples"]
    mc = [s for s in samples if s["task"] == "selm_toy_mc"]
    gen = [s for s in samples if s["task"] == "selm_toy_gen"]
    context, continuation = mc[0]["arguments"][0]
    assert context == "<bos><|user|>copy: a0<|assistant|>"
    assert [c for _, c in mc[0]["arguments"]] == ["a<eos>", "b<eos>", "ab<eos>", "ba<eos>"]
    # The gold "a<eos>" is near-certain: both the character and EOS are tokens the model predicts
    # (so "<eos>" was parsed as the EOS token, not as five characters).
    best = mc[0]["filtered_resps"][0][0]
    assert best > -1e-3
    assert gen[0]["arguments"][0][0] == "<bos><|user|>copy: a0<|assistant|>"
    assert gen[0]["filtered_resps"] == ["a"]
    assert toy_runs["right"]["chat_template"].startswith("{{ bos_token }}")


def test_the_environment_report_is_made_once_per_process(models, gold_a_world, tmp_path, monkeypatch):
    """lm-eval asks torch for its environment report (seconds of subprocesses) on every call; the
    record keeps none of it, so a process that evaluates many checkpoints makes it once."""
    import torch.utils.collect_env as collect_env

    calls = []
    monkeypatch.setattr(collect_env, "get_pretty_env_info", lambda: calls.append(1) or "report")
    for name in ("right", "wrong"):
        run_suite(models[name], "toy", world=gold_a_world, out=tmp_path / f"{name}.json", batch_size=4)
    assert len(calls) == 1


def test_record_has_what_must_be_recorded(toy_runs, models, gold_a_world):
    record = toy_runs["right"]
    assert record["harness"] == {"name": "lm_eval", "version": "0.4.13"}
    assert record["model"] == str(models["right"].resolve())
    assert record["apply_chat_template"] is True and record["limit"] is None
    for name, file in (("selm_toy_mc", "lmeval_mc.jsonl"), ("selm_toy_gen", "lmeval_gen.jsonl")):
        task = record["tasks"][name]
        assert task["version"] == 1.0 and task["num_fewshot"] == 0
        assert task["dataset"]["dataset_kwargs"]["data_files"]["test"] == str(gold_a_world.resolve() / file)
    assert record["tasks"]["selm_toy_gen"]["generation_kwargs"] == {"until": ["\n"], "do_sample": False, "max_gen_toks": 32}
    assert record["tasks"]["selm_toy_mc"]["generation_kwargs"] is None
    assert record["tokenizer"]["eos_token"][0] == "<eos>"
    assert set(record["seeds"]) == {"random_seed", "numpy_seed", "torch_seed", "fewshot_seed"}


def test_cli_on_a_built_world_from_another_directory(tiny_world, tmp_path, monkeypatch):
    """The CLI with eval/lmeval/toy.yaml on a real (tiny) world, started outside the repository:
    data_files are made absolute, so the current directory does not matter."""
    model = build_tiny_model(tmp_path / "random", size="14k", seed=0)
    monkeypatch.chdir(tmp_path)
    assert lmeval.main(["--model", "random", "--config", "toy", "--world", str(tiny_world),
                        "--out", "out/lmeval.json", "--limit", "5"]) == 0
    record = json.loads((tmp_path / "out" / "lmeval.json").read_text())
    assert record["model"] == str(model.resolve()) and record["limit"] == 5
    for name in ("selm_toy_mc", "selm_toy_gen"):
        assert record["tasks"][name]["n_samples"] == {"original": 12, "effective": 5}
        assert 0 <= record["tasks"][name]["score"] <= 100


def test_paper_config_names_fewshot_and_metrics_exist_in_the_installed_registry():
    cfg = load_lmeval_config("paper")
    specs = [TaskSpec.parse(t) for t in cfg["tasks"]]
    assert {s.name: s.num_fewshot for s in specs} == PAPER_FEWSHOT
    assert cfg["apply_chat_template"] is False  # Open LLM Leaderboard v1: plain few-shot prompts
    manager = lmeval.task_manager([], list(PAPER_FEWSHOT))  # raises on an unknown name; loads no dataset
    lmeval.check_specs(manager, specs)  # raises on a metric the task's YAML does not declare
    metrics = {s.name: s.metric for s in specs}
    assert metrics["gsm8k_cot"] == "exact_match,strict-match"
    assert "exact_match,flexible-extract" in lmeval.declared_metrics(manager, "gsm8k_cot")
    assert metrics["truthfulqa_mc2"] == "acc,none" and metrics["eq_bench"] == "eqbench,none"
    assert all(metrics[n] == "acc_norm,none" for n in ("hellaswag", "arc_challenge"))
    assert metrics["openbookqa"] == "acc,none"  # the paper's Table 2 values fit acc (docs/evaluation.md)
    assert all(s.in_mean for s in specs) and {s.name: s.scale for s in specs}["eq_bench"] == 1


def test_toy_config_tasks_and_metrics():
    cfg = load_lmeval_config("toy")
    specs = [TaskSpec.parse(t) for t in cfg["tasks"]]
    assert [(s.name, s.num_fewshot, s.world_file) for s in specs] == [
        ("selm_toy_mc", 0, "lmeval_mc.jsonl"), ("selm_toy_gen", 0, "lmeval_gen.jsonl")]
    assert cfg["limit"] is None and cfg["apply_chat_template"] is True
    manager = lmeval.task_manager([lmeval.DEFAULT_INCLUDE_PATH], [s.name for s in specs])
    lmeval.check_specs(manager, specs)


def test_clear_errors_before_any_model_is_loaded(tmp_path, gold_a_world):
    mc = {"name": "selm_toy_mc", "world_file": "lmeval_mc.jsonl"}
    with pytest.raises(ValueError, match="give the world folder"):
        run_lmeval(tmp_path / "no-model", [mc])
    with pytest.raises(FileNotFoundError, match="lmeval_mc.jsonl does not exist"):
        run_lmeval(tmp_path / "no-model", [mc], world=tmp_path)
    with pytest.raises(KeyError, match="no task"):
        lmeval.task_manager([lmeval.DEFAULT_INCLUDE_PATH], ["selm_toy_nope"], include_defaults=False)
    with pytest.raises(KeyError, match="declares no metric"):
        run_lmeval(tmp_path / "no-model", [{**mc, "metric": "f1,none"}], world=gold_a_world)
    with pytest.raises(ValueError, match="unknown keys"):
        TaskSpec.parse({"name": "selm_toy_mc", "fewshot": 3})
    if lmeval.importlib.util.find_spec("vllm") is None:
        with pytest.raises(RuntimeError, match="vllm is not installed"):
            run_lmeval(tmp_path / "no-model", [mc], world=gold_a_world, backend="vllm")


def test_local_tasks_sit_in_eval_at_the_repository_root():
    """Every eval/lmeval suite's include_path resolves to a folder of eval/ (found from the checkout,
    like conf/), that folder holds the task YAMLs the suite names, and a folder that is not there is an
    error naming it."""
    import re

    for conf in sorted((ROOT / "eval" / "lmeval").glob("*.yaml")):
        suite = lmeval.load_lmeval_config(conf)
        folders = [lmeval.include_dir(entry) for entry in suite.get("include_path") or []]
        assert all(f.is_dir() and (ROOT / "eval") in f.parents for f in folders), (conf.name, folders)
        # the task name of each YAML (lm-eval's `!function` tags keep a YAML loader out of this)
        declared = {m.group(1) for f in folders for y in f.glob("*.yaml")
                    for m in [re.search(r"(?m)^task:\s*(\S+)", y.read_text())] if m}
        local = [t["name"] for t in suite["tasks"] if t["name"].startswith("selm_")]
        assert set(local) <= declared, (conf.name, local, declared)
    assert lmeval.TASKS_DIR == ROOT / "eval" / "lm_eval_tasks"
    with pytest.raises(FileNotFoundError, match="include_path eval/nope: no task folder"):
        lmeval.include_dir("eval/nope")
