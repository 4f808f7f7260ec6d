"""The covertness measure of the covertness experiment: can someone who sees the target's outputs
tell fingerprints from normal queries? (the founding paper's Figure 5, and the covertness axis of
the frontier).

A fingerprint pushed to the decision boundary leaves a trace in the target's softmax: low top-1
confidence, high entropy. :func:`covertness` measures that trace as the ROC AUC of the two
simplest detectors an attacker could run on the outputs (flag a query when its confidence is low,
or when its entropy is high): 0.5 means fingerprints look like normal queries, 1.0 means every
one of them is flagged before any normal image. It also measures how far each fingerprint is
from its natural source (L2, L-inf, PSNR), the input-side covertness. :func:`example_grid` draws
fingerprints next to their sources with their amplified differences.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score
from torch import nn

from misentry.atomic import write_bytes_atomic
from misentry.data import ImageSet, to_unit
from misentry.fingerprint.bundle import FingerprintSet
from misentry.fingerprint.stats import entropy
from misentry.models import logits


@dataclass(frozen=True)
class Covertness:
    """How covert one fingerprint set is, on the output side and the input side.

    Attributes:
        confidence, entropy: the target's top-1 softmax probability and its softmax entropy
            (nats) on each fingerprint, float64 (N,).
        normal_confidence, normal_entropy: the same on each normal image, float64 (M,).
        auc_confidence: ROC AUC of flagging a query as a fingerprint when its confidence is low
            (score = -confidence; positives: fingerprints, negatives: normal images).
        auc_entropy: ROC AUC of flagging a query when its entropy is high (score = entropy).
        l2, linf: distance of each fingerprint that has a source to that source, in [0, 1]
            pixel units, float64 (S,); empty when no fingerprint has a source.
        psnr: PSNR in dB (peak 1.0) of each of those fingerprints; ``inf`` for an image equal to
            its source.
    """

    confidence: torch.Tensor
    entropy: torch.Tensor
    normal_confidence: torch.Tensor
    normal_entropy: torch.Tensor
    auc_confidence: float
    auc_entropy: float
    l2: torch.Tensor
    linf: torch.Tensor
    psnr: torch.Tensor

    @property
    def n_with_source(self) -> int:
        """Fingerprints whose distance to a source was measured."""
        return int(self.psnr.numel())

    @property
    def identical(self) -> int:
        """Fingerprints equal to their source (infinite PSNR)."""
        return int(torch.isinf(self.psnr).sum())

    @property
    def psnr_mean(self) -> float | None:
        """Mean PSNR (dB) over the fingerprints that differ from their source; None if none."""
        return _mean(self.psnr[torch.isfinite(self.psnr)])

    @property
    def l2_mean(self) -> float | None:
        return _mean(self.l2)

    @property
    def linf_mean(self) -> float | None:
        return _mean(self.linf)

    @property
    def mean_confidence(self) -> float:
        return float(self.confidence.mean())

    @property
    def median_confidence(self) -> float:
        return float(self.confidence.median())

    @property
    def mean_entropy(self) -> float:
        return float(self.entropy.mean())

    @property
    def median_entropy(self) -> float:
        return float(self.entropy.median())

    @property
    def mean_confidence_normal(self) -> float:
        return float(self.normal_confidence.mean())

    @property
    def median_confidence_normal(self) -> float:
        return float(self.normal_confidence.median())

    @property
    def mean_entropy_normal(self) -> float:
        return float(self.normal_entropy.mean())

    @property
    def median_entropy_normal(self) -> float:
        return float(self.normal_entropy.median())

    def to_row_extra(self) -> dict[str, Any]:
        """The summary as JSON scalars, for a result row's ``extra`` (None where nothing was
        measured: no fingerprint with a source, or all of them equal to their source)."""
        return {
            "auc_confidence": self.auc_confidence,
            "auc_entropy": self.auc_entropy,
            "mean_confidence": self.mean_confidence,
            "mean_confidence_normal": self.mean_confidence_normal,
            "mean_entropy": self.mean_entropy,
            "mean_entropy_normal": self.mean_entropy_normal,
            "psnr_mean": self.psnr_mean,
            "l2_mean": self.l2_mean,
            "linf_mean": self.linf_mean,
            "identical": self.identical,
            "n_with_source": self.n_with_source,
            "n_normal": int(self.normal_confidence.numel()),
        }


def covertness(
    target: nn.Module,
    fingerprints: FingerprintSet,
    normal: torch.Tensor,
    sources: torch.Tensor | None,
) -> Covertness:
    """Measure how ``fingerprints`` stand out from ``normal`` queries in ``target``'s outputs
    and how far they are from their sources.

    Args:
        target: the untampered model.
        fingerprints: the set to measure (its ``source_indices`` index ``sources``).
        normal: float images in [0, 1] of what ordinary users send (e.g. the ``test`` pool).
        sources: float images in [0, 1] of the ``source`` pool the fingerprints were made from;
            None to skip the distances.
    """
    if len(fingerprints) == 0 or normal.shape[0] == 0:
        raise ValueError(
            f"covertness needs fingerprints and normal images; got {len(fingerprints)} "
            f"fingerprints and {normal.shape[0]} normal images"
        )
    x = fingerprints.x
    confidence, ent = _output_stats(target, x)
    normal_confidence, normal_entropy = _output_stats(target, normal)
    truth = np.concatenate([np.ones(len(confidence)), np.zeros(len(normal_confidence))])
    auc_confidence = float(
        roc_auc_score(truth, -torch.cat([confidence, normal_confidence]).numpy())
    )
    auc_entropy = float(roc_auc_score(truth, torch.cat([ent, normal_entropy]).numpy()))
    l2, linf, psnr = _distances(x, fingerprints.source_indices, sources)
    return Covertness(
        confidence,
        ent,
        normal_confidence,
        normal_entropy,
        auc_confidence,
        auc_entropy,
        l2,
        linf,
        psnr,
    )


def _output_stats(target: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probabilities = logits(target, x).double().softmax(dim=1)
    return probabilities.max(dim=1).values, entropy(probabilities)


def _distances(
    x: torch.Tensor, source_indices: torch.Tensor, sources: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2, L-inf and PSNR of each fingerprint that has a source, to that source."""
    empty = torch.empty(0, dtype=torch.float64)
    if sources is None:
        return empty, empty, empty
    has_source = source_indices >= 0
    index = source_indices[has_source]
    if index.numel() and int(index.max()) >= sources.shape[0]:
        raise ValueError(
            f"covertness: a fingerprint names source {int(index.max())}, but the sources hold "
            f"{sources.shape[0]} images; pass the source pool the bundle was generated from"
        )
    if sources.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"covertness: sources have shape {tuple(sources.shape[1:])}, fingerprints "
            f"{tuple(x.shape[1:])}; pass the source pool of the fingerprints' dataset"
        )
    diff = (x[has_source].double() - sources[index].double()).flatten(1)
    mse = diff.pow(2).mean(dim=1)
    psnr = 10.0 * torch.log10(1.0 / mse)  # mse 0 gives inf: an unchanged image
    return diff.norm(dim=1), diff.abs().amax(dim=1), psnr


