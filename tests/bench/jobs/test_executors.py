"""The executors: every kind delivers each result to on_done, stops on a failing job with its
traceback, applies the requested torch threads in its workers, and (ray) stays on loopback.

The task functions live in ``executor_tasks.py`` beside this file, a module of this test package:
the tests folder is on this process's sys.path only (pytest's default import mode), so a spawned
or Ray worker finds them only if the executor passes the driver's path on.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from misentry.bench.jobs.executors import KINDS, Executor, JobFailed, Task, make_executor

TASKS = f"{__name__.rpartition('.')[0]}.executor_tasks"
"""The task functions' module, named as this test package is imported (e.g.
``bench.jobs.executor_tasks``)."""

THREADS = 3  # differs from every worker's default (2 cores here; Ray workers start with 1)


@pytest.fixture(scope="module")
def process_executor() -> Iterator[Executor]:
    """One pool for the module: it also shows the pool is reused across runs."""
    with make_executor("process", workers=2, threads=THREADS) as executor:
        yield executor


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[Executor]:
    """Ray starts once per module (on the first run) and shuts down after the last test."""
    pytest.importorskip("ray")
    with make_executor("ray", workers=2, threads=THREADS) as executor:
        yield executor


@pytest.fixture(params=KINDS)
def executor(request: pytest.FixtureRequest) -> Executor:
    if request.param == "local":
        return make_executor("local", threads=THREADS)
    shared: Executor = request.getfixturevalue(f"{request.param}_executor")
    return shared


def squares(out: Path, indices: range, sleep: float = 0.0) -> list[Task]:
    return [
        Task(
            f"square-{i}",
            f"{TASKS}:write_square",
            {"i": i, "out": str(out), "sleep": sleep},
        )
        for i in indices
    ]


class Recorder:
    """An on_done that records what it was given, and in which process."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.pids: set[int] = set()

    def __call__(self, task: Task, result: dict[str, Any]) -> None:
        assert task.name not in self.results, f"{task.name} reported twice"
        self.results[task.name] = result
        self.pids.add(os.getpid())


def written(out: Path) -> set[str]:
    return {f"square-{path.stem}" for path in out.glob("*.txt")}


def test_every_result_reaches_on_done(executor: Executor, tmp_path: Path) -> None:
    done = Recorder()
    executor.run(squares(tmp_path, range(6)), done)
    assert done.results.keys() == {f"square-{i}" for i in range(6)}
    assert all(r["square"] == int(r["i"]) ** 2 for r in done.results.values())
    assert written(tmp_path) == done.results.keys()
    assert all((tmp_path / f"{i}.txt").read_text() == str(i * i) for i in range(6))
    assert done.pids == {os.getpid()}


def test_progress_reaches_the_tasks_of_this_process_only(
    executor: Executor, tmp_path: Path
) -> None:
    seen: list[tuple[str, int, int]] = []
    executor.run(squares(tmp_path, range(3)), Recorder(), lambda *event: seen.append(event))
    if executor.name == "local":
        assert seen == [("square", i, i) for i in range(3)]
    else:  # the workers run in other processes: they report nothing but their end
        assert seen == []


def test_failure_names_the_job_and_stops(executor: Executor, tmp_path: Path) -> None:
    failing = Task("broken-job", f"{TASKS}:fail", {"i": 7})
    tasks = [*squares(tmp_path, range(1)), failing, *squares(tmp_path, range(1, 11), sleep=0.1)]
    done = Recorder()
    with pytest.raises(JobFailed, match="broken-job") as info:
        executor.run(tasks, done)
    assert info.value.task == "broken-job"
    assert info.value.error_type == "ValueError"
    assert info.value.error_message == "bad payload 7"
    assert "Traceback" in info.value.traceback
    assert "executor_tasks.py" in info.value.traceback
    assert "bad payload 7" in str(info.value)
    # every job that finished was reported, and jobs after the failure were not started
    assert written(tmp_path) == done.results.keys()
    assert "square-0" in done.results
    assert len(done.results) < 11
    if executor.name == "local":
        assert done.results.keys() == {"square-0"}


