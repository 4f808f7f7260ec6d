"""Emulated numeric stacks: a model run as another float stack would run it, on this CPU.

Each emulation is a :class:`~torch.utils._python_dispatch.TorchDispatchMode`, so it applies to
every kind of model alike (a registry module, an imported TorchScript program or an exported
one): it sees the ATen operations the model runs and changes how they compute, not the model.

- :class:`Rounded`: reduced precision. ``scope="matmul"`` rounds the inputs of convolutions and
  matrix products to a mantissa of ``bits`` bits (TF32: 10) and accumulates in float32, which is
  what TF32 tensor cores do; ``scope="all"`` rounds every operation's float32 inputs and outputs
  to ``dtype`` (bfloat16 or float16), which reproduces a model run in that type end to end (for
  bfloat16 it matched ``model.to(torch.bfloat16)`` bit for bit here). With a ``generator`` the
  rounding is stochastic (up or down with the probability of the remainder): a draw from the
  spread of rounding modes and orders a real device may use.
- :class:`Reordered`: float32 with another summation order. Convolutions and matrix products
  split their reduction (a convolution's kernel positions, a product's inner dimension) into
  random chunks and add the chunks' partial sums in turn: the last-bit differences of other
  kernels, thread counts and fused operators.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

aten = torch.ops.aten

CONVOLUTIONS = frozenset({aten.convolution.default, aten._convolution.default})
"""The convolution operations (PyTorch's TF32 default on a GPU covers these only)."""

PRODUCTS = CONVOLUTIONS | frozenset(
    {
        aten.addmm.default,
        aten.mm.default,
        aten.bmm.default,
        aten.matmul.default,
        aten.linear.default,
    }
)
"""The operations whose inputs TF32-style rounding touches (convolutions, matrix products)."""

MANTISSA_BITS = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}
"""Explicit mantissa bits of the floating-point types an emulation rounds to."""

TF32_BITS = 10
"""TF32's mantissa: float32's exponent with float16's 10 mantissa bits."""

Scope = Literal["matmul", "all"]


def round_mantissa(
    t: torch.Tensor, bits: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """float32 ``t`` rounded to a mantissa of ``bits`` bits (exponent range unchanged): to the
    nearest, ties to even, or stochastically with ``generator``. Infinities and NaN pass."""
    if t.dtype != torch.float32 or bits >= 23:
        return t
    drop = 23 - bits
    raw = t.contiguous().view(torch.int32)
    mask = (1 << drop) - 1
    if generator is None:
        lsb = (raw >> drop) & 1
        rounded = (raw + ((1 << (drop - 1)) - 1) + lsb) & ~mask
    else:
        noise = torch.randint(0, 1 << drop, raw.shape, generator=generator, dtype=torch.int32)
        rounded = (raw + noise) & ~mask
    finite = torch.isfinite(t)
    return torch.where(finite, rounded.view(torch.float32), t)


class Rounded(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Run under this mode to round as a reduced-precision stack does (see the module's text).

    Arguments:
        dtype: the type rounded to: ``torch.bfloat16``, ``torch.float16``, or ``torch.float32``
            with ``bits`` (TF32: ``bits=10``).
        scope: ``"matmul"``: only the inputs of convolutions and matrix products;
            ``"all"``: every operation's float32 inputs and outputs.
        generator: stochastic rounding from this generator; None: to the nearest.
        ops: with ``scope="matmul"``, the operations rounded (default :data:`PRODUCTS`; e.g.
            convolutions only, as PyTorch's TF32 default on a GPU).
    """

    def __init__(
        self,
        dtype: torch.dtype = torch.float32,
        *,
        bits: int | None = None,
        scope: Scope = "matmul",
        generator: torch.Generator | None = None,
        ops: frozenset[Any] = PRODUCTS,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ops = ops
        self.bits = MANTISSA_BITS[dtype] if bits is None else bits
        self.dtype = dtype
        self.scope = scope
        self.generator = generator

    def round(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
            return value
        if self.dtype is torch.float16 and self.generator is None:
            return value.to(torch.float16).float()  # the real conversion: range and mantissa
        if self.dtype is torch.bfloat16 and self.generator is None:
            return value.to(torch.bfloat16).float()
        out = round_mantissa(value, self.bits, self.generator)
        if self.dtype is torch.float16:  # the float16 range: overflow to infinity
            out = torch.where(out.abs() > 65504, out.sign() * torch.inf, out)
        return out

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if self.scope == "matmul" and func not in self.ops:
            return func(*args, **kwargs)
        out = func(*tree_map(self.round, args), **tree_map(self.round, kwargs))
        return tree_map(self.round, out) if self.scope == "all" else out


class Reordered(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Run under this mode for float32 with a random summation order in every convolution and
    matrix product (``generator`` draws the order; ``chunks`` partial sums at most)."""

    def __init__(self, generator: torch.Generator, chunks: int = 4) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.generator = generator
        self.chunks = chunks

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in CONVOLUTIONS and not kwargs:
            return self._convolution(func, args)
        if func is aten.addmm.default and not kwargs and len(args) == 3:
            bias, a, b = args
            return bias + self._product(a, b)
        if func is aten.mm.default and not kwargs:
            return self._product(*args)
        return func(*args, **kwargs)

    def _order(self, k: int) -> list[torch.Tensor]:
        """A random permutation of ``range(k)`` cut into up to ``chunks`` random pieces."""
        order = torch.randperm(k, generator=self.generator)
        pieces = min(self.chunks, k)
        if pieces < 2:
            return [order]
        cuts = torch.randperm(k - 1, generator=self.generator)[: pieces - 1] + 1
        return list(torch.tensor_split(order, cuts.sort().values))

    def _product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = None
        for piece in self._order(a.shape[-1]):
            part = a[..., piece] @ b[piece]
            total = part if total is None else total + part
        assert total is not None
        return total

    def _convolution(self, func: Any, args: tuple[Any, ...]) -> torch.Tensor:
        """The convolution as a sum of partial convolutions, each over a random subset of the
        kernel's (input channel, row, column) positions, added in random order."""
        weight, bias = args[1], args[2]
        positions = weight[0].numel()
        total = None
        for piece in self._order(positions):
            mask = torch.zeros(positions, dtype=weight.dtype)
            mask[piece] = 1
            part: torch.Tensor = func(
                args[0], weight * mask.view(1, *weight.shape[1:]), None, *args[3:]
            )
            total = part if total is None else total + part
        assert total is not None
        return total if bias is None else total + bias.view(1, -1, *([1] * (total.dim() - 2)))
