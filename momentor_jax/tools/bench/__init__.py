"""Benchmark suites (`python -m momentor_jax.tools.bench SUITE`); see __main__.py."""
