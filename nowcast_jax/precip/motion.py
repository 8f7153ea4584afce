"""Motion fields and extrapolation nowcasts of radar windows, on the host, once per window.

What the extrapolation-conditioned model reads besides the frames (numpy + pysteps; never
imports jax)::

    estimate_motion(inputs [J, H, W] mm/h)            -> motion [H, W, 2] pixels per step
    extrapolate_frames(last [H, W], motion, K)        -> [K, H, W] mm/h, NaN where not valid
    event_motion(rain [T, H, W], window_frames, J, K) -> (motion [N, H, W, 2], extrapolation [N, K, H, W])
    augment_motion(motion [..., H, W, 2], rot90, flip) -> the motion of the augmented frames

Motion is estimated on the FULL decoded frame of each window's J input frames (pysteps
``motion.get_method(method)``, LK by default, on dBR as :func:`nowcast_jax.baselines.lk_motion`
does) and the last input frame is extrapolated on the full frame with pysteps'
semi-Lagrangian scheme; a training crop is then a crop of both, so rain advected into the
crop from upstream is there. Layout: ``motion[..., 0]`` is x (along W, columns),
``motion[..., 1]`` is y (along H, rows), pysteps' ``velocity[0], velocity[1]`` on the last
axis, the layout of :mod:`nowcast_jax.advection`. An extrapolated pixel is valid (finite)
where the bilinearly warped domain mask is >= 0.5 and it came from inside the grid.

:func:`event_motion` caches both arrays as ``.npy`` in ``cache_dir`` keyed by the event's
rain (its bytes), J, K, the method and the windows, so they are computed once per archive.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np

MOTION_VERSION = 1
MOTION_METHODS = ("LK", "proesmans", "darts", "vet")


def estimate_motion(frames_mm_h: np.ndarray, method: str = "LK") -> np.ndarray:
    """Motion of a window's input frames: ``[J, H, W]`` mm/h (NaN outside) -> ``[H, W, 2]`` float32 (x, y).

    ``method``: a pysteps motion method (:data:`MOTION_METHODS`); LK goes through
    :func:`nowcast_jax.baselines.lk_motion` (the optical-flow baseline's recipe), the others
    get the same dBR fields. A field without features gives zero motion.
    """
    from nowcast_jax import baselines

    if method not in MOTION_METHODS:
        raise ValueError(f"unknown motion method {method!r}; choose one of {MOTION_METHODS}")
    x = np.asarray(frames_mm_h, np.float64)
    if method == "LK":
        velocity = baselines.lk_motion(x)
    else:
        from pysteps import motion

        db = baselines._to_dbr(x, 0.1, -15.0)
        db[~np.isfinite(x)] = -15.0
        db, kwargs = _method_inputs(db, method)
        velocity = motion.get_method(method)(db, **kwargs)
    velocity = np.nan_to_num(np.asarray(velocity, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.moveaxis(velocity, 0, -1).astype(np.float32)  # [2, H, W] -> [H, W, 2]


def _method_inputs(db: np.ndarray, method: str) -> tuple[np.ndarray, dict]:
    """The frames and keyword arguments each pysteps method accepts, from ``[J, H, W]`` dBR:
    proesmans takes exactly 2 frames (the last two), VET 2-3 (the last three), DARTS needs
    ``N_t < J - 1`` (pysteps' default 4 needs J >= 6; here ``N_t = min(4, J - 2)``)."""
    if method == "proesmans":
        return db[-2:], {"verbose": False}
    if method == "vet":
        return db[-3:], {"verbose": False}
    if len(db) < 3:
        raise ValueError(f"motion method 'darts' needs >= 3 input frames, got {len(db)}: raise data.input_frames "
                         "or use data.motion_method='LK'")
    return db, {"N_t": min(4, len(db) - 2), "verbose": False}


def extrapolate_frames(last_mm_h: np.ndarray, motion: np.ndarray, steps: int) -> np.ndarray:
    """pysteps semi-Lagrangian extrapolation of one frame: ``[H, W]`` (NaN outside), ``[H, W, 2]`` -> ``[K, H, W]``.

    The field is advected with NaN as 0 mm/h and 0 entering from outside the grid; the domain
    mask is advected the same way and pixels where it is < 0.5 are NaN (not valid).
    """
    from pysteps import extrapolation

    last = np.asarray(last_mm_h, np.float64)
    observed = np.isfinite(last)
    velocity = np.moveaxis(np.asarray(motion, np.float64), -1, 0)  # [2, H, W]
    extrapolate = extrapolation.get_method("semilagrangian")
    rain = extrapolate(np.where(observed, last, 0.0), velocity, int(steps), outval=0.0)
    valid = extrapolate(observed.astype(np.float64), velocity, int(steps), outval=0.0) >= 0.5
    return np.where(valid, rain, np.nan).astype(np.float32)


def augment_motion(motion: np.ndarray, rot90: int, flip: bool) -> np.ndarray:
    """The motion of frames augmented like ``dataset.augment`` (flip along W, then ``rot90``
    quarter turns over (H, W)): the field moved like the frames and its vectors turned with it.

    A flip negates x; each quarter turn maps ``(x, y) -> (y, -x)`` (``np.rot90`` over (H, W)).
    ``motion``: ``[..., H, W, 2]``.
    """
    m = np.asarray(motion)
    if flip:
        m = m[..., ::-1, :] * np.asarray([-1.0, 1.0], m.dtype)
    for _ in range(int(rot90) % 4):
        m = np.rot90(m, k=1, axes=(-3, -2))
        m = np.stack([m[..., 1], -m[..., 0]], axis=-1)
    return np.ascontiguousarray(m)


def _cache_key(rain: np.ndarray, window_frames: np.ndarray, input_frames: int, output_frames: int,
               method: str) -> str:
    from importlib.metadata import version

    digest = hashlib.sha256()  # pysteps' version too: another pysteps may estimate another motion
    digest.update(f"v{MOTION_VERSION}|{version('pysteps')}|{method}|{input_frames}|{output_frames}|"
                  f"{rain.shape}".encode())
    digest.update(memoryview(np.ascontiguousarray(window_frames, np.int64)))
    digest.update(memoryview(np.ascontiguousarray(rain, np.float32)))  # no copy of a float32 event (the cache's)
    return digest.hexdigest()[:32]


def event_motion(rain: np.ndarray, window_frames: np.ndarray, input_frames: int, output_frames: int, *,
                 method: str = "LK", cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Motion and extrapolation of every window of one event, on the full frame.

    ``rain [T, H, W]`` mm/h (NaN outside); ``window_frames [N, J+K]`` frame indices of the
    event's windows -> ``(motion [N, H, W, 2] float32, extrapolation [N, K, H, W] float32 mm/h
    with NaN where not valid)``. With ``cache_dir`` both are stored as ``.npy`` (written
    atomically) and loaded memory-mapped by later calls.
    """
    window_frames = np.asarray(window_frames, np.int64).reshape(-1, input_frames + output_frames)
    paths = None
    if cache_dir is not None:
        key = _cache_key(rain, window_frames, input_frames, output_frames, method)
        base = Path(cache_dir).expanduser()
        paths = base / f"motion-{key}.npy", base / f"extrapolation-{key}.npy"
        if all(p.is_file() for p in paths):
            return np.load(paths[0], mmap_mode="r"), np.load(paths[1], mmap_mode="r")
    motions, extrapolations = [], []
    for frames in window_frames:
        inputs = np.asarray(rain[frames[:input_frames]], np.float32)  # [J, H, W]
        motion = estimate_motion(inputs, method)
        motions.append(motion)
        extrapolations.append(extrapolate_frames(inputs[-1], motion, output_frames))
    shape = rain.shape[1:]
    motion = np.stack(motions) if motions else np.zeros((0, *shape, 2), np.float32)
    extrap = np.stack(extrapolations) if extrapolations else np.zeros((0, output_frames, *shape), np.float32)
    if paths is None:
        return motion, extrap
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path, array in zip(paths, (motion, extrap)):
        tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.tmp.npy")  # unique across hosts sharing the cache
        np.save(tmp, array)
        os.replace(tmp, path)
    del motion, extrap  # what the dataset keeps is the memory-mapped file, not these arrays
    return np.load(paths[0], mmap_mode="r"), np.load(paths[1], mmap_mode="r")
