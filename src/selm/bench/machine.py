"""What every benchmark result records about where it ran: the machine's description (CPU model,
vector extensions, cores, platform) and its command with paths that mean something on another
machine (relative to the working directory, the repository root for `make bench` and `make repro`).

A path outside the working directory (a temporary folder, another checkout) is recorded as
`<elsewhere>/NAME`: where a result was first written is no part of it, and a machine's folder
names are no use to a reader.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from selm.provenance import cpu_info, machine  # noqa: F401 (cpu_info: the bench's tests read it here)

ELSEWHERE = "<elsewhere>"


def describe() -> dict:
    """The machine a benchmark runs on (selm.provenance.machine): CPU model, vector extensions, cores
    this process may use, platform and Python."""
    return machine()


def portable_path(path: str | Path, cwd: Path | None = None) -> str:
    """`path` relative to the working directory when it lies inside it, else `<elsewhere>/NAME`;
    a relative path is kept as given."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    cwd = (cwd or Path.cwd()).resolve()
    resolved = path.resolve()
    if resolved == cwd or cwd in resolved.parents:
        return resolved.relative_to(cwd).as_posix() or "."
    return f"{ELSEWHERE}/{path.name}"


def portable_command(argv: list[str], cwd: Path | None = None) -> str:
    """The command line with every absolute path (an argument, or the value of `--opt=PATH`) made
    portable (portable_path), quoted as a shell would need it."""
    out = []
    for arg in argv:
        option, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if value.startswith("/"):
            value = portable_path(value, cwd)
        out.append(f"{option}{sep}{value}")
    return shlex.join(out)
