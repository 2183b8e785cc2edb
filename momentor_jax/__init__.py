"""momentor_jax: Momentor (ICML 2024) in JAX/Flax."""
