"""Event decisions of the visibility evaluation: how the event *visibility < threshold* is
forecast (``eval.event_source``, ``eval.event_rule``, ``eval.classifier_prob``).

* :func:`check_eval_config`: the ``eval.*`` event choices are valid (checked when the task
  is built, so a bad choice fails before training, not after).
* :func:`classifier_cut`: the probability above which the classifier forecasts the event:
  ``eval.classifier_prob``, or calibrated on the training windows (:func:`calibrate_cut`:
  frequency bias 1, one per horizon, or per stratum and horizon for
  ``eval.event_rule="stratified"``).
* :func:`decide_events`: ``prob > cut``, with the stratified rule's two rows.
* :func:`choose_cut_on_validation`: per horizon, the candidate cut with the best CSI on
  held-out (validation) windows, with a fallback when they hold too few events.

numpy, and the engine's :class:`~nowcast_jax.engine.config.ConfigError` (whose module
imports no jax); never jax.
"""

from __future__ import annotations

import numpy as np

from nowcast_jax.engine.config import ConfigError

EVENT_SOURCES = ("value", "classifier")
EVENT_RULES = ("cut", "stratified")


def check_eval_config(config) -> None:
    """ConfigError unless ``eval.event_source`` / ``eval.event_rule`` are known and a
    classifier event source has its head (``loss.aux_weight > 0``)."""
    source, rule = str(config.eval.event_source), str(config.eval.get("event_rule", "cut"))
    if source not in EVENT_SOURCES:
        raise ConfigError(f"eval.event_source must be one of {EVENT_SOURCES}, got {source!r}")
    if rule not in EVENT_RULES:
        raise ConfigError(f"eval.event_rule must be one of {EVENT_RULES}, got {rule!r}")
    if source == "classifier" and float(config.loss.aux_weight) <= 0:
        raise ConfigError("eval.event_source='classifier' needs the auxiliary head: set loss.aux_weight > 0")


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


def classifier_cut(eval_cfg, train_prob, train_y, train_start_vis, threshold: float) -> np.ndarray:
    """Probability above which the classifier forecasts the event: ``[H]`` (rule ``"cut"``)
    or ``[2, H]`` (rule ``"stratified"``: row 0 for windows whose last observed visibility is
    at or above the threshold, row 1 for those starting below it).

    ``eval.classifier_prob`` when in (0, 1) (both rows alike); when <= 0, calibrated on the
    *training* windows (``train_prob()``: their ``[N, H]`` probabilities, called only then;
    ``train_y [N, H]`` m, ``train_start_vis [N]``) to frequency bias 1 per horizon, per
    stratum for ``"stratified"``."""
    h = np.shape(train_y)[1]
    prob = float(eval_cfg.classifier_prob)
    rows = 2 if str(eval_cfg.get("event_rule", "cut")) == "stratified" else 1
    if prob > 0:
        return np.full(h, prob) if rows == 1 else np.full((rows, h), prob)
    strata = low_start(train_start_vis, threshold) if rows == 2 else None
    cut = calibrate_cut(train_prob(), np.asarray(train_y) < threshold, strata, n_strata=rows)
    return cut[0] if rows == 1 else cut
