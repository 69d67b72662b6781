"""Entry point of the JAX backend; importing this module does not import jax."""

from mixlight.extend import BackendPlugin


def _load():
    from mixlight_jax.backend import JaxBackend

    return JaxBackend()


def _fast_ops():
    from mixlight_jax.ops._sites import BUILTIN_OPS

    return BUILTIN_OPS


plugin = BackendPlugin(name="jax", framework="jax", extra="jax", load=_load, fast_ops=_fast_ops)
