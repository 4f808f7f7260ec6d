"""Fingerprints as PNG contact sheets, for a person to look at.

One PNG per fingerprint, three panels side by side: the natural source image, the fingerprint,
and their difference amplified around mid-grey, so a perturbation of one 8-bit step is visible.
Small images (8x8 digits, 28x28 MNIST) are enlarged with nearest-neighbour sampling, which keeps
every pixel a sharp square. The sheets are for inspection only; the bundle stays the record.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from misentry.data import ImageSet
from misentry.fingerprint.bundle import FingerprintSet

MIN_SIDE = 112
"""Smallest height of a sheet, in pixels: images are enlarged by an integer factor to reach it."""

GUTTER = 255
"""Value of the one-pixel (before enlarging) white column between panels."""

BLANK = 0
"""Value of a panel that has nothing to show (a fingerprint without a source image)."""


def export_png(
    fps: FingerprintSet, sources: ImageSet, out: Path, amplify: float = 10.0
) -> list[Path]:
    """Write one sheet per fingerprint to ``out`` as ``NNNN-label-L.png``; return the paths.

    Args:
        fps: the fingerprints (uint8 N x C x H x W, C = 1 or 3).
        sources: the images ``fps.source_indices`` index (the ``source`` pool).
        out: folder to write into (created if missing; existing sheets are overwritten).
        amplify: gain of the difference panel, ``128 + amplify * (fingerprint - source)`` in
            8-bit steps, clipped to [0, 255]; 10 shows a one-step change as ten grey levels.

    Panels are source | fingerprint | difference; both source and difference are blank (black)
    for a fingerprint whose source index is -1.

    >>> # export_png(load_bundle("runs/fp"), pools["source"], Path("runs/fp-png"))
    """
    channels, height, width = (int(s) for s in fps.images.shape[1:])
    if channels not in (1, 3):
        raise ValueError(f"export_png: images need 1 or 3 channels, got {channels}")
    if len(fps) and tuple(sources.shape) != (channels, height, width):
        raise ValueError(
            f"export_png: source images are {sources.shape}, fingerprints "
            f"{(channels, height, width)}; pass the source pool the fingerprints came from"
        )
    scale = max(1, math.ceil(MIN_SIDE / height))
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in range(len(fps)):
        sheet = _sheet(fps.images[i], _source(sources, int(fps.source_indices[i])), amplify)
        big = sheet.repeat(scale, axis=0).repeat(scale, axis=1)
        path = out / f"{i:04d}-label-{int(fps.labels[i])}.png"
        Image.fromarray(big[:, :, 0] if channels == 1 else big).save(path)
        paths.append(path)
    return paths


def _source(sources: ImageSet, index: int) -> torch.Tensor | None:
    if index < 0:
        return None
    if index >= len(sources):
        raise ValueError(
            f"export_png: source index {index} is outside the {len(sources)} source images; "
            "pass the source pool the fingerprints came from"
        )
    return sources.images[index]


def _sheet(fingerprint: torch.Tensor, source: torch.Tensor | None, amplify: float) -> np.ndarray:
    """The three panels as a uint8 (H, 3W + 2, C) array, at the images' own resolution."""
    fp = fingerprint.permute(1, 2, 0).numpy().astype(np.float64)
    if source is None:
        src_panel = diff_panel = np.full(fp.shape, BLANK, dtype=np.uint8)
    else:
        src = source.permute(1, 2, 0).numpy().astype(np.float64)
        src_panel = src.astype(np.uint8)
        diff_panel = np.clip(np.rint(128 + amplify * (fp - src)), 0, 255).astype(np.uint8)
    gutter = np.full((fp.shape[0], 1, fp.shape[2]), GUTTER, dtype=np.uint8)
    panels = [src_panel, gutter, fp.astype(np.uint8), gutter, diff_panel]
    return np.concatenate(panels, axis=1)
