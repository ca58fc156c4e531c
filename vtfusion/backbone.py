"""The frozen CLIP backbone: multi-level patch tokens and the text tower (DESIGN §1).

:class:`FrozenCLIP` wraps an open_clip ``CLIP`` model. It is frozen (no parameter
requires grad), always in eval mode, and runs without autograd; it returns the
residual-stream patch tokens after the configured transformer blocks, and encodes
text prompts for the adaptive text encoder.

Architectures (``BackboneConfig.arch``):

``ViT-B-16-plus-240``
    the paper's backbone (any open_clip model name works): 240 px input, patch 16, so a
    15 x 15 grid of 896-wide tokens and a 640-wide joint embedding space.
``pocket``
    the pocket CLIP (:mod:`vtfusion.pocket`): a small open_clip ``CLIP`` pre-trained by
    this project on a generated, captioned world, with the same 15 x 15 grid. Weights
    ``pocket-v1``, ``pocket-v2`` (package data, SHA-256 checked) or ``random``; each
    release is read as :data:`vtfusion.pocket.model.READING` says. Opt-in: ``pocket-v1``
    did not learn "normal vs damaged"; ``pocket-v2``'s untrained text map finds the toy
    defects, but VTFusion trained on it stays behind VTFusion on ``tiny`` on the toy
    validation split, and both releases' tokens match patches worse than random ones
    (chapter 00b and the model cards give the numbers), so the quick profile keeps ``tiny``.
``tiny``
    a small open_clip ``CLIP`` (:data:`TINY_CLIP_CONFIG`) with the same input size and
    patch size, hence the same 15 x 15 grid, but width 128, 4 blocks and a 2-block
    text tower. Random init only: the quick profile's backbone and the unit tests'.

Weights (``BackboneConfig.weights``):

``random``
    the architecture with a seeded random init. Explicitly labelled: maps from it show
    the mechanics of the method, never the paper's quality.
an open_clip pretrained tag (``laion400m_e32``)
    looked up on disk first (:func:`vtfusion.weights.candidate_weight_paths`), else
    downloaded once into ``<cache>/weights/<arch>_<tag>.pt``.
a file path
    any checkpoint ``open_clip.load_checkpoint`` reads (``.pt``, ``.bin``, ``.safetensors``).

**The e31/e32 trap.** In open_clip 3.3.0 the pretrained config of
``("ViT-B-16-plus-240", "laion400m_e32")`` has ``url=.../vit_b_16_plus_240-laion400m_e32-699c4b84.pt``
but ``hf_hub="timm/vit_base_patch16_plus_clip_240.laion400m_e31/"``. open_clip prefers the
Hugging Face hub whenever ``huggingface_hub`` is installed (it is, here), so
``open_clip.create_model(..., pretrained="laion400m_e32")`` silently loads the epoch-31
weights. This module therefore never lets open_clip choose: when a tag's hub repository
does not name the tag (:func:`hub_matches_tag`), the hub cache is not trusted and the
weights come from the release URL, whose file name ends with the first 8 hex digits of
the file's SHA-256 (open_clip's own convention for ``mlfoundations`` URLs); the download
is verified against them.

Offline (``$VTFUSION_OFFLINE=1`` or ``$HF_HUB_OFFLINE=1``) no download is attempted and a
missing file raises :class:`WeightsNotFoundError` at once, listing every path searched and
how to provide the file. Downloads use a socket timeout, so an unreachable network also
fails within seconds instead of hanging.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import urllib.error
import urllib.request
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from safetensors.torch import load_file
from tqdm.auto import tqdm

from vtfusion import paths
from vtfusion.pocket.model import DESCRIPTION, RELEASES, build_pocket_clip, load_released, pocket_tokenizer
from vtfusion.weights import WEIGHTS_ENV, candidate_weight_paths

log = logging.getLogger(__name__)

TINY_ARCH = "tiny"
POCKET_ARCH = "pocket"
RANDOM_WEIGHTS = "random"
OFFLINE_ENVS = ("VTFUSION_OFFLINE", "HF_HUB_OFFLINE")
PRECISIONS = ("fp32", "bf16")
DOWNLOAD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class BackboneConfig:
    """The frozen CLIP backbone (DESIGN §1).

    Attributes:
        arch: open_clip model name, or ``tiny`` for the small random test model.
        weights: ``laion400m_e32`` (the paper's pretrained tag), a path to a local
            weights file, or ``random`` (same architecture, random init: speed and
            mechanics only, never quality).
        layers: 1-indexed transformer blocks whose output patch tokens are used
            **[choice]**: (3, 6, 9, 12) is the 12-block analogue of April-GAN's
            (6, 12, 18, 24) for ViT-L.
        precision: ``fp32`` (default, also in the paper profile: the paper states no
            reduced precision) or ``bf16`` (autocast, CUDA only): a speed switch whose map
            difference ``bench/bench_precision.py`` measures.
    """

    arch: str = "ViT-B-16-plus-240"
    weights: str = "laion400m_e32"
    layers: tuple[int, ...] = (3, 6, 9, 12)
    precision: str = "fp32"


#: The ``tiny`` architecture: open_clip ``CLIP`` keyword arguments. Same input size and
#: patch size as ViT-B-16-plus-240 (so the same 15 x 15 grid), everything else small.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 240, "patch_size": 16, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# OpenCLIP / OpenAI normalisation (the ViT-B-16-plus-240 preprocess config uses these).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained CLIP weights are neither on disk nor downloadable right now."""


# ---------------------------------------------------------------------------------------
# Weights: where they are, how they are fetched
# ---------------------------------------------------------------------------------------

def is_offline() -> bool:
    """True when ``$VTFUSION_OFFLINE`` or ``$HF_HUB_OFFLINE`` is set to a true value."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENVS)


def _normalise_name(s: str) -> str:
    return re.sub(r"[^0-9a-z]", "", s.lower())


def pretrained_cfg(arch: str, tag: str) -> dict[str, Any]:
    """open_clip's pretrained config for ``arch``/``tag`` (``{}`` when unknown)."""
    import open_clip  # local: open_clip is slow to import; only when a model is built

    return dict(open_clip.get_pretrained_cfg(arch, tag) or {})


def hub_matches_tag(cfg: dict[str, Any], tag: str) -> bool:
    """Whether the Hugging Face repository of a pretrained config names ``tag``.

    False for ``ViT-B-16-plus-240`` / ``laion400m_e32`` in open_clip 3.3.0, whose hub
    entry is the ``laion400m_e31`` repository (see the module docstring).
    """
    hub = cfg.get("hf_hub") or ""
    return bool(hub) and _normalise_name(tag) in _normalise_name(hub)


def expected_sha256_prefix(url: str) -> str:
    """The checksum prefix open_clip encodes in a release URL, or ``""`` when there is none.

    ``.../vit_b_16_plus_240-laion400m_e32-699c4b84.pt`` -> ``699c4b84`` (mlfoundations
    releases); OpenAI URLs carry the full SHA-256 as the parent folder name.
    """
    name = os.path.basename(url)
    if "openaipublic" in url:
        return url.split("/")[-2]
    if "mlfoundations" in url:
        last = os.path.splitext(name)[0].split("-")[-1]
        return last if re.fullmatch(r"[0-9a-f]{8,64}", last) else ""
    return ""


def trusted_weight_paths(arch: str, tag: str) -> list[Path]:
    """The local candidates of :func:`vtfusion.weights.candidate_weight_paths` that may hold ``tag``.

    Files in a Hugging Face cache folder whose repository does not name the tag are
    dropped: for ``laion400m_e32`` that folder holds the e31 weights.
    """
    return candidate_weight_paths(arch, tag)  # the hub-repository check lives in vtfusion.weights


def default_download_path(arch: str, tag: str) -> Path:
    """Where a downloaded checkpoint is stored: ``<cache>/weights/<arch>_<tag>.pt``.

    It is the first cache location :func:`vtfusion.weights.locate_pretrained_weights`
    looks at, so a download is found by every later run.
    """
    return paths.cache_dir() / "weights" / f"{arch}_{tag}.pt"


def download_weights(url: str, dest: Path, sha256_prefix: str = "",
                     timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``), verifying the SHA-256 prefix if given.

    Raises:
        OSError / urllib.error.URLError: network failures (after at most ``timeout``
            seconds without data).
        RuntimeError: the checksum does not match (the partial file is removed).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as src, open(part, "wb") as out:
            total = int(src.headers.get("Content-Length") or 0)
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
        part.unlink(missing_ok=True)
        raise RuntimeError(f"checksum mismatch for {url}: sha256 {digest.hexdigest()[:16]}..., "
                           f"expected prefix {sha256_prefix}; the download was discarded")
    part.replace(dest)
    return dest


def _missing_weights_message(arch: str, tag: str, searched: Sequence[Path], reason: str) -> str:
    cfg = pretrained_cfg(arch, tag)
    url = cfg.get("url") or ""
    lines = [f"pretrained weights for {arch} / {tag} are not available: {reason}.",
             "Looked for a local file at:"]
    lines += [f"  - {p}" for p in searched] or ["  (no candidate paths)"]
    lines.append("To provide the file, do one of:")
    lines.append(f"  * set ${WEIGHTS_ENV}=/path/to/checkpoint (.pt, .bin or .safetensors);")
    lines.append(f"  * copy it to {default_download_path(arch, tag)};")
    if url:
        lines.append(f"  * download {url} on a machine with internet access (sha256 starts with "
                     f"{expected_sha256_prefix(url) or '?'}) and copy it as above;")
    lines.append("  * or, where a network is reachable, unset $VTFUSION_OFFLINE / $HF_HUB_OFFLINE so "
                 "it is downloaded once.")
    lines.append("Without weights use BackboneConfig(weights='random') (mechanics only, not the paper's "
                 "quality) or the quick profile.")
    return "\n".join(lines)


def resolve_weights_file(arch: str, tag: str, allow_download: bool = True,
                         url: str | None = None) -> Path:
    """Local file holding the open_clip pretrained weights ``arch``/``tag``; download if needed.

    Args:
        arch: open_clip model name.
        tag: open_clip pretrained tag (e.g. ``laion400m_e32``).
        allow_download: when False, or when offline (:func:`is_offline`), only local
            files are considered.
        url: override of the release URL (tests point it at an unreachable address).

    Raises:
        WeightsNotFoundError: nothing on disk and no download possible; the message lists
            every path searched and how to provide the file.
    """
    searched = trusted_weight_paths(arch, tag)
    for p in searched:
        if p.is_file():
            return p
    cfg = pretrained_cfg(arch, tag)
    if not cfg:
        raise WeightsNotFoundError(
            f"{tag!r} is not an open_clip pretrained tag of {arch!r} and not an existing file; "
            f"valid tags: {', '.join(_tags_of(arch)) or 'none'}; or use weights='random' or a file path")
    if is_offline() or not allow_download:
        why = "offline ($VTFUSION_OFFLINE/$HF_HUB_OFFLINE set)" if is_offline() else "downloads disabled"
        raise WeightsNotFoundError(_missing_weights_message(arch, tag, searched, why))
    url = url or cfg.get("url") or ""
    try:
        if url:
            # The release URL is the artifact the tag names (and carries a checksum);
            # preferred over the hub, which may be a different epoch (module docstring).
            return download_weights(url, default_download_path(arch, tag), expected_sha256_prefix(url))
        import open_clip  # local: open_clip is slow to import; only when a model is built

        return Path(open_clip.download_pretrained(cfg, prefer_hf_hub=True))
    except (OSError, urllib.error.URLError, socket.timeout, RuntimeError) as err:
        raise WeightsNotFoundError(
            _missing_weights_message(arch, tag, searched, f"download failed ({err})")) from err


def _tags_of(arch: str) -> list[str]:
    import open_clip  # local: open_clip is slow to import; only when a model is built

    return list(open_clip.list_pretrained_tags_by_model(arch))


def build_clip(cfg: BackboneConfig, seed: int = 0, allow_download: bool = True) -> tuple[nn.Module, str]:
    """The open_clip ``CLIP`` model of a backbone config, and a one-line description of its weights.

    ``random`` weights are drawn from a generator seeded with ``seed`` (the global RNG is
    left untouched), so two random backbones with one seed are identical.
    """
    import open_clip  # local: open_clip is slow to import; only when a model is built

    if cfg.arch == POCKET_ARCH:
        return _build_pocket(cfg, seed)
    if cfg.arch != TINY_ARCH and cfg.arch not in open_clip.list_models():
        raise ValueError(f"unknown backbone arch {cfg.arch!r}: use 'pocket', 'tiny' or an open_clip model "
                         f"name such as 'ViT-B-16-plus-240' (open_clip.list_models())")
    # Find the weights before building anything, so a missing file fails fast.
    weights_path: Path | None = None
    if cfg.weights == RANDOM_WEIGHTS:
        source = f"{cfg.arch}, random init (seed {seed}): mechanics only, not the paper's quality"
    elif Path(cfg.weights).suffix in (".pt", ".pth", ".bin", ".safetensors") or Path(cfg.weights).expanduser().exists():
        weights_path = Path(cfg.weights).expanduser()
        if not weights_path.is_file():
            raise WeightsNotFoundError(f"BackboneConfig.weights={cfg.weights!r} looks like a file path but no "
                                       f"file exists there; give an existing checkpoint, an open_clip tag or "
                                       f"'random'")
        source = f"{cfg.arch}, weights from file {weights_path}"
    elif cfg.arch == TINY_ARCH:
        raise ValueError("the 'tiny' backbone has no pretrained weights: use weights='random' or a file path")
    else:
        weights_path = resolve_weights_file(cfg.arch, cfg.weights, allow_download=allow_download)
        source = f"{cfg.arch}, pretrained {cfg.weights} ({weights_path})"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.arch == TINY_ARCH:
            model = open_clip.CLIP(**TINY_CLIP_CONFIG)
        else:
            # pretrained=None: open_clip must not pick the weights (see the e31/e32 trap).
            model = open_clip.create_model(cfg.arch, pretrained=None)
    if weights_path is None:
        return model, source
    open_clip.load_checkpoint(model, str(weights_path))
    return model, source


def _build_pocket(cfg: BackboneConfig, seed: int) -> tuple[nn.Module, str]:
    """The pocket CLIP with released weights, a weights file, or a seeded random init."""
    if cfg.weights == RANDOM_WEIGHTS:
        return build_pocket_clip(seed), f"pocket CLIP architecture, random init (seed {seed}): mechanics only"
    if cfg.weights in RELEASES:
        return load_released(cfg.weights), f"{DESCRIPTION}, weights {cfg.weights}"
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"BackboneConfig.weights={cfg.weights!r} for the pocket backbone is neither "
                                   f"a release ({', '.join(RELEASES)}), 'random', nor an existing file")
    model = build_pocket_clip(seed)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), f"{DESCRIPTION}, weights from file {path}"


