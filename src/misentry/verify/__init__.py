"""Black-box verification of a deployed model: the oracle adapters (ONNX, Open Inference Protocol
over HTTP, recorded answers) and the verifier with its ledger. The label-oracle protocol they
implement is :mod:`misentry.models.oracle`."""
