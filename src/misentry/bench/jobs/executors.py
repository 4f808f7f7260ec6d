"""Executors: run a wave of independent benchmark jobs, one after another or side by side.

A :class:`~misentry.bench.jobs.task.Task` names a module-level function
(``"package.module:function"``) and the JSON-ready payload it is called with, together with a
``progress(stage, done, total)`` callback; the function writes its outputs into the folder its
payload names and returns a small JSON-ready dict. Because a task is a pure function of its
payload and reports through files, the three executors are interchangeable:

``local``
    Runs the tasks one after another in this process. The default: no start-up cost, plain
    tracebacks, works under a debugger, and the only executor that hands the caller's
    ``progress`` to the tasks (a bundle's search steps). ``threads`` (if given) sets torch's
    thread count for the run and restores it afterwards.
``process``
    A :class:`concurrent.futures.ProcessPoolExecutor` with the *spawn* context and ``workers``
    processes (default: the number of cores), each with ``threads`` torch threads (default:
    cores // workers). For a wave of many jobs on one machine; the pool starts on the first run
    (about a second per worker to import torch) and is reused until :meth:`close`.
``ray``
    Ray tasks (``num_cpus=1`` each) on a Ray instance on this machine. For GPU boxes or when Ray is
    already part of the setup; it needs the ``ray`` extra (``pip install 'misentry[ray]'``) and
    takes a few seconds to start. If the caller has already called ``ray.init``, that instance is
    used and left running; otherwise the executor starts one on the first run and shuts it down on
    :meth:`close`. It lives in :mod:`misentry.bench.jobs.ray_executor`.

**Loopback guarantee (ray).** A Ray instance this executor starts listens on 127.0.0.1 only: before
``ray.init`` it sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's own switch for a single-machine
instance, which makes the node address and every gRPC listener loopback), turns usage stats off
(``RAY_USAGE_STATS_ENABLED=0``), turns token authentication off so nothing is written under the
home directory (``RAY_AUTH_MODE=disabled``), and starts no dashboard. It checks the node address
after start-up and refuses to run on a non-loopback one (the variables are restored on close; if
Ray was imported before, the switch, which Ray reads at import, is applied to its constant). A
caller's own Ray instance is used as it is: its network settings are the caller's.

Ray's workers do not inherit the driver's ``sys.path``; the project's entries of it (not the
standard library or site-packages) reach them as ``PYTHONPATH``: in the environment Ray starts with
(so the workers Ray starts ahead are the ones used), or, on a caller's instance or when the path
has grown since, in each task's runtime environment.

All executors call ``on_done(task, result)`` in the calling process as each task finishes, in
completion order, so the caller can record progress and resume state. When a task raises, no new
task is started, the running ones finish (and are reported if they succeed), and :class:`JobFailed`
is raised with the task's name and the worker's exception type, message and traceback. Use an
executor as a context manager so that an interrupt leaves no worker processes or Ray instance
behind.

>>> with make_executor("process", workers=2) as executor:  # doctest: +SKIP
...     executor.run(tasks, on_done=lambda task, result: print(task.name, result))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Literal, TypeAlias

import torch

from misentry.bench.jobs.ray_executor import RAY_LOOPBACK_ENV, RayExecutor, driver_path
from misentry.bench.jobs.task import (
    Executor,
    ExecutorBase,
    JobFailed,
    OnDone,
    Outcome,
    Progress,
    Task,
    TaskWindow,
    check_count,
    default_threads,
    run_task,
    unpack,
)

__all__ = [
    "KINDS",
    "RAY_LOOPBACK_ENV",
    "Executor",
    "JobFailed",
    "Kind",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "Task",
    "driver_path",
    "make_executor",
]

Kind: TypeAlias = Literal["local", "process", "ray"]
KINDS: tuple[Kind, ...] = ("local", "process", "ray")


class LocalExecutor(ExecutorBase):
    """Runs tasks one after another in this process, handing them ``progress``."""

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        check_count("threads", threads)
        self.threads = threads

    def run(self, tasks: Sequence[Task], on_done: OnDone, progress: Progress | None = None) -> None:
        before = torch.get_num_threads()
        try:
            for task in tasks:
                outcome = run_task(task.fn, task.payload, self.threads, progress)
                on_done(task, unpack(task, outcome))
        finally:
            torch.set_num_threads(before)


class ProcessExecutor(ExecutorBase):
    """Runs tasks on a pool of spawned worker processes, created on the first run."""

    name = "process"

    def __init__(self, workers: int | None = None, threads: int | None = None) -> None:
        check_count("workers", workers)
        check_count("threads", threads)
        self.workers = workers or os.cpu_count() or 1
        self.threads = threads or default_threads(self.workers)
        self._pool: ProcessPoolExecutor | None = None

    def run(self, tasks: Sequence[Task], on_done: OnDone, progress: Progress | None = None) -> None:
        del progress  # tasks run in worker processes: only their end is reported
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        pool = self._pool

        def submit(task: Task) -> Future[Outcome]:
            return pool.submit(run_task, task.fn, task.payload, self.threads)

        def wait_any(futures: list[Future[Outcome]]) -> list[Future[Outcome]]:
            return list(wait(futures, return_when=FIRST_COMPLETED).done)

        # one task more than workers waits in the queue, so that no worker idles between tasks
        window = TaskWindow(
            tasks, self.workers + 1, submit, wait_any, lambda f: f.result(), lambda f: f.cancel()
        )
        try:
            window.run(on_done)
        except BaseException as exc:
            if not isinstance(exc, JobFailed) or window.crashed:  # interrupted, or pool broken
                self._terminate()
            raise

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def _terminate(self) -> None:
        """Interrupted or broken: stop the workers now rather than wait for their tasks (the
        next run starts a fresh pool). Python 3.14's ``terminate_workers`` does this."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        processes = list(pool._processes.values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=5)


def make_executor(kind: Kind, workers: int | None = None, threads: int | None = None) -> Executor:
    """The executor ``kind`` (one of :data:`KINDS`). ``workers``: concurrent tasks (``process``,
    ``ray``; default: cores; ignored by ``local``). ``threads``: torch threads per task (default:
    cores // workers; ``local``: left as it is)."""
    check_count("workers", workers)
    check_count("threads", threads)
    if kind == "local":
        return LocalExecutor(threads)
    if kind == "process":
        return ProcessExecutor(workers, threads)
    if kind == "ray":
        return RayExecutor(workers, threads)
    raise ValueError(f"unknown executor {kind!r}; choose one of {', '.join(KINDS)}")
