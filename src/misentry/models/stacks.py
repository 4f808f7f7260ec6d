"""The benign re-deployment matrix: named numeric stacks that serve the same weights, by level.

A deployment tolerance (:mod:`misentry.fingerprint.tolerance`) is a level of this ladder, each
level's stacks added to the stricter ones':

==========  ===================================================================================
``exact``   the same float32 stack: batch sizes 1, 3, 7, 64, 100, 256 and all at once, 1 and
            2 threads, float64, channels-last (a label that changes here changes for no reason
            at all)
``fp32``    any float32 execution: oneDNN off, TorchScript trace and trace+freeze, the pixels
            converted as ``k * (1/255)`` instead of ``k / 255`` and through JSON with 6
            decimals, and random summation orders of every convolution and matrix product
``tf32``    TF32 in convolutions and matrix products (inputs rounded to a 10-bit mantissa), in
            convolutions only, and stochastically rounded draws
``fp16``    the model run in float16 end to end, under CPU autocast, and stochastically rounded
``bf16``    the same in bfloat16
==========  ===================================================================================

Every stack maps ``(model, x, seed)`` to float32 logits for float images ``x`` in [0, 1]; a
randomized stack has ``draws`` > 1 and reads its randomness from ``seed``. A stack that cannot
run a model (a program that does not trace) raises :class:`StackUnavailable`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.jit._trace import TracerWarning

from misentry.models.numerics import CONVOLUTIONS, PRODUCTS, TF32_BITS, Reordered, Rounded
from misentry.models.train import evaluation

LEVELS: tuple[str, ...] = ("exact", "fp32", "tf32", "fp16", "bf16")
"""The tolerance ladder, strictest first."""

BATCH_SIZES = (1, 3, 7, 64, 100, 256)
"""Batch sizes of the ``exact`` level (with the whole set at once)."""

DRAWS = 3
"""Draws of each randomized stack."""

Run = Callable[[nn.Module, torch.Tensor, int], torch.Tensor]


class StackUnavailable(RuntimeError):
    """The stack cannot run this model (the message says why)."""


@dataclass(frozen=True)
class Stack:
    """A named way to serve the weights: ``run(model, x, seed)`` gives float32 logits."""

    name: str
    level: str
    run: Run
    draws: int = 1


def level_index(level: str) -> int:
    """The position of ``level`` in :data:`LEVELS`; a ValueError naming the levels."""
    try:
        return LEVELS.index(level)
    except ValueError:
        raise ValueError(f"unknown tolerance {level!r}; tolerances: {', '.join(LEVELS)}") from None


def stacks(level: str) -> list[Stack]:
    """Every stack of ``level`` and of the stricter levels, strictest first."""
    upto = level_index(level)
    return [s for s in ALL_STACKS if level_index(s.level) <= upto]


def _batched(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    with evaluation(model):
        return _plain(model, x, batch)


def _plain(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Logits in batches of ``batch``, without touching the model's mode (a frozen program
    has none)."""
    with torch.no_grad():
        parts = [model(x[i : i + batch]) for i in range(0, max(len(x), 1), batch)]
    return torch.cat(parts).float()


def _in_mode(model: nn.Module, x: torch.Tensor, mode: object) -> torch.Tensor:
    with evaluation(model), torch.no_grad(), mode:  # type: ignore[attr-defined]
        return _batched(model, x, 256)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batch(size: int | None) -> Run:
    return lambda model, x, _seed: _batched(model, x, size or max(len(x), 1))


def _threaded(count: int) -> Run:
    def run(model: nn.Module, x: torch.Tensor, _seed: int) -> torch.Tensor:
        with _threads(count):
            return _batched(model, x, 64)

    return run


def _float64(model: nn.Module, x: torch.Tensor, _seed: int) -> torch.Tensor:
    try:
        wide = copy.deepcopy(model).double()
        return _batched(wide, x.double(), 256)
    except RuntimeError as err:
        raise StackUnavailable(f"the model does not run in float64: {err}") from None


def _channels_last(model: nn.Module, x: torch.Tensor, _seed: int) -> torch.Tensor:
    moved = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return _batched(moved, x.contiguous(memory_format=torch.channels_last), 256)


def _onednn_off(model: nn.Module, x: torch.Tensor, _seed: int) -> torch.Tensor:
    with warnings.catch_warnings():  # the flags also set oneDNN's TF32 switch, with a warning
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            return _batched(model, x, 256)


