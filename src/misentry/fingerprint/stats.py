"""Per-sample statistics every bundle's manifest records, for every method alike.

They let the benchmark compare methods at equal covertness: how far each fingerprint is from its
source (L2, L-inf, PSNR), how the target sees it (top-1 confidence, top-1 minus top-2 logit
margin) and where its prediction entropy falls among normal samples of the same label.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from misentry.models import logits


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of ``probabilities``."""
    p = probabilities.clamp_min(1e-12)
    return -(probabilities * p.log()).sum(dim=1)


def entropy_percentile(
    values: torch.Tensor,
    labels: torch.Tensor,
    normal_entropy: torch.Tensor,
    normal_labels: torch.Tensor,
) -> torch.Tensor:
    """Percentile (0-100) of each value among the normal samples' entropies of the same label
    (all normal samples when a label has none)."""
    out = torch.empty(values.shape[0], dtype=torch.float64)
    for i, (value, label) in enumerate(zip(values.tolist(), labels.tolist(), strict=True)):
        pool = normal_entropy[normal_labels == label]
        if pool.numel() == 0:
            pool = normal_entropy
        out[i] = 100.0 * float(
            (pool < value).double().mean() + 0.5 * (pool == value).double().mean()
        )
    return out


def describe_samples(
    target: nn.Module,
    fingerprints: torch.Tensor,
    sources: torch.Tensor | None,
    normal: torch.Tensor,
) -> list[dict[str, Any]]:
    """One dict per fingerprint: distances to its source, the target's view of it.

    Args:
        target: the untampered model.
        fingerprints: float images in [0, 1] (on the 8-bit lattice).
        sources: the matching source images, or None when samples have no source.
        normal: natural images (e.g. the ``test`` pool) that define the normal entropy range.
    """
    out = logits(target, fingerprints)
    probs = out.softmax(dim=1)
    top2 = out.topk(2, dim=1).values
    labels = out.argmax(dim=1)
    normal_out = logits(target, normal)
    normal_probs = normal_out.softmax(dim=1)
    percentiles = entropy_percentile(
        entropy(probs), labels, entropy(normal_probs), normal_out.argmax(dim=1)
    )
    rows: list[dict[str, Any]] = []
    for i in range(fingerprints.shape[0]):
        row: dict[str, Any] = {
            "label": int(labels[i]),
            "confidence": float(probs[i].max()),
            "margin": float(top2[i, 0] - top2[i, 1]),
            "entropy": float(entropy(probs[i : i + 1])[0]),
            "entropy_percentile": float(percentiles[i]),
        }
        if sources is not None:
            diff = (fingerprints[i] - sources[i]).double()
            mse = float(diff.pow(2).mean())
            row["l2"] = float(diff.norm())
            row["linf"] = float(diff.abs().max())
            # PSNR of an unchanged image is infinite; JSON has no infinity, so it is None
            row["psnr"] = None if mse == 0 else 10.0 * math.log10(1.0 / mse)
        rows.append(row)
    return rows
