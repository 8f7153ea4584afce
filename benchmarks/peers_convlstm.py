"""Peer encoder-forecaster ConvLSTMs with the paper's shapes, written for the benchmarks only.

All peers: 64x64x1 frames -> 16x16x16 units (4x4 space-to-depth), encoder 2 x ConvLSTM(64,
5x5), forecaster 2 x ConvLSTM(64, 5x5) started from the encoder's final states and reading
no input (a zero-channel / all-zero input), head = 1x1 convolution over the concatenated
forecaster hidden states -> 16 channels -> 64x64x1 frames; MSE loss.

* Flax linen: ``nn.ConvLSTMCell`` driven by ``nn.RNN`` (one ``nn.RNN`` per layer, the way
  the Flax docs compose it). Its cell uses two convolutions (input->4F, hidden->4F).
* Keras 3 ``keras.layers.ConvLSTM2D`` on the JAX backend, trained through
  ``model.stateless_call`` inside ``jax.value_and_grad`` + ``jax.jit`` (the JAX-backend way).
* PyTorch: a plain ConvLSTM with one fused ``nn.Conv2d`` over ``cat([x, h])`` per step,
  NCHW, eager, ``torch.set_num_threads(2)``; and the same module as a PyTorch user's best CPU
  setup: ``channels_last`` tensors (oneDNN's preferred layout) and ``torch.compile``
  (Inductor, C++ codegen with g++).
"""

from __future__ import annotations

import os

import numpy as np

PATCH, HIDDEN, K = 4, 64, 5


def s2d(x, p=PATCH):
    """[B, T, H, W, C] -> [B, T, H/p, W/p, p*p*C] (numpy or jax arrays)."""
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, h // p, w // p, p * p * c)


def d2s(x, p=PATCH):
    b, t, h, w, d = x.shape
    c = d // (p * p)
    x = x.reshape(b, t, h, w, p, p, c).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, h * p, w * p, c)


# --------------------------------------------------------------------------- Flax linen


def flax_model(output_steps: int):
    import flax.linen as nn
    import jax.numpy as jnp

    class FlaxEncoderForecaster(nn.Module):
        hidden: int = HIDDEN
        layers: int = 2

        @nn.compact
        def __call__(self, frames):
            u = s2d(frames)
            b, _, h, w, d = u.shape
            states, seq = [], u
            for _ in range(self.layers):
                carry, seq = nn.RNN(nn.ConvLSTMCell(self.hidden, (K, K)), return_carry=True)(seq)
                states.append(carry)
            # The forecaster reads an all-zero 1-channel input (nn.Conv cannot take 0 channels).
            seq = jnp.zeros((b, output_steps, h, w, 1), u.dtype)
            outs = []
            for carry in states:
                seq = nn.RNN(nn.ConvLSTMCell(self.hidden, (K, K)))(seq, initial_carry=carry)
                outs.append(seq)
            y = nn.Dense(d)(jnp.concatenate(outs, axis=-1))
            return d2s(y)

    return FlaxEncoderForecaster()


# --------------------------------------------------------------------------- Keras 3 (JAX backend)


def keras_model(input_steps: int, output_steps: int):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    from keras import layers

    if keras.backend.backend() != "jax":
        raise RuntimeError("set KERAS_BACKEND=jax before importing keras")
    units = keras.Input((input_steps, 16, 16, PATCH * PATCH), name="units")
    zeros = keras.Input((output_steps, 16, 16, 1), name="zeros")
    seq, states = units, []
    for _ in range(2):
        seq, h, c = layers.ConvLSTM2D(HIDDEN, K, padding="same", return_sequences=True, return_state=True)(seq)
        states.append([h, c])
    seq, outs = zeros, []
    for st in states:
        seq = layers.ConvLSTM2D(HIDDEN, K, padding="same", return_sequences=True)(seq, initial_state=st)
        outs.append(seq)
    y = layers.Dense(PATCH * PATCH)(layers.Concatenate(axis=-1)(outs))
    return keras.Model([units, zeros], y)


# --------------------------------------------------------------------------- PyTorch


def torch_model(channels_last: bool = False):
    """The PyTorch encoder-forecaster; ``channels_last`` keeps every frame and state NHWC in memory."""
    import torch
    from torch import nn

    class Cell(nn.Module):
        def __init__(self, cin, hidden):
            super().__init__()
            self.hidden = hidden
            self.conv = nn.Conv2d(cin + hidden, 4 * hidden, K, padding=K // 2)  # one fused conv

        def forward(self, x, state):
            h, c = state
            z = self.conv(h if x is None else torch.cat([x, h], dim=1))
            i, f, g, o = z.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            return h, c

    layout = torch.channels_last if channels_last else torch.contiguous_format

    class TorchEncoderForecaster(nn.Module):
        def __init__(self):
            super().__init__()
            d = PATCH * PATCH
            self.enc = nn.ModuleList([Cell(d, HIDDEN), Cell(HIDDEN, HIDDEN)])
            self.fc = nn.ModuleList([Cell(0, HIDDEN), Cell(HIDDEN, HIDDEN)])
            self.head = nn.Conv2d(2 * HIDDEN, d, 1)

        def forward(self, frames, output_steps):  # frames [B, T, 1, 64, 64] -> [B, K, 1, 64, 64]
            b, t = frames.shape[:2]
            u = nn.functional.pixel_unshuffle(frames.flatten(0, 1), PATCH).unflatten(0, (b, t))
            hh, ww = u.shape[-2:]
            zeros = lambda: u.new_zeros(b, HIDDEN, hh, ww).contiguous(memory_format=layout)  # noqa: E731
            states = [(zeros(), zeros()) for _ in self.enc]
            for step in range(t):
                x = u[:, step].contiguous(memory_format=layout)
                for layer, cell in enumerate(self.enc):
                    states[layer] = cell(x, states[layer])
                    x = states[layer][0]
            ys = []
            for _ in range(output_steps):
                x, outs = None, []
                for layer, cell in enumerate(self.fc):
                    states[layer] = cell(x, states[layer])
                    x = states[layer][0]
                    outs.append(x)
                ys.append(self.head(torch.cat(outs, dim=1)))
            y = torch.stack(ys, dim=1)
            return nn.functional.pixel_shuffle(y.flatten(0, 1), PATCH).unflatten(0, (b, output_steps))

    model = TorchEncoderForecaster()
    return model.to(memory_format=layout) if channels_last else model


def fake_frames(batch, steps, seed, size=64):
    rng = np.random.default_rng(seed)
    return rng.random((batch, steps, size, size, 1), dtype=np.float32)
