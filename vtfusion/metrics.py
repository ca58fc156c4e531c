"""Evaluation metrics (DESIGN §7): image/pixel AUROC, AP, F1-max and AUPRO.

Every metric here is **exact** (no threshold grid) and fast: all scores are sorted
once, equal scores are grouped into one threshold, and the counts at each threshold
come from cumulative sums over the sorted order. The sort and the sums run in torch on
the input's device (CUDA or CPU); only the connected components of the ground-truth
masks are found on the CPU (``scipy.ndimage.label``; masks are small).

* :func:`auroc`, :func:`average_precision`: identical tie handling to scikit-learn's
  ``roc_auc_score`` and ``average_precision_score`` (the tests check agreement to 1e-6).
* :func:`f1_max`: the maximum F1 over the thresholds of the precision-recall curve.
* :func:`aupro`: the MVTec AD definition (Bergmann et al., IJCV 2021, and the MVTec
  evaluation script): PRO(t) is the mean, over all 8-connected ground-truth regions
  (found per image), of the fraction of the region's pixels with score >= t; FPR(t) is
  the fraction of normal pixels (of all images, defect-free images included) with
  score >= t. PRO is integrated over FPR in [0, ``fpr_limit``] with the trapezoid rule,
  the curve linearly interpolated at ``fpr_limit``, and divided by ``fpr_limit``.
* :func:`evaluate_maps`: all of the above for one category, from its anomaly maps.
* :func:`gaussian_smooth` and :class:`EvalConfig`: the optional Gaussian smoothing of the
  maps before scoring (sigma 4 in PCSNet and AdaCLIP; the VTFusion paper states none, so
  it is off by default).

The paper itself reports image and pixel AUROC (Sec. IV-A) and PRO on its APPD data
(Table IV); AP, F1-max and AUPRO are the extra metrics DESIGN §7 asks for. Values are
fractions in [0, 1]; tables multiply by 100.

Degenerate inputs. The scalar metrics (:func:`auroc`, ...) raise ``ValueError`` when a
metric is undefined (one class only, no defect region, no normal pixel), so a wrong
call never yields a number. :func:`evaluate_maps` evaluates a whole category and, by
default, returns ``NaN`` for the metrics that are undefined on it (e.g. image AUROC of a
test set without defect-free images), with a ``RuntimeWarning`` naming them; pass
``undefined="raise"`` to get the ``ValueError`` instead. NaN *scores* are always an
error: they mean a bug upstream, and no metric of them is meaningful.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "auroc",
    "average_precision",
    "f1_max",
    "best_f1_threshold",
    "aupro",
    "pro_curve",
    "image_scores_from_maps",
    "evaluate_maps",
    "gaussian_smooth",
    "EvalConfig",
    "METRIC_KEYS",
    "PIXEL_METRIC_KEYS",
]

#: Keys of the dictionary returned by :func:`evaluate_maps`, in table order.
METRIC_KEYS = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "aupro",
)

#: The keys of :data:`METRIC_KEYS` that need ground-truth masks (None for image labels only).
PIXEL_METRIC_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")

ArrayLike = Tensor | np.ndarray


@dataclass(frozen=True)
class EvalConfig:
    """How maps are post-processed before they are scored (DESIGN §7, §10).

    Attributes:
        smoothing_sigma: **[choice]** standard deviation, in pixels at the evaluation
            resolution, of a Gaussian filter applied to every pixel map before scoring;
            the image score is then the maximum of the smoothed map. 0 (default): no
            smoothing, as the paper states none. PCSNet and AdaCLIP, by the paper's
            authors and co-authors, smooth with sigma 4, as most peers do.
    """

    smoothing_sigma: float = 0.0

    def __post_init__(self) -> None:
        if not self.smoothing_sigma >= 0:
            raise ValueError(f"EvalConfig.smoothing_sigma must be >= 0, got {self.smoothing_sigma}")


def gaussian_smooth(maps: Tensor, sigma: float) -> Tensor:
    """Gaussian filter of each map: ``N x H x W`` or ``N x 1 x H x W`` -> same shape.

    A separable kernel truncated at ``4 sigma`` (scipy's default), reflected borders.
    ``sigma = 0`` returns ``maps`` unchanged.
    """
    if sigma == 0:
        return maps
    x = maps if maps.ndim == 4 else maps.unsqueeze(1)
    radius = max(1, int(4.0 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:  # reflect padding needs pad < size: fall back to replicate for tiny maps
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    else:
        x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x if maps.ndim == 4 else x.squeeze(1)


# --------------------------------------------------------------------------- input checks


def _as_tensor(x: ArrayLike, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x.detach()


def _scores_tensor(scores: ArrayLike, name: str) -> Tensor:
    """Scores as a float tensor on their own device, NaN rejected.

    float32/float64 are kept as given so that ties are exactly the ties the caller
    has (scikit-learn groups equal values of the array it is given, too); half
    precision is widened to float32 and integers/bools to float64, both exactly.
    """
    s = _as_tensor(scores, name)
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    elif not s.is_floating_point():
        s = s.double()
    if s.numel() == 0:
        raise ValueError(f"{name} is empty: nothing to evaluate")
    n_nan = int(torch.isnan(s).sum())
    if n_nan:
        raise ValueError(
            f"{name} contains {n_nan} NaN value(s) out of {s.numel()}; metrics of NaN scores are "
            "meaningless. NaNs usually come from a division by zero or an empty normalisation "
            "upstream: fix the maps (or replace NaNs explicitly) before evaluating."
        )
    return s


def _binary_tensor(labels: ArrayLike, name: str, device: torch.device) -> Tensor:
    """Labels/masks as a bool tensor on ``device``; values must be 0/1 (or bool)."""
    y = _as_tensor(labels, name)
    if y.dtype != torch.bool:
        bad = (y != 0) & (y != 1)
        if bool(bad.any()):
            values = torch.unique(y[bad])[:5].tolist()
            raise ValueError(
                f"{name} must be binary (0/1 or bool); found other values such as {values}. "
                f"Binarise it first, e.g. `{name} > 0.5` for a resized float mask or "
                f"`{name} > 0` for a 0/255 mask."
            )
        y = y != 0
    return y.to(device)


def _check_fpr_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit} (MVTec AD uses 0.3)")
    return fpr_limit


def _maps_and_masks(maps: ArrayLike, masks: ArrayLike) -> tuple[Tensor, Tensor]:
    """``N x H x W`` (or ``N x 1 x H x W``) maps and masks, checked and on the maps' device."""
    m = _scores_tensor(maps, "maps")
    g = _as_tensor(masks, "masks")
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if g.ndim == 4 and g.shape[1] == 1:
        g = g[:, 0]
    if m.ndim == 2:  # a single map
        m = m[None]
    if g.ndim == 2:
        g = g[None]
    if m.ndim != 3:
        raise ValueError(f"maps must be N x H x W (or N x 1 x H x W), got shape {tuple(maps.shape)}")
    if tuple(g.shape) != tuple(m.shape):
        raise ValueError(
            f"masks shape {tuple(g.shape)} does not match maps shape {tuple(m.shape)}; "
            "resize the maps to the mask resolution (DESIGN §7 evaluates at 240 x 240)"
        )
    return m, _binary_tensor(g, "masks", m.device)


# --------------------------------------------------------------------------- the sorted curve


@dataclass(frozen=True)
class _SortedCurve:
    """Counts at every distinct threshold, thresholds in decreasing order.

    Attributes:
        thresholds: ``T`` distinct score values, decreasing.
        tps: ``T`` int64, number of positives with score >= threshold.
        fps: ``T`` int64, number of negatives with score >= threshold.
        n_pos, n_neg: totals.
        order: the sort permutation (descending scores) of the flattened input.
        pos_sorted: the labels in that order (bool).
    """

    thresholds: Tensor
    tps: Tensor
    fps: Tensor
    n_pos: int
    n_neg: int
    order: Tensor
    pos_sorted: Tensor


def _descending_order(scores: Tensor) -> Tensor:
    """Indices that sort ``scores`` (1-D) in decreasing order; ties in any order.

    On the CPU numpy's argsort is about twice as fast as ``torch.sort`` for 10^7
    floats (a full MVTec category); on CUDA ``torch.sort`` is used. Negation is exact
    for floats, so ties are preserved.
    """
    if scores.device.type == "cpu":
        order = np.argsort(-scores.numpy())
        return torch.from_numpy(order)
    return torch.sort(scores, descending=True).indices


def _sorted_curve(scores: Tensor, positive: Tensor) -> _SortedCurve:
    """Sort once, group ties, count positives/negatives above each distinct threshold."""
    s = scores.reshape(-1)
    y = positive.reshape(-1)
    if s.numel() != y.numel():
        raise ValueError(f"scores has {s.numel()} elements but labels has {y.numel()}; they must match")
    order = _descending_order(s)
    s_sorted = s[order]
    pos_sorted = y[order]
    # Last index of every group of equal scores: the count at threshold t includes
    # every sample with score >= t, i.e. the whole tie group.
    last = torch.nonzero(s_sorted[1:] != s_sorted[:-1]).reshape(-1)
    last = torch.cat([last, last.new_tensor([s.numel() - 1])])
    tps = torch.cumsum(pos_sorted, 0, dtype=torch.int64)[last]
    fps = (last + 1) - tps
    n_pos = int(tps[-1])
    return _SortedCurve(
        thresholds=s_sorted[last], tps=tps, fps=fps, n_pos=n_pos, n_neg=s.numel() - n_pos,
        order=order, pos_sorted=pos_sorted,
    )


def _require_both_classes(curve: _SortedCurve, what: str, pos: str = "positive", neg: str = "negative") -> None:
    if curve.n_pos == 0 or curve.n_neg == 0:
        missing = pos if curve.n_pos == 0 else neg
        raise ValueError(
            f"{what} is undefined: the labels contain no {missing} sample "
            f"({curve.n_pos} {pos}, {curve.n_neg} {neg}); it needs both classes"
        )


def _auroc_from_curve(c: _SortedCurve) -> float:
    """Trapezoid area under (FPR, TPR), from (0, 0), one point per distinct threshold.

    Computed in integers (twice the area times ``n_pos * n_neg``) and divided once, so
    the result is exact up to one rounding (perfect ranking gives exactly 1.0).
    """
    _require_both_classes(c, "AUROC")
    d_fps = torch.diff(c.fps, prepend=c.fps.new_zeros(1))
    tps_prev = torch.cat([c.tps.new_zeros(1), c.tps[:-1]])
    twice_area = int(torch.sum(d_fps * (c.tps + tps_prev)))
    return twice_area / (2 * c.n_pos * c.n_neg)


def _ap_from_curve(c: _SortedCurve) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over decreasing thresholds (sklearn's definition)."""
    _require_both_classes(c, "average precision")
    d_tps = torch.diff(c.tps, prepend=c.tps.new_zeros(1)).double()
    precision = c.tps.double() / (c.tps + c.fps).double()
    return float(torch.sum(d_tps * precision)) / c.n_pos


def _best_f1_from_curve(c: _SortedCurve) -> tuple[float, float]:
    _require_both_classes(c, "F1-max")
    # F1 = 2TP / (2TP + FP + FN): the same as 2PR/(P+R) but never 0/0.
    tps = c.tps.double()
    f1 = 2 * tps / (2 * tps + c.fps.double() + (c.n_pos - tps))
    k = int(torch.argmax(f1))
    return float(f1[k]), float(c.thresholds[k])


# --------------------------------------------------------------------------- scalar metrics


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve, exact, ties as in ``sklearn.metrics.roc_auc_score``.

    Args:
        scores: any shape; higher means more anomalous.
        labels: same number of elements, 0/1 or bool (1 = anomalous).

    Returns:
        AUROC in [0, 1].

    Raises:
        ValueError: NaN scores, non-binary labels, or only one class present.
    """
    s = _scores_tensor(scores, "scores")
    return _auroc_from_curve(_sorted_curve(s, _binary_tensor(labels, "labels", s.device)))


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor, Tensor]:
    """``(fpr, tpr, thresholds)``: the ROC curve from (0, 0), one point per distinct score.

    The points whose trapezoid area :func:`auroc` returns; for plotting. Arguments and
    errors as :func:`auroc`. ``thresholds[0]`` is ``+inf`` (nothing predicted anomalous).
    """
    s = _scores_tensor(scores, "scores")
    c = _sorted_curve(s, _binary_tensor(labels, "labels", s.device))
    _require_both_classes(c, "the ROC curve")
    zero = c.tps.new_zeros(1)
    fpr = torch.cat([zero, c.fps]).double() / c.n_neg
    tpr = torch.cat([zero, c.tps]).double() / c.n_pos
    thresholds = torch.cat([c.thresholds.new_full((1,), float("inf")), c.thresholds])
    return fpr.cpu(), tpr.cpu(), thresholds.cpu()


def average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision, exact, as ``sklearn.metrics.average_precision_score``.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds in decreasing order
    (a step function, no interpolation). Arguments and errors as :func:`auroc`.
    """
    s = _scores_tensor(scores, "scores")
    return _ap_from_curve(_sorted_curve(s, _binary_tensor(labels, "labels", s.device)))


def best_f1_threshold(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """``(F1-max, threshold)``: the best F1 and the score threshold (predict ``score >= t``) reaching it.

    Useful to binarise maps for figures. Arguments and errors as :func:`auroc`.
    """
    s = _scores_tensor(scores, "scores")
    return _best_f1_from_curve(_sorted_curve(s, _binary_tensor(labels, "labels", s.device)))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> float:
    """Maximum F1 over all thresholds of the precision-recall curve.

    Image-level when given image scores and labels, pixel-level when given maps and
    masks (any shape, flattened). Arguments and errors as :func:`auroc`.
    """
    return best_f1_threshold(scores, labels)[0]


# --------------------------------------------------------------------------- AUPRO


_IN_PLANE_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8_CONNECTIVITY[1] = True  # 3x3 in each image, nothing across images


def _region_ids(masks: Tensor) -> tuple[np.ndarray, int]:
    """Label 8-connected defect regions of every image: ``N x H x W`` int32, 0 = normal.

    One ``scipy.ndimage.label`` call on the stack with a structure that is the 3x3
    square in the image plane and empty across images, so regions never span two
    images (regions are defined per image) and ids are already global.
    """
    from scipy import ndimage  # local: scipy is slow to import; only AUPRO needs it

    ids, n_regions = ndimage.label(masks.cpu().numpy(), structure=_IN_PLANE_8_CONNECTIVITY)
    return ids, int(n_regions)


def _pro_from_curve(c: _SortedCurve, masks: Tensor) -> Tensor:
    """PRO at every threshold of ``c`` (``T`` float64), ``c`` built from the masks' pixels.

    PRO(t) = (1/C) sum_regions |{p in region: s_p >= t}| / |region|. Walking the
    sorted pixels, each defect pixel adds ``1 / |its region|`` to that sum, so the sum
    at a threshold is a cumulative sum over the defect pixels sorted by score; the
    number of defect pixels above a threshold is ``tps`` of the curve.
    """
    ids_np, n_regions = _region_ids(masks)
    if n_regions == 0:
        raise ValueError(
            "AUPRO is undefined: the masks contain no defect pixel (no ground-truth region). "
            "Evaluate AUPRO on a test set with defective images."
        )
    if c.n_neg == 0:
        raise ValueError("AUPRO is undefined: every pixel is a defect pixel, so the FPR has no normal pixel")
    device = c.order.device
    ids = torch.from_numpy(ids_np.reshape(-1)).to(device=device, dtype=torch.int64)
    region_size = torch.bincount(ids, minlength=n_regions + 1).double()
    defect_ids_sorted = ids[c.order[c.pos_sorted]]  # region of each defect pixel, by decreasing score
    covered = torch.cumsum(1.0 / region_size[defect_ids_sorted], 0)
    covered = torch.cat([covered.new_zeros(1), covered])  # covered[k] = sum over the first k defect pixels
    return covered[c.tps] / n_regions


def _curve_tensors(c: _SortedCurve, masks: Tensor) -> tuple[Tensor, Tensor]:
    zero = torch.zeros(1, dtype=torch.float64, device=c.tps.device)
    fpr = torch.cat([zero, c.fps.double() / max(c.n_neg, 1)])
    pro = torch.cat([zero, _pro_from_curve(c, masks)])
    return fpr, pro


def _crop_at(fpr: Tensor, pro: Tensor, limit: float) -> tuple[Tensor, Tensor]:
    """Points with FPR <= limit, plus the curve linearly interpolated at FPR = limit.

    Matches the MVTec script's ``trapezoid(..., x_max)``: when ``limit`` is itself a
    curve point (e.g. 1.0) nothing is interpolated.
    """
    k = int(torch.searchsorted(fpr, torch.tensor([limit], dtype=fpr.dtype, device=fpr.device), right=True))
    x, y = fpr[:k], pro[:k]
    if float(x[-1]) != limit:  # then fpr[k-1] < limit < fpr[k]: fpr ends at 1 >= limit
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x = torch.cat([x, x.new_tensor([limit])])
        y = torch.cat([y, y_lim.reshape(1)])
    return x, y


def pro_curve(maps: ArrayLike, masks: ArrayLike, fpr_limit: float | None = None) -> tuple[Tensor, Tensor]:
    """The exact PRO curve ``(fpr, pro)``: one point per distinct score, plus (0, 0).

    Args:
        maps: ``N x H x W`` (or ``N x 1 x H x W``) anomaly maps.
        masks: same shape, ground truth 0/1; None for a dataset with image labels only:
            then ``labels`` is required and the pixel metrics (:data:`PIXEL_METRIC_KEYS`)
            are None (not measured), never NaN.
        fpr_limit: if given, keep only FPR <= ``fpr_limit`` and end the curve with the
            point interpolated at ``fpr_limit`` (the part :func:`aupro` integrates).

    Returns:
        ``fpr`` and ``pro``: float64 tensors on the maps' device, FPR non-decreasing.
        The full curve has up to ``N*H*W + 1`` points; subsample it for plotting.
    """
    m, g = _maps_and_masks(maps, masks)
    fpr, pro = _curve_tensors(_sorted_curve(m, g), g)
    if fpr_limit is not None:
        fpr, pro = _crop_at(fpr, pro, _check_fpr_limit(fpr_limit))
    return fpr, pro


def _aupro_from_curve(c: _SortedCurve, masks: Tensor, fpr_limit: float) -> float:
    x, y = _crop_at(*_curve_tensors(c, masks), fpr_limit)
    return float(torch.trapezoid(y, x)) / fpr_limit


def aupro(maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition).

    Regions are the 8-connected components of each image's mask; FPR counts the normal
    pixels of all images (defect-free images included); every distinct score value is
    a threshold (exact). The area up to ``fpr_limit`` (trapezoid rule, curve
    interpolated at the limit) is divided by ``fpr_limit``, so a perfect map scores 1.

    Args:
        maps: ``N x H x W`` (or ``N x 1 x H x W``) anomaly maps, on CPU or CUDA.
        masks: same shape, ground truth 0/1 or bool.
        fpr_limit: upper FPR integration limit; 0.3 in MVTec AD.

    Raises:
        ValueError: NaN scores, shape mismatch, non-binary masks, no defect region, no
            normal pixel, or ``fpr_limit`` outside (0, 1].
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    m, g = _maps_and_masks(maps, masks)
    return _aupro_from_curve(_sorted_curve(m, g), g, fpr_limit)


# --------------------------------------------------------------------------- one category


def image_scores_from_maps(maps: ArrayLike, reduction: Literal["max", "mean"] = "max") -> Tensor:
    """One anomaly score per image from its map.

    Args:
        maps: ``N x H x W`` (or ``N x 1 x H x W``).
        reduction: ``"max"`` (DESIGN §7: the image score is the maximum of the final
            map M^f) or ``"mean"``.

    Returns:
        ``N`` scores, same device and dtype as the maps.
    """
    m = _as_tensor(maps, "maps")
    if m.ndim < 2:
        raise ValueError(f"maps must be N x H x W, got shape {tuple(m.shape)}")
    flat = m.reshape(m.shape[0], -1) if m.ndim > 2 else m.reshape(1, -1)
    if reduction == "max":
        return flat.amax(dim=1)
    if reduction == "mean":
        return flat.mean(dim=1)
    raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}")


def evaluate_maps(
    maps: ArrayLike,
    masks: ArrayLike | None,
    labels: ArrayLike | None = None,
    image_scores: ArrayLike | None = None,
    fpr_limit: float = 0.3,
    undefined: Literal["nan", "raise"] = "nan",
) -> dict[str, float | None]:
    """Every metric of DESIGN §7 for one category.

    The pixels are sorted once; pixel AUROC, AP, F1-max and AUPRO all read the same
    sorted curve (AUPRO's FPR is the pixel ROC's FPR).

    Args:
        maps: ``N x H x W`` (or ``N x 1 x H x W``) anomaly maps at evaluation resolution.
        masks: same shape, ground truth 0/1; None for a dataset with image labels only:
            then ``labels`` is required and the pixel metrics (:data:`PIXEL_METRIC_KEYS`)
            are None (not measured), never NaN.
        labels: ``N`` image labels (1 = defective). Default: an image is defective when
            its mask has a defect pixel. Pass the dataset's labels when masks may have
            lost tiny defects in resizing.
        image_scores: ``N`` image scores. Default: :func:`image_scores_from_maps` (max).
        fpr_limit: AUPRO integration limit (0.3 in MVTec AD).
        undefined: what to do with a metric undefined on this category (one class
            only, e.g. no defect-free test image): ``"nan"`` (default) returns NaN for
            it and warns with a ``RuntimeWarning``; ``"raise"`` raises the ``ValueError``.

    Returns:
        ``{key: value}`` for the keys in :data:`METRIC_KEYS`, values in [0, 1] (or NaN; None
        for the pixel metrics without masks).
    """
    if undefined not in ("nan", "raise"):
        raise ValueError(f"undefined must be 'nan' or 'raise', got {undefined!r}")
    fpr_limit = _check_fpr_limit(fpr_limit)
    if masks is None and labels is None:
        raise ValueError("evaluate_maps: without masks (image labels only) pass labels=")
    m, g = _maps_and_masks(maps, torch.zeros_like(_as_tensor(maps, "maps")) if masks is None else masks)
    n = m.shape[0]

    if image_scores is None:
        img_scores = image_scores_from_maps(m, "max")
    else:
        img_scores = _scores_tensor(image_scores, "image_scores").reshape(-1)
    if labels is None:
        img_labels = g.reshape(n, -1).any(dim=1)
    else:
        img_labels = _binary_tensor(labels, "labels", img_scores.device).reshape(-1)
    for name, t in (("image_scores", img_scores), ("labels", img_labels)):
        if t.numel() != n:
            raise ValueError(f"{name} has {t.numel()} entries but there are {n} maps")

    results: dict[str, float] = {}
    failures: list[str] = []

    def run(keys: tuple[str, ...], fn) -> None:
        try:
            values = fn()
        except ValueError as err:
            if undefined == "raise":
                raise ValueError(f"{', '.join(keys)}: {err}") from err
            failures.append(f"{', '.join(keys)} ({err})")
            values = (math.nan,) * len(keys)
        results.update(zip(keys, values))

    img_curve = _sorted_curve(img_scores, img_labels.to(img_scores.device))
    run(("image_auroc",), lambda: (_auroc_from_curve(img_curve),))
    run(("image_ap",), lambda: (_ap_from_curve(img_curve),))
    run(("image_f1_max",), lambda: (_best_f1_from_curve(img_curve)[0],))

    if masks is None:  # image labels only: pixel metrics are not measured, which is not "undefined"
        results.update(dict.fromkeys(PIXEL_METRIC_KEYS))
    else:
        pix_curve = _sorted_curve(m, g)
        run(("pixel_auroc",), lambda: (_auroc_from_curve(pix_curve),))
        run(("pixel_ap",), lambda: (_ap_from_curve(pix_curve),))
        run(("pixel_f1_max",), lambda: (_best_f1_from_curve(pix_curve)[0],))
        run(("aupro",), lambda: (_aupro_from_curve(pix_curve, g, fpr_limit),))

    if failures:
        warnings.warn(
            "metrics undefined on this input, returned as NaN: " + "; ".join(failures),
            RuntimeWarning,
            stacklevel=2,
        )
    return {k: results[k] for k in METRIC_KEYS}
