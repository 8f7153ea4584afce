"""Independent plain-numpy implementations of the papers' equations (test oracles)."""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def conv_same(x, w):
    """Cross-correlation with XLA 'SAME' padding by explicit shifts. x [B,H,W,Ci], w [k,k,Ci,Co]."""
    b, h, wd, _ = x.shape
    k = w.shape[0]
    lo = (k - 1) // 2
    xp = np.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
    out = np.zeros((b, h, wd, w.shape[3]), np.float64)
    for i in range(k):
        for j in range(w.shape[1]):
            out += np.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + wd, :], w[i, j])
    return out


def conv_lstm_step(p, c, h, x):
    """Shi et al. (2015), gate by gate with separate Wx* and Wh* convolutions."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    F = h.shape[-1]
    wx = [p["w_x"][..., g * F:(g + 1) * F] for g in range(4)]
    wh = [p["w_h"][..., g * F:(g + 1) * F] for g in range(4)]
    b = [p["b"][g * F:(g + 1) * F] for g in range(4)]
    wci, wcf, wco = (p.get(n, 0.0) for n in ("w_ci", "w_cf", "w_co"))
    i = sigmoid(conv_same(x, wx[0]) + conv_same(h, wh[0]) + wci * c + b[0])
    f = sigmoid(conv_same(x, wx[1]) + conv_same(h, wh[1]) + wcf * c + b[1])
    c_new = f * c + i * np.tanh(conv_same(x, wx[2]) + conv_same(h, wh[2]) + b[2])
    o = sigmoid(conv_same(x, wx[3]) + conv_same(h, wh[3]) + wco * c_new + b[3])
    return c_new, o * np.tanh(c_new)


def lstm_step(p, c, h, x):
    """Standard (optionally peephole) LSTM, gate by gate."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    F = h.shape[-1]
    z = [x @ p["w_x"][:, g * F:(g + 1) * F] + h @ p["w_h"][:, g * F:(g + 1) * F] + p["b"][g * F:(g + 1) * F]
         for g in range(4)]
    wci, wcf, wco = (p.get(n, 0.0) for n in ("w_ci", "w_cf", "w_co"))
    i = sigmoid(z[0] + wci * c)
    f = sigmoid(z[1] + wcf * c)
    c_new = f * c + i * np.tanh(z[2])
    o = sigmoid(z[3] + wco * c_new)
    return c_new, o * np.tanh(c_new)
