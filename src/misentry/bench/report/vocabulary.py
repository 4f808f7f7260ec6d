"""The report's vocabulary: the experiments and variant families in report order, the N_S
values of its tables and plots, and the sentences each experiment's section opens with."""

from __future__ import annotations

EXPERIMENTS = (
    "detection",
    "leakage",
    "covertness",
    "sensitivity",
    "ablation",
    "cost",
    "frontier",
)
"""The benchmark's experiments, in report order."""

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
(:func:`misentry.bench.experiments.covertness.example_grid`)."""

AUC_COLUMNS = (("auc_confidence", "AUC confidence"), ("auc_entropy", "AUC entropy"))
AUC_KEYS = tuple(key for key, _ in AUC_COLUMNS)

ABOUT = {
    "detection": (
        "How often a check of N_S fingerprints flags each tampered variant of the target, and "
        "never the target itself (the identity control). Higher is better, except on identity, "
        "which must stay at 0."
    ),
    "leakage": (
        "An adaptive attacker holds n_leaked of the fingerprints and tampers while keeping their "
        "labels; detection is measured on the fingerprints it did not see (unleaked N). A flat "
        "line means leaking fingerprints does not help the attacker; 'leaked kept' is the share "
        "of leaked fingerprints whose labels the attack preserved."
    ),
    "covertness": (
        "Whether someone who sees the target's outputs can tell fingerprints from normal "
        "queries: the ROC AUC of flagging low confidence or high entropy (0.5: "
        "indistinguishable, 1: every fingerprint flagged first), and how far fingerprints are "
        "from their natural sources. Covert is an AUC near 0.5 and a high PSNR."
    ),
    "sensitivity": (
        "Detection rate as the tampering proceeds, after s training steps of the attack from "
        "the untampered model. A curve that rises at fewer steps detects smaller changes."
    ),
    "ablation": (
        "MiSentry with one component changed per configuration, detection measured on every "
        "evaluated variant. The drop from the default line is what that component contributes."
    ),
    "cost": (
        "Time to generate one fingerprint (and the forward and backward passes it took) per "
        "method, and time to build one tampered instance per variant, in seconds on this run's "
        "machine."
    ),
    "frontier": (
        "Detection of the subtle variants against output covertness: MiSentry swept over its "
        "covertness weight, the other methods at their one setting. Up is more sensitive, left "
        "is more covert (0.5: fingerprints look like normal queries)."
    ),
}
"""The sentences each experiment's section opens with: what was measured, how to read it."""

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
