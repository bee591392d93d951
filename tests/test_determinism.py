"""The deterministic mode pins the numerical settings before torch is imported."""

import os
import subprocess
import sys

import pytest

from selm import determinism


def test_apply_sets_the_pins_only_when_asked():
    env = {}
    assert determinism.apply(env) is False and env == {}
    env = {"SELM_DETERMINISTIC": "1"}
    assert determinism.apply(env) is True
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env["MKL_CBWR"] == "COMPATIBLE" and env["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="needs OMP_NUM_THREADS=1, but the environment sets '4'"):
        determinism.apply({"SELM_DETERMINISTIC": "1", "OMP_NUM_THREADS": "4"})  # a contradiction is not overridden
    with pytest.raises(ValueError, match="expected 0 or 1"):
        determinism.apply({"SELM_DETERMINISTIC": "yes"})


def test_entry_points_apply_it_before_torch():
    env = {**os.environ, "SELM_DETERMINISTIC": "1"}
    for key in determinism.SETTINGS:
        env.pop(key, None)
    code = "import selm.cli, torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["DEFAULT", "1"]
