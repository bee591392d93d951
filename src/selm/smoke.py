"""Steps under hard time budgets, each with an assertion on what it wrote: the runner of the GPU
smoke test (selm.cli.smoke, scripts/gpu-smoke.sh).

Every step is one command run in its own process group, with its output in `logs/<step>.log`, then
its check (a function of the work folder that raises `CheckFailed` naming the file and key that
are wrong), then a look at the GPU's memory, which must be back under `baseline + slack` MiB. A
step that runs past its own budget, or past the total budget, has its whole process group killed
(SIGTERM, then SIGKILL) and is reported as over budget by name. A watchdog thread enforces the total
budget on the runner itself: at the deadline it kills the running step's group, and if the runner
has not finished a few seconds later (a check that hangs) it exits the process with status 124.
The first failure stops the sequence: later steps are reported as not run.

A step with `training_marker` is watched while it runs: the GPU's memory in use is sampled twice a
second into `logs/<step>.memory.jsonl`, each sample saying whether a process of the step's group has
the marker as an argument (`selm.train`: the launched training). While training runs, memory in use
must stay under `training_fraction` of the GPU's: a generation engine that kept its memory (vLLM
takes `gpu_memory_utilization` of it) shows there.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

GRACE_S = 5.0  # between SIGTERM and SIGKILL, and the watchdog's wait for the runner after the deadline


class CheckFailed(Exception):
    """A step's output is not what it should be (the message names the file and the key)."""


class Gpu(Protocol):
    def memory(self) -> tuple[int, int]:
        """(MiB in use, MiB in all) on the GPU the steps use."""


class NvidiaSmi:
    """The first GPU's memory as `nvidia-smi` reports it (every process's, not only this one's)."""

    def memory(self) -> tuple[int, int]:
        done = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise CheckFailed(f"nvidia-smi failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
        used, total = done.stdout.splitlines()[0].split(",")
        return int(used), int(total)


class FileGpu:
    """The dry run's GPU: MiB in use is the number in `path` (0 while there is none), of `total`."""

    def __init__(self, path: Path, total: int = 81559):
        self.path, self.total = Path(path), total

    def memory(self) -> tuple[int, int]:
        return (int(self.path.read_text()) if self.path.exists() else 0), self.total


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]
    budget_s: float
    check: Callable[[Path], None] | None = None
    training_marker: str | None = None  # sample GPU memory while a process with this argument runs
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    name: str
    status: str  # OK, FAIL, OVER BUDGET, NOT RUN
    seconds: float = 0.0
    detail: str = ""


def group_argvs(pgid: int) -> list[list[str]]:
    """The argument lists of the live processes of process group `pgid` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append((entry / "cmdline").read_bytes().decode(errors="replace").split("\0"))
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process ended while it was read
    return found


def kill_group(pgid: int) -> None:
    """SIGTERM to the group, SIGKILL to what is left after GRACE_S."""
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return  # the group is gone
        end = time.monotonic() + wait
        while time.monotonic() < end and group_argvs(pgid):
            time.sleep(0.1)


def peak_while_training(samples: list[dict]) -> int | None:
    """The most MiB in use among the samples taken while training ran; None when none was."""
    during = [s["used_mib"] for s in samples if s["training"]]
    return max(during) if during else None


def finite(value, where: str) -> float:
    """`value` as a float, or CheckFailed naming `where` when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckFailed(f"{where} is {value!r}, not a finite number")
    return float(value)


