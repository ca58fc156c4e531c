"""Inference speed of VTFusion beside anomalib's WinCLIP (few-shot), on the same images.

A benchmark, not a test. Run it with the peer environment (``bash bench/peer/setup.sh``)::

    bench/.venv-peer/bin/python bench/bench_peer_winclip.py --device cpu --n-images 32 --batch 8 --k 2 \
        --out runs/bench/peer_winclip.json
    bench/.venv-peer/bin/python bench/bench_peer_winclip.py --device cuda --n-images 256 --batch 32

What is compared (one row per method, each run in its own child process so that its peak
host memory is its own):

``vtfusion``
    this package: the ``paper`` profile's architecture (OpenCLIP ViT-B-16-plus-240, blocks
    3/6/9/12, ``full`` variant) built with ``build_backbone``/``build_model``; prototypes from
    the backbone tokens of the k reference images (``model.build_prototypes``); inference
    is ``model(images)`` (backbone, AIE, prototypes, ATE, MPF -> ``final`` map and ``score``).
    Untrained: training changes the weights of the heads, not the cost of a forward.
``winclip``
    ``anomalib.models.image.winclip.torch_model.WinClipModel`` (anomalib 2.7.0), few-shot
    (WinCLIP+): ``setup(class_name, reference_images)`` with the same k images, then its
    forward; input normalisation by anomalib's own ``WinClip.configure_pre_processor()``
    (bicubic resize to 240 + CLIP normalisation), as in anomalib's test loop. Run with a
    *sequence-first adapter* (see below) so the windows are encoded as WinCLIP intends.
``winclip_as_shipped``
    the same model without the adapter: exactly what anomalib 2.7.0 computes when
    open_clip is 3.3.0 (opt-in via ``--methods``).

Whether the two compute the same maps (same weights, same images, component by component)
is checked apart, by ``bench/bench_peer_winclip_parity.py``, which reuses the adapter below.

**Weights are random on both sides.** Pretrained CLIP weights cannot be downloaded here,
and speed does not depend on them. anomalib builds its CLIP with
``open_clip.create_model_and_transforms(BACKBONE, pretrained=PRETRAINED)`` where
``PRETRAINED`` is a module-level constant of ``torch_model`` (``"laion400m_e31"``); this
script alone sets it to ``None`` before building, so open_clip returns ViT-B-16-plus-240
with its random init. Maps and scores from either side mean nothing; only times,
shapes and memory are reported.

**anomalib 2.7.0 with open_clip 3.3.0.** anomalib's ``clip`` extra pins
``open-clip-torch<2.26.1``; vtfusion pins 3.3.0, so the peer venv installs anomalib
without that extra. Since open_clip 2.26.1 the ViT's ``Transformer`` is batch-first
(``N x L x D``), but ``WinClipModel._get_window_embeddings`` still permutes the window
tokens to sequence-first (``L x N x D``) before calling it. With open_clip 3.3.0 each
block then attends across windows instead of within a window, and every window
embedding comes out identical (cf. anomalib issue #2571). The ``winclip`` row therefore
wraps the vision transformer, only while anomalib computes window embeddings, in
:class:`SequenceFirst`, which transposes to batch-first and back: the semantics of
open_clip < 2.26.1, for which the code was written. anomalib's code itself is unchanged.

Timing: inputs are one fixed set of ``B x 3 x 240 x 240`` tensors in [0, 1] on the host
(``--images random``: seeded uniform noise; ``--images toy``: the toy ``washer`` test split,
cycled when ``--n-images`` exceeds it). One pass over the images is: per batch, copy to the
device, the method's own normalisation, forward, synchronise. Each method warms up on one
batch, then ``--repeats`` rounds each time one pass of every method in turn (interleaved,
so that a change in the load of a shared machine falls on all methods alike); the median
pass is reported, with images/s and the ratio ours/peer of the median seconds (< 1:
VTFusion is faster). Model build and the once-per-category setup (reference images,
prompt ensemble) are reported apart, as are peak host memory (``ru_maxrss`` of the
method's process) and, on CUDA, peak allocated GPU memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
from torch import nn

METHODS = ("vtfusion", "winclip", "winclip_as_shipped")
PEERS = ("winclip", "winclip_as_shipped")
IMAGE_SIZE = 240  # ViT-B-16-plus-240, both sides
WEIGHTS_NOTE = ("random weights on both sides (ViT-B-16-plus-240, open_clip random init): "
                "speed, shapes and memory only; the maps mean nothing")
DESCRIPTIONS = {
    "vtfusion": "VTFusion paper architecture, full variant, untrained heads",
    "winclip": "anomalib 2.7.0 WinClipModel few-shot, sequence-first window adapter",
    "winclip_as_shipped": "anomalib 2.7.0 WinClipModel few-shot, as shipped (open_clip 3.3.0 layout bug)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--methods", nargs="+", default=["vtfusion", "winclip"], choices=METHODS)
    p.add_argument("--n-images", type=int, default=32, help="test images per timed pass")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--k", type=int, default=2, help="reference (normal) images, both methods")
    p.add_argument("--images", default="random", choices=("random", "toy"),
                   help="random: seeded uniform noise; toy: the toy washer test split")
    p.add_argument("--object-name", default="metal washer", help="prompt word, both methods")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; a round times one pass over all images per method")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-isolate", action="store_true",
                   help="run every method in this process (peak host memory is then cumulative)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/peer_winclip.json"))
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False here; use --device cpu")
    for name in ("n_images", "batch", "k", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# ---------------------------------------------------------------------------------------
# Inputs (identical for every method: regenerated from the seed in each worker, checked by digest)
# ---------------------------------------------------------------------------------------

def make_inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """``(test, shots)``: ``n x 3 x 240 x 240`` and ``k x 3 x 240 x 240`` float32 in [0, 1], on the host."""
    if args.images == "random":
        gen = torch.Generator().manual_seed(args.seed)
        test = torch.rand(args.n_images, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
        shots = torch.rand(args.k, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
        return test, shots
    from vtfusion.data import load_dataset

    data = load_dataset("toy", "washer", "test", image_size=IMAGE_SIZE)
    test = torch.stack([data[i % len(data)]["image"] for i in range(args.n_images)])
    shots = load_dataset("toy", "washer", "train", image_size=IMAGE_SIZE).load_shots(args.k, args.seed)
    return test.float().contiguous(), shots.float().contiguous()


def digest(*tensors: torch.Tensor) -> str:
    """Short SHA-256 of the tensors' bytes: proves every worker saw the same inputs."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# The methods: each builder returns (setup, infer); infer maps a host batch to outputs