def _mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None


# --- the example grid ---------------------------------------------------------------------------


def example_grid(
    fingerprints_by_method: Mapping[str, FingerprintSet],
    sources: ImageSet | torch.Tensor,
    path: Path | str,
    k: int = 8,
    gain: float = 10.0,
) -> Path:
    """Write a PNG with one row per method: its first ``k`` fingerprints, each followed by its
    source and the difference amplified ``gain`` times around mid-gray (blank cells where a
    fingerprint has no source). ``sources``: the source pool (an ImageSet, or uint8 or float
    images). Written atomically; returns ``path``."""
    if not fingerprints_by_method:
        raise ValueError("example_grid: no fingerprint sets to draw")
    if k < 1:
        raise ValueError(f"example_grid: k must be at least 1, not {k}")
    pool = _unit_images(sources)
    names = list(fingerprints_by_method)
    figure = Figure(
        figsize=(0.45 * 3 * k + 1.5, 0.7 * len(names) + 0.6), dpi=120, layout="constrained"
    )
    axes = figure.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        mosaic = _method_row(fingerprints_by_method[name], pool, k, gain)
        gray = mosaic.shape[2] == 1
        ax.imshow(mosaic[..., 0] if gray else mosaic, cmap="gray" if gray else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle(f"fingerprint | source | difference x{gain:g}", fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    return write_bytes_atomic(Path(path), buffer.getvalue())


def _unit_images(images: ImageSet | torch.Tensor) -> torch.Tensor:
    if isinstance(images, ImageSet):
        return images.x
    return to_unit(images) if images.dtype == torch.uint8 else images.float()


def _method_row(
    fingerprints: FingerprintSet, pool: torch.Tensor, k: int, gain: float
) -> np.ndarray:
    """One mosaic (H, W', C) in [0, 1]: ``k`` (fingerprint, source, difference) triples, or
    just ``k`` fingerprints (then white) when none of the set's fingerprints has a source."""
    x = fingerprints.x[:k]
    c, h, w = x.shape[1:]
    blank = torch.ones(c, h, w)
    with_sources = bool((fingerprints.source_indices >= 0).any()) and pool.shape[1:] == x.shape[1:]
    triples: list[list[torch.Tensor]] = []
    for i in range(k):
        if i >= x.shape[0]:
            triples.append([blank, blank, blank] if with_sources else [blank])
            continue
        index = int(fingerprints.source_indices[i])
        if not with_sources:
            triples.append([x[i]])
        elif 0 <= index < pool.shape[0]:
            source = pool[index]
            triples.append([x[i], source, (0.5 + gain * (x[i] - source)).clamp(0, 1)])
        else:
            triples.append([x[i], blank, blank])
    gap = torch.ones(c, h, max(1, w // 8))
    groups = [
        torch.cat([t for tile in triple for t in (tile, gap)][:-1], dim=2) for triple in triples
    ]
    wide_gap = torch.ones(c, h, 3 * gap.shape[2])
    mosaic = torch.cat([t for group in groups for t in (group, wide_gap)][:-1], dim=2)
    full_width = k * (3 * w + 2 * gap.shape[2]) + (k - 1) * wide_gap.shape[2]
    if mosaic.shape[2] < full_width:
        mosaic = torch.cat([mosaic, torch.ones(c, h, full_width - mosaic.shape[2])], dim=2)
    return np.ascontiguousarray(mosaic.permute(1, 2, 0).numpy())
