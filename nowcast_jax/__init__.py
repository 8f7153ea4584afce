"""nowcast_jax: recurrent nowcasting (ConvLSTM radar, LSTM station visibility) in JAX."""

__version__ = "0.1.0"