def _traced(freeze: bool) -> Run:
    def run(model: nn.Module, x: torch.Tensor, _seed: int) -> torch.Tensor:
        if isinstance(model, torch.jit.ScriptModule) and not freeze:
            return _batched(model, x, 256)
        try:
            with evaluation(model), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # trace and freeze
                warnings.simplefilter("ignore", TracerWarning)  # e.g. a pass counter
                program = torch.jit.trace(copy.deepcopy(model).eval(), x[:2], check_trace=False)  # type: ignore[no-untyped-call]
                if freeze:
                    program = torch.jit.freeze(program)
        except Exception as err:  # a model that does not trace: say so, never fail the matrix
            raise StackUnavailable(f"the model does not trace: {type(err).__name__}") from None
        return _plain(program, x, 256)

    return run


def _reciprocal(model: nn.Module, x: torch.Tensor, _seed: int) -> torch.Tensor:
    pixels = torch.round(x * 255)
    return _batched(model, pixels * torch.tensor(1 / 255, dtype=torch.float32), 256)


def _json_decimals(decimals: int) -> Run:
    def run(model: nn.Module, x: torch.Tensor, _seed: int) -> torch.Tensor:
        text = torch.round(x.double() * 10**decimals) / 10**decimals
        return _batched(model, text.float(), 256)

    return run


def _reordered(model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    return _in_mode(model, x, Reordered(torch.Generator().manual_seed(seed)))


def _rounded(
    dtype: torch.dtype, bits: int | None, scope: str, ops: frozenset[object] = PRODUCTS
) -> Run:
    def run(model: nn.Module, x: torch.Tensor, _seed: int) -> torch.Tensor:
        mode = Rounded(dtype, bits=bits, scope=scope, ops=ops)  # type: ignore[arg-type]
        return _in_mode(model, x, mode)

    return run


def _stochastic(dtype: torch.dtype, bits: int | None, scope: str) -> Run:
    def run(model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        mode = Rounded(dtype, bits=bits, scope=scope, generator=generator)  # type: ignore[arg-type]
        return _in_mode(model, x, mode)

    return run


def _autocast(dtype: torch.dtype) -> Run:
    def run(model: nn.Module, x: torch.Tensor, _seed: int) -> torch.Tensor:
        with torch.autocast("cpu", dtype=dtype):
            return _batched(model, x, 256)

    return run


ALL_STACKS: tuple[Stack, ...] = (
    *(Stack(f"batch-{size}", "exact", _batch(size)) for size in BATCH_SIZES),
    Stack("batch-all", "exact", _batch(None)),
    Stack("threads-1", "exact", _threaded(1)),
    Stack("threads-2", "exact", _threaded(2)),
    Stack("float64", "exact", _float64),
    Stack("channels-last", "exact", _channels_last),
    Stack("onednn-off", "fp32", _onednn_off),
    Stack("torchscript-trace", "fp32", _traced(False)),
    Stack("torchscript-freeze", "fp32", _traced(True)),
    Stack("pixels-times-reciprocal", "fp32", _reciprocal),
    Stack("json-6-decimals", "fp32", _json_decimals(6)),
    Stack("summation-order", "fp32", _reordered, DRAWS),
    Stack("tf32", "tf32", _rounded(torch.float32, TF32_BITS, "matmul", PRODUCTS)),
    Stack("tf32-convolutions", "tf32", _rounded(torch.float32, TF32_BITS, "matmul", CONVOLUTIONS)),
    Stack("tf32-stochastic", "tf32", _stochastic(torch.float32, TF32_BITS, "matmul"), DRAWS),
    Stack("fp16", "fp16", _rounded(torch.float16, None, "all")),
    Stack("fp16-autocast", "fp16", _autocast(torch.float16)),
    Stack("fp16-stochastic", "fp16", _stochastic(torch.float16, None, "all"), DRAWS),
    Stack("bf16", "bf16", _rounded(torch.bfloat16, None, "all")),
    Stack("bf16-autocast", "bf16", _autocast(torch.bfloat16)),
    Stack("bf16-stochastic", "bf16", _stochastic(torch.bfloat16, None, "all"), DRAWS),
)
"""The whole matrix, strictest level first."""
