"""A one-node Slurm on 127.0.0.1 for the tests (tests/test_slurm.py).

Debian's packages (slurmctld, slurmd, slurm-client, munge) are installed with apt-get when missing,
then munged, slurmctld and slurmd start as root under one temporary folder: their own key, socket,
ports, spool folders, pid and log files, and a slurm.conf that the client commands (sbatch, squeue,
scontrol, scancel) find through SLURM_CONF. Nothing outside that folder is configured, and `stop`
ends the three daemons by the pids they wrote.

    python tests/slurm_cluster.py /tmp/slurm     # start one by hand; prints the SLURM_CONF to export
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
PARTITION = "debug"


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c) is None]


def install() -> str | None:
    """Install the packages when a command is missing. Returns None when every command is there,
    else why a one-node Slurm cannot run here (the tests' skip reason)."""
    if not missing_commands():
        return None
    if sys.platform != "linux" or shutil.which("apt-get") is None:
        return f"no Slurm commands ({', '.join(missing_commands())}) and no apt-get to install {' '.join(PACKAGES)}"
    if os.geteuid() != 0:
        return f"no Slurm commands ({', '.join(missing_commands())}); installing {' '.join(PACKAGES)} needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
    missing = missing_commands()
    return f"still missing after apt-get install: {missing}" if missing else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 // 2  # half the machine: the node's memory
    raise RuntimeError("/proc/meminfo has no MemTotal line")


def slurm_conf(root: Path, host: str, cpus: int) -> str:
    """The settings that run without cgroups or systemd: processes tracked by pid, no task plugin,
    cores as the consumable resource, no accounting."""
    return "\n".join([
        "ClusterName=selmtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root / 'munge' / 'munge.socket'}",
        f"StateSaveLocation={root / 'ctld'}",
        f"SlurmdSpoolDir={root / 'd'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerParameters=sched_interval=2",   # a requeued or new job is looked at within seconds
        "KillWait=2",                             # SIGTERM, then SIGKILL 2 s later
        "JobRequeue=1",                           # batch jobs may be requeued (scontrol requeue, preemption)
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb()} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class Cluster:
    root: Path
    conf: Path

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def pids(self) -> dict[str, int]:
        found = {}
        for name in ("slurmd", "slurmctld", "munge/munged"):
            path = self.root / f"{name}.pid"
            if path.is_file() and path.read_text().strip():
                found[name] = int(path.read_text().split()[0])
        return found

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:])
                         for p in sorted(self.root.rglob("*.log")))

    def stop(self) -> None:
        """Cancel the jobs left in the queue (their steps would outlive slurmd), then end the daemons
        this cluster started, by their pids: slurmd first, munged last."""
        env = {**os.environ, **self.env}
        if "slurmctld" in self.pids():
            queued = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, check=False)
            if queued.stdout.split():
                subprocess.run(["scancel", *queued.stdout.split()], env=env, check=False)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and subprocess.run(
                        ["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, check=False).stdout.split():
                    time.sleep(0.5)
        for name, pid in self.pids().items():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a daemon we started is our child only when started in the foreground; it may be a zombie
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][:1] != "Z"


def start(root: Path, timeout: float = 120) -> Cluster:
    """munged, slurmctld and slurmd under `root`; returns once the node takes jobs (`srun hostname`
    answers). A failure stops whatever started and raises with the daemons' logs."""
    root.mkdir(parents=True, exist_ok=True)
    munge = root / "munge"
    munge.mkdir(mode=0o700, exist_ok=True)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for folder in ("ctld", "d"):
        (root / folder).mkdir(exist_ok=True)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host, os.cpu_count() or 1))
    cluster = Cluster(root, conf)
    env = {**os.environ, **cluster.env}
    try:
        _run(["munged", "--force", f"--key-file={key}", f"--socket={munge / 'munge.socket'}",
              f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
              f"--seed-file={munge / 'munged.seed'}"], env)
        _run(["slurmctld", "-f", str(conf)], env)
        _run(["slurmd", "-f", str(conf)], env)
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(["srun", "-N1", "-n1", "--immediate=10", "hostname"], env=env,
                                  capture_output=True, text=True, check=False, timeout=timeout)
            if done.returncode == 0:
                return cluster
            if time.monotonic() > deadline:
                raise RuntimeError(f"the one-node Slurm did not take a job within {timeout} s: "
                                   f"{done.stderr.strip()}")
            time.sleep(1)
    except BaseException as e:
        cluster.stop()
        raise RuntimeError(f"{e}\n{cluster.log_tails()}") from e


def _run(command: list[str], env: dict) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {done.returncode}): {done.stderr.strip()}")


if __name__ == "__main__":
    if reason := install():
        sys.exit(reason)
    started = start(Path(sys.argv[1]).resolve())
    print(f"export SLURM_CONF={started.conf}   # stop: kill {' '.join(map(str, started.pids().values()))}")
