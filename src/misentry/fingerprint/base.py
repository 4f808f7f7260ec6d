"""The interface every fingerprint generator implements, and what they all share.

A generator is a named class whose constructor takes a frozen parameter dataclass and whose
:meth:`Generator.generate` turns (target, natural source images, n, seed) into a
:class:`~misentry.fingerprint.bundle.FingerprintSet`. Every method ends the same way: images
rounded onto the 8-bit lattice (what a model receives over the wire), expected labels taken from
the target on those rounded images, per-sample statistics, and the cost counted in forward and
backward passes through the target and in seconds, so methods are compared on equal terms.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from misentry.data import ImageSet, Pools, to_pixels, to_unit
from misentry.fingerprint.bundle import FingerprintSet
from misentry.fingerprint.stats import describe_samples
from misentry.fingerprint.tolerance import NoiseLevel, Tolerance, measure_noise, stability
from misentry.models import Record, predict
from misentry.models.record import json_ready


class GenerationError(RuntimeError):
    """A generator could not produce the fingerprints asked for (e.g. too few candidates
    survived its checks); the message says what to change."""


@dataclass
class SearchContext:
    """What a generator may read besides the target and the source images.

    Attributes:
        normal: natural images that define the normal output range (e.g. the ``test`` pool);
            used for the per-sample statistics only.
        pools: the owner's pools, for methods that build their own models or read the owner's
            held-out ``val`` pool (MiSentry's zoo and entropy band). None: not available.
        record: the target's record (dataset, architecture), for the same methods.
        progress: ``progress(stage, done, total)``, called as long work advances.
        zoo: zoo models built beforehand
            (:func:`misentry.fingerprint.methods.misentry.zoo.zoo_name` -> the folder
            :func:`~misentry.fingerprint.methods.misentry.zoo.save_zoo_model` wrote), loaded
            instead of built; the benchmark builds each once and shares it between bundles.
        tolerance: how differently the owner may serve the target without a false alarm
            (:mod:`misentry.fingerprint.tolerance`); ``exact`` here, the generator's own
            behaviour (the commands default to ``DEFAULT_TOLERANCE``).
        noise_level: the tolerance's noise on the target, measured by
            :meth:`Generator.generate` before the search (generators read ``floor``).
    """

    normal: torch.Tensor | None = None
    pools: Pools | None = None
    record: Record | None = None
    progress: Callable[[str, int, int], None] | None = None
    zoo: Mapping[str, Path] | None = None
    tolerance: Tolerance = Tolerance.EXACT
    noise_level: NoiseLevel | None = None

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)


@dataclass
class PassCount:
    """Forward and backward passes through a model, counted in samples."""

    forward: int = 0
    backward: int = 0


@contextmanager
def count_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count the samples that go forward through ``model`` and the backward passes to its input.

    A backward pass is counted per sample whenever a gradient reaches the model's input
    (``torch.autograd.grad`` with respect to the images, or ``backward`` with images that
    require gradients).
    """
    count = PassCount()
    handles: list[RemovableHandle] = []

    def on_forward(_module: nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
        x = inputs[0]
        count.forward += int(x.shape[0])
        if x.requires_grad:
            x.register_hook(lambda grad: _count_backward(count, grad))

    handles.append(model.register_forward_hook(on_forward))
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def _count_backward(count: PassCount, grad: torch.Tensor) -> None:
    count.backward += int(grad.shape[0])


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the model's state (names, shapes, dtypes and bytes, in order): which
    weights a bundle's expected labels came from. A 0-dim tensor (BatchNorm's
    ``num_batches_tracked``) is hashed as its one value's bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        flat = value.reshape(1) if value.dim() == 0 else value
        digest.update(flat.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def on_lattice(x: torch.Tensor) -> torch.Tensor:
    """Float images rounded to the nearest 8-bit values, as floats in [0, 1]."""
    return to_unit(to_pixels(x))


class Generator(ABC):
    """A fingerprint generation method. Subclasses set ``name`` and implement :meth:`_search`."""

    name: ClassVar[str]
    params: Any
    distinct_sources: ClassVar[bool] = True
    """Whether every fingerprint comes from a different source image (PublicCheck's pair
    members and their jitters share one)."""

    def __init__(self, params: Any) -> None:
        if not is_dataclass(params) or isinstance(params, type):
            raise TypeError(f"{type(self).__name__} takes a dataclass instance of parameters")
        self.params = params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    def distance_bound(self) -> tuple[str, float] | None:
        """The bound every fingerprint keeps to its source before 8-bit rounding, as
        ``(norm, eps)`` with norm ``"linf"`` or ``"l2"`` in [0, 1] pixel units; None for
        methods with no such bound (natural images, or decoded latent codes)."""
        return None

    @abstractmethod
    def _search(
        self,
        target: nn.Module,
        sources: ImageSet,
        n: int,
        generator: torch.Generator,
        context: SearchContext,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Return ``n`` candidate images (float, [0, 1]), the index of each one's source in
        ``sources`` (-1 for none) and method-specific manifest entries."""

    def generate(
        self,
        target: nn.Module,
        sources: ImageSet,
        n: int,
        seed: int,
        normal: torch.Tensor | None = None,
        manifest: dict[str, Any] | None = None,
        context: SearchContext | None = None,
    ) -> FingerprintSet:
        """Generate ``n`` fingerprints for ``target`` from ``sources`` with ``seed``.

        ``normal`` (natural images, e.g. the ``test`` pool) defines the normal entropy range for
        the per-sample statistics; the sources stand in when it is not given. ``manifest``
        entries (target id, dataset...) are recorded alongside the method's own. ``context``
        gives methods that need them the owner's pools and the target's record, and a progress
        callback.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        started = time.perf_counter()
        gen = torch.Generator().manual_seed(seed)
        digest = weights_digest(target)
        context = context or SearchContext(normal=normal)
        known = {}
        if context.record is not None:
            known = {
                "target_id": context.record.record_id,
                "dataset": context.record.dataset,
                "architecture": context.record.architecture,
                "data_seed": context.record.data_seed,
            }
        context.report("tolerance", 0, 1)
        level = measure_noise(target, _noise_images(context, sources), context.tolerance)
        context.noise_level = level
        context.report("tolerance", 1, 1)
        with count_passes(target) as passes:
            candidates, source_index, extra = self._search(target, sources, n, gen, context)
        context.report("statistics", 0, 1)
        images = to_pixels(candidates)
        x = to_unit(images)
        labels = predict(target, x)
        has_source = source_index >= 0
        matched = sources.x[source_index.clamp_min(0)] if bool(has_source.all()) else None
        samples = describe_samples(target, x, matched, sources.x if normal is None else normal)
        stable, changes = stability(target, x, labels, context.tolerance)
        for row, entry in zip(samples, stable, strict=True):
            row.update(entry)
        context.report("statistics", 1, 1)
        return FingerprintSet(
            images=images,
            labels=labels,
            source_indices=source_index.to(torch.int64),
            manifest={
                **known,
                **(manifest or {}),
                "target_weights_sha256": digest,
                "method": self.name,
                "params": json_ready(asdict(self.params)),
                "distance_bound": _bound_entry(self.distance_bound()),
                "seed": seed,
                "generation_seconds": time.perf_counter() - started,
                "forward_passes": passes.forward,
                "backward_passes": passes.backward,
                "samples": samples,
                "tolerance": {**level.to_json(), "label_changes": changes},
                **extra,
            },
        )


def _noise_images(context: SearchContext, sources: ImageSet) -> torch.Tensor:
    """The normal images the tolerance's noise is measured on: the owner's held-out ``val``
    pool, else the normal images, else the sources."""
    if context.pools is not None and "val" in context.pools:
        return context.pools["val"].x
    return context.normal if context.normal is not None else sources.x


def _bound_entry(bound: tuple[str, float] | None) -> dict[str, Any] | None:
    return None if bound is None else {"norm": bound[0], "eps": bound[1]}
