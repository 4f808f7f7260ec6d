"""The ``ray`` executor: Ray tasks on a Ray instance on this machine, listening on loopback only
(:mod:`misentry.bench.jobs.executors` describes the guarantee and the three executors)."""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from misentry.bench.jobs.task import (
    ExecutorBase,
    JobFailed,
    OnDone,
    Progress,
    Task,
    TaskWindow,
    check_count,
    default_threads,
    run_task,
)

log = logging.getLogger(__name__)

RAY_LOOPBACK_ENV: dict[str, str] = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}
"""The environment a Ray instance started here runs with."""


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


def require_ray() -> None:
    """Fail at construction when Ray is missing, without importing it (the import must wait until
    the loopback environment is set)."""
    if importlib.util.find_spec("ray") is None:
        raise ModuleNotFoundError(
            "the 'ray' executor needs Ray, which is not installed; install the extra with "
            "pip install 'misentry[ray]', or use the 'process' executor"
        )


class RayExecutor(ExecutorBase):
    """Runs tasks as Ray tasks on this machine (loopback only); see the module docstring."""

    name = "ray"

    def __init__(self, workers: int | None = None, threads: int | None = None) -> None:
        check_count("workers", workers)
        check_count("threads", threads)
        require_ray()
        self.workers = workers or os.cpu_count() or 1
        self.threads = threads or default_threads(self.workers)
        self._ray: ModuleType | None = None
        self._started = False
        self._saved_env: dict[str, str | None] = {}
        self._worker_path: list[str] = []  # on the workers' PYTHONPATH already

    def run(self, tasks: Sequence[Task], on_done: OnDone, progress: Progress | None = None) -> None:
        del progress  # tasks run in Ray's workers: only their end is reported
        ray = self._connect()
        remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
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

        window = TaskWindow(tasks, self.workers, submit, wait_any, ray.get, lambda ref: False)
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
