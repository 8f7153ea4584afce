"""Moving MNIST with the ConvLSTM encoder-forecaster (Shi et al., NeurIPS 2015, §4.1).

Default: the paper's best network -- 3 ConvLSTM layers of 128-64-64 hidden states, 5x5
input-to-state and state-to-state kernels, 4x4 patches (64x64 frames -> 16x16x16), peepholes,
RMSProp (lr 1e-3, decay 0.9), 10 input -> 10 output frames, cross-entropy loss, batch 16,
the paper's full Hadamard peepholes on the 16x16 patched grid (``model.peephole_shape``).
Variants:

* ``cpu``: a CPU-feasible ConvLSTM (2 layers of 32, 3x3 kernels) for the equal-budget
  comparison in ``experiments/moving_mnist.py``.
* ``fclstm``: the FC-LSTM baseline (each 16x16x16 patched frame flattened; 2 layers of 512).
* ``tiny``: seconds, for tests.

Digits: the 10,000 MNIST test digits (``data.mnist_path``, relative to ``$NOWCAST_JAX_DATA``
or ``../shared/data``); the first ``n_train_digits`` feed training sequences, the rest test.
"""

import ml_collections

from nowcast_jax.engine.defaults import default_engine_config


def _cpu_budget(c):
    """The equal training budget of the CPU comparison (``cpu`` vs ``fclstm``)."""
    c.train.batch_size = 8
    c.train.steps = 2000
    c.eval.every_steps = 500
    c.checkpoint.every_steps = 500
    c.eval.batches = 4
    c.data.test_sequences = 256
    c.train.log_every_steps = 20
    return c


def get_config(variant=None):
    c = default_engine_config()
    c.task = "precip"
    c.seed = 0
    c.train.steps = 20_000
    c.train.batch_size = 16
    c.train.learning_rate = 1e-3
    c.train.optimizer.name = "rmsprop"
    c.train.optimizer.decay = 0.9
    c.train.grad_clip_norm = 0.0
    c.train.log_every_steps = 100
    c.checkpoint.every_steps = 1000
    c.checkpoint.best_metric = "bce_per_sequence"
    c.eval.every_steps = 1000
    c.eval.batches = 8
    c.eval.split = "val"
    c.eval.update(dict(max_windows=0, predict_batch_size=32, ood=True, out_dir="", thresholds=(0.5,)))
    c.data = ml_collections.ConfigDict(dict(
        source="moving_mnist", mnist_path="mnist", n_train_digits=8000, num_digits=2,
        input_frames=10, output_frames=10, frame_size=64, eval_seed=2015,
        val_sequences=256, test_sequences=3000))
    c.model = ml_collections.ConfigDict(dict(
        cell="convlstm", patch_size=4, hidden=(128, 64, 64), kernel_x=5, kernel_h=5, peepholes=True, peephole_shape=(16, 16),
        forget_bias=1.0, forecaster_input="zeros", feedback="identity", compute_dtype="", remat=False,
        unroll=1, conv_impl="auto", residual=False))
    c.loss = ml_collections.ConfigDict(dict(name="bce", horizon_weights=()))
    if variant in (None, ""):
        return c
    if variant == "cpu":
        c.model.hidden = (32, 32)
        c.model.kernel_x = c.model.kernel_h = 3
        return _cpu_budget(c)
    if variant == "fclstm":
        c.model.cell = "lstm"
        c.model.hidden = (512, 512)
        c.model.peepholes = False
        return _cpu_budget(c)
    if variant == "tiny":
        c.model.hidden = (4,)
        c.model.kernel_x = c.model.kernel_h = 3
        c.train.batch_size = 2
        c.train.steps = 3
        c.train.log_every_steps = 1
        c.checkpoint.every_steps = 3
        c.checkpoint.async_save = False
        c.eval.every_steps = 0
        c.eval.batches = 1
        c.eval.predict_batch_size = 4
        c.eval.ood = False
        c.data.val_sequences = 4
        c.data.test_sequences = 4
        return c
    raise ValueError(f"unknown variant {variant!r} (known: cpu, fclstm, tiny)")
