"""Event decisions of the visibility task: classifier cuts, and the runs combined with a model.

* :func:`calibrate_cut`: probability cuts with frequency bias 1 on the training windows
  (one per horizon, or one per stratum and horizon for ``eval.event_rule="stratified"``).
* :func:`decide_events`: ``prob > cut``, with the stratified rule's two rows.
* :func:`choose_cut_on_validation`: per horizon, the candidate cut with the best CSI on
  held-out (validation) windows, with a fallback when they hold too few events.
* :func:`member_workdirs` / :func:`check_member` / :func:`check_classifier_member`: the runs
  of ``eval.ensemble_workdirs`` (a seed ensemble: value heads and classifier probabilities
  averaged) and ``eval.value_workdirs`` (the value forecast). A member may have other
  features, history or model, never other windows: its split windows (stations, end times,
  targets, last visibility), horizons, step and visibility cap must be the task's, and a
  classifier member must forecast the same event. Otherwise a ``ValueError`` says which.

numpy only.
"""

from __future__ import annotations

import numpy as np

from nowcast_jax.visibility.preprocess import parse_names

EVENT_SOURCES = ("value", "classifier")
EVENT_RULES = ("cut", "stratified")
SPLITS = ("train", "val", "test")


def calibrate_cut(prob: np.ndarray, event: np.ndarray, strata: np.ndarray | None = None,
                  n_strata: int | None = None, bias: float = 1.0) -> np.ndarray:
    """Cuts with frequency bias ``bias`` (default 1): ``[K, H]``, ``K = n_strata`` (default:
    the largest stratum + 1; 1 without strata).

    Args:
      prob: ``[N, H]`` event probabilities (training windows).
      event: ``[N, H]`` bool observed events.
      strata: ``[N]`` int stratum per window (0..K-1) or None (one stratum).
      n_strata: number of strata, so that a stratum no window falls in still gets a row.

    The cut of a stratum and horizon is the ``1 - bias * rate`` quantile (clipped to [0, 1])
    of its probabilities, ``rate`` = its observed event frequency, so ``prob > cut`` forecasts
    about ``bias`` times as many events as were observed. A stratum without windows gets the
    unstratified cut."""
    if bias <= 0:
        raise ValueError(f"bias must be > 0, got {bias}")
    prob, event = np.asarray(prob, np.float64), np.asarray(event, bool)
    strata = np.zeros(len(prob), np.int64) if strata is None else np.asarray(strata, np.int64)

    def cuts(sel):
        return np.array([np.quantile(prob[sel, j], float(np.clip(1.0 - bias * event[sel, j].mean(), 0.0, 1.0)))
                         for j in range(prob.shape[1])])

    overall = cuts(np.ones(len(prob), bool))
    k = int(n_strata) if n_strata is not None else (int(strata.max()) + 1 if len(strata) else 1)
    return np.stack([cuts(strata == i) if (strata == i).any() else overall for i in range(k)])


def low_start(start_vis: np.ndarray, threshold: float) -> np.ndarray:
    """``[N]`` int stratum of the stratified rule: 1 where the last observed visibility is
    below ``threshold`` (persistence forecasts the event), else 0."""
    return (np.asarray(start_vis) < threshold).astype(np.int64)


def decide_events(prob: np.ndarray, start_vis: np.ndarray, cut: np.ndarray, threshold: float) -> np.ndarray:
    """``[N, H]`` bool forecast events: ``prob > cut`` with ``cut [H]``; with ``cut [2, H]``
    (rule ``"stratified"``) row 1 applies to windows starting below ``threshold`` (persistence
    says "event"), row 0 to the others."""
    cut = np.asarray(cut, np.float64)
    if cut.ndim == 1:
        return prob > cut[None, :]
    if cut.shape[0] != 2:
        raise ValueError(f"a stratified cut has 2 rows (start at/above, below the threshold); got {cut.shape}")
    return prob > cut[low_start(start_vis, threshold)]


