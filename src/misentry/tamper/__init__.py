"""BIVBench: tampered variants of a target model, built the subtlest way and checked for
observability (see :mod:`misentry.tamper.builder`)."""
