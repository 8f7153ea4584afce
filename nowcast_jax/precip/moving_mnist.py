"""Moving MNIST, generated on the fly: digits bouncing in a frame (Shi et al., 2015, §4.1).

numpy only (never jax). The generator follows the ConvLSTM paper (after Srivastava et al.,
2015): each sequence has ``num_digits`` 28x28 MNIST digits (2; 3 for the out-of-domain
test) in a 64x64 frame, ``input_frames`` J=10 followed by ``output_frames`` K=10; each digit
starts at a uniformly random position, moves in a uniformly random direction at a speed
drawn uniformly from ``speed_range`` = [3, 5) pixels per frame, and bounces off the edges.

Choices made here (documented because they change the pixels):

* **Motion.** A digit's top-left corner ``p`` lives in ``[0, L]^2`` with
  ``L = frame_size - digit_size`` (= 36), so the whole 28x28 digit is always inside the
  frame. Motion is exact specular reflection: ``p_t`` is the straight line ``p_0 + t v_0``
  folded into ``[0, L]`` (a "triangle wave"), and the velocity component flips sign at
  every wall hit. Pixel placement rounds ``p_t`` to the nearest integer. (Srivastava's
  reference code clamps to the wall instead of reflecting, which loses a fraction of a
  step at each bounce; reflection keeps the speed constant.)
* **Overlap.** Overlapping digits are combined by the pixel-wise maximum (as in
  Srivastava's code), so values stay in [0, 1] and no digit brightens another.
* **Digits.** Chosen uniformly (without replacement within one sequence) from the pool of
  the split. The 10,000 MNIST test digits are split by index: the first ``n_train``
  (8,000) feed training sequences, the rest (2,000) test sequences, so training and test
  sequences never share a digit image. (The paper drew from a 500-digit subset.)
* **Determinism.** A sequence is a pure function of ``(seed, split, fixed, num_digits,
  index)`` through ``numpy.random.SeedSequence``: the training stream is endless and
  stateless (``batch(seed, step, batch_size)`` holds sequences ``step*B .. step*B+B-1``) and
  the fixed evaluation sets are reproducible anywhere.

Frames are ``float32`` in [0, 1], shape ``[T, H, W, 1]`` per sequence; batches are dicts
``{"inputs": [B, J, H, W, 1], "targets": [B, K, H, W, 1]}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = [
    "Trajectory",
    "MovingMNIST",
    "split_digit_indices",
    "fold_into_box",
    "sample_trajectory",
    "render",
]

_SPLIT_CODE = {"train": 0, "test": 1}


@dataclass(frozen=True)
class Trajectory:
    """The motion of one sequence (everything needed to render it).

    Attributes:
      digit_ids: int64 ``[D]`` indices into the full digit array.
      positions: float64 ``[T, D, 2]`` continuous top-left corners (row, col) in ``[0, L]``.
      velocities: float64 ``[T, D, 2]`` velocity (rows, cols per frame) in effect at frame
        ``t``, i.e. after any bounce that produced ``positions[t]``.
      corners: int64 ``[T, D, 2]`` pixel top-left corners, ``rint(positions)``.
    """

    digit_ids: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    corners: np.ndarray


def split_digit_indices(n_digits: int, n_train: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split digit indices ``0..n_digits-1`` into ``(train [n_train], test [rest])`` by position.

    ``n_train`` defaults to 80% (8,000 of the 10,000 MNIST test digits). Both parts are
    non-empty and disjoint.
    """
    if n_train is None:
        n_train = int(round(0.8 * n_digits))
    if not 0 < n_train < n_digits:
        raise ValueError(f"n_train must be in (0, {n_digits}) so both splits have digits, got {n_train}")
    return np.arange(n_train), np.arange(n_train, n_digits)


