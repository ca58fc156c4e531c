"""Numerical cross-check of our WinCLIP / WinCLIP+ against anomalib 2.7.0's ``WinClipModel``.

A benchmark, not a test (it needs the peer environment, ``bash bench/peer/setup.sh``)::

    OMP_NUM_THREADS=1 bench/.venv-peer/bin/python bench/bench_peer_winclip_parity.py \
        --n-toy 3 --n-random 1 --k 2 --out runs/bench/peer_winclip_parity.json

**Same weights, same images.** One ViT-B-16-plus-240 with open_clip's random init (seeded,
:func:`vtfusion.backbone.build_backbone` with ``weights="random"``) is our
:class:`~vtfusion.backbone.FrozenCLIP`; its ``state_dict`` is loaded (strictly) into the
CLIP that anomalib builds (``torch_model.PRETRAINED = None``: no download). anomalib's
window path runs through the sequence-first adapter of ``bench/bench_peer_winclip.py``
(open_clip 3.3.0's transformer is batch-first, anomalib 2.7.0 permutes to sequence-first,
cf. anomalib issue #2571); the as-shipped window embeddings of the first test image are
reported beside, to show what the adapter changes. Test images: ``--n-toy`` images of the toy ``washer`` test
split, ``--n-random`` seeded uniform-noise images, and the first reference image itself
(a zero-distance edge case for the few-shot scores); ``--k`` references from the toy
``washer`` train split (its committed shot list). anomalib's inputs are its own
pre-processing (``WinClip.configure_pre_processor()``: bicubic resize to 240, CLIP
normalisation) of the same ``[0, 1]`` tensors our backbone normalises itself; the two
normalised tensors are compared first.

**Same method.** Our side runs with ``WinCLIPConfig.anomalib_compatible()`` (WinCLIP's
prompt ensemble as anomalib ships it, raw prompt averaging, temperature 0.07, harmonic
cross-scale mean of the zero-shot maps, last-block patch tokens after ``ln_post``); our
defaults differ in exactly those options (listed in the JSON under ``design_differences``).

**Components, in order** (each: max abs difference, max abs difference over the largest
peer magnitude, over the peer's spread (max - min), Pearson and Spearman correlation):
normalised input; image embeddings; window embeddings per scale (adapter, and as
shipped); patch tokens of the few-shot memory; class text embeddings; zero-shot window
scores per scale; zero-shot map (patch grid) and image score; few-shot map (patch grid);
and the end outputs of both modes (``B x 240 x 240`` maps, image scores): anomalib's
``forward`` against our ``winclip`` / ``winclip_plus`` ``predict``.

**Tolerance** (fixed here before the run): embeddings agree when
``max|ours - peer| <= EMBEDDING_RTOL * max|peer|``; scores and maps (values in [0, 1])
when ``max|ours - peer| <= SCORE_ATOL``. Random weights: the maps mean nothing for
detection, they must only agree numerically.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench_peer_winclip import IMAGE_SIZE, digest, encode_windows_sequence_first, versions

EMBEDDING_RTOL = 1e-4  # float32 through 12 blocks, different gather order and batching
SCORE_ATOL = 1e-5  # scores and maps are probabilities / halved cosine distances in [0, 1]
CATEGORY = "washer"
WEIGHTS_NOTE = ("random weights, identical on both sides (ViT-B-16-plus-240, open_clip random init, one "
                "state_dict): the maps mean nothing for detection, only their agreement does")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-toy", type=int, default=3, help="test images from the toy washer test split")
    p.add_argument("--n-random", type=int, default=1, help="seeded uniform-noise test images")
    p.add_argument("--k", type=int, default=2, help="reference images (toy washer train shot list)")
    p.add_argument("--seed", type=int, default=0, help="weights, noise images and shot list")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=Path("runs/bench/peer_winclip_parity.json"))
    args = p.parse_args(argv)
    for name in ("n_toy", "n_random"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.k < 1:
        p.error("--k must be >= 1 (the few-shot mode needs references)")
    return args


# ---------------------------------------------------------------------------------------
# Inputs and the two implementations
# ---------------------------------------------------------------------------------------

def make_inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """``(test, shots)`` in [0, 1]: toy test images, noise images, then the first shot itself."""
    from vtfusion.data import load_dataset

    data = load_dataset("toy", CATEGORY, "test", image_size=IMAGE_SIZE)
    toy = [data[i % len(data)]["image"].float() for i in range(args.n_toy)]
    noise = torch.rand(args.n_random, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(args.seed))
    shots = load_dataset("toy", CATEGORY, "train", image_size=IMAGE_SIZE).load_shots(args.k, args.seed).float()
    test = torch.cat([torch.stack(toy) if toy else noise[:0], noise, shots[:1]])
    return test.contiguous(), shots.contiguous()


def build_ours(seed: int) -> tuple[Any, Any, Any]:
    """``(backbone, winclip, winclip_plus)``: our random ViT-B-16-plus-240 (blocks 3/6/9/12, fp32)
    and our two methods on it with :meth:`WinCLIPConfig.anomalib_compatible` options."""
    import dataclasses

    from vtfusion.backbone import build_backbone
    from vtfusion.config import get_profile
    from vtfusion.methods import create_method
    from vtfusion.methods.winclip import WinCLIPConfig

    base = get_profile("paper")
    cfg = base.replace(backbone=dataclasses.replace(base.backbone, weights="random", precision="fp32"))
    if cfg.backbone.arch != "ViT-B-16-plus-240" or cfg.backbone.layers[-1] != 12:
        raise RuntimeError(f"the parity check needs ViT-B-16-plus-240 with block 12 last, got {cfg.backbone}")
    backbone = build_backbone(cfg.backbone, seed=seed).eval()
    options = WinCLIPConfig.anomalib_compatible()
    zero = create_method("winclip", cfg, backbone=backbone, options=options)
    few = create_method("winclip_plus", cfg, backbone=backbone, options=options)
    return backbone, zero, few


def build_peer(backbone: torch.nn.Module) -> Any:
    """anomalib's ``WinClipModel`` holding our backbone's CLIP weights, windows sequence-first."""
    from anomalib.models.image.winclip import torch_model

    if torch_model.BACKBONE != "ViT-B-16-plus-240":
        raise RuntimeError(f"anomalib's WinCLIP backbone is {torch_model.BACKBONE!r}, not ViT-B-16-plus-240")
    torch_model.PRETRAINED = None  # random init by open_clip, overwritten below: no download
    model = torch_model.WinClipModel(apply_transform=False).eval()
    model.clip.load_state_dict(backbone.clip.state_dict(), strict=True)
    ours, theirs = backbone.clip.state_dict(), model.clip.state_dict()
    if not all(torch.equal(ours[name], theirs[name]) for name in ours):
        raise RuntimeError("anomalib's CLIP does not hold our weights after load_state_dict")
    encode_windows_sequence_first(model)
    return model


# ---------------------------------------------------------------------------------------
# Comparing one component
# ---------------------------------------------------------------------------------------

_START = time.perf_counter()


def progress(stage: str) -> None:
    print(f"[{time.perf_counter() - _START:6.0f} s] {stage}", flush=True)


def compare(name: str, ours: torch.Tensor, peer: torch.Tensor, kind: str, judged: bool = True,
            note: str = "") -> dict[str, Any]:
    """Differences and correlations of one component; ``kind``: ``embedding`` or ``score``;
    ``judged``: whether the tolerance verdict counts it (``note`` says why not)."""
    from scipy.stats import spearmanr

    if ours.shape != peer.shape:
        raise RuntimeError(f"{name}: shapes differ, ours {tuple(ours.shape)} vs anomalib {tuple(peer.shape)}")
    a, b = ours.detach().double().flatten(), peer.detach().double().flatten()
    diff = (a - b).abs()
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
        raise RuntimeError(f"{name}: non-finite values differ between the two sides")
    a, b, diff = a[finite], b[finite], diff[finite]
    max_abs, peer_max, spread = float(diff.max()), float(b.abs().max()), float(b.max() - b.min())
    pearson = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if spread > 0 and float(a.std()) > 0 else None
    spearman = float(spearmanr(a.numpy(), b.numpy()).statistic) if pearson is not None else None
    bound = EMBEDDING_RTOL * peer_max if kind == "embedding" else SCORE_ATOL
    row = {"component": name, "kind": kind, "shape": list(ours.shape), "max_abs_diff": max_abs,
           "mean_abs_diff": float(diff.mean()), "peer_max_abs": peer_max, "peer_spread": spread,
           "max_abs_diff_over_peer_max": max_abs / peer_max if peer_max > 0 else None,
           "max_abs_diff_over_spread": max_abs / spread if spread > 0 else None,
           "pearson": pearson, "spearman": spearman, "bound": bound, "within_tolerance": max_abs <= bound,
           "judged": judged}
    if note:
        row["note"] = note
    if kind == "embedding" and ours.ndim >= 2:
        row["min_cosine"] = float(F.cosine_similarity(ours.double(), peer.double(), dim=-1).min())
    return row


def fmt(row: dict[str, Any]) -> str:
    def g(v: Any) -> str:
        return "-" if v is None else f"{v:.3g}"
    return (f"{row['component']:<48} {g(row['max_abs_diff']):>9} {g(row['max_abs_diff_over_peer_max']):>9} "
            f"{g(row['max_abs_diff_over_spread']):>9} {g(row['pearson']):>9} {g(row['spearman']):>9} "
            f"{'ok' if row['within_tolerance'] else 'FAIL':>5}")


# ---------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------

@torch.no_grad()
def run_parity(args: argparse.Namespace) -> dict[str, Any]:
    """Every component on both sides; returns the rows and the facts of the run."""
    from anomalib.models.image import WinClip
    from anomalib.models.image.winclip.utils import class_scores

    from vtfusion.methods import Shots
    from vtfusion.prompts import object_name_for

    test, shots = make_inputs(args)
    object_name = object_name_for("toy", CATEGORY)
    backbone, zero, few = build_ours(args.seed)
    peer = build_peer(backbone)
    progress('both models built, one state_dict')
    pre = WinClip.configure_pre_processor().transform  # Resize(240, bicubic) + CLIP Normalize
    x_peer, shots_peer = pre(test), pre(shots)
    rows = [compare("input (normalised)", backbone._normalise(test), x_peer, "embedding")]  # noqa: SLF001

    # 1. image, window and patch embeddings (anomalib's encode_image: one pass, hook, windows)
    img_p, win_p, patch_p = peer.encode_image(x_peer)
    emb = few._embed(test)  # noqa: SLF001  [windows per scale ..., patch tokens]
    rows.append(compare("image embedding", backbone.encode_image(test), img_p, "embedding"))
    scales = few.options.scales
    windows = emb[:len(scales)]
    for s, ours_w, peer_w in zip(scales, windows, win_p, strict=True):
        rows.append(compare(f"window embeddings {s}x{s}", ours_w, peer_w, "embedding"))
    del peer._get_window_embeddings  # noqa: SLF001  the adapter is an instance attribute
    progress("windows through the adapter compared; now as shipped (first image)")
    _, win_shipped, _ = peer.encode_image(x_peer[:1])
    encode_windows_sequence_first(peer)
    for s, ours_w, peer_w in zip(scales, windows, win_shipped, strict=True):
        row = compare(f"window embeddings {s}x{s} (as shipped)", ours_w[:1], peer_w, "embedding", judged=False,
                      note="anomalib without the adapter: open_clip 3.3.0 attends across windows (#2571)")
        row["peer_window_std"] = float(peer_w.std(1).mean())  # across windows: ~0 when all are alike
        rows.append(row)
    rows.append(compare("patch tokens (memory level)", emb[-1], patch_p, "embedding"))
    progress('embeddings compared')

    # 2. text embeddings (anomalib keeps the raw means; both compared normalised)
    peer.setup(object_name)
    zero.fit(Shots(shots[:0], "toy", CATEGORY))
    rows.append(compare("text embeddings (normal, abnormal)", zero.text, F.normalize(peer.text_embeddings, dim=-1),
                        "embedding"))

    # 3. zero-shot: window scores per scale, grid map, image score, end outputs
    for s, ours_w, peer_w in zip(scales, windows, win_p, strict=True):
        rows.append(compare(f"zero-shot window scores {s}x{s}", zero.text_score(ours_w),
                            class_scores(peer_w, peer.text_embeddings, peer.temperature, target_class=1), "score"))
    image_p = class_scores(img_p, peer.text_embeddings, peer.temperature, target_class=1)
    zmap, image = zero.zero_shot(test, windows)
    zmap_p = peer._compute_zero_shot_scores(image_p, win_p)  # noqa: SLF001
    rows.append(compare("zero-shot map (15x15 grid)", zmap, zmap_p, "score"))
    rows.append(compare("zero-shot image score", image, image_p, "score"))
    out_p, pred = peer(x_peer), zero.predict(test)
    rows.append(compare("zero-shot output map (240x240)", pred.maps, out_p.anomaly_map, "score"))
    rows.append(compare("zero-shot output score", pred.scores, out_p.pred_score, "score"))
    progress("zero-shot compared")

    # 4. few-shot (WinCLIP+): memory of the k references, grid map, end outputs
    peer.setup(reference_images=shots_peer)
    few.fit(Shots(shots, "toy", CATEGORY))
    # The last test image is reference 0 itself: its windows' distances to the memory are 0
    # up to float rounding, where the two harmonic means part (reported apart, not judged).
    dup = test.shape[0] - 1
    fmap, fmap_p = few.few_shot(emb), peer._compute_few_shot_scores(patch_p, win_p)  # noqa: SLF001
    out_p, pred = peer(x_peer), few.predict(test)
    pairs = [("few-shot map (15x15 grid)", fmap, fmap_p), ("few-shot output map (240x240)", pred.maps,
             out_p.anomaly_map), ("few-shot output score", pred.scores, out_p.pred_score)]
    for name, ours_t, peer_t in pairs:
        rows.append(compare(name + ", other images", ours_t[:dup], peer_t[:dup], "score"))
    for name, ours_t, peer_t in pairs:
        rows.append(compare(name + ", reference as test", ours_t[dup:], peer_t[dup:], "score", judged=False,
                            note="zero distances: see duplicate_reference"))
    facts_dup = duplicate_reference(few, peer, emb, win_p, patch_p, dup, fmap, fmap_p)
    facts = {"object_name": object_name, "n_test": int(test.shape[0]), "k": int(shots.shape[0]),
             "test_images": f"{args.n_toy} toy {CATEGORY} test, {args.n_random} uniform noise (seed {args.seed}), "
                            "reference image 0 itself",
             "input_digest": digest(test, shots), "options_ours": few.config()["options"],
             "duplicate_reference": facts_dup,
             "backbone_source": backbone.source}
    return {"rows": rows, "facts": facts}


def duplicate_reference(few: Any, peer: Any, emb: list[torch.Tensor], win_p: list[torch.Tensor],
                        patch_p: torch.Tensor, dup: int, fmap: torch.Tensor, fmap_p: torch.Tensor) -> dict[str, Any]:
    """What each side computes for the test image that is reference 0: the few-shot distances
    (``min_r (1 - cos) / 2``, per window and patch) and the few-shot map's range."""
    from anomalib.models.image.winclip.utils import visual_association_score

    refs = list(peer.visual_embeddings) + [peer.patch_embeddings]
    peer_d = torch.cat([visual_association_score(e[dup:dup + 1], r).flatten()
                        for e, r in zip(list(win_p) + [patch_p], refs, strict=True)])
    ours_d = torch.cat([((1 - F.normalize(e[dup:dup + 1], dim=-1) @ m.T) / 2).amin(-1).flatten()
                        for e, m in zip(emb, few.memory, strict=True)])
    return {"distances": int(peer_d.numel()),
            "peer_negative": int((peer_d < 0).sum()), "peer_zero": int((peer_d == 0).sum()),
            "peer_min": float(peer_d.min()), "peer_max": float(peer_d.max()),
            "ours_negative": int((ours_d < 0).sum()), "ours_min": float(ours_d.min()),
            "ours_max": float(ours_d.max()),
            "peer_map_range": [float(fmap_p[dup].min()), float(fmap_p[dup].max())],
            "ours_map_range": [float(fmap[dup].min()), float(fmap[dup].max())]}


