"""The fingerprint generators, one module per method (MiSentry is a package of its stages)."""