# ---------------------------------------------------------------------------------------
# The frozen backbone module
# ---------------------------------------------------------------------------------------

@torch.no_grad()
def tokens_in_batches(backbone: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """``backbone(images)`` in batches of ``batch_size``, so peak memory stays that of one batch.

    ``N x 3 x S x S`` -> ``N x L x h x w x D`` (on the images' device). For decoded dataset
    splits the token cache (:func:`vtfusion.cache.compute_tokens`) does the same on disk.
    """
    return torch.cat([backbone(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


class FrozenCLIP(nn.Module):
    """Frozen open_clip CLIP: multi-level patch tokens of images, embeddings of prompts.

    ``forward(images)``: ``B x 3 x H x W`` RGB in [0, 1] (``H = W = image_size``) ->
    ``B x L x h x w x D`` patch tokens, ``L = len(layers)``, ``h = w = H / patch``,
    ``D`` the vision width (896 for ViT-B-16-plus-240: ``B x 4 x 15 x 15 x 896``). The
    tokens are the residual stream after each configured block (1-indexed), before
    ``ln_post``; class token dropped. They are fresh tensors, not views of activations
    (in-place ops in later blocks can corrupt hooked tensors: a known bug class).

    The module never trains: parameters do not require grad, ``train()`` keeps it in
    eval mode, and the forward runs under ``torch.no_grad()`` (``bf16`` autocast on CUDA
    when ``precision="bf16"``; tokens are returned as float32).
    """

    def __init__(self, clip: nn.Module, layers: Sequence[int] = (3, 6, 9, 12), precision: str = "fp32",
                 tokenizer: Any = None, source: str = ""):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"BackboneConfig.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        depth = len(clip.visual.transformer.resblocks)
        layers = tuple(int(x) for x in layers)
        if not layers or any(not 1 <= x <= depth for x in layers):
            raise ValueError(f"BackboneConfig.layers={layers} must be 1-indexed blocks in 1..{depth} of this "
                             f"backbone (the quick profile's tiny model has 4 blocks, ViT-B-16-plus-240 has 12)")
        self.clip = clip
        self.layers = layers
        self.precision = precision
        self.source = source
        self._tokenizer = tokenizer
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.clip.requires_grad_(False)
        super().train(False)

    @classmethod
    def from_config(cls, cfg: BackboneConfig, seed: int = 0, allow_download: bool = True) -> "FrozenCLIP":
        """Build from a :class:`BackboneConfig` (see :func:`build_clip`)."""
        clip, source = build_clip(cfg, seed=seed, allow_download=allow_download)
        log.info("backbone: %s", source)
        return cls(clip, cfg.layers, cfg.precision, tokenizer=_tokenizer_for(cfg.arch, clip), source=source)

    # -- facts other modules are built from -----------------------------------------------
    @property
    def width(self) -> int:
        """Vision token width ``D`` (896 for ViT-B-16-plus-240)."""
        return int(self.clip.visual.transformer.width)

    @property
    def embed_dim(self) -> int:
        """Joint image-text embedding width (640 for ViT-B-16-plus-240)."""
        return int(self.clip.visual.proj.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.clip.visual.image_size[0])

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(h, w)`` of the patch grid (15 x 15 at 240 px, patch 16)."""
        g = self.clip.visual.grid_size
        return int(g[0]), int(g[1])

    @property
    def num_levels(self) -> int:
        return len(self.layers)

    def train(self, mode: bool = True) -> "FrozenCLIP":
        """Ignored: the backbone stays in eval mode (a parent's ``.train()`` must not change it)."""
        return super().train(False)

    # -- images ---------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        if self.precision == "bf16" and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()  # bf16 is CUDA-only; CPU runs fp32

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens after each configured block: ``B x 3 x S x S`` -> ``B x L x h x w x D``."""
        size = self.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"backbone expects RGB images B x 3 x {size} x {size} in [0, 1] (resize them to "
                             f"DataConfig.image_size={size}), got shape {tuple(images.shape)}")
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        with self._autocast(x.device):
            out = self.clip.visual.forward_intermediates(
                x, indices=[i - 1 for i in self.layers], intermediates_only=True,
                output_fmt="NLC", stop_early=True)
        h, w = self.grid_size
        # NLC intermediates are views (class token sliced off); stack copies them into
        # fresh memory, so later in-place edits of activations cannot reach our tokens.
        toks = [t.reshape(t.shape[0], h, w, t.shape[-1]) for t in out["image_intermediates"]]
        return torch.stack(toks, dim=1).float()

    @torch.no_grad()
    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's own map of patch tokens to the joint space: ``ln_post(tokens) @ proj``.

        ``... x D`` -> ``... x embed_dim``. What the AIE equals at initialisation.
        """
        v = self.clip.visual
        return v.ln_post(tokens) @ v.proj

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding (class token, ``ln_post``, ``proj``; not normalised):
        ``B x 3 x S x S`` in [0, 1] -> ``B x embed_dim``, float32."""
        x = self._normalise(images)
        with self._autocast(x.device):
            return self.clip.visual(x).float()

    @torch.no_grad()
    def encode_windows(self, images: torch.Tensor, windows: Sequence[torch.Tensor],
                       chunk: int = 4096) -> list[torch.Tensor]:
        """CLIP image embeddings of windows of patches, each window encoded on its own.

        For every window (a set of patch indices) the class token and that window's patch
        embeddings (with their own positional embeddings) form one sequence, which goes
        through ``ln_pre``, the transformer (batch-first, open_clip >= 2.26.1), the pooling,
        ``ln_post`` and ``proj``, as a whole image would: WinCLIP's window embeddings
        (Jeong et al., CVPR 2023, Sec. 4.2, "window embeddings" masking the patches
        outside a window).

        Args:
            images: ``B x 3 x S x S`` RGB in [0, 1].
            windows: per scale, a ``W x n`` LongTensor of row-major patch indices into the
                ``h x w`` grid (``n`` patches per window; see
                :func:`vtfusion.methods.winclip.window_indices`).
            chunk: sequences per transformer call (memory bound).

        Returns:
            per scale, ``B x W x embed_dim`` float32 (not normalised).
        """
        v = self.clip.visual
        if not all(hasattr(v, a) for a in ("conv1", "class_embedding", "positional_embedding", "_pool")):
            raise ValueError(f"BackboneConfig.arch: encode_windows needs open_clip's own VisionTransformer "
                             f"(conv1, class token, positional embedding), not {type(v).__name__}")
        x = self._normalise(images)
        out = []
        with self._autocast(x.device):
            patches = v.conv1(x).flatten(2).transpose(1, 2)  # B x hw x D
            pos = v.positional_embedding.to(patches.dtype)
            patches = patches + pos[1:]
            cls = (v.class_embedding.to(patches.dtype) + pos[0]).view(1, 1, -1)
            b, d = patches.shape[0], patches.shape[-1]
            for idx in windows:
                idx = idx.to(patches.device)
                n_win, n = idx.shape
                seq = patches[:, idx].reshape(b * n_win, n, d)  # (B W) x n x D
                seq = torch.cat([cls.expand(seq.shape[0], 1, d), seq], dim=1)
                pooled = []
                for i in range(0, seq.shape[0], chunk):
                    part = v.transformer(v.ln_pre(seq[i:i + chunk]))
                    emb, _ = v._pool(part)  # open_clip's own pooling + ln_post (3.x; private name)
                    pooled.append(emb @ v.proj if v.proj is not None else emb)
                out.append(torch.cat(pooled).float().reshape(b, n_win, -1))
        return out

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"backbone expects RGB images B x 3 x {size} x {size} in [0, 1] (resize them to "
                             f"DataConfig.image_size={size}), got shape {tuple(images.shape)}")
        return (images.to(self.mean.dtype) - self.mean) / self.std

    # -- text -----------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(prompts))

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """CLIP text embeddings (not normalised) of ``T`` prompts: ``T x embed_dim``, float32."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("encode_text expects a non-empty list of prompt strings")
        device = self.mean.device
        out = []
        for i in range(0, len(prompts), batch_size):
            tokens = self.tokenize(prompts[i:i + batch_size]).to(device)
            with self._autocast(device):
                out.append(self.clip.encode_text(tokens).float())
        return torch.cat(out)

    def extra_repr(self) -> str:
        return f"layers={self.layers}, precision={self.precision}, source={self.source!r}"


def _tokenizer_for(arch: str, clip: nn.Module):
    import open_clip  # local: open_clip is slow to import; only when a model is built

    if arch == POCKET_ARCH:
        return pocket_tokenizer()
    if arch == TINY_ARCH:
        return open_clip.SimpleTokenizer(context_length=clip.context_length)
    return open_clip.get_tokenizer(arch)


def build_backbone(cfg: BackboneConfig, seed: int = 0, allow_download: bool = True) -> FrozenCLIP:
    """:class:`FrozenCLIP` from a config: ``build_backbone(load_config().backbone)``."""
    return FrozenCLIP.from_config(cfg, seed=seed, allow_download=allow_download)
