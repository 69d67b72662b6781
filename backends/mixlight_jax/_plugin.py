"""Entry point of the JAX backend; importing this module does not import jax."""

from mixlight.extend import BackendPlugin


def _load():
    from mixlight_jax.backend import JaxBackend

    return JaxBackend()


plugin = BackendPlugin(name="jax", framework="jax", extra="jax", load=_load)
