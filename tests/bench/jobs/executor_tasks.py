"""Task functions for test_executors.py, importable by name in spawned and Ray workers (the
tests folder is on the driver's sys.path under pytest's default import mode). Each takes the
payload and the progress callback the executor hands it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Progress = Callable[[str, int, int], None]


def write_square(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Waits ``sleep`` seconds, writes ``i * i`` to ``<out>/<i>.txt`` and returns it with the
    worker's pid and torch thread count; reports ``square`` ``i`` of ``i`` to ``progress``."""
    i = int(payload["i"])
    progress("square", i, i)
    time.sleep(float(payload.get("sleep", 0.0)))
    Path(payload["out"], f"{i}.txt").write_text(str(i * i))
    return {"i": i, "square": i * i, "pid": os.getpid(), "threads": torch.get_num_threads()}


def fail(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Raises, naming the payload's ``i``."""
    raise ValueError(f"bad payload {payload['i']}")


def die(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Kills its worker process outright, as an out-of-memory kill would."""
    os._exit(int(payload.get("code", 3)))
