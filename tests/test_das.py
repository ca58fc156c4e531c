"""Properties of Diversified Anomaly Synthesis (vtfusion.das) and foreground placement.

Every test states a property that a wrong implementation would break: exact masks,
untouched pixels outside them, area bounds, foreground placement, determinism, input
forms (grayscale, odd sizes, uint8/float), and what each type is meant to look like.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vtfusion import das
from vtfusion.das import (
    ALL_KINDS,
    BASE_KINDS,
    AnomalyTypeSelector,
    CrackConfig,
    DASConfig,
    MisplacedConfig,
    NoiseConfig,
    area_bounds,
    synthesize,
    synthesize_batch,
)
from vtfusion.foreground import ForegroundConfig, category_foreground, foreground_mask

SIZE = 96  # small images keep the file fast; sizes in the config scale with the image


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # DAS on these small images is a few hundred tiny ops; on a shared 2-core machine the
    # thread hand-offs of a second worker cost more than they save (10x slower under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def textured(b: int = 4, c: int = 3, h: int = SIZE, w: int = SIZE, seed: int = 0) -> torch.Tensor:
    """Smooth random texture plus a gradient: every DAS type visibly changes it."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(b, c, h + 4, w + 4, generator=g), 5, stride=1)
    ramp = torch.linspace(0.2, 0.8, w)[None, None, None]
    return (0.5 * x + 0.5 * ramp).clamp(0, 1)


