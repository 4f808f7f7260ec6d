"""Black-box verification of a deployed model: label oracles and the verifier."""
