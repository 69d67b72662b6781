"""mixlight's JAX backend (Flax NNX)."""
