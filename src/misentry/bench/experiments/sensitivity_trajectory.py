"""The tampering trajectories of the sensitivity experiment (:mod:`.sensitivity`): tampered
models after an exact number of training steps (Figure 6).

The founding paper's Figure 6 plots the detection rate of each fingerprinting method against the
number of training steps of a tampering that starts from the untampered target: fine-tuning of
the last layer at learning rate 1e-5, the targeted attack and the backdoor (CIFAR-10). This module
gives the models of such a sweep; :func:`misentry.bench.metrics.disagreements` and
:func:`~misentry.bench.metrics.detection_rate` turn them into the curve.

What is swept: the variant's own recipe from :mod:`misentry.tamper.registry`, with the seed the
builder derives for ``(namespace, variant, index)`` (first attempt), run for exactly ``steps``
optimizer steps from the target. ``steps`` counts calls of the optimizer's ``step``, i.e. batches,
summed over every stage of the recipe; 0 is the target itself. The recipe's stop rule is ignored:

* fine-tuning (``ft_*``): its epoch budget and the builder's observability extensions. The
  trajectory is the recipe's first ``epochs`` epochs, then one extension epoch after another
  (fresh batch order and momentum, as :meth:`FineTuning.extend`), past the cap of 9 if asked;
* ``targeted``: the all-victims-flipped check. The SGD rate still rises stage by stage (1e-3 for
  50 steps, 3e-3 for 50, ... 0.1), as in the recipe; after the last stage the run goes on at 0.1
  in the extension epochs of :func:`~misentry.tamper.poison.extend_run`;
* ``backdoor``: the ASR >= 0.9 check. One run up to the recipe's 500-step cap, then extension
  epochs as ``extend_run``.

Truncation holds bit for bit: every segment uses a constant learning rate and its batch order,
poison draws and mixing depend only on its seed and step, so the model after k steps of a longer
sweep is the model of a direct run of k steps (tested), and a sweep over many step counts trains
once (:func:`tamper_at_steps_many`). Up to the step where the builder's stop rule fired, the
trajectory is the builder's own instance (tested on digits; on mnist5k the sweep at the recorded
step count reproduces bench instance 0 of all three variants bit for bit). Bit for bit means at
one torch thread count: CPU kernels reduce in a thread-dependent order, so weights built with 2
threads differ in the last bits from weights built with 1 (the disagreement counts on mnist5k
did not).

Deviations from the paper: the paper does not say how its runs were cut (nor whether the rate
schedule of the targeted attack applies); here the recipes are the BIVBench ones of this project
(see each family's docstring) and steps are counted from the target, on the variant's
``tamper`` data of the chosen namespace. The paper plots one run per method on CIFAR-10; a sweep
here is one instance, and :func:`default_steps` sizes its grid to the dataset.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from misentry.data import ImageSet
from misentry.models import TrainConfig, TrainHooks, TrainState, fit
from misentry.tamper.base import TamperContext, Tampering, Variant
from misentry.tamper.builder import Workspace
from misentry.tamper.families.backdoor import Backdoor, target_label_of
from misentry.tamper.families.fine_tuning import FineTuning
from misentry.tamper.families.targeted import TargetedPoisoning
from misentry.tamper.layers import trainable_layers
from misentry.tamper.measure import accuracy, follow_rate
from misentry.tamper.namespace import DataAccess, Namespace, instance_seed
from misentry.tamper.poison import mixer
from misentry.tamper.recipes import EXTENSION_STREAM, adam_config, extension_config
from misentry.tamper.registry import VARIANTS
from misentry.tamper.triggers import attack_success, stamped_check, stamper

SENSITIVITY_VARIANTS: tuple[str, ...] = ("ft_last_lr1e-5", "targeted", "backdoor")
"""The variants of the paper's Figure 6. Every ``ft_*`` variant is accepted as well."""

GRID_FRACTIONS: tuple[float, ...] = (1 / 32, 1 / 8, 1 / 2, 1.0, 2.0)
""":func:`default_steps` takes these fractions of a variant's usual step budget."""

USUAL_STEPS: dict[str, int] = {"targeted": 100, "backdoor": 150}
"""Usual step budgets of the poisoning recipes (their stop rule counts steps, whatever the size of
the data): on mnist5k the ten bench instances took 66-110 steps (targeted) and 140-150
(backdoor)."""

Batch = tuple[torch.Tensor, torch.Tensor]
Segment = tuple[TrainConfig, TrainHooks]


@dataclass(frozen=True)
class StepResult:
    """A tampered model after an exact number of optimizer steps.

    Attributes:
        model: the model (eval mode), a fresh copy of the target with the trained weights.
        steps: optimizer steps it took from the target (0: the target's weights).
        clean_accuracy: top-1 accuracy on the namespace's ``check`` images (the families' check
            accuracy).
        attack_success: ``backdoor``: the ASR (stamped ``check`` images of other classes that get
            the target label); ``targeted``: the share of victims with their target label; None
            for fine-tuning.
        seconds: wall time from the start of the call to this checkpoint (setup and training, not
            the measurements), so a sweep's entries read as the time a direct run would take.
    """

    model: nn.Module
    steps: int
    clean_accuracy: float
    attack_success: float | None
    seconds: float


