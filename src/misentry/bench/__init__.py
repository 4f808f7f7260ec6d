"""The benchmark: metrics over tampered instances (the harness and reports come later)."""
