"""The registry of BIVBench variants, by slug, in the order of the founding paper's Table 1."""

from __future__ import annotations

from misentry.tamper.base import Variant
from misentry.tamper.families import (
    backdoor,
    bit_flip,
    clean_label,
    degradation,
    distillation,
    fine_tuning,
    identity,
    independent,
    online_learning,
    pruning,
    quantization,
    retraining,
    targeted,
    transfer_learning,
    trojan,
    unlearning,
)

ORDER: tuple[str, ...] = (
    "unlearning",
    "online_learning",
    "pruning",
    "quantization",
    "distillation",
    "transfer_learning",
    "ft_last_lr1e-3",
    "ft_last_lr1e-4",
    "ft_last_lr1e-5",
    "ft_all_lr1e-3",
    "ft_all_lr1e-4",
    "ft_all_lr1e-5",
    "retrain_last",
    "retrain_all",
    "different_arch",
    "independent_retrain",
    "degradation_random_c",
    "degradation_specific_c",
    "degradation_s",
    "targeted",
    "bit_flip",
    "backdoor",
    "trojan",
    "clean_label",
    "identity",
)
"""Every variant slug, in table order; the registry holds exactly these."""


def _collect() -> dict[str, Variant]:
    found = {
        v.slug: v
        for module in (
            unlearning,
            online_learning,
            pruning,
            quantization,
            distillation,
            transfer_learning,
            fine_tuning,
            retraining,
            independent,
            degradation,
            targeted,
            bit_flip,
            backdoor,
            trojan,
            clean_label,
            identity,
        )
        for v in module.VARIANTS
    }
    missing = [slug for slug in ORDER if slug not in found]
    extra = [slug for slug in found if slug not in ORDER]
    if missing or extra:
        raise RuntimeError(f"variant registry out of step: missing {missing}, unlisted {extra}")
    return {slug: found[slug] for slug in ORDER}


VARIANTS: dict[str, Variant] = _collect()


def get_variant(slug: str) -> Variant:
    """Look a variant up by slug, with an error that lists the valid ones."""
    try:
        return VARIANTS[slug]
    except KeyError:
        raise KeyError(
            f"unknown variant {slug!r}; valid variants: {', '.join(VARIANTS)} (or 'all')"
        ) from None


def select(slugs: str) -> list[Variant]:
    """``"all"`` or a comma-separated list of slugs -> the variants, in table order."""
    if slugs.strip() == "all":
        return list(VARIANTS.values())
    wanted = [s.strip() for s in slugs.split(",") if s.strip()]
    chosen = {get_variant(s).slug for s in wanted}
    return [v for slug, v in VARIANTS.items() if slug in chosen]