def fold_into_box(p: np.ndarray, v: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Reflect free-flight positions ``p`` into ``[0, limit]`` (elastic walls at 0 and limit).

    ``p`` and ``v`` broadcast together (any shape). Returns ``(position, velocity)``: with
    ``k = floor(p / limit)`` walls crossed, the position is ``p - k*limit`` for even ``k``
    and ``(k+1)*limit - p`` for odd ``k``, and the velocity is ``v * (-1)**k``.
    """
    k = np.floor(p / limit)
    odd = (k % 2) == 1
    pos = np.where(odd, (k + 1) * limit - p, p - k * limit)
    vel = np.where(odd, -v, v)
    return np.clip(pos, 0.0, limit), vel  # clip only removes float round-off


def sample_trajectory(
    rng: np.random.Generator,
    pool: np.ndarray,
    *,
    num_digits: int,
    num_frames: int,
    limit: float,
    speed_range: tuple[float, float],
) -> Trajectory:
    """Draw digits from ``pool`` and their bouncing motion over ``num_frames`` frames.

    Start positions are uniform in ``[0, limit]^2``, directions uniform in ``[0, 2*pi)``,
    speeds uniform in ``speed_range`` (pixels per frame).
    """
    ids = rng.choice(pool, size=num_digits, replace=False).astype(np.int64)
    p0 = rng.uniform(0.0, limit, size=(num_digits, 2))
    theta = rng.uniform(0.0, 2.0 * np.pi, size=num_digits)
    speed = rng.uniform(speed_range[0], speed_range[1], size=num_digits)
    v0 = speed[:, None] * np.stack([np.sin(theta), np.cos(theta)], axis=-1)  # [D, 2]
    t = np.arange(num_frames, dtype=np.float64)[:, None, None]  # [T, 1, 1]
    pos, vel = fold_into_box(p0[None] + t * v0[None], np.broadcast_to(v0, (num_frames, num_digits, 2)), limit)
    return Trajectory(ids, pos, vel, np.rint(pos).astype(np.int64))


def render(traj: Trajectory, digits: np.ndarray, frame_size: int) -> np.ndarray:
    """Paint a trajectory: ``float32 [T, frame_size, frame_size, 1]`` in [0, 1].

    ``digits``: ``uint8 [N, h, w]`` (0..255). Overlaps are combined by pixel-wise max.
    """
    num_frames, num_digits, _ = traj.corners.shape
    h, w = digits.shape[1:]
    canvas = np.zeros((num_frames, frame_size, frame_size), dtype=np.uint8)
    for d in range(num_digits):
        img = digits[traj.digit_ids[d]]
        for t in range(num_frames):
            r, c = traj.corners[t, d]
            np.maximum(canvas[t, r : r + h, c : c + w], img, out=canvas[t, r : r + h, c : c + w])
    return (canvas.astype(np.float32) / np.float32(255.0))[..., None]


def _check_nonneg_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class MovingMNIST:
    """A seeded, stateless Moving MNIST generator over a fixed array of digits.

    Args:
      digits: ``uint8 [N, h, w]`` MNIST images (e.g. the 10,000 test digits).
      n_train: how many leading digits feed training sequences (default 80% = 8,000);
        the rest feed test sequences.
      num_digits: digits per sequence (2 in the paper; 3 for the out-of-domain set).
      input_frames, output_frames: J and K (10 and 10).
      frame_size: frame side in pixels (64).
      speed_range: ``[low, high)`` speed in pixels per frame (``(3, 5)``).
    """

    def __init__(
        self,
        digits: np.ndarray,
        *,
        n_train: int | None = None,
        num_digits: int = 2,
        input_frames: int = 10,
        output_frames: int = 10,
        frame_size: int = 64,
        speed_range: tuple[float, float] = (3.0, 5.0),
    ):
        digits = np.asarray(digits)
        if digits.ndim != 3 or digits.dtype != np.uint8:
            raise ValueError(f"digits must be uint8 [N, h, w], got {digits.dtype} {digits.shape}")
        h, w = digits.shape[1:]
        if h != w or h >= frame_size:
            raise ValueError(f"digits must be square and smaller than the {frame_size}-pixel frame, got {h}x{w}")
        if input_frames < 1 or output_frames < 1:
            raise ValueError("input_frames and output_frames must be >= 1")
        lo, hi = speed_range
        if not 0 <= lo <= hi:
            raise ValueError(f"speed_range must satisfy 0 <= low <= high, got {speed_range}")
        self.digits = digits
        self.train_indices, self.test_indices = split_digit_indices(len(digits), n_train)
        self.num_digits = num_digits
        self.input_frames = input_frames
        self.output_frames = output_frames
        self.frame_size = frame_size
        self.speed_range = (float(lo), float(hi))
        self.limit = float(frame_size - h)
        self._check_num_digits(num_digits)

    @classmethod
    def from_mnist(cls, path: str | os.PathLike | None = None, **kwargs) -> "MovingMNIST":
        """Build over the 10,000 MNIST test digits found by :func:`mnist.locate_mnist`."""
        from nowcast_jax.precip.mnist import load_mnist

        images, _ = load_mnist(path, split="test")
        return cls(images, **kwargs)

    @property
    def num_frames(self) -> int:
        """T = J + K."""
        return self.input_frames + self.output_frames

    def pool(self, split: str) -> np.ndarray:
        """Digit indices (int64) a ``split`` ("train" or "test") draws from."""
        if split not in _SPLIT_CODE:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self.train_indices if split == "train" else self.test_indices

    def _check_num_digits(self, n: int) -> int:
        smallest = min(len(self.train_indices), len(self.test_indices))
        if not 1 <= n <= smallest:
            raise ValueError(f"num_digits must be in [1, {smallest}], got {n}")
        return n

    # ---- single sequences -----------------------------------------------------------

    def trajectory(
        self, seed: int, index: int, *, split: str = "train", fixed: bool = False, num_digits: int | None = None
    ) -> Trajectory:
        """Motion of sequence ``index`` of a stream; a pure function of its arguments.

        ``fixed=False`` is the endless training stream, ``fixed=True`` the fixed sets of
        :meth:`fixed_set` (a different random stream even for the same seed and split).
        """
        seed = _check_nonneg_int("seed", seed)
        index = _check_nonneg_int("index", index)
        nd = self._check_num_digits(self.num_digits if num_digits is None else num_digits)
        pool = self.pool(split)
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], int(fixed), nd, index]))
        return sample_trajectory(
            rng, pool, num_digits=nd, num_frames=self.num_frames, limit=self.limit, speed_range=self.speed_range
        )

    def sequence(self, seed: int, index: int, **kwargs) -> np.ndarray:
        """Frames of one sequence: ``float32 [T, H, W, 1]``; kwargs as :meth:`trajectory`."""
        return render(self.trajectory(seed, index, **kwargs), self.digits, self.frame_size)

    def _stack(self, seed: int, indices, **kwargs) -> dict[str, np.ndarray]:
        shape = (0, self.num_frames, self.frame_size, self.frame_size, 1)
        seqs = [self.sequence(seed, i, **kwargs) for i in indices]
        frames = np.stack(seqs) if seqs else np.zeros(shape, np.float32)  # [B, T, H, W, 1]
        j = self.input_frames
        return {"inputs": frames[:, :j], "targets": frames[:, j:]}

    # ---- batches ----------------------------------------------------------------------

    def batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """Training batch ``step`` of the endless stream (train digits only).

        Returns ``{"inputs": float32 [B, J, H, W, 1], "targets": float32 [B, K, H, W, 1]}``
        holding sequences ``step * B .. step * B + B - 1``; stateless, so resuming at any
        step reproduces the same data.
        """
        step = _check_nonneg_int("step", step)
        if _check_nonneg_int("batch_size", batch_size) == 0:
            raise ValueError("batch_size must be >= 1")
        start = step * batch_size
        return self._stack(seed, range(start, start + batch_size), split="train")

    def fixed_set(
        self, seed: int, n: int, *, split: str = "test", num_digits: int | None = None
    ) -> dict[str, np.ndarray]:
        """A fixed evaluation set of ``n`` sequences, as one batch ``[n, J|K, H, W, 1]``.

        ``split="test"`` (default) uses only test digits; ``split="train"`` gives a
        validation set over training digits (a stream distinct from :meth:`batch`).
        ``num_digits=3`` gives the paper's out-of-domain set. Mind memory: one sequence
        of 20 64x64 frames is 320 KiB; use :meth:`iter_fixed_set` for large ``n``.
        """
        return self._stack(seed, range(_check_nonneg_int("n", n)), split=split, fixed=True, num_digits=num_digits)

    def iter_fixed_set(
        self, seed: int, n: int, batch_size: int, *, split: str = "test", num_digits: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """The :meth:`fixed_set` in batches of ``batch_size`` (the last may be smaller)."""
        n = _check_nonneg_int("n", n)
        if _check_nonneg_int("batch_size", batch_size) == 0:
            raise ValueError("batch_size must be >= 1")
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            yield self._stack(seed, idx, split=split, fixed=True, num_digits=num_digits)

    def out_of_domain_set(self, seed: int, n: int, num_digits: int = 3) -> dict[str, np.ndarray]:
        """The paper's out-of-domain test: ``fixed_set`` with 3 digits (test digits)."""
        return self.fixed_set(seed, n, split="test", num_digits=num_digits)
