"""What produced a number: config hash, package versions, git commit, written beside every result;
and the identities that decide whether a finished output may be reused (content digests of data
files and folders, the fingerprint of the code a stage imports, the numeric packages' versions)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
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


def _versions(names) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def package_versions() -> dict[str, str]:
    return _versions(PACKAGES)


VECTOR_PREFIXES = ("avx", "amx", "fma")  # the extensions torch's CPU kernels dispatch on


def cpu_info(text: str) -> dict:
    """CPU model and vector extensions from the text of /proc/cpuinfo (its first processor)."""
    from selm.determinism import cpu_flags

    model = next((line.partition(":")[2].strip() for line in text.splitlines()
                  if line.partition(":")[0].strip() == "model name"), None)
    return {"cpu_model": model or platform.processor() or "unknown",
            "vector_extensions": sorted(f for f in cpu_flags(text) if f.startswith(VECTOR_PREFIXES))}


def machine() -> dict:
    """Where a result was computed: CPU model, vector extensions, cores this process may use, platform
    and Python (what a reader needs to know whether the bytes should match theirs)."""
    cpuinfo = Path("/proc/cpuinfo")
    info = cpu_info(cpuinfo.read_text() if cpuinfo.is_file() else "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {**info, "cores": cores, "platform": platform.platform(), "python": platform.python_version()}


def provenance(config: dict | None = None, command: str | None = None) -> dict:
    import torch

    from selm.determinism import mode

    out = {
        "git_commit": git_commit(Path(__file__).parent),
        "versions": package_versions(),
        "torch_threads": torch.get_num_threads(),
        "numerics": mode(),
        "machine": machine(),
    }
    if config is not None:
        out["config_hash"] = config_hash(config)
    if command is not None:
        out["command"] = command
    return out


# ---------------------------------------------------------------------------------------------
# Identities: what an output depends on, as one digest. A stage reuses a finished output only
# when the identity recorded beside it equals the one computed now (selm.io.reuse_or_reset).

PACKAGE_ROOT = Path(__file__).resolve().parent   # src/selm; tests point it at an edited copy
# Third-party packages whose version can change a number we compute (not dvc, wandb, hydra).
RESULT_PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy", "vllm",
                   "deepspeed", "lm_eval")


def digest(obj) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys): the identity of a record."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """sha256 of a file, or of every file below a folder (relative names and contents; hidden files
    and __pycache__ left out), so that renaming the folder itself changes nothing."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        rel = p.relative_to(path)
        if "__pycache__" in rel.parts or any(part.startswith(".") for part in rel.parts):
            continue
        h.update(rel.as_posix().encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


def result_versions() -> dict[str, str]:
    """Python, the versions of the packages whose numerics enter our results, and the numerical mode
    (selm.determinism): an output made in one mode is never reused in the other."""
    from selm.determinism import mode

    return {**_versions(RESULT_PACKAGES), "numerics": mode()}


# Code identity. Why the modules a stage imports and not the whole package + conf tree: an edit of
# the report or of an evaluation must not retrain 7B models, and a DVC stage reruns only when one of
# its deps changed, so the two should name the same files (tests/test_identity.py checks that every
# stage's deps cover the modules its command imports). The conf tree needs no fingerprint of its
# own: every identity holds the composed config values it depends on, and files read by name
# (eval/lmeval/<name>.yaml, an accelerate config named in train.launcher) are hashed where read.
# The closure is static: every `import selm...` / `from selm... import` / relative import anywhere in
# a module, function-local imports included, so it errs towards too many modules, never too few.


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of module `name` (selm.a.b) under `root` (the selm package folder)."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts) if parts else root
    if base.with_suffix(".py").is_file() and parts:
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


_DOTTED = re.compile(r"^selm(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?$")


def _imported_modules(name: str, path: Path) -> set[str]:
    import ast

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from .. import y
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from pkg import submodule`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.match(node.value):
            found.add(node.value.partition(":")[0])  # importlib by name: "selm.judges.oracle:Class"
    return {m for m in found if m == "selm" or m.startswith("selm.")}


def module_closure(*modules: str, root: Path | None = None) -> list[Path]:
    """Source files of `modules`, the selm modules they import (transitively), their packages'
    __init__.py, and the data files shipped inside those packages (e.g. the judges' prompts)."""
    root = Path(root or PACKAGE_ROOT)
    todo, seen, files = list(modules), set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name, root)
        if path is None:
            continue  # `from selm.x import function`: the name is not a module
        files.add(path)
        parents = name.split(".")
        todo.extend(".".join(parents[:i]) for i in range(1, len(parents)))
        todo.extend(_imported_modules(name, path))
        if path.name == "__init__.py":  # package data: non-Python files in non-package subfolders
            for sub in path.parent.iterdir():
                if sub.is_dir() and not (sub / "__init__.py").exists() and sub.name != "__pycache__":
                    files.update(p for p in sub.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return sorted(files)


_CODE_MEMO: dict[tuple, str] = {}


def code_fingerprint(*modules: str, root: Path | None = None) -> str:
    """sha256 over the source (names relative to the package, and contents) of module_closure.
    Computed once per process while no file under the package changes (size, mtime, inode)."""
    root = Path(root or PACKAGE_ROOT)
    state = tuple((str(p), s.st_size, s.st_mtime_ns, s.st_ino) for p in sorted(root.rglob("*"))
                  if p.is_file() and "__pycache__" not in p.parts for s in [p.stat()])
    key = (modules, str(root), state)
    if key not in _CODE_MEMO:
        h = hashlib.sha256()
        for path in module_closure(*modules, root=root):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + file_sha256(path).encode())
        _CODE_MEMO[key] = h.hexdigest()
    return _CODE_MEMO[key]
