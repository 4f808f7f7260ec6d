"""The one training and evaluation loop of misentry.

Every recipe that trains a classifier (a target, each BIVBench tampering that trains, the
fingerprint model zoo) goes through :func:`fit`; variations come in through :class:`TrainConfig`
(optimizer, schedule, which parameters train, augmentation) and :class:`TrainHooks` (a custom loss,
a batch transform, gradient surgery after backward, masks after the step, an evaluation every k
steps and a stop condition). The one model trained elsewhere is not a classifier: the small
autoencoder that PublicCheck and SSF-BO search in (``misentry.fingerprint.autoencoder``).
Training is seeded and deterministic on CPU: the same config, data and initial weights give
bit-identical weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from misentry.data.images import ImageSet

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    The defaults train the mnist5k LeNet-5 target: SGD with momentum, cosine schedule.

    Attributes:
        epochs: passes over the data (an upper bound when ``max_steps`` or a stop hook ends it).
        batch_size: images per step.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        lr: learning rate at step 0.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty coefficient.
        schedule: ``"cosine"`` anneals the rate to 0 over the run, ``"constant"`` keeps it.
        seed: seeds the batch order, augmentation and dropout.
        max_steps: stop after this many optimizer steps (None: no limit).
        check_every: call the ``evaluate`` and ``stop_when`` hooks every this many steps
            (0: only at the end of each epoch).
        trainable: names (or name prefixes, e.g. ``"fc3"``) of the parameters that train; the
            others are frozen. None trains all.
        freeze_bn: keep BatchNorm layers in eval mode so their running statistics do not move.
        augment_shift: random translation of each image by up to this many pixels (zero fill).
        augment_flip: random horizontal flips.
    """

    epochs: int = 20
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    seed: int = 0
    max_steps: int | None = None
    check_every: int = 0
    trainable: tuple[str, ...] | None = None
    freeze_bn: bool = False
    augment_shift: int = 0
    augment_flip: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr < 0 or self.check_every < 0:
            raise ValueError(f"TrainConfig: epochs, batch_size >= 1, lr, check_every >= 0: {self}")
        if (self.max_steps is not None and self.max_steps < 1) or self.augment_shift < 0:
            raise ValueError(f"TrainConfig: max_steps must be >= 1 or None, shift >= 0: {self}")
        if self.optimizer not in ("sgd", "adam") or self.schedule not in ("cosine", "constant"):
            raise ValueError(f"TrainConfig: unknown optimizer or schedule in {self}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["trainable"] = list(self.trainable) if self.trainable is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        values = dict(data)
        if values.get("trainable") is not None:
            values["trainable"] = tuple(values["trainable"])
        return cls(**values)


@dataclass
class TrainState:
    """Where a run stands; hooks read it, and ``metrics`` holds the latest evaluation."""

    model: nn.Module
    step: int = 0
    epoch: int = 0
    total_steps: int = 0
    last_loss: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class TrainHooks:
    """Optional callbacks that adapt :func:`fit` to a recipe without copying it.

    Attributes:
        loss: ``loss(model, x, y) -> scalar``; default cross-entropy on the logits.
        transform_batch: ``(x, y, state) -> (x, y)`` after augmentation, e.g. to add poisoned
            samples to each batch.
        after_backward: ``(model, state)`` with gradients in ``.grad``, e.g. to project them.
        after_step: ``(model, state)`` after the optimizer step, e.g. to re-apply pruning masks.
        evaluate: ``(model, state) -> metrics``, run every ``check_every`` steps and at epoch ends;
            the model is in eval mode and no gradients are tracked while it runs.
        stop_when: ``(state) -> bool``, checked right after each evaluation.
        on_step: ``(state)`` after every step, for progress reporting.
    """

    loss: LossFn | None = None
    transform_batch: (
        Callable[[torch.Tensor, torch.Tensor, TrainState], tuple[torch.Tensor, torch.Tensor]] | None
    ) = None
    after_backward: Callable[[nn.Module, TrainState], None] | None = None
    after_step: Callable[[nn.Module, TrainState], None] | None = None
    evaluate: Callable[[nn.Module, TrainState], dict[str, float]] | None = None
    stop_when: Callable[[TrainState], bool] | None = None
    on_step: Callable[[TrainState], None] | None = None


@dataclass(frozen=True)
class TrainResult:
    """What a run did: steps and epochs taken, whether a hook stopped it, time, evaluations."""

    steps: int
    epochs: int
    stopped_early: bool
    seconds: float
    final_loss: float
    history: list[dict[str, float]]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def fit(
    model: nn.Module,
    data: ImageSet | tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` (an ImageSet, or float images in [0, 1] and labels)."""
    hooks = hooks or TrainHooks()
    x_all, y_all = (data.x, data.y) if isinstance(data, ImageSet) else data
    if x_all.shape[0] == 0 or x_all.shape[0] != y_all.shape[0]:
        raise ValueError(
            f"fit: need a non-empty dataset with one label per image; got "
            f"{tuple(x_all.shape)} images and {tuple(y_all.shape)} labels"
        )
    loss_fn = hooks.loss or cross_entropy
    steps_per_epoch = math.ceil(x_all.shape[0] / config.batch_size)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    state = TrainState(model=model, total_steps=total)
    history: list[dict[str, float]] = []

    stopped = False
    last_check = -1

    def check() -> None:
        nonlocal stopped, last_check
        if last_check == state.step:
            return
        last_check = state.step
        if hooks.evaluate is not None:
            with evaluation(model), torch.no_grad():
                state.metrics = dict(hooks.evaluate(model, state))
            history.append({"step": float(state.step), **state.metrics})
        stopped = hooks.stop_when is not None and hooks.stop_when(state)

    n = x_all.shape[0]
    with frozen_except(model, config.trainable) as params, torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        optimizer = make_optimizer(params, config)
        schedule = make_schedule(optimizer, config, total)
        with training(model, config.freeze_bn):
            while not stopped and state.step < total:
                order = torch.randperm(n, generator=gen)
                for start in range(0, n, config.batch_size):
                    idx = order[start : start + config.batch_size]
                    x, y = augment(x_all[idx], config, gen), y_all[idx]
                    if hooks.transform_batch is not None:
                        x, y = hooks.transform_batch(x, y, state)
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model, x, y)
                    loss.backward()  # type: ignore[no-untyped-call]
                    if hooks.after_backward is not None:
                        hooks.after_backward(model, state)
                    optimizer.step()
                    schedule.step()
                    if hooks.after_step is not None:
                        hooks.after_step(model, state)
                    state.step += 1
                    state.last_loss = float(loss.detach())
                    if hooks.on_step is not None:
                        hooks.on_step(state)
                    if config.check_every and state.step % config.check_every == 0:
                        check()
                    if stopped or state.step >= total:
                        break
                if start + config.batch_size >= n:
                    state.epoch += 1
                if not stopped:
                    check()
    return TrainResult(
        steps=state.step,
        epochs=state.epoch,
        stopped_early=stopped,
        seconds=state.seconds,
        final_loss=state.last_loss,
        history=history,
    )


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if not params:
        raise ValueError(f"fit: no parameter is trainable with trainable={config.trainable}")
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def make_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def augment(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random shifts (zero fill) and horizontal flips, drawn from ``gen``."""
    if config.augment_flip:
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    k = config.augment_shift
    if k > 0:
        padded = F.pad(x, (k, k, k, k))
        offsets = torch.randint(0, 2 * k + 1, (x.shape[0], 2), generator=gen).tolist()
        h, w = x.shape[-2:]
        x = torch.stack(
            [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]
        )
    return x


def trainable_parameters(model: nn.Module, trainable: tuple[str, ...] | None) -> list[str]:
    """Names of the parameters that ``trainable`` (names or prefixes) selects."""
    names = [name for name, _ in model.named_parameters()]
    if trainable is None:
        return names
    chosen = [n for n in names if any(n == t or n.startswith(t + ".") for t in trainable)]
    unknown = [t for t in trainable if not any(n == t or n.startswith(t + ".") for n in names)]
    if unknown:
        raise ValueError(
            f"trainable names {unknown} match no parameter of {type(model).__name__}; "
            f"parameters are {names}"
        )
    return chosen


@contextmanager
def frozen_except(
    model: nn.Module, trainable: tuple[str, ...] | None
) -> Iterator[list[nn.Parameter]]:
    """Freeze every parameter but the ``trainable`` ones; restore ``requires_grad`` after."""
    chosen = set(trainable_parameters(model, trainable))
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(name in chosen)
        yield [p for name, p in model.named_parameters() if name in chosen]
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])


def is_batchnorm(module: nn.Module) -> bool:
    """True for a BatchNorm layer, also inside a TorchScript program (where it is a
    ``ScriptModule`` whose ``original_name`` names it)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    name = getattr(module, "original_name", "")
    return isinstance(module, torch.jit.ScriptModule) and name.startswith("BatchNorm")


@contextmanager
def training(model: nn.Module, freeze_bn: bool = False) -> Iterator[nn.Module]:
    """Put ``model`` in train mode (BatchNorm in eval mode if ``freeze_bn``); restore after."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        if freeze_bn:
            for m in model.modules():
                if is_batchnorm(m):
                    m.eval()
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextmanager
def evaluation(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore every module's mode after."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The model's logits for float images ``x`` in [0, 1], in eval mode, batched."""
    with evaluation(model), torch.no_grad():
        starts = range(0, x.shape[0], batch_size) if x.shape[0] else [0]  # empty: (0, classes)
        parts = [model(x[i : i + batch_size]) for i in starts]
    return torch.cat(parts)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Top-1 labels for float images ``x`` in [0, 1]."""
    return logits(model, x, batch_size).argmax(dim=1)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    n: int


def evaluate(
    model: nn.Module, data: ImageSet | tuple[torch.Tensor, torch.Tensor], batch_size: int = 1000
) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``data``."""
    x, y = (data.x, data.y) if isinstance(data, ImageSet) else data
    out = logits(model, x, batch_size)
    return EvalResult(
        accuracy=float((out.argmax(1) == y).float().mean()),
        loss=float(F.cross_entropy(out, y)),
        n=int(y.shape[0]),
    )
