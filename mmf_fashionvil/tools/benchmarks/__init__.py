"""Benchmarks on the synthetic catalog (scripts that print tables; never run by the tests)."""
