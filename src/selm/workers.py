"""Worker processes of the stages: one spawned pool shape for every stage that runs work at once.

The experiments stage runs its runs on a pool, `sft` and `eval-base` run one process per base, and
analyze runs the (base, seed) units of its figures on one. Each worker starts through `init_worker`:
quiet console (the stage draws the progress), its torch threads, and a thread that ends the worker
when the stage process is gone (a `kill -9` of `dvc repro` must not leave workers computing).
Failures are collected, never swallowed: `failures_error` names each one with its traceback.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from selm import console


def init_worker(threads: int | None, parent: int | None = None) -> None:
    """Set up a process that computes for a stage: `threads` torch threads (None: torch's default,
    and torch is not imported for it). With `parent` (the stage's pid) it is a spawned worker: its
    console is quiet, and it exits as soon as `parent` is no longer its parent."""
    if parent is not None:
        console.setup(bars=False)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if parent is not None:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


def spawn_pool(workers: int, threads: int | None) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes, each set up by init_worker for this process."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                               initializer=init_worker, initargs=(threads, os.getpid()))


def failures_error(what: str, failures: list[tuple[str, str]], total: int) -> RuntimeError:
    """One error for the failed tasks of `what` ((name, traceback) each), after every task ended."""
    listing = "\n".join(f"--- {name}\n{tb}" for name, tb in failures)
    return RuntimeError(f"{len(failures)} of {total} {what} failed:\n{listing}")
