"""Slurm: the experiment stage's runs as Slurm jobs (through submitit), and training over the nodes of
one job (docs/cluster.md).

`executor: slurm` in experiments/<scale>.yaml sends each run of the stage to Slurm as its own job,
with the resources of the spec's `slurm:` section (the same names as conf/hydra/launcher/slurm.yaml),
and waits for every job. A job that fails (an exception, a kill, a node failure) is named with its id,
its state and the tail of its log; the other runs go on, and what any run finished stays on disk.

Preemption and time limits use Slurm's and submitit's own mechanism: a job gets SIGUSR2
`signal_delay_s` before its time limit or when Slurm preempts it; submitit then asks the job's
function to checkpoint (`Resumable.checkpoint`: the same call again) and requeues the job
(`scontrol requeue`). A job requeued by hand (`scontrol requeue <id>`) or by Slurm restarts the same
way. The run's files are its checkpoint: the loop keeps every finished iteration whose identity is
unchanged (selm.loop), so the restarted job goes on from there and ends with the same bytes.

Training over several nodes: `train.launcher="python -m selm.slurm --config_file
conf/accelerate/zero3_multinode.yaml"` in a run whose job has 2 nodes. The loop (on the job's first
node) then runs the iteration's training as one Slurm step with one task per node; each task starts
`accelerate launch` with its machine rank (SLURM_NODEID), the number of machines (SLURM_NNODES)
and the first node of the job (SLURM_JOB_NODELIST, expanded by `scontrol show hostnames`) as the
main address.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

EXECUTORS = ("local", "slurm")
# The spec's `slurm:` keys (as conf/hydra/launcher/slurm.yaml names them) -> submitit's AutoExecutor
# parameters. Resources are per job (= per run).
JOB_KEYS = {
    "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
    "constraint": "slurm_constraint", "exclude": "slurm_exclude", "gres": "slurm_gres",
    "nodes": "nodes", "tasks_per_node": "tasks_per_node", "cpus_per_task": "cpus_per_task",
    "gpus_per_node": "gpus_per_node", "mem_gb": "mem_gb", "timeout_min": "timeout_min",
    "signal_delay_s": "slurm_signal_delay_s", "setup": "slurm_setup",
    "additional_parameters": "slurm_additional_parameters",
}
OTHER_KEYS = ("folder", "max_num_timeout", "poll_s")
DEFAULT_FOLDER = "runs/.slurm/%j"   # each job's submitit files and logs (stdout, stderr)
FINAL_STATES_MISSING = "no longer known to Slurm"
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                 "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED", "RESV_DEL_HOLD"}
LOG_LINES = 30
RESULT_GRACE_S = 30  # how long a job that Slurm reports ended may take to show its result file


def executor_name(spec: Mapping, source: str) -> str:
    """The spec's `executor` (default local), checked."""
    name = spec.get("executor", "local")
    if name not in EXECUTORS:
        raise ValueError(f"{source}: executor={name!r} is not one of {list(EXECUTORS)}")
    return name


def job_settings(spec: Mapping, source: str) -> dict:
    """The spec's `slurm:` section as a plain dict, every key known (the error names the unknown)."""
    section = spec.get("slurm") or {}
    if hasattr(section, "items") and not isinstance(section, dict):
        from omegaconf import OmegaConf

        section = OmegaConf.to_container(section, resolve=True)
    if not isinstance(section, dict):
        raise ValueError(f"{source}: slurm must be a mapping of job settings, got {section!r}")
    unknown = sorted(set(section) - set(JOB_KEYS) - set(OTHER_KEYS))
    if unknown:
        raise KeyError(f"{source}: slurm.{unknown[0]} is not a job setting; known: {sorted([*JOB_KEYS, *OTHER_KEYS])}")
    return section


def check_commands() -> None:
    missing = [c for c in ("sbatch", "squeue", "scontrol") if shutil.which(c) is None]
    if missing:
        raise FileNotFoundError(f"executor=slurm, but {', '.join(missing)} is not on PATH: run the stage on a "
                                "machine that can submit Slurm jobs (docs/cluster.md)")


