"""Commands as subprocesses with one thread each, side by side in a thread pool, each with its output in a log file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from experiments.rows import INITIAL

# every job is one process on one core: --jobs of them share the machine without oversubscribing it
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def sgpo(*args: str) -> list[str]:
    """The ``sgpo`` command line of this interpreter."""
    return [sys.executable, "-m", "sgpo", *args]


class Launcher:
    """Runs commands with one thread each; what the jobs print goes through one lock, so lines never interleave."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.env = {**os.environ, **SINGLE_THREAD}

    def log(self, message: str) -> None:
        with self.lock:
            print(message, flush=True)

    def call(self, command: list[str], log: Path) -> float:
        """Run ``command`` with its output appended to ``log``; returns its wall time."""
        self.log("$ " + " ".join(command[1:]))
        began = time.perf_counter()
        with log.open("a") as handle:
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[1:])} failed ({done.returncode}); see {log}")
        return time.perf_counter() - began


def evaluate(call: Callable[[list[str], Path], float], model: str, output: Path, options: list[str], log: Path) -> dict:
    """``sgpo eval`` of ``model`` against the initial model into ``output`` with ``options``; an evaluation whose
    ``eval.json`` exists is reused. Returns the model's result."""
    if not (output / "eval.json").is_file():
        call([*sgpo("eval", model, "--baseline", INITIAL, "--output", str(output)), *options], log)
    return json.loads((output / "eval.json").read_text())["results"][0]


class Job(NamedTuple):
    """One job: ``work(before)`` runs in the pool with the future of the job named ``after`` (or None); ``work`` None
    marks a job already done."""

    key: str
    after: str | None
    work: Callable[[Future | None], Any] | None


def launch(jobs: Iterable[Job], workers: int) -> dict[str, Future]:
    """Run ``jobs`` in their order, ``workers`` at a time; waits for all and raises the first error. A job waits for
    the one it depends on itself, so it can start its own work first."""
    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for job in jobs:
            if job.work is None:
                futures[job.key] = Future()
                futures[job.key].set_result(None)
            else:
                futures[job.key] = pool.submit(job.work, futures.get(job.after) if job.after else None)
        for future in futures.values():
            future.result()
    return futures