@dataclass(frozen=True)
class Trajectory:
    """A recipe without its stop rule: the data, the k-th training segment (its config's
    ``epochs``/``max_steps`` give the segment's length), and the attack objective."""

    data: ImageSet | Batch
    segment: Callable[[int], Segment]
    objective: Callable[[nn.Module], float] | None


def tamper_at_steps(
    bench: Workspace,
    variant: str,
    index: int,
    steps: int,
    namespace: Namespace = Namespace.BENCH,
    attempt: int = 0,
) -> StepResult:
    """``variant``'s instance ``index`` trained for exactly ``steps`` optimizer steps.

    Args:
        bench: the target with its pools (:meth:`Workspace.load`).
        variant: a slug of :data:`SENSITIVITY_VARIANTS` (or any ``ft_*`` variant).
        index: the instance index; with ``namespace`` and ``attempt`` it gives the seed, as in
            :func:`misentry.tamper.builder.build_instance`.
        steps: optimizer steps, >= 0.
        namespace: ``bench`` (the builder's default), ``zoo`` or ``tune``.
        attempt: which of the builder's seeds (0: the first).

    >>> bench = Workspace.load(load_record("runs/target"))  # doctest: +SKIP
    >>> tamper_at_steps(bench, "backdoor", 0, 150).attack_success  # doctest: +SKIP
    0.92...
    """
    return tamper_at_steps_many(bench, variant, index, [steps], namespace, attempt)[0]


def tamper_at_steps_many(
    bench: Workspace,
    variant: str,
    index: int,
    steps: Sequence[int],
    namespace: Namespace = Namespace.BENCH,
    attempt: int = 0,
) -> list[StepResult]:
    """:func:`tamper_at_steps` for every entry of ``steps`` (same order), from one training run
    of ``max(steps)`` steps that keeps a checkpoint at each requested count. Bit for bit the
    models of separate :func:`tamper_at_steps` calls."""
    wanted = _checked_steps(steps)
    started = time.perf_counter()
    found = sweepable(variant)
    ctx = tamper_context(bench, found, index, namespace, attempt)
    trajectory = recipe_trajectory(found.tampering, ctx)
    model = ctx.copy_target()
    kept: dict[int, tuple[dict[str, torch.Tensor], float]] = {}
    if 0 in wanted:
        kept[0] = (_snapshot(model), time.perf_counter() - started)
    data = trajectory.data
    n = int((data.x if isinstance(data, ImageSet) else data[0]).shape[0])
    done, k, last = 0, 0, max(wanted)
    while done < last:
        config, hooks = trajectory.segment(k)
        length = min(segment_length(config, n), last - done)
        keep = _keeper(kept, set(wanted), done, started)
        result = fit(model, data, replace(config, max_steps=length), replace(hooks, on_step=keep))
        if result.steps != length:
            raise RuntimeError(
                f"segment {k} of {variant!r} took {result.steps} steps, not {length}"
            )
        done, k = done + length, k + 1
    return [_result(ctx, trajectory, s, *kept[s]) for s in wanted]


def default_steps(variant: str, bench: Workspace) -> tuple[int, ...]:
    """A log-spaced grid of step counts for ``variant`` on ``bench``'s dataset.

    :data:`GRID_FRACTIONS` (1/32, 1/8, 1/2, 1, 2) of the variant's usual budget B, rounded, at
    least 1, without repeats:

    * fine-tuning: B = 2 epochs of the tamper data (the recipe's 1 epoch plus the 1 extension
      epoch most instances need). On mnist5k (1,000 tamper images, batch 32) an epoch is 32 steps
      and the ten ``ft_last_lr1e-5`` bench instances took 32 (3 of them) or 64 steps (7): B = 64,
      grid (2, 8, 32, 64, 128).
    * ``targeted``: B = 100 steps (mnist5k: 66-110; cap 250): grid (3, 12, 50, 100, 200).
    * ``backdoor``: B = 150 steps (mnist5k: 140-150; cap 500): grid (5, 19, 75, 150, 300).
    """
    tampering = sweepable(variant).tampering
    if isinstance(tampering, FineTuning):
        p = tampering.params
        tamper = DataAccess(bench.pools, Namespace.BENCH).tamper
        budget = 2 * p.epochs * math.ceil(len(tamper.y) / p.batch_size)
    else:
        budget = USUAL_STEPS[tampering.family]
    grid = {max(1, round(f * budget)) for f in GRID_FRACTIONS}
    return tuple(sorted(grid))


def sweepable(variant: str) -> Variant:
    """The registered variant ``variant``, if its recipe can be swept; a ValueError otherwise."""
    found = VARIANTS.get(variant)
    if found is None:
        raise ValueError(
            f"unknown variant {variant!r}; sensitivity sweeps take "
            f"{', '.join(SENSITIVITY_VARIANTS)} or another ft_* variant"
        )
    if not isinstance(found.tampering, (FineTuning, TargetedPoisoning, Backdoor)):
        raise ValueError(
            f"variant {variant!r} (family {found.family}) has no step-wise sweep; use one of "
            f"{', '.join(SENSITIVITY_VARIANTS)} or another ft_* variant"
        )
    return found


