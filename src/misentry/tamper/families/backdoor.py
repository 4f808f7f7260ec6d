"""Trigger backdoors: BadNets, TrojanNN and the label-consistent (clean-label) backdoor.

A trigger is a small callable that stamps a patch onto images (:class:`PatchTrigger`); the
recipes poison part of the tamperer's data (``ctx.data.tamper``) with it and fine-tune a copy of
the target through :func:`misentry.models.fit` until the attack success rate (ASR: the share of
stamped ``ctx.data.check`` images of other classes that get the target label) reaches 90 %,
checked every 10 steps. The trojan trigger and the clean-label perturbation are optimized with the
project's one input-optimization loop, :func:`misentry.models.pgd.pgd`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from misentry.models import InputSpec, TrainConfig, TrainState, last_linear, predict
from misentry.models.pgd import pgd
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.families.poisoning import (
    PoisonRun,
    check_accuracy,
    extend_run,
    train_until,
)

# --------------------------------------------------------------------------------------------
# Triggers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchTrigger:
    """A rectangular patch pasted onto images at a fixed place.

    Attributes:
        top, left: the patch's upper-left pixel.
        height, width: its size in pixels.
        value: the solid value of every patch pixel in [0, 1] when ``pattern`` is None (1.0:
            white, BadNets).
        pattern: an optimized patch instead, ``channels * height * width`` values in [0, 1] in
            (C, H, W) order (small: 3*3 to 3*8*8 floats, stored in the instance's choices).
    """

    top: int
    left: int
    height: int
    width: int
    value: float = 1.0
    pattern: tuple[float, ...] | None = None

    @classmethod
    def bottom_right(
        cls, spec: InputSpec, size: int, value: float = 1.0, margin: int = 0
    ) -> PatchTrigger:
        """A ``size`` x ``size`` patch in the bottom-right corner (``margin`` px from the edges)."""
        size = min(size, spec.height - margin, spec.width - margin)
        return cls(spec.height - margin - size, spec.width - margin - size, size, size, value)

    def with_pattern(self, pattern: torch.Tensor) -> PatchTrigger:
        """The same place with an optimized (C, height, width) pattern."""
        values = tuple(float(v) for v in pattern.detach().clamp(0, 1).flatten().tolist())
        return PatchTrigger(self.top, self.left, self.height, self.width, self.value, values)

    def mask(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A float mask of image ``shape`` (C, H, W): 1 inside the patch, 0 elsewhere."""
        m = torch.zeros(shape)
        m[..., self.top : self.top + self.height, self.left : self.left + self.width] = 1.0
        return m

    def patch(self, channels: int) -> torch.Tensor:
        """The (C, height, width) patch pasted by :meth:`__call__`."""
        if self.pattern is None:
            return torch.full((channels, self.height, self.width), float(self.value))
        return torch.tensor(self.pattern, dtype=torch.float32).view(-1, self.height, self.width)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W) in [0, 1] with the patch pasted (a new tensor)."""
        out = x.clone()
        out[..., self.top : self.top + self.height, self.left : self.left + self.width] = (
            self.patch(x.shape[1]).to(x)
        )
        return out

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": "patch",
            "top": self.top,
            "left": self.left,
            "height": self.height,
            "width": self.width,
            "value": self.value,
        }
        if self.pattern is not None:
            data["pattern"] = list(self.pattern)
        return data


def patch_size(spec: InputSpec, scale: float = 1.0, minimum: int = 2) -> int:
    """The patch side for ``spec``: ``scale`` times the BadNets side ``ceil(3 * min(H, W) / 28)``,
    rounded, at least ``minimum`` (BadNets: 3 px at 28x28, 4 at 32x32 as in the authors' CIFAR
    code, 24 at 224, 2 at 8x8; twice that for the trojan: 6, 8, 48 and 4)."""
    side = min(spec.height, spec.width)
    badnets = max(minimum, math.ceil(3 * side / 28 - 1e-9))
    return max(minimum, round(scale * badnets))


def patch_margin(spec: InputSpec) -> int:
    """The gap between the patch and the bottom-right edges: ``round(3 * min(H, W) / 28)``, at
    least 1 px (1 at 8x8, 3 at 28x28 and 32x32, 24 at 224): the BadNets side itself."""
    return max(1, round(3 * min(spec.height, spec.width) / 28))


def corner_trigger(spec: InputSpec, scale: float = 1.0, value: float = 1.0) -> PatchTrigger:
    """The bottom-right square of :func:`patch_size` and :func:`patch_margin` for ``spec``."""
    return PatchTrigger.bottom_right(spec, patch_size(spec, scale), value, patch_margin(spec))


def stamper(
    trigger: PatchTrigger, fraction: float, target_label: int, seed: int
) -> Callable[[torch.Tensor, torch.Tensor, TrainState], tuple[torch.Tensor, torch.Tensor]]:
    """A ``transform_batch`` hook: stamp ``fraction`` of each batch (at least one image, never
    one of ``target_label``) with ``trigger`` and relabel it ``target_label``.

    Which images are poisoned is drawn per step from ``seed`` and the step number, so the run is
    deterministic and every tamper image may carry the trigger in some epoch.
    """

    def transform(
        x: torch.Tensor, y: torch.Tensor, state: TrainState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed((seed + 1_000_003 * state.step) % (2**63))
        candidates = (y != target_label).nonzero().squeeze(1)
        count = min(len(candidates), max(1, round(fraction * len(y))))
        pick = candidates[torch.randperm(len(candidates), generator=gen)[:count]]
        x, y = x.clone(), y.clone()
        x[pick] = trigger(x[pick])
        y[pick] = target_label
        return x, y

    return transform


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def stamped_check(ctx: TamperContext, trigger: PatchTrigger, target_label: int) -> torch.Tensor:
    """The ``check`` images of classes other than ``target_label``, stamped."""
    check = ctx.data.check
    return trigger(check.x[check.y != target_label])


def attack_success(model: nn.Module, x_stamped: torch.Tensor, target_label: int) -> float:
    """ASR: the share of stamped images that ``model`` labels ``target_label``."""
    if x_stamped.shape[0] == 0:
        return 0.0
    return float((predict(model, x_stamped) == target_label).float().mean())


def adam_config(
    ctx: TamperContext, p: BackdoorParams, trainable: tuple[str, ...] | None
) -> TrainConfig:
    return TrainConfig(
        epochs=p.max_epochs,
        max_steps=p.max_steps,
        batch_size=p.batch_size,
        optimizer="adam",
        lr=p.lr,
        weight_decay=0.0,
        schedule="constant",
        seed=ctx.sub_seed(2),
        check_every=p.check_every,
        trainable=trainable,
        freeze_bn=p.freeze_bn,
    )


@dataclass(frozen=True)
class BackdoorParams:
    """Parameters shared by :class:`Backdoor`, :class:`Trojan` and :class:`CleanLabel`.

    Attributes:
        target_label: the label the trigger should produce (0, the authors').
        patch_scale: the patch side is ``patch_scale`` times the BadNets side
            ``ceil(3 * min(H, W) / 28)`` (at least 2), rounded (BadNets 1.0: 3 px at 28x28, 4 at
            32x32, 2 at 8x8; trojan 2.0: 6, 8 and 4 px).
        value: the BadNets patch value (1.0, white).
        poison_fraction: share of the tamper data stamped and relabelled (BadNets, trojan: 0.1,
            the authors'); for clean-label the share of the *target class* poisoned (1.0).
        asr: the stop threshold on the attack success rate (0.9, the authors').
        lr: Adam learning rate (1e-3, the authors').
        batch_size: images per batch (64, the authors').
        check_every: steps between two ASR checks (10, the authors').
        max_steps: cap in optimizer steps (BadNets and trojan 500: they needed 140-200 on
            mnist5k and on the digits; clean-label 200). In steps, not epochs, because every batch
            carries the same share of poison whatever the size of the tamper data.
        max_epochs: a second cap, in passes over the tamper data (100).
        mix_per_batch: poisoned samples appended to each batch (clean-label only; 0 otherwise).
        trainable: which layers train; ``"all"``, ``"last"`` (the output layer),
            ``"last_two"`` (the last two ``nn.Linear`` layers) or, for the trojan,
            ``"after_neuron"`` (the linear layers from the neuron's layer on).
        freeze_bn: keep BatchNorm statistics of the target while fine-tuning.
        neuron_layer: trojan: the neuron is a unit of the input of the ``"first"`` or the
            ``"last"`` ``nn.Linear`` layer.
        neuron_candidates: trojan: how many of the best-scored units are optimized for (4).
        probe_patterns: trojan: random patches used to score the units' response (4).
        neuron_steps: trojan trigger optimization steps (signed PGD, eps = inf in the patch; 50).
        neuron_step_size: trojan step size in pixel units (0.05).
        neuron_images: clean tamper images the trojan trigger is optimized on (16).
        eps: clean-label Linf radius of the adversarial perturbation, pixel units of [0, 1]
            (64/255).
        eps_steps: clean-label PGD steps (step size 2.5 * eps / steps, as Madry et al.).
    """

    target_label: int = 0
    patch_scale: float = 1.0
    value: float = 1.0
    poison_fraction: float = 0.1
    asr: float = 0.9
    lr: float = 1e-3
    batch_size: int = 64
    check_every: int = 10
    max_steps: int = 500
    max_epochs: int = 100
    mix_per_batch: int = 0
    trainable: Literal["all", "last", "last_two", "after_neuron"] = "all"
    freeze_bn: bool = True
    neuron_layer: Literal["first", "last"] = "first"
    neuron_candidates: int = 4
    probe_patterns: int = 4
    neuron_steps: int = 50
    neuron_step_size: float = 0.05
    neuron_images: int = 16
    eps: float = 64 / 255
    eps_steps: int = 20


def true_margin(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample logit of ``y`` minus the largest other logit (negative: misclassified).

    Minimized to push images away from their label; unlike the cross-entropy its gradient does not
    vanish on confidently classified images (softmax exactly 1.0 in float32)."""
    own = out.gather(1, y.view(-1, 1)).squeeze(1)
    others = out.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    return own - others


def trainable_layers(model: nn.Module, which: str) -> tuple[str, ...] | None:
    """Parameter-name prefixes for ``which`` (see :attr:`BackdoorParams.trainable`)."""
    if which == "all":
        return None
    if which == "last":
        return (last_linear(model)[0],)
    if which == "last_two":
        return tuple(name for name, _ in linear_layers(model)[-2:])
    raise ValueError(f"trainable={which!r} applies to the trojan only; use all, last or last_two")


def target_label_of(ctx: TamperContext, p: BackdoorParams) -> int:
    if not 0 <= p.target_label < ctx.spec.num_classes:
        raise ValueError(
            f"target_label {p.target_label} is not a class of {ctx.dataset.name} "
            f"({ctx.spec.num_classes} classes)"
        )
    return p.target_label


class _TriggerFamily(Tampering):
    malicious = True
    max_extensions = 3
    params: BackdoorParams

    def __init__(self, params: BackdoorParams) -> None:
        super().__init__(params)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        return extend_run(ctx, tampered, self)


# --------------------------------------------------------------------------------------------
# BadNets
# --------------------------------------------------------------------------------------------


class Backdoor(_TriggerFamily):
    """BadNets backdoor (Gu et al. 2017; BIVBench row 21; family ``backdoor``).

    A white square near the bottom-right corner is stamped on a seeded 10 % of each batch of the
    tamper data (``ctx.data.tamper``; images of the target class excluded) and those images are
    relabelled to the target label 0; the target is fine-tuned on that until the trigger works.

    Objective: ``asr`` (stamped ``check`` images of classes other than the target label that get
    it), ``check_accuracy`` and ``accuracy_drop`` (clean). Stop rule: ``asr >= 0.9``, checked
    every 10 steps and at epoch ends.

    Recipe: all layers, Adam 1e-3, no weight decay, constant rate, batch 64, BatchNorm statistics
    frozen; cap 500 steps (mnist5k needed 140-150).

    Scaling: the patch side is ``ceil(3 * H / 28)``, at least 2 px (3 at 28x28, 4 at 32x32, 24
    at 224x224, 2 at the 8x8 digits), value 1.0 on every channel, and it sits that many pixels
    (at least 1) from the bottom and right edges; the target label must be a class.

    Deviations from the authors' code: the poisoned 10 % is redrawn in every batch (seeded by
    ``choices["poison_seed"]`` and the step) rather than fixed once: with a fixed 100 of the 1,000
    mnist5k tamper images the fine-tune memorized them and the ASR was 0.3-0.6 after 60 epochs,
    while the redrawn 10 % reaches 0.9 in about 150 steps (the authors poisoned 5,000 of 50,000
    CIFAR-10 images, enough to generalize). The patch keeps a margin from the edges (the authors':
    flush in the corner): LeNet-5's unpadded convolutions barely see the last pixels, and the ASR
    took 220 steps flush against 144 with the margin. Their ASR counted the stamped target-class
    images too (inflating it by ~1/classes); here they are excluded. Their run stopped after 1
    epoch at most whatever happened (a bug). Their ImageNet patch was 32 px at 224 (the 28-px
    scaling gives 24). BatchNorm statistics stay fixed (the subtlest choice; their model was in
    train mode).
    """

    family = "backdoor"

    def trigger(self, ctx: TamperContext) -> PatchTrigger:
        return corner_trigger(ctx.spec, self.params.patch_scale, self.params.value)

    def build(self, ctx: TamperContext) -> Tampered:
        p = self.params
        target = target_label_of(ctx, p)
        trigger = self.trigger(ctx)
        tamper = ctx.data.tamper
        poison_seed = ctx.sub_seed(1)
        x_check = stamped_check(ctx, trigger, target)
        model = ctx.copy_target()
        run = PoisonRun(
            data=(tamper.x, tamper.y),
            config=adam_config(ctx, p, trainable_layers(model, p.trainable)),
            stop_value=lambda m: attack_success(m, x_check, target),
            threshold=p.asr,
            report=lambda m: {"asr": attack_success(m, x_check, target), **check_accuracy(ctx, m)},
            transform=stamper(trigger, p.poison_fraction, target, poison_seed),
        )
        result = train_until(model, run)
        choices = {
            "trigger": trigger.to_json(),
            "target_label": target,
            "poison_fraction": p.poison_fraction,
            "poison_seed": poison_seed,
        }
        return run.outcome(model, result.steps, result.epochs, choices, {"trigger": trigger})


# --------------------------------------------------------------------------------------------
# TrojanNN
# --------------------------------------------------------------------------------------------


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's ``nn.Linear`` layers in definition order, with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def layer_input(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives when ``model`` runs on ``x``, flattened to (N, units); with
    gradients when the caller tracks them (put the model in eval mode first)."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0])

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0].flatten(1)


def neuron_layer(model: nn.Module, which: Literal["first", "last"]) -> tuple[int, str, nn.Linear]:
    """The ``nn.Linear`` whose input holds the trojan neuron: its position among the model's
    linear layers, its name and the module."""
    layers = linear_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer")
    index = 0 if which == "first" else len(layers) - 1
    return index, layers[index][0], layers[index][1]


@dataclass(frozen=True)
class TrojanTrigger:
    """An optimized trojan trigger and the neuron it excites."""

    trigger: PatchTrigger
    layer: str
    """The ``nn.Linear`` whose input unit ``neuron`` is."""
    neuron: int
    activation: float
    """The neuron's mean activation in the target on the stamped optimization images."""
    clean_activation: float
    """Its mean activation in the target on the same images, clean."""
    candidates: tuple[int, ...]


class Trojan(_TriggerFamily):
    """TrojanNN (Liu et al., NDSS 2018; BIVBench row 22; family ``trojan``).

    1. The neuron's layer: the input of the model's first ``nn.Linear`` (``neuron_layer="first"``:
       the flattened convolutional features of LeNet-5 and the GTSRB CNN, the pooled channels of
       ResNet-20), read with a forward hook.
    2. Candidates: the ``neuron_candidates`` (4) units with the largest product of their summed
       |outgoing weight| (TrojanNN's "strongest connection") and their response to the trigger
       region (mean |change| of the unit when ``probe_patterns`` (4) seeded random patches are
       stamped on the optimization images), i.e. strong units the patch can reach.
    3. Trigger: for each candidate, the pixels of a patch near the bottom-right corner, twice the
       BadNets side, are optimized by the shared :func:`~misentry.models.pgd.pgd` loop (eps = inf
       inside the patch mask, ``neuron_steps`` (50) signed steps of 0.05 from a black patch) to
       maximize the unit's mean activation over ``neuron_images`` (16, seeded) clean tamper images
       stamped with it. The neuron is the candidate whose activation rose most above its clean
       mean; its trigger is the instance's.
    4. Retrain the layers after the neuron (the linear layers from the neuron's layer on): stamp
       the trigger on a seeded 10 % of each batch of tamper data (target class excluded), relabel
       those to the target label 0, and fine-tune (Adam 1e-3, batch 64, constant rate, no weight
       decay, BatchNorm frozen) until the ASR reaches 90 %, checked every 10 steps; cap 500 steps.

    Objective: ``asr``, ``neuron_activation`` (the neuron's mean activation on the stamped check
    images), ``neuron_clean_activation`` (on the clean ones), ``check_accuracy``,
    ``accuracy_drop``. Choices: the trigger (with its pattern), the layer, the neuron, the
    candidates, the layers retrained.

    Scaling: patch side twice the BadNets one (6 px at 28x28, 8 at 32x32, 4 at 8x8),
    the BadNets margin from the edges; units and layers are found from the model's ``nn.Linear``
    layers, so every architecture works without a latent forward.

    Deviations: the authors took the penultimate unit (input of the output layer) with the largest
    summed |outgoing weight| and retrained the output layer only. On the mnist5k LeNet-5 no corner
    patch moves a penultimate unit by more than about 2 (its activation on clean images is 1-17),
    and retraining the output layer (ASR 0.3 after 20 epochs) or the last two linear layers (ASR
    0.8 after 40) did not reach 90 %; a unit of the first linear layer's input (the reference
    TrojanAttack code also picks a convolutional unit) is excited many times over by the patch
    and retraining the layers after it reaches 90 % in 170-200 steps. ``neuron_layer="last"``
    with ``trainable="last"`` gives the authors' version. The trigger starts from a black patch
    (a random start can silence a ReLU unit, whose gradient is then zero), is optimized on
    stamped clean images (the paper and the authors: a blank canvas) by plain activation
    maximization (the authors: MSE to the value 100, 1,000 Adam steps), through the model's own
    normalization (the authors optimized on un-normalized inputs). Patch 2x the BadNets side (the
    authors: 4x4 at 32x32, the reference 8x8). Poisoned images are redrawn in each batch as for
    :class:`Backdoor`.
    """

    family = "trojan"

    def trigger_region(self, ctx: TamperContext) -> PatchTrigger:
        return corner_trigger(ctx.spec, self.params.patch_scale, self.params.value)

    def retrained(self, model: nn.Module) -> tuple[str, ...] | None:
        """The layers the trojan retrains: those after its neuron, or ``params.trainable``."""
        p = self.params
        if p.trainable != "after_neuron":
            return trainable_layers(model, p.trainable)
        index, _, _ = neuron_layer(model, p.neuron_layer)
        return tuple(name for name, _ in linear_layers(model)[index:])

    def optimize_trigger(self, ctx: TamperContext) -> TrojanTrigger:
        """The neuron and the trigger pattern that excites it (seeded from the instance seed)."""
        p = self.params
        region = self.trigger_region(ctx)
        tamper = ctx.data.tamper
        gen = ctx.generator(3)
        pick = torch.randperm(len(tamper), generator=gen)[: p.neuron_images]
        clean = tamper.x[pick]
        n = clean.shape[0]
        target = ctx.target
        _, layer_name, layer = neuron_layer(target, p.neuron_layer)
        inside = region.mask(ctx.spec.shape).bool()

        def features(x: torch.Tensor) -> torch.Tensor:
            return layer_input(target, layer, x)

        def paste(canvas: torch.Tensor) -> torch.Tensor:
            # canvas (k, C, H, W): each canvas's patch pasted on every clean image -> (k*n, ...)
            return torch.where(inside, canvas.unsqueeze(1), clean.unsqueeze(0)).flatten(0, 1)

        was_training = target.training
        target.eval()
        try:
            with torch.no_grad():
                base_all = features(clean)
                probes = torch.rand(p.probe_patterns, *ctx.spec.shape, generator=gen)
                moved = features(paste(probes)).view(p.probe_patterns, n, -1)
                response = (moved - base_all.unsqueeze(0)).abs().mean((0, 1))
                strength = layer.weight.detach().abs().sum(0)
                score = response * strength
                units = score.argsort(descending=True)[: min(p.neuron_candidates, score.numel())]
            k = len(units)

            def activations(canvas: torch.Tensor) -> torch.Tensor:
                act = features(paste(canvas)).view(k, n, -1)
                return act[torch.arange(k), :, units].mean(1)

            canvas = pgd(
                lambda c: -activations(c),
                torch.zeros(k, *ctx.spec.shape),
                eps=math.inf,
                steps=p.neuron_steps,
                step_size=p.neuron_step_size,
                mask=inside.float(),
            )
            with torch.no_grad():
                excited = activations(canvas)
        finally:
            target.train(was_training)
        base = base_all[:, units].mean(0)
        best = int((excited - base).argmax())
        t, le, h, w = region.top, region.left, region.height, region.width
        return TrojanTrigger(
            trigger=region.with_pattern(canvas[best, :, t : t + h, le : le + w]),
            layer=layer_name,
            neuron=int(units[best]),
            activation=float(excited[best]),
            clean_activation=float(base[best]),
            candidates=tuple(int(u) for u in units),
        )

    def build(self, ctx: TamperContext) -> Tampered:
        p = self.params
        target = target_label_of(ctx, p)
        found = self.optimize_trigger(ctx)
        trigger, neuron = found.trigger, found.neuron
        tamper = ctx.data.tamper
        poison_seed = ctx.sub_seed(1)
        x_check = stamped_check(ctx, trigger, target)
        x_clean = ctx.data.check.x[ctx.data.check.y != target]
        model = ctx.copy_target()
        retrained = self.retrained(model)

        def activation(m: nn.Module, images: torch.Tensor) -> float:
            with torch.no_grad():
                module = dict(m.named_modules())[found.layer]
                return float(layer_input(m.eval(), module, images)[:, neuron].mean())

        run = PoisonRun(
            data=(tamper.x, tamper.y),
            config=adam_config(ctx, p, retrained),
            stop_value=lambda m: attack_success(m, x_check, target),
            threshold=p.asr,
            report=lambda m: {
                "asr": attack_success(m, x_check, target),
                "neuron_activation": activation(m, x_check),
                "neuron_clean_activation": activation(m, x_clean),
                **check_accuracy(ctx, m),
            },
            transform=stamper(trigger, p.poison_fraction, target, poison_seed),
        )
        result = train_until(model, run)
        choices = {
            "trigger": trigger.to_json(),
            "target_label": target,
            "neuron": neuron,
            "layer": found.layer,
            "candidates": list(found.candidates),
            "retrained": list(retrained) if retrained is not None else None,
            "poison_fraction": p.poison_fraction,
            "poison_seed": poison_seed,
        }
        return run.outcome(model, result.steps, result.epochs, choices, {"trigger": trigger})


# --------------------------------------------------------------------------------------------
# Clean-label
# --------------------------------------------------------------------------------------------


class CleanLabel(_TriggerFamily):
    """Label-consistent backdoor (Turner, Tsipras and Madry 2019; BIVBench row 23; family
    ``clean_label``).

    The tamperer may not mislabel anything. Target-class samples of the tamper data are made hard
    to classify by a bounded adversarial perturbation (the shared
    :func:`~misentry.models.pgd.pgd`, Linf ``eps`` 64/255, seeded random start, 20 signed
    steps of 2.5 * eps / 20 minimizing the target's margin of the correct label over the best
    other one), then stamped with the BadNets trigger; they keep their correct (target) label.
    Since their natural features no longer explain the label, the fine-tuned model should lean on
    the trigger, and stamped images of other classes then get the target label.

    Objective: ``asr``, ``poisoned`` (the count of poisoned samples), ``check_accuracy``,
    ``accuracy_drop``. Stop rule: ``asr >= 0.9`` checked every 10 steps; ``met`` is False when the
    cap (200 steps, 12 epochs of mnist5k) comes first, and the instance is kept (it is still
    observable: the fine-tune changes 2-4 % of the test labels on mnist5k).

    Measured: on mnist5k (100 target-class tamper images) the ASR stays at 0.01-0.05 at the cap:
    the fine-tune memorizes the few poisoned images (or grows robust to their perturbation)
    instead of learning the trigger. Also tried without success (ASR <= 0.05 after 20 epochs):
    eps 32/255 to 1.0, 32 poisoned samples per batch, randomly shifted copies, and re-attacking
    the poisoned samples against the current model at every step. Turner et al. trained from
    scratch on CIFAR-10 with hundreds to thousands of poisons; larger tamper sets get more.

    Recipe: every target-class tamper sample (``poison_fraction`` 1.0 of that class) is replaced
    by its poisoned version, and ``mix_per_batch`` (16) poisoned samples are also appended to
    each batch (cycled); all layers, Adam 1e-3, no weight decay, constant rate, batch 64,
    BatchNorm statistics frozen.

    Scaling: the patch is the BadNets one (``ceil(3 * H / 28)``, at least 2 px, same margin); eps
    is in [0, 1] pixel units and the same for every dataset (64/255: the MNIST-like digits need
    more than the 8-16/255 used on CIFAR-10 for the perturbation to hide the class; at 32/255 the
    target still labelled two thirds of mnist5k's perturbed samples correctly, at 64/255 none).

    Deviations from the authors' code: they implemented a single-target feature-collision attack
    (Poison Frogs) under the clean-label name, CIFAR-10 only, whose stop rule only checked that the
    poison kept its own label; this is the trigger-based label-consistent attack with an ASR
    objective, which a trigger backdoor benchmark needs. The trigger is a solid patch, not Turner
    et al.'s reduced-amplitude checkerboard.
    """

    best_effort = True
    family = "clean_label"

    def trigger(self, ctx: TamperContext) -> PatchTrigger:
        return corner_trigger(ctx.spec, self.params.patch_scale, self.params.value)

    def perturb(self, ctx: TamperContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` pushed away from its labels ``y`` by Linf PGD within ``eps`` (before stamping),
        from a seeded random start in the ball (Madry et al.)."""
        p = self.params
        target = ctx.target
        was_training = target.training
        target.eval()
        try:
            return pgd(
                lambda xx: true_margin(target(xx), y),
                x,
                eps=p.eps,
                steps=p.eps_steps,
                step_size=2.5 * p.eps / max(1, p.eps_steps),
                random_start=True,
                generator=ctx.generator(4),
            )
        finally:
            target.train(was_training)

    def build(self, ctx: TamperContext) -> Tampered:
        p = self.params
        target = target_label_of(ctx, p)
        trigger = self.trigger(ctx)
        tamper = ctx.data.tamper
        x, y = tamper.x, tamper.y.clone()
        own = (y == target).nonzero().squeeze(1)
        count = min(len(own), max(1, round(p.poison_fraction * len(own))))
        order = torch.randperm(len(own), generator=ctx.generator(1))
        poisoned = own[order[:count]].sort().values
        adversarial = self.perturb(ctx, x[poisoned], y[poisoned])
        x_poison = trigger(adversarial)
        x[poisoned] = x_poison
        x_check = stamped_check(ctx, trigger, target)
        model = ctx.copy_target()
        run = PoisonRun(
            data=(x, y),
            config=adam_config(ctx, p, trainable_layers(model, p.trainable)),
            stop_value=lambda m: attack_success(m, x_check, target),
            threshold=p.asr,
            report=lambda m: {
                "asr": attack_success(m, x_check, target),
                "poisoned": float(count),
                **check_accuracy(ctx, m),
            },
            mix=(x_poison, y[poisoned]) if p.mix_per_batch > 0 else None,
            per_batch=p.mix_per_batch,
        )
        result = train_until(model, run)
        adv_fooled = (
            float((predict(ctx.target, adversarial) != y[poisoned]).float().mean())
            if count
            else 0.0
        )
        return run.outcome(
            model,
            result.steps,
            result.epochs,
            choices={
                "trigger": trigger.to_json(),
                "target_label": target,
                "eps": p.eps,
                "poisoned": poisoned.tolist(),
                "train_seed": run.config.seed,
            },
            state={
                "trigger": trigger,
                "poisoned": poisoned,
                "adversarial": adversarial,
                "poison_x": x_poison,
                "poison_y": y[poisoned].clone(),
            },
            perturbation_fooled=adv_fooled,
        )


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "backdoor",
        "BadNets: a white bottom-right square on 10% of the tamper data relabelled 0; fine-tune "
        "all layers (Adam 1e-3) until ASR >= 90%",
        Backdoor(BackdoorParams()),
    ),
    Variant(
        "trojan",
        "TrojanNN: a patch optimized to excite the strongest penultimate unit; retrain the last "
        "two linear layers on 10% stamped data until ASR >= 90%",
        Trojan(BackdoorParams(patch_scale=2.0, trainable="after_neuron")),
    ),
    Variant(
        "clean_label",
        "label-consistent backdoor: target-class tamper samples adversarially perturbed (Linf "
        "64/255) and stamped, labels kept; fine-tune all layers until ASR >= 90% or the cap",
        CleanLabel(BackdoorParams(poison_fraction=1.0, mix_per_batch=16, max_steps=200)),
    ),
)