def read_json(path: Path):
    if not path.is_file():
        raise CheckFailed(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckFailed(f"{path}: not JSON ({e})") from e


class Runner:
    """Runs `steps` in `work` under `total_budget_s`; `run()` prints one line per step and returns
    the exit status (0 all OK, 1 a step failed; the watchdog exits with 124)."""

    def __init__(self, work: Path, steps: list[Step], total_budget_s: float, gpu: Gpu, *,
                 memory_slack_mib: int = 1024, training_fraction: float = 0.5, sample_s: float = 0.5,
                 out=sys.stdout):
        budgets = sum(s.budget_s for s in steps)
        if budgets > total_budget_s:
            raise ValueError(f"the steps' budgets add up to {budgets:.0f} s, more than the total budget of "
                             f"{total_budget_s:.0f} s: a step could then run out of time that is not its own")
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names repeat: {names}")
        self.work, self.steps, self.total = Path(work), steps, total_budget_s
        self.gpu, self.slack, self.fraction, self.sample_s, self.out = gpu, memory_slack_mib, training_fraction, sample_s, out
        self.logs = self.work / "logs"
        self.results: list[Result] = []
        self._pgid: int | None = None  # the running step's group
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._expired = threading.Event()

    # ------------------------------------------------------------------ the whole sequence

    def run(self) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.deadline = self.start + self.total
        threading.Thread(target=self._watchdog, daemon=True, name="smoke-watchdog").start()
        previous = signal.signal(signal.SIGTERM, self._terminated)
        try:
            self.baseline = self.gpu.memory()[0]
            self._say(f"GPU memory in use before the first step: {self.baseline} MiB; every step must leave at most "
                      f"{self.baseline + self.slack} MiB in use; total budget {self.total:.0f} s")
            failed = False
            for step in self.steps:
                if failed:
                    self._report(Result(step.name, "NOT RUN", detail="an earlier step failed"))
                    continue
                result = self._run_step(step)
                self._report(result)
                failed = result.status != "OK"
            ok = sum(r.status == "OK" for r in self.results)
            self._say(f"smoke: {ok} of {len(self.steps)} steps OK in {time.monotonic() - self.start:.0f} s "
                      f"(budget {self.total:.0f} s); logs in {self.logs}")
            self._write_summary()
            return 0 if ok == len(self.steps) else 1
        finally:
            self._finished.set()
            signal.signal(signal.SIGTERM, previous)

    def _run_step(self, step: Step) -> Result:
        log = self.logs / f"{safe(step.name)}.log"
        t0 = time.monotonic()
        step_deadline = min(t0 + step.budget_s, self.deadline)
        with log.open("w") as f:
            f.write(f"$ {' '.join(step.argv)}\n")
            f.flush()
            proc = subprocess.Popen(step.argv, cwd=self.work, stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, **step.env}, process_group=0)
            with self._lock:
                self._pgid = proc.pid
            sampler = self._start_sampler(step, proc.pid) if step.training_marker else None
            try:
                proc.wait(timeout=max(0.0, step_deadline - time.monotonic()))
                over = None
            except subprocess.TimeoutExpired:
                over = "step" if step_deadline < self.deadline else "total"
            kill_group(proc.pid)  # what it left behind (an engine's process, a launched rank) goes too
            proc.wait()
            with self._lock:
                self._pgid = None
            samples = sampler() if sampler else []
        seconds = time.monotonic() - t0
        if over or self._expired.is_set():
            budget = (f"its {step.budget_s:.0f} s budget" if over == "step" else
                      f"the total budget of {self.total:.0f} s (at {time.monotonic() - self.start:.0f} s)")
            return Result(step.name, "OVER BUDGET", seconds, f"killed with its process group: it ran past {budget}")
        if proc.returncode != 0:
            return Result(step.name, "FAIL", seconds, f"exit status {proc.returncode}; {tail(log)}")
        try:
            if step.check:
                step.check(self.work)
            if step.training_marker:
                self._check_training(step, samples)
            used = self.gpu.memory()[0]
            if used > self.baseline + self.slack:
                raise CheckFailed(f"{used} MiB of GPU memory in use after the step, more than the bound of "
                                  f"{self.baseline + self.slack} MiB (before the first step: {self.baseline} MiB)")
        except CheckFailed as e:
            return Result(step.name, "FAIL", seconds, str(e))
        return Result(step.name, "OK", seconds)

    def _check_training(self, step: Step, samples: list[dict]) -> None:
        peak = peak_while_training(samples)
        where = self.logs / f"{safe(step.name)}.memory.jsonl"
        if peak is None:
            raise CheckFailed(f"{where}: no sample saw a process with {step.training_marker!r} in its arguments "
                              f"(the training was not launched, or ended within {self.sample_s} s)")
        total = self.gpu.memory()[1]
        if peak > self.fraction * total:
            raise CheckFailed(f"{where}: {peak} MiB of the GPU's {total} MiB in use while training ran, more than "
                              f"{self.fraction:.0%}: the generation engine's memory was not released before training")

    # ------------------------------------------------------------------ memory while a step runs

    def _start_sampler(self, step: Step, pgid: int) -> Callable[[], list[dict]]:
        samples: list[dict] = []
        stop = threading.Event()
        path = self.logs / f"{safe(step.name)}.memory.jsonl"

        def sample() -> None:
            with path.open("w") as f:
                while not stop.is_set():
                    training = any(step.training_marker in argv for argv in group_argvs(pgid))
                    row = {"t": round(time.monotonic() - self.start, 2), "used_mib": self.gpu.memory()[0],
                           "training": training}
                    samples.append(row)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    stop.wait(self.sample_s)

        thread = threading.Thread(target=sample, daemon=True, name=f"smoke-sampler-{step.name}")
        thread.start()

        def finish() -> list[dict]:
            stop.set()
            thread.join(timeout=30)
            return samples

        return finish

    # ------------------------------------------------------------------ the hard total budget

    def _watchdog(self) -> None:
        if self._finished.wait(max(0.0, self.deadline - time.monotonic())):
            return
        self._expired.set()
        self._kill_running()
        if self._finished.wait(GRACE_S * 3):
            return
        self._say(f"watchdog: the total budget of {self.total:.0f} s is spent and the runner did not stop; "
                  f"exiting (status 124)")
        self._write_summary()
        os._exit(124)

    def _terminated(self, signum, frame) -> None:  # SIGTERM (an outer `timeout`): the step's group goes too
        self._kill_running()
        self._say("smoke: terminated; the running step's process group was killed")
        raise SystemExit(143)

    def _kill_running(self) -> None:
        with self._lock:
            pgid = self._pgid
        if pgid is not None:
            kill_group(pgid)

    # ------------------------------------------------------------------ output

    def _report(self, result: Result) -> None:
        self.results.append(result)
        line = f"{result.name:<24} {result.seconds:6.1f} s  {result.status}"
        self._say(line + (f": {result.detail}" if result.detail else ""))

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _write_summary(self) -> None:
        rows = [{"step": r.name, "status": r.status, "seconds": round(r.seconds, 1), "detail": r.detail}
                for r in self.results]
        (self.work / "smoke.json").write_text(json.dumps({"total_budget_s": self.total, "steps": rows}, indent=1) + "\n")


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def tail(log: Path, lines: int = 12) -> str:
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"the end of {log}:\n" + "\n".join(f"  | {line}" for line in text)
