"""nowcast_jax: recurrent nowcasting (ConvLSTM radar, LSTM station visibility) in JAX."""

from nowcast_jax import runtime as _runtime

__version__ = "0.1.0"

RUNTIME_SETTINGS = _runtime.apply_defaults()  # see nowcast_jax/runtime.py (opt out: NOWCAST_JAX_HOST_ALLOCATOR=default)
