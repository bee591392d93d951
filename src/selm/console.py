"""What a stage prints: its own progress, not the libraries' noise.

Every entry point calls `setup()` once at start-up. Unless `SELM_VERBOSE=1`, it switches off the
libraries' progress bars and info logs (transformers' "Loading weights" / "Writing model shards"
bars for every checkpoint, datasets', huggingface_hub's, lm-eval's request bars, accelerate's,
vLLM's and wandb's info output), in this process and, through the environment, in the processes it
starts. Warnings and errors still print, and a failure prints its full traceback.

What remains is one bar per stage of its real unit of work (`progress`: runs of an experiment,
evaluated checkpoints, iterations of a loop, optimizer steps of SFT) with elapsed time and an
estimate of what is left, and a one-line summary when the stage ends (`summary`). Only the
outermost bar of a process shows (an experiment run in-process does not draw its loop's bar
inside its own), and worker processes (`setup(bars=False)`) draw none.

    SELM_VERBOSE=1 dvc repro     # every library's output, as without this module
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import io
import logging
import os
import sys
import time
import warnings

from tqdm import tqdm

VERBOSE_ENV = "SELM_VERBOSE"

# Switches the libraries read from the environment (at import, in this process and in the ones it
# starts: spawned workers, `accelerate launch`). An explicit setting in the environment wins.
LIBRARY_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",      # huggingface_hub, and transformers' bars through it
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "warning",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "warning",
    "ACCELERATE_LOG_LEVEL": "warning",
    "VLLM_LOGGING_LEVEL": "ERROR",            # its warnings are about its own set-up, at every engine start
    "WANDB_SILENT": "true",
    "WANDB_CONSOLE": "off",
}
# Python loggers of the libraries: info and debug off, warnings and errors kept.
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "lm-eval", "lm_eval", "vllm",
                   "wandb", "alpaca_eval", "deepspeed", "torch.distributed", "httpx", "filelock", "dvc")
# Modules that print to stdout when imported (not a log, so no level silences them).
PRINTS_ON_IMPORT = {"transformers.integrations.integration_utils"}  # "[INFO] Running in WANDB offline mode"
# Warnings that say nothing about this suite's results (a dependency's own deprecations).
IGNORED_WARNINGS = (r"pkg_resources is deprecated",)

_bars = True


def verbose() -> bool:
    """SELM_VERBOSE=1 (or true/yes/on): every library prints as it would without this module."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def setup(bars: bool = True) -> None:
    """Called once by every entry point before its work. `bars=False` in worker processes, whose
    parent draws the stage's bar."""
    global _bars
    _bars = bars
    if verbose():
        return
    for key, value in LIBRARY_ENV.items():
        os.environ.setdefault(key, value)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    _silence_library_bars()
    if not any(isinstance(f, _SilentImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SilentImport())


class Progress(tqdm):
    """The stage's own bar: the only tqdm bar that quiet mode lets draw."""


def _silence_library_bars() -> None:
    """Every tqdm bar but `Progress` draws into os.devnull, whatever its library asked for:
    transformers, lm-eval and datasets create their bars with explicit `disable=` arguments, so no
    environment switch reaches all of them. The bar itself stays live (its counts, elapsed time and
    rates), because libraries read them back: vLLM's offline bar divides by its elapsed time, which
    a disabled bar reports as 0. A bar its library disables stays disabled."""
    import tqdm.std

    original = tqdm.std.tqdm.__init__
    if getattr(original, "_selm_quiet", False):
        return

    def init(self, *args, **kwargs):
        if not isinstance(self, Progress):
            if len(args) > _FILE_ARG:  # `file` given by position
                args = (*args[:_FILE_ARG], _devnull(), *args[_FILE_ARG + 1 :])
            else:
                kwargs["file"] = _devnull()
        original(self, *args, **kwargs)

    init._selm_quiet = True
    tqdm.std.tqdm.__init__ = init


_FILE_ARG = 4  # tqdm(iterable, desc, total, leave, file, ...): `file`'s position
_DEVNULL = None


def _devnull():
    """One text stream to os.devnull for every silenced bar of this process (opened on first use)."""
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
    return _DEVNULL


class _SilentImport(importlib.abc.MetaPathFinder):
    """Runs the modules of PRINTS_ON_IMPORT with stdout discarded (their import-time print only)."""

    def find_spec(self, name, path, target=None):
        if name not in PRINTS_ON_IMPORT:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module):
            with contextlib.redirect_stdout(io.StringIO()):
                exec_module(module)

        spec.loader.exec_module = quiet_exec
        return spec


_open_bars = 0


@contextlib.contextmanager
def progress(total: int, desc: str, unit: str):
    """A bar of `total` units (`bar.update()` per unit done) with elapsed time and the estimated
    time left. Drawn only by the outermost bar of a process that draws bars (an inner one draws
    nothing). On a terminal it redraws in place; in a log file, at most once a minute."""
    global _open_bars
    interactive = sys.stderr.isatty()
    bar = Progress(total=total, desc=desc, unit=unit, disable=not _bars or _open_bars > 0, file=sys.stderr,
                   mininterval=0.5 if interactive else 60.0, dynamic_ncols=interactive, ascii=not interactive,
                   bar_format="{desc}: {n_fmt}/{total_fmt} {unit} |{bar:20}| {elapsed} elapsed, {remaining} left",
                   smoothing=0.1)
    _open_bars += 1
    try:
        yield bar
    finally:
        _open_bars -= 1
        bar.close()


def track(items, desc: str, unit: str):
    """Yield the items, advancing a `progress` bar past each once the caller has finished with it."""
    items = list(items)
    with progress(len(items), desc, unit) as bar:
        for item in items:
            yield item
            bar.update()


def summary(desc: str, text: str, start: float) -> None:
    """The stage's last line: what it did and how long it took (from `start`, a perf_counter time)."""
    print(f"{desc}: {text} in {duration(time.perf_counter() - start)}", flush=True)


def duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
