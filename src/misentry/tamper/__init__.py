"""BIVBench: tampered variants of a target model, built the subtlest way and checked for
observability.

:mod:`~misentry.tamper.families` holds one module per tampering family; the pieces they share are
public modules beside it: :mod:`~misentry.tamper.triggers` (patch triggers and the ASR),
:mod:`~misentry.tamper.recipes` (the shared training configurations),
:mod:`~misentry.tamper.poison` (poisoned training runs), :mod:`~misentry.tamper.replacement`
(models trained to the target's accuracy), :mod:`~misentry.tamper.layers` (which layers a recipe
touches) and :mod:`~misentry.tamper.measure`. :mod:`~misentry.tamper.registry` names every variant
and :mod:`~misentry.tamper.builder` builds their instances from a target workspace.
"""