def disk_scene(b: int = 2, h: int = SIZE, w: int = SIZE,
               bright_object: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured disk on a flat background, and the disk's true mask."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disk = ((yy - h * 0.5) ** 2 + (xx - w * 0.45) ** 2) <= (0.3 * min(h, w)) ** 2
    tex = textured(b, 3, h, w, seed=5)
    if bright_object:
        obj, bg = 0.55 + 0.4 * tex, torch.full_like(tex, 0.1)
    else:
        obj, bg = 0.4 * tex, torch.full_like(tex, 0.85)
    return torch.where(disk, obj, bg), disk


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_mask_marks_exactly_the_changed_pixels(kind):
    x = textured()
    out, mask, region = synthesize_batch(x, 0, kinds=kind, with_regions=True)
    changed = (out != x).any(1, keepdim=True)
    assert torch.equal(changed, mask > 0.5)  # outside: bit-identical; inside: every pixel changed
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.shape == (4, 1, SIZE, SIZE)
    step = (out - x).abs().amax(1, keepdim=True)
    assert (step[mask > 0.5] >= DASConfig().min_pixel_change * (1 - 1e-4)).all()
    assert not (mask.bool() & ~region).any()  # the mask lies inside the drawn region


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_area_bounds_and_changed_share(kind):
    cfg = DASConfig()
    lo, hi = area_bounds(kind, cfg)
    x = textured(6, seed=1)
    for seed in range(2):
        _, mask, region = synthesize_batch(x, seed, cfg, kinds=kind, with_regions=True)
        area = mask.flatten(1).sum(1)
        assert (area > 0).all(), "every mask is non-empty"
        assert (area >= lo * SIZE * SIZE - 1e-6).all() and (area <= hi * SIZE * SIZE + 1e-6).all()
        drawn = region.flatten(1).sum(1).float()
        assert (area >= cfg.changed_fraction_min * drawn).all()


def test_changed_share_is_configurable():
    # Demanding that (almost) the whole drawn blur region changes is honoured too.
    cfg = DASConfig(changed_fraction_min=0.95)
    _, mask, region = synthesize_batch(textured(4, seed=2), 3, cfg, kinds="blurry", with_regions=True)
    assert (mask.flatten(1).sum(1) >= 0.95 * region.flatten(1).sum(1)).all()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_object_anomalies_fall_on_the_foreground(kind):
    x, disk = disk_scene()
    fg = foreground_mask(x, texture=False)
    assert fg.shape == (2, 1, SIZE, SIZE)
    for seed in range(3):
        _, mask = synthesize_batch(x, seed, foreground=fg, kinds=kind)
        assert mask.sum() > 0
        assert not (mask.bool() & ~fg).any()


@pytest.mark.parametrize("bright_object", [True, False])
def test_foreground_finds_the_object_in_either_polarity(bright_object):
    x, disk = disk_scene(bright_object=bright_object)
    fg = foreground_mask(x, texture=False)[:, 0]
    inter = (fg & disk).flatten(1).sum(1).float()
    union = (fg | disk).flatten(1).sum(1).float()
    assert (inter / union > 0.9).all()


def test_foreground_full_for_textures_and_degenerate_images():
    x, _ = disk_scene()
    assert foreground_mask(x, texture=True).all()
    assert foreground_mask(torch.full((1, 3, 40, 50), 0.5), texture=False).all()  # flat: no object to find
    noise = torch.rand(1, 3, 40, 50, generator=torch.Generator().manual_seed(0))
    assert foreground_mask(noise, texture=False).all()  # unimodal histogram: Otsu is not trusted
    assert ForegroundConfig(method="none") and foreground_mask(x, False, ForegroundConfig(method="none")).all()
    # The category table decides: toy "weave" is a texture, "washer" an object.
    assert category_foreground(x, "toy", "weave").all()
    assert not category_foreground(x, "toy", "washer").all()


def test_foreground_single_image_forms():
    x, disk = disk_scene(1)
    t = foreground_mask(x[0], texture=False)
    a = foreground_mask((x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), texture=False)
    assert t.shape == (SIZE, SIZE) and isinstance(a, np.ndarray) and a.shape == (SIZE, SIZE)
    assert (torch.from_numpy(a) == t).float().mean() > 0.99


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_same_seed_same_output_different_seed_different_output(kind):
    x = textured(3)
    a = synthesize_batch(x, 7, kinds=kind)
    b = synthesize_batch(x, torch.Generator().manual_seed(7), kinds=kind)
    c = synthesize_batch(x, 8, kinds=kind)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_numpy_generator_is_deterministic_too():
    img = (textured(1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    a = synthesize(img, "noise", np.random.default_rng(3))
    b = synthesize(img, "noise", np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _check_single(out, mask, image):
    assert type(out) is type(image) and out.shape == image.shape and out.dtype == image.dtype
    assert mask.shape == image.shape[:2] if isinstance(image, np.ndarray) else True
    if isinstance(image, np.ndarray):
        differs = out != image
        differs = differs.any(-1) if image.ndim == 3 else differs
        assert mask.dtype == bool and np.array_equal(differs, mask) and mask.any()
    else:
        differs = (out != image).reshape(-1, *image.shape[-2:]).any(0)
        assert mask.dtype == torch.bool and torch.equal(differs, mask) and mask.any()


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("shape", [(37, 53), (101, 67)])  # non-square, odd
def test_single_image_forms(kind, shape):
    h, w = shape
    rgb = textured(1, 3, h, w, seed=4)[0]
    gray_u8 = (rgb[0].numpy() * 255).astype(np.uint8)  # H x W grayscale
    rgb_f32 = rgb.permute(1, 2, 0).numpy().astype(np.float32)  # H x W x 3 float
    for image in (gray_u8, gray_u8[..., None], rgb_f32, rgb_f32.astype(np.float64), rgb, (rgb * 255).to(torch.uint8)):
        out, mask = synthesize(image, kind, 11)
        _check_single(out, mask, image)


def test_grayscale_origin_stays_gray():
    # A grayscale image stored as RGB (magnetic_tile) must not get coloured noise.
    g = textured(2, 1)
    x = g.expand(-1, 3, -1, -1).contiguous()
    for kind in ("noise", "combined", "crack"):
        out, _ = synthesize_batch(x, 1, DASConfig(noise=NoiseConfig(color_prob=1.0)), kinds=kind)
        assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_low_precision_and_uint8_batches():
    x = textured(2)
    for images in (x.half(), x.double(), (x * 255).round().to(torch.uint8)):
        out, mask = synthesize_batch(images, 2, kinds="combined")
        assert out.dtype == images.dtype
        assert torch.equal((out != images).any(1, keepdim=True), mask > 0.5)


def test_flat_image_still_gets_an_exact_nonempty_mask():
    # Blurring or cut-pasting a constant image changes nothing: redraws, then the fallback.
    x = torch.full((2, 3, 48, 48), 0.5)
    for kind in ("blurry", "misplaced"):
        out, mask = synthesize_batch(x, 0, kinds=kind)
        assert (mask.flatten(1).sum(1) > 0).all()
        assert torch.equal((out != x).any(1, keepdim=True), mask > 0.5)


def test_misplaced_pastes_pixels_cut_from_the_same_image():
    # Each pixel encodes its own coordinates; an unrotated, unmirrored single patch must
    # show one constant displacement: a copy of another part of the image.
    h = w = 64
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x = torch.stack((yy / 255.0, xx / 255.0, torch.full((h, w), 0.5)))[None].repeat(3, 1, 1, 1)
    cfg = DASConfig(misplaced=MisplacedConfig(patches=(1, 1), max_rotation_deg=0.0, flip_prob=0.0))
    out, mask = synthesize_batch(x, 5, cfg, kinds="misplaced")
    for i in range(3):
        m = mask[i, 0].bool()
        dy = (out[i, 0][m] * 255).round() - yy[m]
        dx = (out[i, 1][m] * 255).round() - xx[m]
        assert m.any() and dy.unique().numel() == 1 and dx.unique().numel() == 1
        assert (dy.abs() + dx.abs() > 0).all()


def test_blurry_smooths_inside_the_mask():
    x = textured(4, seed=3) + 0.0
    x = (x + 0.3 * (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) - 0.5)).clamp(0, 1)
    out, mask = synthesize_batch(x, 0, kinds="blurry")
    m = mask.bool().expand_as(x)[:, :, :, 1:] & mask.bool().expand_as(x)[:, :, :, :-1]
    tv_in = (x[..., 1:] - x[..., :-1]).abs()[m].mean()
    tv_out = (out[..., 1:] - out[..., :-1]).abs()[m].mean()
    assert tv_out < 0.7 * tv_in


def test_positive_noise_only_brightens():
    cfg = DASConfig(noise=NoiseConfig(kinds=("positive",)))
    x = textured(3)
    out, mask = synthesize_batch(x, 0, cfg, kinds="noise")
    assert (out >= x).all() and (out[mask.bool().expand_as(x)] > x[mask.bool().expand_as(x)]).any()


def test_crack_is_thin_elongated_and_textured():
    h = w = 240
    x = textured(4, 3, h, w, seed=6)
    cfg = DASConfig(crack=CrackConfig(cracks=(1, 1), max_branches=0))
    out, mask = synthesize_batch(x, 0, cfg, kinds="crack")
    for i in range(4):
        m = mask[i, 0]
        # Thin: the widest point is 3 px at 240 px, so a 5x5 erosion leaves (almost) nothing.
        eroded = -F.max_pool2d(-m[None, None], 5, stride=1, padding=2)
        assert eroded.sum() <= 0.02 * m.sum()
        # Elongated: far longer than wide.
        ys, xs = torch.nonzero(m, as_tuple=True)
        extent = torch.hypot((ys.max() - ys.min()).float(), (xs.max() - xs.min()).float())
        assert extent > 4 * m.sum().sqrt()
        # Filled with texture, not a flat colour: inside, values vary about as much as the
        # image under the crack does (scaled by the darkening factor 1 - contrast >= 0.25).
        inside, under = out[i, :, m.bool()], x[i, :, m.bool()]
        assert (inside.std(1) > 0.2 * under.std(1)).all()
        assert (inside.mean(1) < under.mean(1)).all()  # darker: a light surface gets dark cracks


def test_crack_branches_add_pixels():
    x = textured(4, 3, 160, 160, seed=2)
    plain = DASConfig(crack=CrackConfig(cracks=(1, 1), max_branches=0))
    branchy = DASConfig(crack=CrackConfig(cracks=(1, 1), max_branches=2, branch_prob=1.0))
    a = synthesize_batch(x, 0, plain, kinds="crack")[1].sum()
    b = synthesize_batch(x, 0, branchy, kinds="crack")[1].sum()
    assert b > a


def test_selector_is_uniform_over_enabled_types_and_restrictable():
    sel = AnomalyTypeSelector.from_config(DASConfig())
    assert sel.types == ALL_KINDS  # the four types and combined
    draws = sel.sample(5000, torch.Generator().manual_seed(0))
    freq = np.array([draws.count(k) for k in ALL_KINDS]) / len(draws)
    assert np.abs(freq - 0.2).max() < 0.03
    assert set(sel.restrict("crack").sample(50, torch.Generator().manual_seed(1))) == {"crack"}
    only = DASConfig().only("fuzzy")  # Table III's name for blurry
    assert only.types == ("blurry",)
    _, mask = synthesize_batch(textured(3), 0, only)
    assert (mask.flatten(1).sum(1) > 0).all()


def test_batch_types_follow_the_config_selector():
    # Restricted to noise, a batch drawn without explicit kinds must hold noise anomalies only:
    # positive noise + kinds None -> every changed pixel got brighter.
    cfg = DASConfig(types=("noise",), noise=NoiseConfig(kinds=("positive",)))
    x = textured(4)
    out, mask = synthesize_batch(x, 0, cfg)
    assert (out >= x).all() and (mask.flatten(1).sum(1) > 0).all()


def test_clear_errors():
    x = textured(1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        synthesize_batch(x * 255, 0)
    with pytest.raises(ValueError, match="misplaced, blurry"):
        synthesize_batch(x, 0, kinds="scratch")
    with pytest.raises(ValueError, match="foreground"):
        synthesize_batch(x, 0, foreground=torch.ones(1, 1, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="B x C x H x W"):
        synthesize_batch(x[0], 0)
    with pytest.raises(ValueError, match="CrackConfig.width"):
        CrackConfig(width=(3.0, 1.0))
    with pytest.raises(ValueError, match="DASConfig.types"):
        DASConfig(types=())
    with pytest.raises(ValueError, match="uint8 or float"):
        synthesize(np.zeros((8, 8), dtype=np.int32), "noise", 0)


def test_cpu_threads_are_restored():
    torch.set_num_threads(2)
    try:
        synthesize_batch(textured(1), 0, DASConfig(cpu_threads=1), kinds="noise")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_base_kinds_split_structural_textural():
    assert set(das.STRUCTURAL_KINDS) | set(das.TEXTURAL_KINDS) == set(BASE_KINDS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_cuda_batch(kind):
    x, _ = disk_scene(4)
    x = x.cuda()
    fg = foreground_mask(x, texture=False)
    a = synthesize_batch(x, torch.Generator("cuda").manual_seed(0), foreground=fg, kinds=kind)
    b = synthesize_batch(x, torch.Generator("cuda").manual_seed(0), foreground=fg, kinds=kind)
    assert a[0].is_cuda and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal((a[0] != x).any(1, keepdim=True), a[1] > 0.5)
    assert not (a[1].bool() & ~fg).any() and (a[1].flatten(1).sum(1) > 0).all()
