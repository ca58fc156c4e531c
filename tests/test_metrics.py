"""vtfusion.metrics against scikit-learn and against a slow AUPRO written from its definition."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from vtfusion import metrics as M

# --------------------------------------------------------------------------- references


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AUPRO the slow, obvious way (MVTec AD definition), for checking the fast one.

    Every distinct score is a threshold t (from the highest down, plus t = +inf giving
    (0, 0)); FPR(t) = share of normal pixels with score >= t; PRO(t) = mean over the
    8-connected regions of each image of the share of the region with score >= t.
    Trapezoid over FPR in [0, fpr_limit], interpolated at fpr_limit, divided by it.
    """
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    regions = []
    for img in range(maps.shape[0]):
        labelled, n = ndimage.label(masks[img], structure=np.ones((3, 3), dtype=int))
        regions += [maps[img][labelled == k] for k in range(1, n + 1)]
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(np.mean(normal >= t))
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
    area = 0.0
    for i in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[i - 1], fprs[i], pros[i - 1], pros[i]
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
            continue
        if x0 < fpr_limit:
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_limit) / 2
        break
    return area / fpr_limit


def reference_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


# --------------------------------------------------------------------------- data


def binary_data(seed: int, n: int = 3000, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores that are informative but imperfect; quantised to ``levels`` values for many ties."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = rng.normal(size=n) + 1.2 * labels
    if levels is not None:
        scores = np.round((scores - scores.min()) / np.ptp(scores) * (levels - 1))
    return scores.astype(np.float32), labels


def blob_maps(seed: int, n: int = 6, size: int = 24, n_normal: int = 2, levels: int | None = None):
    """Small category: ``n`` maps/masks, the first ``n_normal`` images defect-free, a few blobs each."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_normal, n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(2, size - 2, size=2)
            ry, rx = rng.uniform(0.8, 4.0, size=2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    # Informative but noisy maps: smoothed signal on the defects plus noise.
    signal = ndimage.gaussian_filter(masks.astype(np.float64), sigma=(0, 1.0, 1.0))
    maps = signal + 0.35 * rng.normal(size=masks.shape)
    if levels is not None:
        maps = np.round((maps - maps.min()) / np.ptp(maps) * (levels - 1))
    return maps.astype(np.float32), masks


# --------------------------------------------------------------------------- AUROC, AP, F1


@pytest.mark.parametrize("levels", [None, 7, 50], ids=["no-ties", "7-levels", "50-levels"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_ap_match_sklearn(seed: int, levels: int | None) -> None:
    scores, labels = binary_data(seed, levels=levels)
    if levels is not None:
        assert len(np.unique(scores)) <= levels  # the data really has many ties
    assert M.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert M.average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert M.f1_max(scores, labels) == pytest.approx(reference_f1_max(scores, labels), abs=1e-6)


def test_pixel_metrics_match_sklearn_on_maps() -> None:
    maps, masks = blob_maps(3, levels=30)
    flat_s, flat_y = maps.ravel(), masks.ravel()
    out = M.evaluate_maps(torch.from_numpy(maps), torch.from_numpy(masks))
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(flat_y, flat_s), abs=1e-6)
    assert out["pixel_ap"] == pytest.approx(average_precision_score(flat_y, flat_s), abs=1e-6)
    assert out["pixel_f1_max"] == pytest.approx(reference_f1_max(flat_s, flat_y), abs=1e-6)
    img_s, img_y = maps.reshape(len(maps), -1).max(1), masks.reshape(len(masks), -1).any(1)
    assert out["image_auroc"] == pytest.approx(roc_auc_score(img_y, img_s), abs=1e-6)
    assert out["image_ap"] == pytest.approx(average_precision_score(img_y, img_s), abs=1e-6)
    assert out["image_f1_max"] == pytest.approx(reference_f1_max(img_s, img_y), abs=1e-6)


@pytest.mark.parametrize("levels", [None, 7])
def test_roc_curve_matches_sklearn_and_integrates_to_auroc(levels: int | None) -> None:
    rng = np.random.default_rng(3)
    scores = rng.random(500)
    if levels:
        scores = np.round(scores * levels) / levels  # ties
    labels = rng.random(500) < 0.3
    fpr, tpr, thr = M.roc_curve(scores, labels)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), sk_tpr, atol=1e-12)
    assert math.isinf(float(thr[0])) and bool(torch.all(thr[1:-1] > thr[2:]))
    assert abs(float(np.trapezoid(tpr.numpy(), fpr.numpy())) - M.auroc(scores, labels)) < 1e-12


def test_perfect_and_inverted_scores() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    perfect = labels + 0.1 * np.arange(6)
    assert M.auroc(perfect, labels) == 1.0
    assert M.average_precision(perfect, labels) == 1.0
    assert M.f1_max(perfect, labels) == 1.0
    assert M.auroc(-perfect, labels) == 0.0
    # All scores equal: one threshold, AUROC is the chance diagonal.
    assert M.auroc(np.zeros(6), labels) == 0.5


def test_best_f1_threshold_reproduces_its_f1() -> None:
    scores, labels = binary_data(4, levels=20)
    best, t = M.best_f1_threshold(scores, labels)
    pred = scores >= t
    tp = np.sum(pred & labels)
    f1 = 2 * tp / (2 * tp + np.sum(pred & ~labels) + np.sum(~pred & labels))
    assert f1 == pytest.approx(best, abs=1e-12)


def test_input_types_do_not_change_results() -> None:
    scores, labels = binary_data(5, levels=40)  # integer-valued floats: exact in every dtype
    ref = M.auroc(scores, labels)
    assert M.auroc(torch.from_numpy(scores).half(), torch.from_numpy(labels)) == ref
    assert M.auroc(scores.astype(np.float64), labels.astype(np.float32)) == ref
    assert M.auroc(scores.astype(np.int64), labels.astype(np.int8)) == ref
    assert M.auroc(torch.from_numpy(scores).requires_grad_(), torch.from_numpy(labels)) == ref


# --------------------------------------------------------------------------- AUPRO


@pytest.mark.parametrize("levels", [None, 25], ids=["no-ties", "25-levels"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_reference(seed: int, levels: int | None) -> None:
    maps, masks = blob_maps(seed, levels=levels)
    fast = M.aupro(torch.from_numpy(maps), torch.from_numpy(masks))
    assert 0.05 < fast < 0.999  # a non-trivial case
    assert fast == pytest.approx(reference_aupro(maps, masks), abs=1e-4)


@pytest.mark.parametrize("fpr_limit", [0.01, 0.3, 0.77, 1.0])
def test_aupro_other_limits_match_reference(fpr_limit: float) -> None:
    maps, masks = blob_maps(7, levels=40)
    assert M.aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(
        reference_aupro(maps, masks, fpr_limit), abs=1e-4
    )


def test_aupro_perfect_and_inverted_maps() -> None:
    _, masks = blob_maps(8)
    rng = np.random.default_rng(8)
    for perfect in (masks.astype(np.float32), masks + 0.4 * rng.random(masks.shape)):
        assert M.aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
        assert reference_aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
        assert M.auroc(perfect, masks) == 1.0
        inverted = -perfect
        assert M.aupro(inverted, masks) == pytest.approx(0.0, abs=1e-12)
        assert M.aupro(inverted, masks) == pytest.approx(reference_aupro(inverted, masks), abs=1e-4)
        assert M.auroc(inverted, masks) == 0.0


def test_regions_are_8_connected() -> None:
    """An L of 3 pixels and a pixel touching it diagonally form ONE region of 4 pixels.

    Only the diagonal pixel scores high, so at the first threshold PRO = 1/4 with
    8-connectivity (it would be (0 + 1)/2 with 4-connectivity).
    """
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 1, 1] = masks[0, 2, 1] = masks[0, 2, 2] = True  # the L
    masks[0, 3, 3] = True  # diagonal neighbour of (2, 2)
    maps = np.zeros((1, 6, 6), dtype=np.float32)
    maps[0, 3, 3] = 1.0
    fpr, pro = M.pro_curve(maps, masks)
    assert fpr[1].item() == 0.0
    assert pro[1].item() == pytest.approx(0.25)


def test_regions_do_not_span_images() -> None:
    """The same place in two images holds two regions (sizes 1 and 3), not one of 4."""
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 2, 2] = True
    masks[1, 2, 1:4] = True
    maps = np.zeros((2, 5, 5), dtype=np.float32)
    maps[0, 2, 2] = 1.0  # only image 0's region is found
    _, pro = M.pro_curve(maps, masks)
    assert pro[1].item() == pytest.approx(0.5)  # mean(1, 0); a merged region would give 1/4


def test_pro_curve_shape_and_crop_integrate_to_aupro() -> None:
    maps, masks = blob_maps(9)
    fpr, pro = M.pro_curve(maps, masks)
    assert fpr[0] == 0 and pro[0] == 0
    assert fpr[-1].item() == pytest.approx(1.0) and pro[-1].item() == pytest.approx(1.0)
    assert bool(torch.all(torch.diff(fpr) >= 0)) and bool(torch.all(torch.diff(pro) >= 0))
    assert len(fpr) == len(np.unique(maps)) + 1  # exact: one point per distinct score
    x, y = M.pro_curve(maps, masks, fpr_limit=0.3)
    assert x[-1].item() == 0.3 and bool(torch.all(x <= 0.3))
    assert torch.trapezoid(y, x).item() / 0.3 == pytest.approx(M.aupro(maps, masks), abs=1e-12)


def test_aupro_invariant_to_image_order() -> None:
    maps, masks = blob_maps(10, levels=30)
    perm = np.random.default_rng(0).permutation(len(maps))
    assert M.aupro(maps[perm], masks[perm]) == pytest.approx(M.aupro(maps, masks), abs=1e-12)


def test_channel_dimension_is_accepted() -> None:
    maps, masks = blob_maps(11)
    t_maps, t_masks = torch.from_numpy(maps), torch.from_numpy(masks).float()
    assert M.aupro(t_maps[:, None], t_masks[:, None]) == M.aupro(t_maps, t_masks)


# --------------------------------------------------------------------------- evaluate_maps


def test_evaluate_maps_agrees_with_the_single_metrics() -> None:
    maps, masks = blob_maps(12)
    labels = masks.reshape(len(masks), -1).any(1)
    img = M.image_scores_from_maps(torch.from_numpy(maps))
    out = M.evaluate_maps(maps, masks)
    assert tuple(out) == M.METRIC_KEYS
    assert out["image_auroc"] == M.auroc(img, labels)
    assert out["image_ap"] == M.average_precision(img, labels)
    assert out["image_f1_max"] == M.f1_max(img, labels)
    assert out["pixel_auroc"] == M.auroc(maps, masks)
    assert out["pixel_ap"] == M.average_precision(maps, masks)
    assert out["pixel_f1_max"] == M.f1_max(maps, masks)
    assert out["aupro"] == M.aupro(maps, masks)
    # Caller-provided image scores and labels are used instead of the defaults.
    flipped = M.evaluate_maps(maps, masks, labels=labels, image_scores=-img)
    assert flipped["image_auroc"] == pytest.approx(1 - out["image_auroc"], abs=1e-12)


def test_image_scores_from_maps() -> None:
    maps = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    assert torch.equal(M.image_scores_from_maps(maps), torch.tensor([11.0, 23.0]))
    assert torch.equal(M.image_scores_from_maps(maps[:, None], "mean"), torch.tensor([5.5, 17.5]))
    with pytest.raises(ValueError, match="reduction"):
        M.image_scores_from_maps(maps, "median")


# --------------------------------------------------------------------------- degenerate inputs


def test_single_class_raises() -> None:
    with pytest.raises(ValueError, match="no negative"):
        M.auroc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="no positive"):
        M.average_precision(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="no positive"):
        M.f1_max(np.array([0.1, 0.2]), np.array([0, 0]))


def test_aupro_without_defects_raises() -> None:
    maps = np.random.default_rng(0).random((2, 8, 8))
    with pytest.raises(ValueError, match="no defect pixel"):
        M.aupro(maps, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="no normal pixel"):
        M.aupro(maps, np.ones((2, 8, 8)))


def test_bad_inputs_raise_clear_errors() -> None:
    maps, masks = blob_maps(13)
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.aupro(bad, masks)
    with pytest.raises(ValueError, match="NaN"):
        M.evaluate_maps(bad, masks)  # NaN scores are an error even where undefined metrics are NaN
    with pytest.raises(ValueError, match="binary"):
        M.aupro(maps, masks * 255.0)
    with pytest.raises(ValueError, match="does not match"):
        M.aupro(maps, masks[:, :-1])
    with pytest.raises(ValueError, match="fpr_limit"):
        M.aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="elements"):
        M.auroc(np.zeros(3), np.array([0, 1]))
    with pytest.raises(ValueError, match="entries"):
        M.evaluate_maps(maps, masks, labels=np.array([0, 1]))


def test_evaluate_maps_undefined_metrics_are_nan_with_a_warning() -> None:
    maps, masks = blob_maps(14, n_normal=0)  # every test image defective: image metrics undefined
    with pytest.warns(RuntimeWarning, match="image_auroc"):
        out = M.evaluate_maps(maps, masks)
    assert all(math.isnan(out[k]) for k in ("image_auroc", "image_ap", "image_f1_max"))
    assert all(0 < out[k] < 1 for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"))
    with pytest.raises(ValueError, match="image_auroc"):
        M.evaluate_maps(maps, masks, undefined="raise")

    normal_only = np.zeros_like(masks)  # no defect at all: nothing but NaN
    with pytest.warns(RuntimeWarning, match="aupro"):
        out = M.evaluate_maps(maps, normal_only)
    assert all(math.isnan(v) for v in out.values())

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-posed category warns about nothing
        M.evaluate_maps(*blob_maps(15))


# --------------------------------------------------------------------------- devices and size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    maps, masks = blob_maps(16, n=12, size=64, levels=60)
    cpu = M.evaluate_maps(torch.from_numpy(maps), torch.from_numpy(masks))
    cuda = M.evaluate_maps(torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda())
    for k in M.METRIC_KEYS:
        assert cuda[k] == pytest.approx(cpu[k], abs=1e-12), k
    x, _ = M.pro_curve(torch.from_numpy(maps).cuda(), torch.from_numpy(masks))  # masks moved to the maps
    assert x.device.type == "cuda"


@pytest.mark.slow
def test_full_size_category_is_fast() -> None:
    """300 x 240 x 240 (a large MVTec category at 240 px): all metrics in seconds."""
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(300, 240, 240, generator=gen)
    masks = torch.zeros(300, 240, 240, dtype=torch.bool)
    masks[100:, 60:110, 70:100] = True
    masks[200:, 150:170, 20:200] = True
    maps[masks] += 0.4
    start = time.perf_counter()
    out = M.evaluate_maps(maps, masks)
    elapsed = time.perf_counter() - start
    print(f"\nevaluate_maps on 300 x 240 x 240 (CPU, {torch.get_num_threads()} threads): {elapsed:.2f} s")
    assert elapsed < 60
    assert 0.5 < out["pixel_auroc"] < 1 and 0 < out["aupro"] < 1
