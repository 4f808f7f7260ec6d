"""The report's vocabulary: the variant families in report order, the N_S values of its tables
and plots, and the names of the files it shows."""

from __future__ import annotations

FAMILIES = (
    "fine-tuning",
    "retraining / transfer",
    "poisoning / backdoor",
    "compression",
    "others",
    "control",
)
"""Variant families, in table order; ``control`` (the identity) is always last."""

TABLE_NS = (1, 5)
"""The N_S values of the detection table's cells."""

PLOT_NS_MAX = 20
"""The detection plots run N_S from 1 to this."""

PLOT_NS = 5
"""The N_S of the experiments' plots (DR@5)."""

EXAMPLES_NAME = "examples.png"
"""The example grid's name in a results folder
(:func:`misentry.bench.experiments.covertness_measure.example_grid`)."""

AUC_COLUMNS = (("auc_confidence", "AUC confidence"), ("auc_entropy", "AUC entropy"))
AUC_KEYS = tuple(key for key, _ in AUC_COLUMNS)

_RETRAINING = {"transfer_learning", "independent_retrain", "different_arch", "distillation"}
_POISONING = {"backdoor", "trojan", "clean_label", "targeted"}
_COMPRESSION = {"pruning", "quantization"}


def variant_family(variant: str) -> str:
    """The family of a BIVBench variant slug (one of :data:`FAMILIES`)."""
    if variant == "identity":
        return "control"
    if variant.startswith("ft_"):
        return "fine-tuning"
    if variant.startswith("retrain_") or variant in _RETRAINING:
        return "retraining / transfer"
    if variant in _POISONING or variant.startswith("degradation_"):
        return "poisoning / backdoor"
    if variant in _COMPRESSION:
        return "compression"
    return "others"