def test_workers_use_the_requested_threads(executor: Executor, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    done = Recorder()
    executor.run(squares(tmp_path, range(4)), done)
    assert {r["threads"] for r in done.results.values()} == {THREADS}
    assert torch.get_num_threads() == before
    worker_pids = {r["pid"] for r in done.results.values()}
    if executor.name == "local":
        assert worker_pids == {os.getpid()}
    else:
        assert os.getpid() not in worker_pids


def test_local_leaves_threads_alone_by_default(tmp_path: Path) -> None:
    done = Recorder()
    make_executor("local").run(squares(tmp_path, range(1)), done)
    assert done.results["square-0"]["threads"] == torch.get_num_threads()


def test_interrupt_stops_process_workers(tmp_path: Path) -> None:
    def interrupt(task: Task, result: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    executor = make_executor("process", workers=1, threads=1)
    first = Recorder()
    executor.run(squares(tmp_path, range(1)), first)
    worker = first.results["square-0"]["pid"]
    with pytest.raises(KeyboardInterrupt):
        executor.run(squares(tmp_path, range(1, 4), sleep=0.2), interrupt)
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


def test_a_dead_worker_fails_the_job_and_the_pool_recovers(tmp_path: Path) -> None:
    with make_executor("process", workers=1, threads=1) as executor:
        with pytest.raises(JobFailed, match="killer") as info:
            executor.run([Task("killer", f"{TASKS}:die", {})], Recorder())
        assert info.value.error_type == "BrokenProcessPool"
        done = Recorder()
        executor.run(squares(tmp_path, range(2)), done)
        assert done.results.keys() == {"square-0", "square-1"}


def loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def descendants_by_proc(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = {child for child, parent in parents.items() if parent == pid}
        frontier.extend(children - found)
        found |= children
    return found


def listening_addresses() -> list[tuple[int, str]]:
    """(pid, address) of every listening TCP socket of this process and its descendants (the Ray
    processes it started): with psutil (Ray vendors it) or else ``ss``."""
    try:
        import psutil
    except ImportError:
        return listening_addresses_by_ss()
    found: list[tuple[int, str]] = []
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            connections = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(proc.pid, c.laddr.ip) for c in connections if c.status == psutil.CONN_LISTEN]
    return found


def listening_addresses_by_ss() -> list[tuple[int, str]]:
    if shutil.which("ss") is None or not Path("/proc").is_dir():
        pytest.skip("neither psutil nor ss with /proc is available to list listening sockets")
    ours = descendants_by_proc(os.getpid())
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found: list[tuple[int, str]] = []
    for line in lines.splitlines():
        host = line.split()[3].rsplit(":", 1)[0].strip("[]")
        found += [(pid, host) for pid in map(int, re.findall(r"pid=(\d+)", line)) if pid in ours]
    return found


def test_ray_listens_on_loopback_only(ray_executor: Executor, tmp_path: Path) -> None:
    ray_executor.run(squares(tmp_path, range(2)), Recorder())  # Ray is up, workers started
    listeners = listening_addresses()
    assert len({pid for pid, _ in listeners}) >= 3, listeners  # gcs_server, raylet, workers...
    assert [(pid, host) for pid, host in listeners if not loopback(host)] == []


def test_ray_leaves_a_callers_instance_running(ray_executor: Executor, tmp_path: Path) -> None:
    import ray

    ray_executor.run(squares(tmp_path, range(1)), Recorder())
    with make_executor("ray", workers=1, threads=1) as second:
        done = Recorder()
        second.run(squares(tmp_path, range(1, 2)), done)
        assert done.results["square-1"]["threads"] == 1
    assert ray.is_initialized()
    again = Recorder()
    ray_executor.run(squares(tmp_path, range(2, 3)), again)
    assert again.results.keys() == {"square-2"}


def test_ray_missing_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "ray" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install 'misentry[ray]'")):
        make_executor("ray")


@pytest.mark.parametrize(
    ("kind", "workers", "threads", "message"),
    [
        ("gpu", None, None, "local, process, ray"),
        ("local", None, 0, "threads must be at least 1"),
        ("process", 0, None, "workers must be at least 1"),
        ("process", 2, -1, "threads must be at least 1"),
        ("ray", -1, None, "workers must be at least 1"),
    ],
)
def test_invalid_arguments(
    kind: Any, workers: int | None, threads: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_executor(kind, workers=workers, threads=threads)


def test_task_needs_module_and_function() -> None:
    with pytest.raises(ValueError, match=re.escape("package.module:function")):
        Task("bad", f"{TASKS}.write_square", {})
