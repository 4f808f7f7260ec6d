"""A task and what every executor shares to run one: the worker-side call, the failure it
reports, and the submit/collect window of the concurrent executors
(:mod:`misentry.bench.jobs.executors` describes the executors themselves)."""

from __future__ import annotations

import importlib
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeAlias

Progress: TypeAlias = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: how far a piece of work is."""

TaskFunction: TypeAlias = Callable[[dict[str, Any], Progress], dict[str, Any]]
"""A task's function: ``fn(payload, progress) -> result``, module-level, JSON in and out."""

OnDone: TypeAlias = Callable[["Task", dict[str, Any]], None]


def quiet(_stage: str, _done: int, _total: int) -> None:
    """The progress callback that reports nothing."""
    return None


@dataclass(frozen=True)
class Task:
    """One job: ``fn`` (``"package.module:function"``, a module-level ``(payload, progress) ->
    dict``) called with ``payload`` (JSON-ready). ``name`` identifies it in errors and progress."""

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
    """Runs a wave of independent tasks; see :mod:`misentry.bench.jobs.executors`.

    ``progress`` receives the inner stages of a task that runs in this process (the ``local``
    executor); tasks in other processes report nothing but their end (``on_done``).
    """

    name: str

    def run(
        self, tasks: Sequence[Task], on_done: OnDone, progress: Progress | None = None
    ) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


Outcome: TypeAlias = tuple[Literal["ok"], dict[str, Any]] | tuple[Literal["error"], list[str]]
"""An outcome as a worker sends it back: ``("ok", result)`` or ``("error", [type, message,
traceback])``."""


def import_function(fn: str) -> TaskFunction:
    """The function that ``"package.module:function"`` names."""
    module_name, _, function_name = fn.partition(":")
    function: TaskFunction = getattr(importlib.import_module(module_name), function_name)
    return function


def run_task(
    fn: str, payload: dict[str, Any], threads: int | None, progress: Progress | None = None
) -> Outcome:
    """Runs in the worker: set torch's threads, call the function, and send back its result or
    its exception as text (so that an exception that does not pickle still reaches the driver)."""
    try:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        return ("ok", import_function(fn)(payload, progress or quiet))
    except Exception as exc:
        return ("error", [type(exc).__qualname__, str(exc), traceback.format_exc()])


def unpack(task: Task, outcome: Outcome) -> dict[str, Any]:
    """The task's result; :class:`JobFailed` if it raised."""
    if outcome[0] == "error":
        error_type, message, text = outcome[1]
        raise JobFailed(task.name, error_type, message, text)
    return outcome[1]


def crash(task: Task, exc: BaseException) -> JobFailed:
    """The executor itself failed on ``task`` (a worker died, a result did not pickle)."""
    text = "".join(traceback.format_exception(exc))
    return JobFailed(task.name, type(exc).__qualname__, str(exc), text)


def check_count(what: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")


def default_threads(workers: int) -> int:
    """Torch threads per worker when none are asked for: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // workers)


class ExecutorBase:
    """What every executor does alike: close on leaving a ``with`` block."""

    name: str

    def run(self, tasks: Sequence[Task], on_done: OnDone, progress: Progress | None = None) -> None:
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


class TaskWindow:
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
            result = unpack(task, self.outcome(handle))
        except JobFailed as failure:
            self._fail(failure)
            return
        except Exception as exc:
            self.crashed = True
            self._fail(crash(task, exc))
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
