"""What produced a number: config hash, package versions, git commit. Written beside every result."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("selm", "torch", "transformers", "trl", "accelerate", "datasets", "hydra-core", "wandb", "dvc")


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit(cwd: str | Path | None = None) -> str:
    """The HEAD commit, with '-dirty' when tracked files differ; 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(config: dict | None = None, command: str | None = None) -> dict:
    import torch

    out = {
        "git_commit": git_commit(Path(__file__).parent),
        "versions": package_versions(),
        "torch_threads": torch.get_num_threads(),
    }
    if config is not None:
        out["config_hash"] = config_hash(config)
    if command is not None:
        out["command"] = command
    return out