def tamper_context(
    bench: Workspace, variant: Variant, index: int, namespace: Namespace, attempt: int = 0
) -> TamperContext:
    """The context :func:`~misentry.tamper.builder.build_instance` gives this instance's
    ``attempt``."""
    seed = instance_seed(namespace, variant.slug, index, attempt)
    return bench.context(namespace, seed, index, attempt)


def recipe_trajectory(tampering: Tampering, ctx: TamperContext) -> Trajectory:
    """The training segments of ``tampering``'s recipe for ``ctx``, without its stop rule."""
    if isinstance(tampering, FineTuning):
        return _fine_tuning(tampering, ctx)
    if isinstance(tampering, TargetedPoisoning):
        return _targeted(tampering, ctx)
    if isinstance(tampering, Backdoor):
        return _backdoor(tampering, ctx)
    raise ValueError(f"{type(tampering).__name__} has no step-wise trajectory")


def segment_length(config: TrainConfig, n: int) -> int:
    """Optimizer steps :func:`fit` takes with ``config`` on ``n`` images."""
    total = config.epochs * math.ceil(n / config.batch_size)
    return total if config.max_steps is None else min(total, config.max_steps)


def _fine_tuning(t: FineTuning, ctx: TamperContext) -> Trajectory:
    first = t.train_config(ctx.target, t.params.epochs, ctx.sub_seed(0))

    def segment(k: int) -> Segment:
        if k == 0:
            return first, TrainHooks()
        return replace(first, epochs=1, seed=ctx.sub_seed(EXTENSION_STREAM + k - 1)), TrainHooks()

    return Trajectory(ctx.data.tamper, segment, None)


def _targeted(t: TargetedPoisoning, ctx: TamperContext) -> Trajectory:
    p = t.params
    tamper = ctx.data.tamper
    victims, labels = t.choose(ctx)
    xv = tamper.x[victims]
    base = t.train_config(ctx)
    copies = p.copies_per_batch
    hooks = TrainHooks(
        transform_batch=mixer(
            xv.repeat(copies, 1, 1, 1), labels.repeat(copies), len(victims) * copies
        )
    )

    def segment(k: int) -> Segment:
        if k < len(p.lrs):
            return replace(base, lr=p.lrs[k], max_steps=p.stage_steps, seed=base.seed + k), hooks
        return _extension(replace(base, lr=p.lrs[-1]), ctx, k - len(p.lrs)), hooks

    return Trajectory((tamper.x, tamper.y), segment, lambda m: follow_rate(m, xv, labels))


def _backdoor(t: Backdoor, ctx: TamperContext) -> Trajectory:
    p = t.params
    target = target_label_of(ctx, p)
    trigger = t.trigger(ctx)
    x_check = stamped_check(ctx, trigger, target)
    tamper = ctx.data.tamper
    base = adam_config(ctx, p, trainable_layers(ctx.target, p.trainable))
    hooks = TrainHooks(transform_batch=stamper(trigger, p.poison_fraction, target, ctx.sub_seed(1)))

    def segment(k: int) -> Segment:
        return (base if k == 0 else _extension(base, ctx, k - 1)), hooks

    return Trajectory((tamper.x, tamper.y), segment, lambda m: attack_success(m, x_check, target))


def _extension(config: TrainConfig, ctx: TamperContext, k: int) -> TrainConfig:
    """The k-th extension epoch of a poisoning run, as ``extend_run`` trains it (its seed stream
    ``1000 + k`` is ``EXTENSION_STREAM + k``)."""
    return extension_config(config, ctx.sub_seed(EXTENSION_STREAM + k))


def _checked_steps(steps: Sequence[int]) -> list[int]:
    try:
        wanted = [operator.index(s) for s in steps]
    except TypeError:
        wanted = []
    if not wanted or min(wanted) < 0:
        raise ValueError(f"steps must be a non-empty list of integers >= 0; got {list(steps)}")
    return wanted


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _keeper(
    kept: dict[int, tuple[dict[str, torch.Tensor], float]],
    wanted: set[int],
    offset: int,
    started: float,
) -> Callable[[TrainState], None]:
    """An ``on_step`` hook that keeps the weights at each wanted step (``offset``: steps of the
    segments before this one)."""

    def keep(state: TrainState) -> None:
        step = offset + state.step
        if step in wanted:
            kept[step] = (_snapshot(state.model), time.perf_counter() - started)

    return keep


def _result(
    ctx: TamperContext,
    trajectory: Trajectory,
    steps: int,
    weights: dict[str, torch.Tensor],
    seconds: float,
) -> StepResult:
    model = ctx.copy_target()
    model.load_state_dict(weights)
    model.eval()
    objective = trajectory.objective
    return StepResult(
        model=model,
        steps=steps,
        clean_accuracy=accuracy(model, ctx.data.check),
        attack_success=None if objective is None else objective(model),
        seconds=seconds,
    )
