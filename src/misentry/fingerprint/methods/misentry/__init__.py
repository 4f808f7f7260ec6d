"""MiSentry: fingerprints where the target's decision boundaries meet, found against a zoo of
subtly tampered copies (see :class:`Misentry`)."""

from misentry.fingerprint.methods.misentry.generator import (
    Misentry,
    MisentryParams,
    benign_stable,
    inside_bands,
    normal_bands,
)

__all__ = ["Misentry", "MisentryParams", "benign_stable", "inside_bands", "normal_bands"]
