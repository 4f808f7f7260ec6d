"""The label-consistent (clean-label) backdoor: target-class samples made hard by a bounded
adversarial perturbation, stamped, and left with their correct label (BIVBench row 23)."""

from __future__ import annotations

import torch

from misentry.models import predict
from misentry.models.pgd import pgd
from misentry.tamper.base import TamperContext, Tampered, Variant
from misentry.tamper.families.backdoor import BackdoorParams, TriggerFamily, target_label_of
from misentry.tamper.layers import trainable_layers
from misentry.tamper.measure import check_accuracy
from misentry.tamper.poison import PoisonRun, train_until
from misentry.tamper.recipes import adam_config
from misentry.tamper.triggers import PatchTrigger, attack_success, corner_trigger, stamped_check


def true_margin(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample logit of ``y`` minus the largest other logit (negative: misclassified).

    Minimized to push images away from their label; unlike the cross-entropy its gradient does not
    vanish on confidently classified images (softmax exactly 1.0 in float32)."""
    own = out.gather(1, y.view(-1, 1)).squeeze(1)
    others = out.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    return own - others


class CleanLabel(TriggerFamily):
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
        "clean_label",
        "label-consistent backdoor: target-class tamper samples adversarially perturbed (Linf "
        "64/255) and stamped, labels kept; fine-tune all layers until ASR >= 90% or the cap",
        CleanLabel(BackdoorParams(poison_fraction=1.0, mix_per_batch=16, max_steps=200)),
    ),
)
