"""SSF: Sensitive-Sample Fingerprinting (He, Zhang, Lee, CVPR 2019)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from misentry.data import ImageSet
from misentry.fingerprint.base import Generator, SearchContext, on_lattice
from misentry.fingerprint.methods.natural import draw_sources
from misentry.models import last_linear
from misentry.models.pgd import project_ball
from misentry.models.train import evaluation


@dataclass(frozen=True)
class SsfParams:
    """Attributes:
    layers: the weights whose gradient is measured: ``"last"`` (the output layer's weight and
        bias, in closed form, batched) or ``"all"`` (every parameter, one sample at a time).
    eps: L-inf distance to the natural source, in [0, 1] pixel units (8/255).
    steps: Adam steps on the image.
    lr: Adam learning rate on the image, in [0, 1] pixel units (1/255: the authors' 1.0 on the
        0-255 scale).
    pool_factor: candidates optimized per fingerprint asked for (capped by the sources).
    threshold_quantile: keep candidates whose sensitivity is at least this quantile of the
        candidates' (0: keep all), in [0, 1).
    cover_layer: the layer whose active neurons MANC covers; ``"penultimate"``, the input of
        the output layer, is the only one.
    neuron_threshold: a neuron is active when its value exceeds this (the authors' 0).
    """

    layers: Literal["last", "all"] = "last"
    eps: float = 8 / 255
    steps: int = 100
    lr: float = 1 / 255
    pool_factor: int = 2
    threshold_quantile: float = 0.25
    cover_layer: str = "penultimate"
    neuron_threshold: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.layers not in ("last", "all"):
            problems.append(f"layers must be 'last' or 'all', not {self.layers!r}")
        if not 0 < self.eps <= 1:
            problems.append(f"eps must be in (0, 1], not {self.eps}")
        if self.steps < 0:
            problems.append(f"steps must be >= 0, not {self.steps}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, not {self.lr}")
        if self.pool_factor < 1:
            problems.append(f"pool_factor must be >= 1, not {self.pool_factor}")
        if not 0 <= self.threshold_quantile < 1:
            problems.append(f"threshold_quantile must be in [0, 1), not {self.threshold_quantile}")
        if self.cover_layer != "penultimate":
            problems.append(f"cover_layer must be 'penultimate', not {self.cover_layer!r}")
        if problems:
            raise ValueError(f"SsfParams: {'; '.join(problems)}")


@contextmanager
def output_layer_input(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the input of the model's output layer (its last ``nn.Linear``) on each forward."""
    seen: list[torch.Tensor] = []
    _, layer = last_linear(model)

    def hook(_module: nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
        seen.append(inputs[0])

    handle = layer.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def hooks_reach(model: nn.Module, name: str) -> bool:
    """Whether a forward hook on ``model``'s submodule ``name`` fires when ``model`` runs: not
    when a module around it is TorchScript (its compiled forward runs no Python hooks), nor when
    an FX graph around it reads its parameters without calling it (a ``torch.export``
    program)."""
    parts = name.split(".") if name else []
    for depth in range(len(parts) + 1):
        owner = model.get_submodule(".".join(parts[:depth]))
        if isinstance(owner, torch.jit.ScriptModule):
            return False
        rest = ".".join(parts[depth:])
        if isinstance(owner, torch.fx.GraphModule) and rest:
            called = (n.op == "call_module" and n.target == rest for n in owner.graph.nodes)
            if not any(called):
                return False
    return True


def features_by_gradient(
    model: nn.Module, layer: nn.Linear, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and the output layer's input ``h`` where no hook can see ``h``.

    For ``z = W h + b``, the gradient of ``z[i, 0]`` with respect to ``W`` is ``e_0 h_i^T``:
    its first row is ``h_i``, exactly (a product with a one-hot vector). One
    ``torch.autograd.grad`` per sample gives it, with ``create_graph`` when gradients are
    enabled, so ``h`` stays differentiable with respect to ``x``. The weight is tracked for the
    pass and its ``requires_grad`` restored after.
    """
    differentiable = torch.is_grad_enabled()
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)  # a linear layer's (see last_linear)
    tracked = weight.requires_grad
    rows = []
    with torch.enable_grad():
        weight.requires_grad_(True)
        try:
            logits = model(x)
            for i in range(x.shape[0]):
                (grad,) = torch.autograd.grad(
                    logits[i, 0], weight, retain_graph=True, create_graph=differentiable
                )
                rows.append(grad[0])
        finally:
            weight.requires_grad_(tracked)
    h = torch.stack(rows) if rows else logits.new_zeros(0, weight.shape[1])
    return (logits, h) if differentiable else (logits.detach(), h.detach())


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of ``x`` and the output layer's input ``h`` (flattened per sample): by a
    forward hook where one fires, else by :func:`features_by_gradient`."""
    name, layer = last_linear(model)
    if not hooks_reach(model, name):
        return features_by_gradient(model, layer, x)
    with output_layer_input(model) as seen:
        logits = model(x)
    return logits, seen[-1].flatten(1)


def last_layer_sensitivity(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample sensitivity to the output layer, and that layer's input ``h``, in one pass.

    For a linear output layer ``z = W h + b`` and the predicted class ``y``, the gradient of
    ``log p_y`` is ``(onehot_y - p) h^T`` for ``W`` and ``onehot_y - p`` for ``b``, so its
    squared norm is ``||onehot_y - p||^2 (||h||^2 + 1)`` (without the ``+ 1`` when there is no
    bias): exact, and differentiable with respect to ``x`` through autograd. Where no hook sees
    ``h`` (TorchScript, ``torch.export``), :func:`features_by_gradient` gives it.
    """
    _, layer = last_linear(model)
    logits, h = logits_and_features(model, x)
    p = logits.softmax(dim=1)
    onehot = nn.functional.one_hot(logits.argmax(dim=1), logits.shape[1]).to(p)
    feature = h.pow(2).sum(dim=1) + (1.0 if layer.bias is not None else 0.0)
    return (onehot - p).pow(2).sum(dim=1) * feature, h


def all_layer_sensitivity(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample squared norm of the gradient of ``log p_y`` (``y`` predicted) with respect to
    every trainable parameter, one sample at a time with ``create_graph`` (double backprop), and
    the output layer's input ``h``. A plain loop rather than ``torch.func.vmap``: it works with
    any module and keeps the generator's per-sample pass counts right; it costs one pass per
    sample (two where no hook sees ``h``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("SSF layers='all': the target has no parameter that requires grad")
    differentiable = torch.is_grad_enabled()  # else (no_grad) only the values are wanted
    name, layer = last_linear(model)
    hooked = hooks_reach(model, name)
    values, features = [], []
    for i in range(x.shape[0]):
        watch: AbstractContextManager[list[torch.Tensor]] = (
            output_layer_input(model) if hooked else nullcontext([])
        )
        with torch.enable_grad(), watch as seen:
            logits = model(x[i : i + 1])
            log_p = logits.log_softmax(dim=1)[0, int(logits.argmax())]
            grads = torch.autograd.grad(log_p, params, create_graph=differentiable)
        values.append(torch.stack([g.pow(2).sum() for g in grads]).sum())
        if hooked:
            features.append(seen[-1].flatten(1))
        else:  # one more pass: h by the gradient (MANC reads its values only)
            with torch.no_grad():
                features.append(features_by_gradient(model, layer, x[i : i + 1])[1])
    value, h = torch.stack(values), torch.cat(features)
    return (value, h) if differentiable else (value.detach(), h.detach())


def manc(active: torch.Tensor, sensitivity: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """Maximum Active-Neuron Cover: ``n`` rows of the boolean ``active`` (candidates x neurons),
    chosen greedily, each covering the most neurons not yet covered, ties (and, once nothing new
    can be covered, every later pick) going to the higher sensitivity. Returns the chosen rows
    in order and the number of neurons they cover."""
    if n > active.shape[0]:
        raise ValueError(f"MANC: asked for {n} of only {active.shape[0]} candidates")
    covered = torch.zeros(active.shape[1], dtype=torch.bool)
    free = torch.ones(active.shape[0], dtype=torch.bool)
    rank = sensitivity.argsort().argsort().to(torch.float64) / max(active.shape[0], 1)
    chosen = []
    for _ in range(n):
        gain = (active & ~covered).sum(dim=1).to(torch.float64) + rank
        gain[~free] = -1.0
        pick = int(gain.argmax())
        chosen.append(pick)
        free[pick] = False
        covered |= active[pick]
    return torch.tensor(chosen, dtype=torch.int64), int(covered.sum())


class Ssf(Generator):
    """Sensitive-Sample Fingerprinting (method ``ssf``).

    Paper: He, Zhang, Lee, "Sensitive-Sample Fingerprinting of Deep Neural Networks", CVPR 2019
    (code: zechenghe/Sensitive_Sample_Fingerprinting). No model zoo.

    Objective: maximize the sensitivity of a natural sample, the squared L2 norm of the gradient
    of the log-probability of the target's predicted class with respect to a weight set (the
    output layer's weight and bias, or all parameters), so that a change of those weights moves
    the output. Then keep the candidates at or above the ``threshold_quantile`` of the
    candidates' sensitivity and choose ``n`` of them by Maximum Active-Neuron Cover (MANC) over
    the input of the output layer (:func:`manc`).

    Constraints: L-inf distance at most ``eps`` to the source, pixels clipped to [0, 1], after
    every Adam step; the iterate with the highest sensitivity is kept. Each candidate comes
    from a distinct source image.

    Defaults: the output layer; ``eps`` 8/255 L-inf; 100 Adam steps of ``lr`` 1/255;
    ``pool_factor`` 2 (candidates per fingerprint, capped by the sources); threshold quantile
    0.25; MANC over the output layer's input with neurons active above 0.

    Deviations from the authors' code: (1) they bound the L2 distance with a per-element radius
    of 10 on the 0-255 scale (RMS change about 0.039 per pixel); here an L-inf bound of 8/255,
    stricter per pixel and the same bound as the other perturbation methods of the toolkit, so
    methods are compared at equal visibility. (2) They sum the gradient over (the first 40)
    output classes and average it per weight; here the predicted class only, as a squared norm,
    which has an exact closed form for the output layer (:func:`last_layer_sensitivity`) and
    so runs on all candidates at once; ``layers="all"`` loops over samples with double backprop.
    (3) 100 Adam steps instead of 1,000, and learning rate 1/255 (their 1.0 on the 0-255
    scale): the L-inf ball is small and is crossed in a few steps. (4) Their fixed acceptance
    threshold of 5e-4 per weight is replaced by a quantile of the candidates, which does not
    depend on the model's scale; when fewer than ``n`` pass, the most sensitive of the others
    fill in. The Adam loop reuses the project's :func:`~misentry.models.pgd.project_ball`; it
    is not :func:`~misentry.models.pgd.pgd`, whose steps are signed, because the authors
    optimize with Adam.

    >>> # Ssf(SsfParams()).generate(target, pools["source"], n=100, seed=0)
    """

    name = "ssf"
    params: SsfParams

    def distance_bound(self) -> tuple[str, float]:
        return ("linf", self.params.eps)

    def sensitivity(self, target: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample sensitivity of ``x`` and the output layer's input, with ``target`` in the
        caller's mode (eval)."""
        if self.params.layers == "last":
            return last_layer_sensitivity(target, x)
        return all_layer_sensitivity(target, x)

    def _search(
        self,
        target: nn.Module,
        sources: ImageSet,
        n: int,
        generator: torch.Generator,
        context: SearchContext,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        p = self.params
        count = min(max(n, p.pool_factor * n), len(sources))
        index = draw_sources(sources, count, generator)
        with evaluation(target):
            x0 = sources.x[index]
            moved = on_lattice(self._ascend(target, x0, context))
            with torch.no_grad():
                start, _ = self.sensitivity(target, x0)
                reached, h = self.sensitivity(target, moved)
        reached, start = reached.detach(), start.detach()
        eligible = reached >= torch.quantile(reached, p.threshold_quantile)
        if int(eligible.sum()) < n:  # fill with the most sensitive of the others
            eligible[reached.argsort(descending=True)[:n]] = True
        pool = eligible.nonzero().flatten()
        picked, covered = manc(h.detach()[pool] > p.neuron_threshold, reached[pool], n)
        chosen = pool[picked]
        return (
            moved[chosen],
            index[chosen],
            {
                "sensitivity_sources_mean": float(start[chosen].mean()),
                "sensitivity_fingerprints_mean": float(reached[chosen].mean()),
                "neurons_covered": covered,
                "neurons_total": int(h.shape[1]),
                "candidates": count,
                "candidates_eligible": int(pool.numel()),
            },
        )

    def _ascend(self, target: nn.Module, x0: torch.Tensor, context: SearchContext) -> torch.Tensor:
        """Adam on the images towards higher sensitivity, projected after every step; the most
        sensitive iterate of each image."""
        p = self.params
        x = x0.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=p.lr)
        best_x = x0.detach().clone()
        best = torch.full((x0.shape[0],), -torch.inf)
        for step in range(p.steps + 1):
            with torch.set_grad_enabled(step < p.steps):
                # a fresh node per step, so hooks on the input (the pass counter's) do not pile up
                value, _ = self.sensitivity(target, x.clone())
            better = value.detach() > best
            best[better] = value.detach()[better]
            best_x[better] = x.detach()[better]
            if step == p.steps:
                break
            (x.grad,) = torch.autograd.grad(-value.sum(), x)
            optimizer.step()
            with torch.no_grad():
                x.copy_(project_ball(x, x0, p.eps, "linf"))
            context.report("ssf", step + 1, p.steps)
        return best_x
