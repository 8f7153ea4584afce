"""nowcast_jax: recurrent nowcasting (ConvLSTM radar, LSTM station visibility) in JAX.

Importing the package changes nothing in the process; the host-allocator tuning the CLI
uses is opt-in for library users: ``nowcast_jax.engine.runtime.tune_host_allocator()``.
"""

__version__ = "0.1.0"