def make_executor(settings: dict, name: str):
    """A submitit executor for Slurm jobs with the spec's resources, started in this folder."""
    import submitit

    check_commands()
    executor = submitit.AutoExecutor(folder=settings.get("folder", DEFAULT_FOLDER), cluster="slurm",
                                     slurm_max_num_timeout=int(settings.get("max_num_timeout", 3)))
    params = {JOB_KEYS[k]: v for k, v in settings.items() if k in JOB_KEYS and v is not None}
    extra = dict(params.pop("slurm_additional_parameters", None) or {})
    extra.setdefault("chdir", os.getcwd())  # run paths are relative to where the stage runs
    extra.setdefault("requeue", True)       # Slurm may requeue the job (preemption, scontrol requeue)
    executor.update_parameters(name=name, slurm_additional_parameters=extra, **params)
    return executor


try:
    from submitit.helpers import Checkpointable
except ImportError:  # submitit is in both locks; without it only executor=slurm fails (make_executor)
    Checkpointable = object


class Resumable(Checkpointable):
    """`function(*args)` in a Slurm job, with `threads` torch threads (as the local pool's workers).
    Checkpointable: on preemption or near the time limit submitit pickles this same call (the
    function resumes from the files it wrote) and requeues the job."""

    def __init__(self, function: Callable, *args, threads: int | None = 1):
        self.function, self.args, self.threads = function, args, threads

    def __call__(self):
        from selm import console
        from selm.workers import init_worker

        if int(os.environ.get("SLURM_PROCID", "0")) != 0:
            return None  # a job of several nodes runs the run on its first; training steps use the others
        console.setup(bars=False)  # the log is a file: no progress bars
        init_worker(self.threads)
        return self.function(*self.args)


def queue_states(job_ids: list[str]) -> dict[str, str] | None:
    """Slurm's state of each job it still knows (`squeue -t all`); None when squeue failed (the
    controller is unreachable: ask again later)."""
    if not job_ids:
        return {}
    done = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(job_ids)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return {}
        print(f"squeue failed (exit {done.returncode}): {done.stderr.strip()}; asking again", file=sys.stderr)
        return None
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = state
    return states


def log_tail(job, lines: int = LOG_LINES) -> str:
    """The last lines of the job's stderr (the traceback) and stdout logs, each under its path."""
    out = []
    for path in (job.paths.stderr, job.paths.stdout):
        path = Path(str(path).replace("%t", "0"))
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- last {len(text)} lines of {path}\n" + "\n".join(text))
        else:
            out.append(f"--- {path}: no log written")
    return "\n".join(out)


def job_outcome(job, state: str | None) -> tuple[str | None, object]:
    """(error, result) of a job that ended: error is None when it returned, else a message naming
    the job, its state and the tail of its log."""
    if job.paths.result_pickle.exists():
        from submitit.core.utils import pickle_load

        outcome, value = pickle_load(job.paths.result_pickle)  # ("success", result) or ("error", traceback)
        if outcome == "success":
            return None, value
        return f"Slurm job {job.job_id} failed ({state or 'ended'}):\n{log_tail(job)}", None
    return (f"Slurm job {job.job_id} ended without a result ({state or FINAL_STATES_MISSING}):\n"
            f"{log_tail(job)}"), None


def run_jobs(tasks: list[tuple[str, Callable, tuple]], settings: dict, threads: int | None,
             on_end: Callable[[str, str | None, object], None]) -> None:
    """Submit one Slurm job per (name, function, args), then wait until every job has ended, calling
    on_end(name, error, result) for each as it ends (error: None or the job's failure message).
    A job ends when it wrote its result, or when Slurm no longer runs it (cancelled, failed, node
    failure); a requeued job is waited for, however often Slurm restarts it."""
    executor = make_executor(settings, "selm")
    poll = float(settings.get("poll_s", 5))
    waiting = {}
    try:
        for name, function, args in tasks:
            executor.update_parameters(name=name)
            waiting[name] = job = executor.submit(Resumable(function, *args, threads=threads))
            print(f"{name}: Slurm job {job.job_id}, log {job.paths.stdout}", file=sys.stderr)
        _wait(waiting, on_end, poll)
    except BaseException:  # Ctrl-C of `dvc repro`, or a failed submission: no job outlives its stage
        ids = [job.job_id for job in waiting.values()]
        if ids:
            subprocess.run(["scancel", *ids], check=False)
            print(f"cancelled Slurm jobs {' '.join(ids)}", file=sys.stderr)
        raise


