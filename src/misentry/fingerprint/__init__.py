"""Fingerprints: the generator interface (:mod:`.base`), the methods (:mod:`.methods`, by name in
:mod:`.registry`), the bundle format and per-sample statistics, and :mod:`.service`, the one way
to make and save a bundle."""
