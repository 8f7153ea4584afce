"""Reference forecasters (numpy on the host; pysteps for optical flow; never imports jax).

* :func:`persistence` - the last observed frame, repeated.
* :func:`optical_flow` - Lucas-Kanade motion (pysteps ``motion.get_method("LK")``) and
  semi-Lagrangian extrapolation (pysteps ``extrapolation.get_method("semilagrangian")``)
  of the last frame, in mm/h.
* :func:`climatology` / :func:`climatology_forecast` - for station data: the mean target
  per horizon over the training set.
"""

from __future__ import annotations

import numpy as np

__all__ = ["persistence", "lk_motion", "optical_flow", "climatology", "climatology_forecast"]


def _time_axis(ndim: int, time_axis: int | None) -> int:
    if time_axis is not None:
        return time_axis
    if ndim == 3:
        return 0
    if ndim in (4, 5):
        return 1
    raise ValueError(f"expected [J,H,W], [B,J,H,W] or [B,J,H,W,C] inputs, got {ndim} dimensions")


def persistence(inputs: np.ndarray, steps: int, *, time_axis: int | None = None) -> np.ndarray:
    """Repeat the last input frame ``steps`` times along the time axis.

    ``inputs``: ``[J, H, W]`` (time axis 0), ``[B, J, H, W]`` or ``[B, J, H, W, C]``
    (time axis 1), or any array with an explicit ``time_axis``. Returns the same layout
    with ``K = steps`` frames, each an exact copy of frame ``J-1`` (NaN and masks carry
    over unchanged).
    """
    x = np.asarray(inputs)
    ax = _time_axis(x.ndim, time_axis)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    last = np.take(x, [x.shape[ax] - 1], axis=ax)
    return np.repeat(last, steps, axis=ax)


def _to_dbr(rain: np.ndarray, threshold: float, zerovalue: float) -> np.ndarray:
    """mm/h -> dBR for motion estimation: ``10 log10 R`` above threshold, ``zerovalue`` else."""
    with np.errstate(divide="ignore", invalid="ignore"):
        db = np.where(rain >= threshold, 10.0 * np.log10(np.where(rain > 0, rain, 1.0)), zerovalue)
    return db


def lk_motion(frames_mm_h: np.ndarray, *, threshold: float = 0.1, zerovalue_db: float = -15.0,
              **lk_kwargs) -> np.ndarray:
    """Lucas-Kanade advection field of a sequence, ``[J, H, W]`` mm/h -> ``[2, H, W]``.

    Follows pysteps' recipe: fields go to dBR (``threshold`` mm/h, ``zerovalue_db`` below
    it), NaN (outside the radar domain) is set to the zero value, then
    ``pysteps.motion.get_method("LK")``. Components are (x, y) in pixels per time step;
    a zero field when no features are found. Extra keywords go to the LK method.
    """
    from pysteps import motion

    x = np.asarray(frames_mm_h, np.float64)
    if x.ndim != 3 or x.shape[0] < 2:
        raise ValueError(f"LK motion needs [J>=2, H, W] frames, got shape {x.shape}")
    db = _to_dbr(x, threshold, zerovalue_db)
    db[~np.isfinite(x)] = zerovalue_db
    return np.asarray(motion.get_method("LK")(db, verbose=False, **lk_kwargs), np.float64)


def _optical_flow_one(frames: np.ndarray, steps: int, threshold: float, outside_value: float,
                      interp_order: int, lk_kwargs: dict) -> np.ndarray:
    from pysteps import extrapolation

    velocity = lk_motion(frames, threshold=threshold, **lk_kwargs)
    last = np.asarray(frames[-1], np.float64)
    outside = ~np.isfinite(last)
    start = np.where(outside, 0.0, last)
    extrapolate = extrapolation.get_method("semilagrangian")
    fcst = extrapolate(start, velocity, steps, outval=0.0, interp_order=interp_order)
    fcst = np.where(np.isfinite(fcst), np.maximum(fcst, 0.0), 0.0)
    fcst[:, outside] = outside_value
    return fcst.astype(np.float32)


def optical_flow(inputs_mm_h: np.ndarray, steps: int, *, threshold: float = 0.1,
                 outside_value: float = np.nan, interp_order: int = 1, **lk_kwargs) -> np.ndarray:
    """Optical-flow extrapolation nowcast in mm/h (pysteps LK + semi-Lagrangian).

    ``inputs_mm_h``: ``[J, H, W]``, ``[B, J, H, W]`` or ``[B, J, H, W, 1]`` rain rates,
    NaN outside the radar domain (``J >= 2``). Motion is estimated from all J frames
    (:func:`lk_motion`); the last frame, with NaN replaced by 0, is advected ``steps``
    times. Rain entering from outside the grid or domain is 0. Pixels outside the last
    frame's domain are set to ``outside_value`` (NaN by default, so the mask survives;
    pass 0.0 for an all-finite result).

    Returns float32 ``[K, H, W]`` / ``[B, K, H, W]`` / ``[B, K, H, W, 1]`` with
    ``K = steps``, matching the input layout.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = np.asarray(inputs_mm_h)
    if x.ndim == 3:
        return _optical_flow_one(x, steps, threshold, outside_value, interp_order, lk_kwargs)
    if x.ndim == 5:
        if x.shape[-1] != 1:
            raise ValueError(f"optical flow needs one channel (rain rate), got {x.shape[-1]}")
        return optical_flow(x[..., 0], steps, threshold=threshold, outside_value=outside_value,
                            interp_order=interp_order, **lk_kwargs)[..., None]
    if x.ndim == 4:
        return np.stack([_optical_flow_one(s, steps, threshold, outside_value, interp_order, lk_kwargs) for s in x])
    raise ValueError(f"expected [J,H,W], [B,J,H,W] or [B,J,H,W,1] inputs, got shape {x.shape}")


def climatology(train_targets: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean training target per horizon: ``[N, n_h]`` (or ``[N, n_h, ...]``) -> ``[n_h, ...]``.

    NaN targets and ``mask == False`` entries are ignored. Raises when a horizon has no
    valid target.
    """
    y = np.asarray(train_targets, np.float64)
    valid = np.isfinite(y)
    if mask is not None:
        valid &= np.broadcast_to(np.asarray(mask, bool), y.shape)
    count = valid.sum(axis=0)
    if np.any(count == 0):
        raise ValueError("climatology: a horizon has no valid training target")
    return (np.where(valid, y, 0.0).sum(axis=0) / count).astype(np.float32)


def climatology_forecast(clim: np.ndarray, batch_size: int) -> np.ndarray:
    """The climatology for every sample: ``[n_h, ...] -> [batch_size, n_h, ...]``."""
    clim = np.asarray(clim, np.float32)
    return np.broadcast_to(clim, (batch_size,) + clim.shape).copy()