def _wait(waiting: dict, on_end: Callable[[str, str | None, object], None], poll: float) -> None:
    """Poll Slurm until every job of `waiting` (name -> job) has ended; each ended job leaves it."""
    ended_at: dict[str, float] = {}
    while waiting:
        states = queue_states([job.job_id for job in waiting.values()])
        for name, job in list(waiting.items()):
            if states is None:
                break
            # Slurm decides when a job has ended: a result written by an attempt that Slurm then
            # requeued (a killed attempt's error) is not the job's last word
            state = states.get(job.job_id)
            if state in ACTIVE_STATES:
                ended_at.pop(name, None)
                continue
            since = time.monotonic() - ended_at.setdefault(name, time.monotonic())
            if not job.paths.result_pickle.exists() and since < RESULT_GRACE_S:
                continue  # the result of a job that just ended may reach a shared file system later
            error, result = job_outcome(job, state)
            del waiting[name]
            on_end(name, error, result)
        if waiting:
            time.sleep(poll)


# --- training over the nodes of one job ---------------------------------------------------------

STEP_MARK = "SELM_SLURM_NODE_TASK"  # set in the per-node tasks of the training step


def hostnames(nodelist: str) -> list[str]:
    """SLURM_JOB_NODELIST expanded (`scontrol show hostnames`), in Slurm's order."""
    done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not done.stdout.split():
        raise RuntimeError(f"scontrol show hostnames {nodelist!r} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout.split()


def _slurm_int(env: Mapping[str, str], key: str) -> int:
    if key not in env:
        raise KeyError(f"{key} is not set: multi-node training runs inside a Slurm job (docs/cluster.md)")
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"{key}={env[key]!r} is not an integer") from None


def step_command(argv: list[str], env: Mapping[str, str], python: str = sys.executable) -> list[str]:
    """The Slurm step that runs this launcher once per node of the job: `srun` with one task on each
    of the SLURM_NNODES nodes, each task this module again with the same arguments."""
    nodes = _slurm_int(env, "SLURM_NNODES")
    return ["srun", "--overlap", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1", f"--export=ALL,{STEP_MARK}=1", python, "-m", "selm.slurm", *argv]


def accelerate_command(argv: list[str], env: Mapping[str, str], hosts: list[str], accelerate_config: Mapping) -> list[str]:
    """`accelerate launch` of one node: `argv` is `--config_file <accelerate yaml> <the rest>`; this
    node's rank is SLURM_NODEID, the machines SLURM_NNODES, the main address the job's first host,
    and the processes (over all machines, accelerate's convention) the config's per-machine count
    times the machines."""
    if len(argv) < 2 or argv[0] != "--config_file":
        raise ValueError(f"expected `--config_file <accelerate config> ...`, got {shlex.join(argv)!r}")
    nodes, rank = _slurm_int(env, "SLURM_NNODES"), _slurm_int(env, "SLURM_NODEID")
    if len(hosts) != nodes:
        raise ValueError(f"SLURM_JOB_NODELIST names {len(hosts)} hosts ({hosts}) but SLURM_NNODES={nodes}")
    if not 0 <= rank < nodes:
        raise ValueError(f"SLURM_NODEID={rank} is not a node of SLURM_NNODES={nodes}")
    machines, processes = int(accelerate_config.get("num_machines", 1)), int(accelerate_config["num_processes"])
    if processes % machines:
        raise ValueError(f"{argv[1]}: num_processes={processes} is not a multiple of num_machines={machines}")
    return ["accelerate", "launch", "--config_file", argv[1], "--num_machines", str(nodes),
            "--num_processes", str(processes // machines * nodes), "--machine_rank", str(rank),
            "--main_process_ip", hosts[0], *argv[2:]]


def main(argv: list[str] | None = None) -> int:
    """`python -m selm.slurm --config_file <accelerate yaml> -m selm.train --config <file>`: in the
    job's first process, run the training as one step over every node; in each node's task, start
    accelerate with that node's rank."""
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get(STEP_MARK) != "1":
        return subprocess.run(step_command(argv, os.environ), check=False).returncode
    import yaml

    if len(argv) < 2 or not Path(argv[1]).is_file():
        raise FileNotFoundError(f"expected `--config_file <accelerate config> ...`, got {shlex.join(argv)!r}")
    config = yaml.safe_load(Path(argv[1]).read_text())
    command = accelerate_command(argv, os.environ, hostnames(os.environ.get("SLURM_JOB_NODELIST", "")), config)
    print(f"node {os.environ['SLURM_NODEID']}: {shlex.join(command)}", file=sys.stderr, flush=True)
    os.execvp(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
