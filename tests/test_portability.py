"""The same bytes on any x86-64 CPU with AVX2: a fresh SFT base equals the one `make repro` recorded
(results/toy/checksums.json, with the CPU that made it), and the record says what it needs to."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selm import determinism, layout, provenance
from selm.report import checksums

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "results" / "toy" / "checksums.json"


def test_the_record_names_the_machine_the_mode_and_every_file():
    record = json.loads(RECORD.read_text())
    assert record["numerics"] == "portable" and record["format"] == checksums.FORMAT
    assert record["machine"]["cpu_model"] and {"avx2", "fma"} <= set(record["machine"]["vector_extensions"])
    files = set(record["md5"])
    for base in ("tiny-sft", "tiny-instruct"):
        assert {f"models/{base}.init/model.safetensors", f"models/{base}/model.safetensors"} <= files
        assert 0 < record["greedy_r*"][base] < 1
    final = [f for f in files if f.startswith("runs/main/tiny-sft/alpha0.1/seed42/")]
    assert len(final) == 1 and all(len(v) == 32 for v in record["md5"].values())
    assert not any(p.startswith("/") for p in files)  # relative paths only


def test_checksums_of_a_finished_pipeline(tmp_path, monkeypatch):
    """md5 as hashlib computes it, of the bases and the last trained iteration of main's SELM run."""
    monkeypatch.chdir(tmp_path)
    payload = {}
    for folder in ("models/b.init", "models/b", "runs/main/tiny-sft/alpha0.1/seed1/iter1/model",
                   "runs/main/tiny-sft/alpha0.1/seed1/iter2/model"):
        (tmp_path / folder).mkdir(parents=True)
        payload[folder] = folder.encode() * 3
        (tmp_path / folder / "model.safetensors").write_bytes(payload[folder])
    (tmp_path / "runs/main/tiny-sft/alpha0.1/seed1/iter3").mkdir()  # started, not trained: not the final one
    (tmp_path / "models/b/headroom.json").write_text(json.dumps({"greedy": {"mean": 0.25}}))
    (tmp_path / "spec.yaml").write_text("bases: [b]\nseeds: [1, 2]\n")
    record = checksums.checksums(Path("spec.yaml"))
    expect = {f"{k}/model.safetensors": hashlib.md5(v).hexdigest() for k, v in payload.items() if "iter1" not in k}
    assert record["md5"] == expect and record["greedy_r*"] == {"b": 0.25}
    assert record["numerics"] == determinism.mode() and record["machine"]["cores"] >= 1
    shutil.rmtree(tmp_path / "runs/main/tiny-sft/alpha0.1/seed1")
    with pytest.raises(FileNotFoundError, match="seed1: no trained iteration"):
        checksums.final_checkpoint(layout.RUNS / "main/tiny-sft/alpha0.1/seed1")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_fresh_sft_base_has_the_recorded_bytes(tmp_path, record_property):
    """The toy pipeline's world and `sft` stage for tiny-sft, in a fresh folder, in the default
    (portable) mode: its initial and trained weights and its greedy r* equal the recorded ones, which
    were made on the CPU the record names (any x86-64 CPU with AVX2 and FMA must give them)."""
    flags = determinism.cpu_flags()
    if not {"avx2", "fma"} <= flags:
        pytest.skip("this CPU lacks AVX2 or FMA, which the portable numerical mode needs")
    record = json.loads(RECORD.read_text())
    env = {k: v for k, v in os.environ.items() if k not in set(determinism.PORTABLE) | {"SELM_NUMERICS"}}
    run = lambda *cmd: subprocess.run([sys.executable, "-m", *cmd], cwd=tmp_path, env=env,  # noqa: E731
                                      capture_output=True, text=True)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for done in (run("selm.world.build", "--out", "data/world", "--seed", "0"),
                 run("selm.cli.stage", "sft", "tiny-sft")):
        assert done.returncode == 0, done.stderr[-3000:]
    here = provenance.machine()
    for folder in ("models/tiny-sft.init", "models/tiny-sft"):
        name = f"{folder}/model.safetensors"
        assert _md5(tmp_path / name) == record["md5"][name], (
            f"{name} made on {here['cpu_model']} differs from the one recorded on {record['machine']['cpu_model']}")
    headroom = json.loads((tmp_path / "models/tiny-sft/headroom.json").read_text())
    assert headroom["greedy"]["mean"] == record["greedy_r*"]["tiny-sft"]
    # said at the end of the run (conftest.py), so that a CI log shows on which CPU the bytes held
    record_property("portable_bytes", f"tiny-sft made on {here['cpu_model']} ({' '.join(here['vector_extensions'])}) "
                                      f"equals the record made on {record['machine']['cpu_model']}")


def test_the_committed_report_read_the_committed_between_base_spread():
    """bases.json is the controls pipeline's output, not a DVC dep of the toy analyze: the claims
    committed beside it must have been computed from exactly this file."""
    from selm.provenance import file_sha256

    claims = json.loads((ROOT / "results" / "toy" / "analysis" / "claims.json").read_text())
    bases = ROOT / "results" / "toy" / "controls" / "bases.json"
    assert claims["between_bases"]["status"] == "measured"
    assert claims["between_bases"]["sha256"] == file_sha256(bases)
