"""The benchmarks' one entry point (`python -m selm.bench NAME`), what every result records about its
machine and paths (selm.bench.machine), and the committed results free of machine paths."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from selm.bench import BENCHMARKS, main, parser_for
from selm.bench.machine import cpu_info, portable_command, portable_path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# an absolute path into a temporary folder, a checkout or a home directory
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:tmp|work|root|home|Users|private/var|var/folders)/")


def _source(module: str) -> Path:
    return SRC.joinpath(*module.split(".")).with_suffix(".py")


def test_every_benchmark_is_a_module_with_arguments_and_a_run():
    assert set(BENCHMARKS) == {"train", "generate", "decode", "growth", "floor", "stages"}
    for name, (module, what) in BENCHMARKS.items():
        tree = ast.parse(_source(module).read_text(encoding="utf-8"))
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"add_arguments", "run"} <= functions, f"{name}: {module} lacks add_arguments or run"
        assert what, name


def test_a_typo_names_the_benchmarks(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["trian", "--sizes", "toy"])
    message = str(raised.value)
    assert "unknown benchmark 'trian'" in message and "did you mean 'train'" in message
    assert message.endswith("known: train, generate, decode, growth, floor, stages")
    assert main([]) == 2  # no name: the list of benchmarks, as an error
    listed = capsys.readouterr().err
    assert all(f"\n  {name} " in listed for name in BENCHMARKS)


def test_a_benchmark_parses_its_own_options():
    _, parser = parser_for("floor")
    args = parser.parse_args(["--spec", "experiments/other.yaml"])
    assert (args.spec, args.out) == (Path("experiments/other.yaml"), Path("results/bench/training_floor.json"))
    assert parser.prog == "python -m selm.bench floor"


def test_the_module_entry_point(tmp_path):
    """`python -m selm.bench` as a user types it: a benchmark's help, and a typo's error."""
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    shown = subprocess.run([sys.executable, "-m", "selm.bench", "stages", "--help"], capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    assert shown.returncode == 0 and "--since" in shown.stdout
    typo = subprocess.run([sys.executable, "-m", "selm.bench", "stage"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert typo.returncode != 0 and "did you mean 'stages'" in typo.stderr


def test_the_machine_description_from_cpuinfo():
    text = ("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse4_2 avx2 fma avx512f amx_tile avx\n\n"
            "processor\t: 1\nmodel name\t: Example CPU 9000\nflags\t\t: fpu avx\n")
    assert cpu_info(text) == {"cpu_model": "Example CPU 9000",
                              "vector_extensions": ["amx_tile", "avx", "avx2", "avx512f", "fma"]}


def test_paths_are_recorded_relative_or_without_the_machines_folders(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "results").mkdir(parents=True)
    assert portable_path(checkout / "results" / "x.json", cwd=checkout) == "results/x.json"
    assert portable_path(Path("models/tiny-sft"), cwd=checkout) == "models/tiny-sft"
    assert portable_path("/tmp/tmpj7u34fa8/toy", cwd=checkout) == "<elsewhere>/toy"
    command = portable_command(["python", "-m", "selm.bench", "growth", "--out", "/tmp/cost_growth.json",
                                f"--world={checkout}/data/world", "--bf16-sizes", ""], cwd=checkout)
    assert command == ("python -m selm.bench growth --out '<elsewhere>/cost_growth.json' --world=data/world "
                       "--bf16-sizes ''")


def test_no_result_file_names_a_machine_path():
    """results/ is read on other machines: no temporary folder, checkout or home directory in it."""
    files = [p for p in sorted((ROOT / "results").rglob("*")) if p.is_file() and p.suffix in (".json", ".md", ".csv", ".txt")]
    assert files
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:120]}" for p in files
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if MACHINE_PATH.search(line)]
    assert found == []


def test_the_machine_path_pattern():
    assert MACHINE_PATH.search('"model": "/tmp/tmpj7u34fa8/toy"') and MACHINE_PATH.search("--out /work/x/y.json")
    assert MACHINE_PATH.search("/root/.cache") and not MACHINE_PATH.search("under /usr/bin/time -v")
    assert not MACHINE_PATH.search("results/tmp/x and cache/work/y")
