"""The architectures, one small module each."""
