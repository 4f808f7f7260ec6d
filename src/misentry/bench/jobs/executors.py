"""Executors: run a wave of independent benchmark jobs, one after another or side by side.

A :class:`Task` names a module-level function (``"package.module:function"``) and the JSON-ready
payload it is called with; the function writes its outputs into the folder its payload names and
returns a small JSON-ready dict. Because a task is a pure function of its payload and reports
through files, the three executors are interchangeable:

``local``
    Runs the tasks one after another in this process. The default: no start-up cost, plain
    tracebacks, works under a debugger. ``threads`` (if given) sets torch's thread count for the
    run and restores it afterwards.
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
    :meth:`close`.

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

import importlib
import importlib.util
import ipaddress
import logging
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Literal, Protocol, Self, TypeAlias

import torch

log = logging.getLogger(__name__)

Kind: TypeAlias = Literal["local", "process", "ray"]
KINDS: tuple[Kind, ...] = ("local", "process", "ray")
OnDone: TypeAlias = Callable[["Task", dict[str, Any]], None]

#: The environment a Ray instance started here runs with (see the module docstring).
RAY_LOOPBACK_ENV: dict[str, str] = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


@dataclass(frozen=True)
class Task:
    """One job: ``fn`` (``"package.module:function"``, a module-level ``(payload) -> dict``)
    called with ``payload`` (JSON-ready). ``name`` identifies it in errors and progress."""

    name: str
    fn: str
    payload: dict[str, Any]

    def __post_init__(self) -> None:
        module, _, function = self.fn.partition(":")
        if not module or not function:
            raise ValueError(
                f"Task {self.name!r}: fn {self.fn!r} is not 'package.module:function'; name a "
                "module-level function, e.g. 'mypackage.jobs:train'"
            )


class JobFailed(RuntimeError):
    """A task raised. ``task`` is its name; ``error_type``, ``error_message`` and ``traceback``
    are the worker's exception type, message and formatted traceback."""

    def __init__(self, task: str, error_type: str, error_message: str, traceback: str) -> None:
        super().__init__(
            f"job {task!r} failed with {error_type}: {error_message}\n"
            f"--- worker traceback ---\n{traceback.rstrip()}"
        )
        self.task = task
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback


class Executor(Protocol):
    """Runs a wave of independent tasks; see the module docstring."""

    name: str

    def run(self, tasks: Sequence[Task], on_done: OnDone) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# An outcome as a worker sends it back: ("ok", result) or ("error", (type, message, traceback)).
Outcome: TypeAlias = tuple[Literal["ok"], dict[str, Any]] | tuple[Literal["error"], list[str]]


