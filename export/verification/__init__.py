"""Verification: the float64 oracles and the checks every exported graph must pass before it is written."""
