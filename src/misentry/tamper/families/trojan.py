"""TrojanNN: a trigger optimized to excite one neuron, then the layers after it retrained
(BIVBench row 22)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from misentry.models.pgd import pgd
from misentry.tamper.base import NotApplicable, TamperContext, Tampered, Variant
from misentry.tamper.families.backdoor import BackdoorParams, TriggerFamily, target_label_of
from misentry.tamper.layers import layer_input, layer_weight, linear_layers, trainable_layers
from misentry.tamper.measure import check_accuracy
from misentry.tamper.poison import PoisonRun, train_until
from misentry.tamper.recipes import adam_config
from misentry.tamper.triggers import (
    PatchTrigger,
    attack_success,
    corner_trigger,
    stamped_check,
    stamper,
)


def neuron_layer(model: nn.Module, which: Literal["first", "last"]) -> tuple[int, str, nn.Module]:
    """The linear layer (:func:`~misentry.tamper.layers.linear_layers`) whose input holds the
    trojan neuron: its position among the model's linear layers, its name and the module;
    :class:`~misentry.tamper.base.NotApplicable` when the model has none."""
    layers = linear_layers(model)
    if not layers:
        raise NotApplicable("trojan excites a unit of a linear layer's input; the model has none")
    index = 0 if which == "first" else len(layers) - 1
    return index, layers[index][0], layers[index][1]


@dataclass(frozen=True)
class TrojanTrigger:
    """An optimized trojan trigger and the neuron it excites."""

    trigger: PatchTrigger
    layer: str
    """The linear layer whose input unit ``neuron`` is."""
    neuron: int
    activation: float
    """The neuron's mean activation in the target on the stamped optimization images."""
    clean_activation: float
    """Its mean activation in the target on the same images, clean."""
    candidates: tuple[int, ...]


class Trojan(TriggerFamily):
    """TrojanNN (Liu et al., NDSS 2018; BIVBench row 22; family ``trojan``).

    1. The neuron's layer: the input of the model's first ``nn.Linear`` (``neuron_layer="first"``:
       the flattened convolutional features of LeNet-5 and the GTSRB CNN, the pooled channels of
       ResNet-20), read with a forward hook. A model imported as a TorchScript or
       ``torch.export`` program runs its layers where no hook fires, so the trojan does not apply
       to it (:class:`~misentry.tamper.base.NotApplicable`); an imported ``module`` works.
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
    :class:`~misentry.tamper.families.backdoor.Backdoor`.
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
            return layer_input(target, layer, x, self.family)

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
                strength = layer_weight(layer).detach().abs().sum(0)
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
                return float(layer_input(m.eval(), module, images, self.family)[:, neuron].mean())

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


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "trojan",
        "TrojanNN: a patch optimized to excite a strong unit of the first linear layer's input; "
        "retrain the layers after it on 10% stamped data until ASR >= 90%",
        Trojan(BackdoorParams(patch_scale=2.0, trainable="after_neuron")),
    ),
)
