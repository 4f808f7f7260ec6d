"""The benchmark's experiments, one module each."""