def choose_cut_on_validation(prob: np.ndarray, event: np.ndarray, cuts: np.ndarray, labels,
                             default: int, min_events: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per horizon, the candidate cut with the highest CSI of ``prob > cut`` on held-out windows.

    Args:
      prob: ``[N, H]`` event probabilities of the held-out (validation) windows.
      event: ``[N, H]`` bool observed events there.
      cuts: ``[K, H]`` candidate cuts (e.g. :func:`calibrate_cut` at K biases).
      labels: ``[K]`` numbers naming the candidates (e.g. the biases); ties in CSI go to the
        label closest to ``labels[default]``, then to the smaller label.
      default: index of the candidate kept where the held-out windows hold fewer than
        ``min_events`` events at that horizon.

    Returns:
      ``(index [H] int, csi [K, H])``: the chosen candidate per horizon and every candidate's
      held-out CSI (NaN where undefined, i.e. no event observed nor forecast; never chosen).
    """
    prob, event = np.asarray(prob, np.float64), np.asarray(event, bool)
    cuts, labels = np.asarray(cuts, np.float64), np.asarray(labels, np.float64)
    if cuts.ndim != 2 or cuts.shape[1] != prob.shape[1] or len(labels) != len(cuts):
        raise ValueError(f"cuts must be [K={len(labels)}, H={prob.shape[1]}], got {cuts.shape}")
    fc = prob[None] > cuts[:, None, :]                                   # [K, N, H]
    hits = (fc & event[None]).sum(1)
    union = (fc | event[None]).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        csi = np.where(union > 0, hits / np.maximum(union, 1), np.nan)
    # preference order: CSI, then closeness to the default label, then the smaller label
    order = np.lexsort((labels, np.abs(labels - labels[default])))     # best tie-break first
    index = np.full(prob.shape[1], int(default))
    for j in range(prob.shape[1]):
        if event[:, j].sum() < min_events or np.all(np.isnan(csi[:, j])):
            continue
        best = np.nanmax(csi[:, j])
        index[j] = next(int(k) for k in order if csi[k, j] == best)
    return index, csi


def member_workdirs(eval_cfg, key: str) -> tuple[str, ...]:
    """The workdirs listed in ``eval.<key>`` (a tuple, or the string an override gives)."""
    value = eval_cfg.get(key, ()) or ()
    if isinstance(value, str):
        value = parse_names(value) if value.strip() else ()
        value = (value,) if isinstance(value, str) else value
    return tuple(str(d) for d in value if str(d))


def _window_mismatch(task, member) -> str:
    """'' when ``member`` forecasts ``task``'s windows; else what differs."""
    if tuple(member.horizons_hours) != tuple(task.horizons_hours):
        return f"horizons {list(member.horizons_hours)} h vs {list(task.horizons_hours)} h"
    if str(member.data.step) != str(task.data.step):
        return f"grid step {member.data.step} vs {task.data.step}"
    if float(member.data.visibility_cap_m) != float(task.data.visibility_cap_m):
        return f"visibility cap {member.data.visibility_cap_m} m vs {task.data.visibility_cap_m} m"
    for split in SPLITS:
        a, b = member.data.split(split), task.data.split(split)
        if len(a) != len(b):
            return f"{len(a)} {split} windows vs {len(b)}"
        for field in ("station", "times", "y", "start_vis"):
            if not np.array_equal(getattr(a, field), getattr(b, field)):
                return f"other {split} windows ({field} differs)"
    return ""


def check_member(task, member, label: str) -> None:
    """Raise ``ValueError`` unless ``member`` (a restored task) forecasts exactly ``task``'s
    windows: same splits (stations, end times, targets, last visibility), horizons, step and
    visibility cap. Features, history, scaler and model may differ (the member predicts from
    its own inputs of those windows)."""
    why = _window_mismatch(task, member)
    if why:
        raise ValueError(f"{label} forecasts other windows or horizons than this model: {why} (members must "
                         f"share the data, split and horizons; features may differ)")


def check_classifier_member(task, member, label: str) -> None:
    """Raise ``ValueError`` unless ``member`` has a classifier head for ``task``'s event."""
    if member.aux_weight <= 0:
        raise ValueError(f"{label} has no classifier head: every eval.ensemble_workdirs member needs one "
                         f"(loss.aux_weight > 0) when the classifier decides the event")
    if member.threshold != task.threshold:
        raise ValueError(f"{label} classifies visibility < {member.threshold} m, this model "
                         f"< {task.threshold} m (loss.threshold_m must agree)")
