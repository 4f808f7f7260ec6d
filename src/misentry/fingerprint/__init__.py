"""Fingerprint samples: the bundle format and per-sample statistics (generators come next)."""