def design_differences() -> list[dict[str, str]]:
    """Where our defaults differ from anomalib 2.7.0 (all matched by ``anomalib_compatible``)."""
    return [
        {"option": "prompts", "ours": "ensemble (April-GAN's 8 + 5 states x 35 templates)",
         "anomalib": "winclip (7 + 4 states x 21 templates, one template listed twice)"},
        {"option": "prompt_average", "ours": "normalised (normalise each, mean, renormalise)",
         "anomalib": "raw (mean of raw embeddings, normalised in the cosine)"},
        {"option": "temperature", "ours": "100 (CLIP's trained logit scale)", "anomalib": "1 / 0.07 = 14.29"},
        {"option": "scale_average", "ours": "arithmetic mean of small, mid, image maps",
         "anomalib": "harmonic mean of image, small, mid maps"},
        {"option": "patch_level / patch_ln_post", "ours": "penultimate configured level (block 9), before ln_post",
         "anomalib": "block 12 (the last), after ln_post"},
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # timm/anomalib deprecation notices
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = run_parity(args)
    rows = [r for r in result["rows"] if r["judged"]]
    holds = all(r["within_tolerance"] for r in rows)
    print(f"{'component':<48} {'max|d|':>9} {'/peermax':>9} {'/spread':>9} {'pearson':>9} {'spearman':>9} {'tol':>5}")
    for row in result["rows"]:
        print(fmt(row) + ("" if row["judged"] else "  (not judged)"))
    print(f"reference as test image: {result['facts']['duplicate_reference']}")
    verdict = "holds" if holds else "DOES NOT HOLD"
    print(f"tolerance (embeddings max|d| <= {EMBEDDING_RTOL:g} x max|peer|; scores and maps max|d| <= "
          f"{SCORE_ATOL:g}): {verdict}; {WEIGHTS_NOTE}")
    payload = {
        "benchmark": "peer_winclip_parity", "weights": WEIGHTS_NOTE, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "versions": versions(),
        "threads": args.threads, "argv": sys.argv,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tolerance": {"embedding_rtol": EMBEDDING_RTOL, "score_atol": SCORE_ATOL,
                      "rule": "embeddings: max|ours - peer| <= embedding_rtol * max|peer|; scores and maps: "
                              "max|ours - peer| <= score_atol; rows with judged=false are not counted "
                              "(see their note)"},
        "tolerance_holds": holds, **result["facts"], "components": result["rows"],
        "design_differences": design_differences(), "wall_seconds": time.perf_counter() - start,
    }
    from vtfusion.io import atomic_write_json

    atomic_write_json(args.out, payload)
    print(f"wrote {args.out}")
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