def _import_function(fn: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The function that ``"package.module:function"`` names."""
    module_name, _, function_name = fn.partition(":")
    function: Callable[[dict[str, Any]], dict[str, Any]] = getattr(
        importlib.import_module(module_name), function_name
    )
    return function


def _run_task(fn: str, payload: dict[str, Any], threads: int | None) -> Outcome:
    """Runs in the worker: set torch's threads, call the function, and send back its result or
    its exception as text (so that an exception that does not pickle still reaches the driver)."""
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        return ("ok", _import_function(fn)(payload))
    except Exception as exc:
        return ("error", [type(exc).__qualname__, str(exc), traceback.format_exc()])


def _unpack(task: Task, outcome: Outcome) -> dict[str, Any]:
    """The task's result; :class:`JobFailed` if it raised."""
    if outcome[0] == "error":
        error_type, message, text = outcome[1]
        raise JobFailed(task.name, error_type, message, text)
    return outcome[1]


def _crash(task: Task, exc: BaseException) -> JobFailed:
    """The executor itself failed on ``task`` (a worker died, a result did not pickle)."""
    text = "".join(traceback.format_exception(exc))
    return JobFailed(task.name, type(exc).__qualname__, str(exc), text)


def _check_count(what: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")


def _default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


class _Base:
    name: str

    def run(self, tasks: Sequence[Task], on_done: OnDone) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers; the executor can run again afterwards (it starts fresh ones)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LocalExecutor(_Base):
    """Runs tasks one after another in this process."""

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        _check_count("threads", threads)
        self.threads = threads

    def run(self, tasks: Sequence[Task], on_done: OnDone) -> None:
        before = torch.get_num_threads()
        try:
            for task in tasks:
                on_done(task, _unpack(task, _run_task(task.fn, task.payload, self.threads)))
        finally:
            torch.set_num_threads(before)


class _Window:
    """The submit/collect loop shared by the concurrent executors: at most ``size`` tasks in
    flight; on the first failure no more are submitted, the rest drain, and it is raised."""

    def __init__(
        self,
        tasks: Sequence[Task],
        size: int,
        submit: Callable[[Task], Any],
        wait_any: Callable[[list[Any]], list[Any]],
        outcome: Callable[[Any], Outcome],
        cancel: Callable[[Any], bool],
    ) -> None:
        self.todo: Iterator[Task] = iter(tasks)
        self.size, self.submit, self.wait_any = size, submit, wait_any
        self.outcome, self.cancel = outcome, cancel
        self.in_flight: dict[Any, Task] = {}
        self.failure: JobFailed | None = None
        self.crashed = False  # the executor failed (a worker died), not a task

    def run(self, on_done: OnDone) -> None:
        self._fill()
        while self.in_flight:
            for handle in self.wait_any(list(self.in_flight)):
                self._collect(handle, on_done)
            self._fill()
        if self.failure is not None:
            raise self.failure

    def _fill(self) -> None:
        while self.failure is None and len(self.in_flight) < self.size:
            task = next(self.todo, None)
            if task is None:
                return
            self.in_flight[self.submit(task)] = task

    def _collect(self, handle: Any, on_done: OnDone) -> None:
        task = self.in_flight.pop(handle)
        try:
            result = _unpack(task, self.outcome(handle))
        except JobFailed as failure:
            self._fail(failure)
            return
        except Exception as exc:
            self.crashed = True
            self._fail(_crash(task, exc))
            return
        on_done(task, result)

    def _fail(self, failure: JobFailed) -> None:
        if self.failure is None:
            self.failure = failure
            for handle in list(self.in_flight):
                if self.cancel(handle):
                    del self.in_flight[handle]
        else:
            self.failure.add_note(f"job {failure.task!r} also failed: {failure.error_type}")


class ProcessExecutor(_Base):
    """Runs tasks on a pool of spawned worker processes, created on the first run."""

    name = "process"

    def __init__(self, workers: int | None = None, threads: int | None = None) -> None:
        _check_count("workers", workers)
        _check_count("threads", threads)
        self.workers = workers or os.cpu_count() or 1
        self.threads = threads or _default_threads(self.workers)
        self._pool: ProcessPoolExecutor | None = None

    def run(self, tasks: Sequence[Task], on_done: OnDone) -> None:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        pool = self._pool

        def submit(task: Task) -> Future[Outcome]:
            return pool.submit(_run_task, task.fn, task.payload, self.threads)

        def wait_any(futures: list[Future[Outcome]]) -> list[Future[Outcome]]:
            return list(wait(futures, return_when=FIRST_COMPLETED).done)

        # one task more than workers waits in the queue, so that no worker idles between tasks
        window = _Window(
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


def driver_path() -> list[str]:
    """The driver's ``sys.path`` entries that a worker of the same interpreter lacks: the
    project's source and test folders, not the standard library or site-packages."""
    installed = {
        Path(p).resolve()
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
    entries: list[str] = []
    for entry in sys.path:
        folder = Path(entry or os.getcwd()).resolve()
        inside = any(folder == root or root in folder.parents for root in installed)
        if folder.is_dir() and not inside and str(folder) not in entries:
            entries.append(str(folder))
    return entries


def _require_ray() -> None:
    """Fail at construction when Ray is missing, without importing it (the import must wait until
    the loopback environment is set)."""
    if importlib.util.find_spec("ray") is None:
        raise ModuleNotFoundError(
            "the 'ray' executor needs Ray, which is not installed; install the extra with "
            "pip install 'misentry[ray]', or use the 'process' executor"
        )


class RayExecutor(_Base):
    """Runs tasks as Ray tasks on this machine (loopback only); see the module docstring."""

    name = "ray"

    def __init__(self, workers: int | None = None, threads: int | None = None) -> None:
        _check_count("workers", workers)
        _check_count("threads", threads)
        _require_ray()
        self.workers = workers or os.cpu_count() or 1
        self.threads = threads or _default_threads(self.workers)
        self._ray: ModuleType | None = None
        self._started = False
        self._saved_env: dict[str, str | None] = {}
        self._worker_path: list[str] = []  # on the workers' PYTHONPATH already

    def run(self, tasks: Sequence[Task], on_done: OnDone) -> None:
        ray = self._connect()
        remote = ray.remote(num_cpus=1, max_retries=0)(_run_task)
        options: dict[str, Any] = {}
        if not set(driver_path()) <= set(self._worker_path):
            path = os.pathsep.join(driver_path())
            options["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}

        def submit(task: Task) -> Any:
            return remote.options(name=task.name, **options).remote(
                task.fn, task.payload, self.threads
            )

        def wait_any(refs: list[Any]) -> list[Any]:
            done, _ = ray.wait(refs, num_returns=1)
            return list(done)

        window = _Window(tasks, self.workers, submit, wait_any, ray.get, lambda ref: False)
        try:
            window.run(on_done)
        except BaseException as exc:
            if not isinstance(exc, JobFailed):
                for ref in window.in_flight:
                    ray.cancel(ref, force=True)
                self.close()
            raise

    def _connect(self) -> ModuleType:
        """The Ray module, connected: the caller's instance if there is one, else a loopback
        instance started here, whose workers inherit the driver's path as ``PYTHONPATH`` (faster
        than a runtime environment per task: the workers Ray starts ahead are the ones used)."""
        if self._ray is not None:
            return self._ray
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            log.info("ray executor: using the Ray instance the caller started")
            self._ray, self._worker_path = ray, []
            return ray
        self._saved_env = {key: os.environ.get(key) for key in RAY_LOOPBACK_ENV}
        os.environ.update(RAY_LOOPBACK_ENV)
        path = driver_path()
        with _environment("PYTHONPATH", os.pathsep.join(path)):
            ray = importlib.import_module("ray")
            _loopback_constant()
            ray.init(num_cpus=self.workers, include_dashboard=False)
        self._ray, self._started, self._worker_path = ray, True, path
        node = ray.util.get_node_ip_address()
        if not ipaddress.ip_address(node).is_loopback:
            self.close()
            raise RuntimeError(
                f"ray executor: Ray started on {node}, not on loopback; set "
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is first imported"
            )
        return ray

    def close(self) -> None:
        ray, self._ray = self._ray, None
        if ray is not None and self._started:
            ray.shutdown()
        self._started, self._worker_path = False, []
        for key, value in self._saved_env.items():
            _set_env(key, value)
        self._saved_env = {}


@contextmanager
def _environment(key: str, value: str) -> Iterator[None]:
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        _set_env(key, before)


def _set_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _loopback_constant() -> None:
    """Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when it is first imported; if it was
    imported before this executor set it, set the constant it was read into."""
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        log.debug("ray executor: Ray was imported before the loopback settings; applying them")
        vars(constants)["ENABLE_RAY_CLUSTER"] = False


def make_executor(kind: Kind, workers: int | None = None, threads: int | None = None) -> Executor:
    """The executor ``kind`` (one of :data:`KINDS`). ``workers``: concurrent tasks (``process``,
    ``ray``; default: cores; ignored by ``local``). ``threads``: torch threads per task (default:
    cores // workers; ``local``: left as it is)."""
    _check_count("workers", workers)
    _check_count("threads", threads)
    if kind == "local":
        return LocalExecutor(threads)
    if kind == "process":
        return ProcessExecutor(workers, threads)
    if kind == "ray":
        return RayExecutor(workers, threads)
    raise ValueError(f"unknown executor {kind!r}; choose one of {', '.join(KINDS)}")