# ---------------------------------------------------------------------------------------

Infer = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def build_vtfusion(args: argparse.Namespace, device: torch.device) -> tuple[Callable[[torch.Tensor], None], Infer]:
    """VTFusion as in bench/bench_real_ad.py: paper profile, random backbone weights, fp32."""
    from vtfusion.backbone import build_backbone
    from vtfusion.config import get_profile
    from vtfusion.train import build_model

    base = get_profile("paper")
    # fp32 on every device: the paper profile's bf16 autocast would not be like for like
    # with WinCLIP, which anomalib runs in fp32.
    cfg = base.replace(backbone=dataclasses.replace(base.backbone, weights="random", precision="fp32"),
                       train=dataclasses.replace(base.train, seed=args.seed))
    backbone = build_backbone(cfg.backbone, seed=args.seed).to(device)
    model = build_model(cfg, object_name=args.object_name, backbone=backbone, device=device).eval()

    @torch.no_grad()
    def setup(shots: torch.Tensor) -> None:
        model.build_prototypes(backbone(shots.to(device)))
        model.text_features()  # the prompt ensemble through the text tower, cached by the ATE

    @torch.no_grad()
    def infer(images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(images.to(device))  # FrozenCLIP normalises inside its forward
        return {"final": out["final"], "score": out["score"]}

    return setup, infer


class SequenceFirst(nn.Module):
    """Presents a batch-first transformer (open_clip >= 2.26.1) as a sequence-first one.

    ``L x N x D`` -> ``inner(N x L x D)`` -> ``L x N x D``: the layout anomalib's WinCLIP
    window path passes and expects back (written for open_clip < 2.26.1).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


def encode_windows_sequence_first(model: nn.Module) -> None:
    """Make ``model._get_window_embeddings`` see a sequence-first vision transformer.

    The swap lasts only for each call of that method, so the full-image forward (which
    open_clip runs batch-first itself) is untouched.
    """
    get_windows = model._get_window_embeddings  # noqa: SLF001 (bound method of this instance)
    visual = model.clip.visual

    def windows(feature_map: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        batch_first = visual.transformer
        visual.transformer = SequenceFirst(batch_first)
        try:
            return get_windows(feature_map, masks)
        finally:
            visual.transformer = batch_first

    model._get_window_embeddings = windows  # noqa: SLF001


def build_winclip(args: argparse.Namespace, device: torch.device, sequence_first: bool
                  ) -> tuple[Callable[[torch.Tensor], None], Infer]:
    """anomalib's WinClipModel with random ViT-B-16-plus-240 weights, few-shot mode."""
    from anomalib.models.image import WinClip
    from anomalib.models.image.winclip import torch_model

    if torch_model.BACKBONE != "ViT-B-16-plus-240":
        raise RuntimeError(f"anomalib's WinCLIP backbone is {torch_model.BACKBONE!r}, not ViT-B-16-plus-240: "
                           f"the comparison assumes the same architecture on both sides")
    torch_model.PRETRAINED = None  # open_clip: random init, no download (module docstring)
    torch.manual_seed(args.seed)
    model = torch_model.WinClipModel(apply_transform=False).to(device).eval()
    if sequence_first:
        encode_windows_sequence_first(model)
    normalise = WinClip.configure_pre_processor().transform  # Resize(240, bicubic) + CLIP Normalize

    def setup(shots: torch.Tensor) -> None:
        model.setup(args.object_name, normalise(shots.to(device)))

    def infer(images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(normalise(images.to(device)))  # forward is @torch.no_grad in anomalib
        return {"anomaly_map": out.anomaly_map, "pred_score": out.pred_score}

    return setup, infer


# ---------------------------------------------------------------------------------------
# Measuring one method
# ---------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def stopwatch(device: torch.device) -> Iterator[list[float]]:
    """``with stopwatch(dev) as t: ...``; afterwards ``t[0]`` is the wall time in seconds."""
    _sync(device)
    box: list[float] = []
    start = time.perf_counter()
    yield box
    _sync(device)
    box.append(time.perf_counter() - start)


def peak_host_mib() -> float:
    """Peak resident set size of this process (``ru_maxrss``, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Method:
    """One method, built and set up, ready to time passes over the test images (in this process)."""

    def __init__(self, method: str, args: argparse.Namespace):
        torch.set_num_threads(args.threads)
        self.method = method
        self.device = device = torch.device(args.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        test, shots = make_inputs(args)
        self.batches = [test[i:i + args.batch] for i in range(0, len(test), args.batch)]
        with stopwatch(device) as t_build:
            if method == "vtfusion":
                setup, self.infer = build_vtfusion(args, device)
            else:
                setup, self.infer = build_winclip(args, device, sequence_first=(method == "winclip"))
        with stopwatch(device) as t_setup:
            setup(shots)
        with stopwatch(device) as t_warm:
            out = self.infer(self.batches[0])
        self.record: dict[str, Any] = {
            "method": method, "description": DESCRIPTIONS[method], "build_s": t_build[0], "setup_s": t_setup[0],
            "warmup_s": t_warm[0], "output_shapes": {k: list(v.shape) for k, v in out.items()},
            "input_digest": digest(test, shots)}

    def run_pass(self) -> float:
        """Seconds for one pass over all test images (copy, normalisation, forward, sync per batch)."""
        with stopwatch(self.device) as t:
            for b in self.batches:
                self.infer(b)
        return t[0]

    def memory(self) -> dict[str, float]:
        mem = {"peak_host_mib": peak_host_mib()}
        if self.device.type == "cuda":
            mem["peak_gpu_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return mem


def _worker(method: str, args: argparse.Namespace, conn: Connection) -> None:
    """Child process: build ``method``, send its record, then answer ``pass`` / ``done`` requests."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        m = Method(method, args)
        conn.send(("ready", m.record))
        while conn.recv() == "pass":
            conn.send(("pass", m.run_pass()))
        conn.send(("done", m.memory()))
    except BaseException as err:  # report, then let the parent raise
        conn.send(("error", f"{type(err).__name__}: {err}"))
        raise
    finally:
        conn.close()


class Isolated:
    """A :class:`Method` in a child process (spawn), so that its peak memory is its own."""

    def __init__(self, method: str, args: argparse.Namespace):
        ctx = mp.get_context("spawn")
        self.method = method
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(method, args, child), name=f"peer-{method}")
        self.proc.start()
        child.close()
        self.record = self._answer("ready")

    def _answer(self, expected: str) -> Any:
        try:
            kind, value = self.conn.recv()
        except EOFError:
            self.proc.join()
            kind, value = "error", f"worker exited with code {self.proc.exitcode}"
        if kind != expected:
            raise RuntimeError(f"{self.method} worker failed: {value}")
        return value

    def run_pass(self) -> float:
        self.conn.send("pass")
        return self._answer("pass")

    def memory(self) -> dict[str, float]:
        self.conn.send("done")
        mem = self._answer("done")
        self.proc.join()
        return mem


def measure_all(methods: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Build every method (one after the other), then time ``--repeats`` rounds of passes.

    Passes are interleaved (a round times each method once, in turn), so a change in the
    load of a shared machine falls on all methods alike.
    """
    runners: list[Method | Isolated] = []
    for method in methods:
        print(f"-- {method}: {DESCRIPTIONS[method]}", flush=True)
        runner = Method(method, args) if args.no_isolate else Isolated(method, args)
        r = runner.record
        print(f"   build {r['build_s']:.1f}s, setup {r['setup_s']:.1f}s, warm-up batch {r['warmup_s']:.2f}s, "
              f"outputs {r['output_shapes']}", flush=True)
        runners.append(runner)
    passes: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(args.repeats):
        for runner in runners:
            passes[runner.method].append(runner.run_pass())
        print(f"   round {i + 1}/{args.repeats}: " + ", ".join(f"{m} {p[-1]:.2f}s" for m, p in passes.items()),
              flush=True)
    results = []
    for runner in runners:
        median = statistics.median(passes[runner.method])
        results.append({**runner.record, "pass_s": passes[runner.method], "median_s": median,
                        "images_per_s": args.n_images / median, "ms_per_image": 1000 * median / args.n_images,
                        **runner.memory()})
    return results


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    import open_clip
    import torchvision

    import vtfusion

    try:
        import anomalib
        anomalib_version = anomalib.__version__
    except ImportError:
        anomalib_version = "not installed"
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "open_clip": open_clip.__version__, "anomalib": anomalib_version, "vtfusion": vtfusion.__version__}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def table(results: list[dict[str, Any]], has_gpu: bool) -> str:
    from vtfusion.viz import format_table

    cols = ["method", "build s", "setup s", "median s", "img/s", "ms/img", "host MiB"] + (["GPU MiB"] if has_gpu else [])
    rows = []
    for r in results:
        row = [r["method"], f"{r['build_s']:.1f}", f"{r['setup_s']:.1f}", f"{r['median_s']:.2f}",
               f"{r['images_per_s']:.2f}", f"{r['ms_per_image']:.0f}", f"{r['peak_host_mib']:.0f}"]
        if has_gpu:
            row.append(f"{r.get('peak_gpu_mib', float('nan')):.0f}")
        rows.append(row)
    return format_table(rows, cols)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # timm/anomalib deprecation notices
    start = time.perf_counter()
    methods = list(dict.fromkeys(args.methods))
    print(f"{len(methods)} methods, {args.n_images} {args.images} images {IMAGE_SIZE}x{IMAGE_SIZE}, batch "
          f"{args.batch}, k={args.k}, device {args.device}, {args.threads} threads; {WEIGHTS_NOTE}", flush=True)
    results = measure_all(methods, args)
    if len({r["input_digest"] for r in results}) != 1:
        raise RuntimeError("the methods saw different input tensors (digests differ): results are not comparable")

    by_name = {r["method"]: r for r in results}
    ratios = {}
    if "vtfusion" in by_name:
        for peer in (m for m in PEERS if m in by_name):
            ours, theirs = by_name["vtfusion"], by_name[peer]
            ratios[f"vtfusion/{peer}"] = {
                "time_ratio": ours["median_s"] / theirs["median_s"],
                "speedup": theirs["median_s"] / ours["median_s"],
                # the passes of one round ran back to back, under about the same load
                "per_round_time_ratios": [a / b for a, b in zip(ours["pass_s"], theirs["pass_s"])],
                "median_per_round_time_ratio": statistics.median(
                    a / b for a, b in zip(ours["pass_s"], theirs["pass_s"]))}

    env = versions()
    print(f"\n{device_name(args.device)} ({args.device}), torch {env['torch']}, anomalib {env['anomalib']}, "
          f"open_clip {env['open_clip']}, {args.threads} threads; median of {args.repeats} passes over "
          f"{args.n_images} images (batch {args.batch}, k={args.k}); {WEIGHTS_NOTE}")
    print(table(results, args.device == "cuda"))
    for name, r in ratios.items():
        print(f"ratio {name} (median seconds): {r['time_ratio']:.3f}  ->  VTFusion {r['speedup']:.1f}x the "
              f"throughput; median of per-round ratios {r['median_per_round_time_ratio']:.3f}")
    payload = {
        "benchmark": "peer_winclip", "weights": WEIGHTS_NOTE, "device": args.device,
        "device_name": device_name(args.device), "platform": platform.platform(), "versions": env,
        "threads": args.threads, "argv": sys.argv,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "isolated_processes": not args.no_isolate, "image_size": IMAGE_SIZE, "results": results,
        "ratios": ratios, "wall_seconds": time.perf_counter() - start,
        "notes": ["untrained VTFusion heads: training changes weights, not the cost of a forward",
                  "winclip: anomalib's window encoding run through a sequence-first adapter (open_clip >= 2.26.1 "
                  "is batch-first; anomalib 2.7.0 permutes to sequence-first); winclip_as_shipped: without it"],
    }
    from vtfusion.io import atomic_write_json  # tmp file beside the target, then os.replace

    atomic_write_json(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
