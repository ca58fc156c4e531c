"""Caches that keep the frozen backbone and PNG decoding out of repeated evaluations.

Two on-disk caches, both owned by one explicit :class:`FeatureCache` object (no module
state), plus its small in-process LRU:

**Decoded images.** A test split's images resized to ``S x S`` as ``uint8``
``N x 3 x S x S`` and its masks as ``uint8`` ``N x S x S`` (0/1), one ``.npy`` each,
read back with ``mmap``. ``uint8 / 255`` is exactly what the plain loader returns (same
decode, same PIL resize: :func:`vtfusion.data.images.resize_rgb`), so the cache changes
no pixel. A miss decodes with a torch ``DataLoader`` and ``workers`` processes. Cost:
``3 S^2`` bytes per image (172.8 kB at 240 px; 298 MB for MVTec AD's 1,725 test images).

**Backbone outputs.** The test split's patch tokens ``N x L x h x w x D`` in
``float16`` (``token_dtype``), and the text-ensemble class embeddings (``2 x c``) of each
prompt word. Cost per image: ``L h w D x 2`` bytes; ViT-B-16-plus-240 at 240 px with
4 levels: ``4 x 225 x 896 x 2`` = 1.61 MB (2.8 GB for MVTec AD's test split, 270 MB for
its largest category, pill); the quick profile's tiny backbone: 230 kB. ``float16``
keeps 11 significant bits (relative rounding error <= 2^-11 = 4.9e-4 per value); the
maps computed from rounded tokens differ from the ``float32`` path by ~1e-4 (checked in
``tests/test_cache.py`` with ``atol=1e-3``); ``token_dtype="float32"`` stores them exactly
at twice the cost.

Keys (SHA-256, so any change is a new entry and stale entries are simply not read):

* split key: every image and mask path (absolute), its size and ``st_mtime_ns``, the
  image size, the mask threshold, the Pillow version and :data:`FORMAT`;
* backbone key: the backbone's ``source`` line (arch and weights tag / file / random
  seed), the layers, the precision actually used (``bf16`` only on CUDA), the device
  type, image and grid size, width, the token dtype, and a fingerprint of the weights
  (SHA-256 of up to 4,096 evenly spaced values of every parameter and buffer), so a
  retrained or differently seeded backbone never reads another's tokens.

Writes are atomic (temporary file + ``os.replace``); an unreadable or malformed file is
logged, removed and recomputed. Nothing is ever evicted from disk: delete
``<cache>/features`` (:meth:`FeatureCache.clear`) to reclaim the space.

**Switches** (:class:`PerfSettings`) change speed, never results beyond the ``float16``
rounding above. They are not fields of :class:`~vtfusion.config.ExperimentConfig`, so
they never enter ``config_hash``: a result computed with or without caches is the same
cell. Environment overrides: ``VTFUSION_IMAGE_CACHE=0``, ``VTFUSION_TOKEN_CACHE=0``,
``VTFUSION_WORKERS=N``, ``VTFUSION_COMPILE=1``, ``VTFUSION_CACHE_MEMORY_MB=N``; the cache
folder is ``$VTFUSION_CACHE/features`` (:func:`vtfusion.paths.cache_dir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vtfusion import paths
from vtfusion.data.images import read_image_and_mask, resize_mask, resize_rgb
from vtfusion.io import atomic_write, atomic_write_json
from vtfusion.prompts import build_prompts

log = logging.getLogger(__name__)

FORMAT = "vtfusion-cache-1"
TOKEN_DTYPES = {"float16": torch.float16, "float32": torch.float32}
ENV_IMAGES, ENV_TOKENS = "VTFUSION_IMAGE_CACHE", "VTFUSION_TOKEN_CACHE"
ENV_WORKERS, ENV_COMPILE, ENV_MEMORY = "VTFUSION_WORKERS", "VTFUSION_COMPILE", "VTFUSION_CACHE_MEMORY_MB"
_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")
_LOAD_ERRORS = (OSError, ValueError, EOFError, TypeError)


@dataclass(frozen=True)
class PerfSettings:
    """Speed switches of evaluation and training. Never part of a config hash.

    Attributes:
        images: keep decoded, resized test images on disk (``<root>/images``).
        tokens: keep the frozen backbone's test tokens and text embeddings on disk
            (``<root>/tokens``, ``<root>/text``); evaluation then runs the heads on them.
        token_dtype: ``float16`` (default, half the disk) or ``float32`` (exact).
        root: cache folder; ``None`` means ``paths.cache_dir() / "features"``.
        workers: ``DataLoader`` processes that decode images; ``None`` means
            ``min(4, cpu count)``, 0 decodes in the calling process.
        memory_mb: in-process LRU budget for cached arrays (0 disables it). Entries are
            memory-mapped, so the budget bounds the mapped size, not resident memory.
        compile: ``torch.compile`` the backbone's forward (``nn.Module.compile``) before
            use; off by default (compilation costs a minute or more per shape).
    """

    images: bool = True
    tokens: bool = True
    token_dtype: str = "float16"
    root: Path | None = None
    workers: int | None = None
    memory_mb: int = 1024
    compile: bool = False

    def __post_init__(self) -> None:
        if self.token_dtype not in TOKEN_DTYPES:
            raise ValueError(f"PerfSettings.token_dtype must be one of {', '.join(TOKEN_DTYPES)}, "
                             f"got {self.token_dtype!r}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"PerfSettings.workers must be >= 0 (0: decode in this process), got {self.workers}")
        if self.memory_mb < 0:
            raise ValueError(f"PerfSettings.memory_mb must be >= 0, got {self.memory_mb}")

    @classmethod
    def from_env(cls, **overrides: Any) -> "PerfSettings":
        """Defaults, then the ``VTFUSION_*`` variables of the module docstring, then ``overrides``."""
        env: dict[str, Any] = {}
        for name, var in (("images", ENV_IMAGES), ("tokens", ENV_TOKENS), ("compile", ENV_COMPILE)):
            value = os.environ.get(var, "").strip().lower()
            if value in _FALSE + _TRUE:
                env[name] = value in _TRUE
            elif value:
                raise ValueError(f"${var}={value!r}: use 0 or 1")
        for name, var in (("workers", ENV_WORKERS), ("memory_mb", ENV_MEMORY)):
            value = os.environ.get(var, "").strip()
            if value:
                try:
                    env[name] = int(value)
                except ValueError:
                    raise ValueError(f"${var}={value!r}: expected an integer") from None
        return cls(**{**env, **overrides})

    @property
    def directory(self) -> Path:
        return Path(self.root) if self.root is not None else paths.cache_dir() / "features"

    @property
    def num_workers(self) -> int:
        return min(4, os.cpu_count() or 1) if self.workers is None else self.workers


@dataclass
class SplitImages:
    """A split's images and masks at evaluation size, as stored by the image cache.

    Attributes:
        images: ``uint8`` ``N x 3 x S x S`` RGB (divide by 255 for the model's input).
        masks: ``uint8`` ``N x S x S`` in {0, 1}.
        key: the split key (None when computed without a key).
    """

    images: torch.Tensor
    masks: torch.Tensor
    key: str | None = None

    def batch(self, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images ``start:stop`` as float32 in [0, 1] on ``device`` (equal to the plain loader's)."""
        return self.images[start:stop].to(device).float() / 255


# --- keys -----------------------------------------------------------------------------------

def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _stat(path: Path | None) -> list:
    if path is None:
        return [None]
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def supports(split: Any) -> bool:
    """Whether a split can be cached: an :class:`~vtfusion.data.datasets.AnomalyDataset`
    (``records`` with ``.image``/``.mask`` paths) resized to a fixed square size."""
    return isinstance(getattr(split, "image_size", None), int) and hasattr(split, "records")


def split_key(split: Any) -> str:
    """Key of a split's decoded images: paths, sizes and mtimes of every file, image size,
    mask threshold, Pillow version. Any edited, added or removed file changes it."""
    files = [_stat(r.image) + _stat(r.mask) for r in split.records]
    return _sha({"format": FORMAT, "pillow": PIL.__version__, "size": split.image_size,
                 "mask_threshold": getattr(split, "mask_threshold", 0), "files": files})


def weights_fingerprint(module: nn.Module, samples: int = 4096) -> str:
    """SHA-256 of up to ``samples`` evenly spaced values of every parameter and buffer (with
    names, shapes and dtypes). Exact and thread-count independent; ~0.1 s for ViT-B-16+."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // samples)
            picked = torch.cat([flat[::step][:samples], flat[-1:]]).cpu()
            digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            digest.update(picked.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _device_of(module: nn.Module) -> torch.device:
    mean = getattr(module, "mean", None)
    if isinstance(mean, torch.Tensor):
        return mean.device
    return next(module.parameters()).device


# --- decoding -------------------------------------------------------------------------------

class _Decode(Dataset):
    """Records -> (uint8 ``3 x S x S`` image, uint8 ``S x S`` mask), for a DataLoader."""

    def __init__(self, records: Sequence, size: int, threshold: int):
        self.records, self.size, self.threshold = list(records), size, threshold

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.records[index]
        rgb, mask = read_image_and_mask(rec.image, rec.mask, self.threshold)
        image = torch.tensor(resize_rgb(rgb, self.size)).permute(2, 0, 1)
        return image, torch.tensor(resize_mask(mask, self.size).astype(np.uint8))


def decode_split(split: Any, workers: int = 0, batch_size: int = 8) -> SplitImages:
    """Decode and resize every image and mask of ``split`` (``workers`` DataLoader processes)."""
    n, size = len(split), split.image_size
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    masks = torch.empty(n, size, size, dtype=torch.uint8)
    workers = min(workers, max(0, (n + batch_size - 1) // batch_size - 1))  # no idle processes
    loader = DataLoader(_Decode(split.records, size, getattr(split, "mask_threshold", 0)),
                        batch_size=batch_size, shuffle=False, num_workers=workers)
    start = 0
    for image_batch, mask_batch in loader:
        stop = start + len(image_batch)
        images[start:stop], masks[start:stop] = image_batch, mask_batch
        start = stop
    return SplitImages(images, masks)


@torch.no_grad()
def compute_tokens(backbone: nn.Module, images: SplitImages, batch_size: int = 32,
                   dtype: torch.dtype = torch.float32,
                   allocate: Callable[[tuple[int, ...]], np.ndarray] | None = None) -> torch.Tensor:
    """Backbone tokens of every image, batched, on the CPU as ``dtype`` (``N x L x h x w x D``).

    ``allocate(shape)``: returns the array to fill (e.g. a memory-mapped file), called once
    the first batch tells the shape; default a new tensor.
    """
    device = _device_of(backbone)
    n = len(images.images)
    target: torch.Tensor | None = None
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        toks = backbone(images.batch(start, stop, device))
        if dtype == torch.float16 and float(toks.abs().amax()) > torch.finfo(torch.float16).max:
            raise OverflowError(f"backbone tokens reach {float(toks.abs().amax()):.3g}, beyond float16; cache "
                                "them as float32: PerfSettings(token_dtype='float32')")
        toks = toks.to("cpu", dtype)
        if target is None:
            shape = (n, *toks.shape[1:])
            target = torch.empty(shape, dtype=dtype) if allocate is None else torch.from_numpy(allocate(shape))
        target[start:stop] = toks
    assert target is not None, "compute_tokens needs at least one image"
    return target


# --- the cache ------------------------------------------------------------------------------

class FeatureCache:
    """Decoded-image and backbone-output caches on disk, with an in-process LRU.

    One object per session (``reproduce`` shares one across all its cells); every method
    takes the split or backbone it works on. ``stats`` counts hits and misses per kind.

    >>> cache = FeatureCache.from_env()                  # doctest: +SKIP
    >>> images = cache.images(test_split)                # uint8, decoded at most once
    >>> tokens = cache.tokens(model.backbone, test_split, images)   # backbone at most once
    """

    def __init__(self, settings: PerfSettings | None = None):
        self.settings = settings if settings is not None else PerfSettings()
        self.stats: Counter[str] = Counter()
        self._memory: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._memory_bytes = 0
        self._fingerprints: dict[int, tuple[nn.Module, str]] = {}

    @classmethod
    def from_env(cls, **overrides: Any) -> "FeatureCache":
        """A cache with :meth:`PerfSettings.from_env` settings."""
        return cls(PerfSettings.from_env(**overrides))

    @classmethod
    def disabled(cls, **overrides: Any) -> "FeatureCache":
        """No disk and no memory caching: every call decodes and runs the backbone."""
        return cls(PerfSettings(images=False, tokens=False, memory_mb=0, **overrides))

    def __repr__(self) -> str:
        s = self.settings
        return (f"FeatureCache(images={s.images}, tokens={s.tokens} ({s.token_dtype}), "
                f"dir={s.directory}, stats={dict(self.stats)})")

    # -- memory LRU ------------------------------------------------------------------------
    def _recall(self, key: str) -> Any:
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key][0]
        return None

    def _remember(self, key: str, value: Any, nbytes: int) -> None:
        budget = self.settings.memory_mb * 2**20
        if nbytes > budget:
            return
        if key in self._memory:
            self._memory_bytes -= self._memory.pop(key)[1]
        self._memory[key] = (value, nbytes)
        self._memory_bytes += nbytes
        while self._memory_bytes > budget:
            self._memory_bytes -= self._memory.popitem(last=False)[1][1]

    # -- disk helpers ----------------------------------------------------------------------
    def _load(self, path: Path, shape: tuple[int | None, ...], dtype: np.dtype) -> torch.Tensor | None:
        """A memory-mapped ``.npy`` of the expected shape/dtype, or None (missing or corrupt)."""
        if not path.is_file():
            return None
        try:
            arr = np.load(path, mmap_mode="c", allow_pickle=False)
            if arr.dtype != dtype or arr.ndim != len(shape) or any(
                    want is not None and got != want for got, want in zip(arr.shape, shape)):
                raise ValueError(f"holds {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {shape}")
            return torch.from_numpy(arr)
        except _LOAD_ERRORS as err:
            log.warning("cache file %s is unreadable (%s); recomputing it", path, err)
            self.stats["corrupt"] += 1
            path.unlink(missing_ok=True)
            return None

    @staticmethod
    def _save(path: Path, array: np.ndarray) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)

        atomic_write(path, write)

    def clear(self) -> None:
        """Delete every cached file of this cache's folder and empty the LRU."""
        for sub in ("images", "tokens", "text"):
            shutil.rmtree(self.settings.directory / sub, ignore_errors=True)
        self._memory.clear()
        self._memory_bytes = 0

    # -- images ----------------------------------------------------------------------------
    def images(self, split: Any) -> SplitImages:
        """``uint8`` images and masks of ``split`` at its image size: from memory, disk, or decoded.

        With ``settings.images`` off they are decoded every time (in memory, with workers).
        """
        if not supports(split):
            raise ValueError(f"{type(split).__name__} cannot be cached: it needs records and a fixed "
                             "int image_size (an AnomalyDataset opened with image_size=S)")
        if not self.settings.images:
            self.stats["images_decoded"] += 1
            return decode_split(split, self.settings.num_workers)
        key = split_key(split)
        found = self._recall("images/" + key)
        if found is not None:
            self.stats["images_memory_hits"] += 1
            return found
        n, s = len(split), split.image_size
        folder = self.settings.directory / "images"
        images = self._load(folder / f"{key}.images.npy", (n, 3, s, s), np.dtype(np.uint8))
        masks = self._load(folder / f"{key}.masks.npy", (n, s, s), np.dtype(np.uint8)) if images is not None else None
        if images is not None and masks is not None:
            self.stats["images_disk_hits"] += 1
            data = SplitImages(images, masks, key)
        else:
            self.stats["images_decoded"] += 1
            start = time.perf_counter()
            decoded = decode_split(split, self.settings.num_workers)
            self._save(folder / f"{key}.images.npy", decoded.images.numpy())
            self._save(folder / f"{key}.masks.npy", decoded.masks.numpy())
            atomic_write_json(folder / f"{key}.json", {**_describe(split), "format": FORMAT, "n": n, "size": s,
                                                       "decode_seconds": time.perf_counter() - start})
            data = SplitImages(decoded.images, decoded.masks, key)
        self._remember("images/" + key, data, data.images.nbytes + data.masks.nbytes)
        return data

    # -- backbone outputs ------------------------------------------------------------------
    def fingerprint(self, backbone: nn.Module) -> str:
        """:func:`weights_fingerprint` of ``backbone``, computed once per object."""
        held = self._fingerprints.get(id(backbone))
        if held is None or held[0] is not backbone:
            held = (backbone, weights_fingerprint(backbone))
            self._fingerprints[id(backbone)] = held
        return held[1]

    def backbone_key(self, backbone: nn.Module) -> str:
        """Key of a backbone's outputs (module docstring): identity, layers, precision, weights."""
        device = _device_of(backbone)
        precision = getattr(backbone, "precision", "fp32")
        grid = getattr(backbone, "grid_size", None)
        return _sha({"format": FORMAT, "class": type(backbone).__name__,
                     "source": getattr(backbone, "source", ""), "layers": getattr(backbone, "layers", None),
                     "precision": precision if device.type == "cuda" else "fp32", "device": device.type,
                     "image_size": getattr(backbone, "image_size", None), "grid": grid,
                     "width": getattr(backbone, "width", None), "token_dtype": self.settings.token_dtype,
                     "weights": self.fingerprint(backbone)})

    def prepare_backbone(self, backbone: nn.Module) -> nn.Module:
        """Apply ``settings.compile`` (``nn.Module.compile``, once) and return the backbone."""
        if self.settings.compile and getattr(backbone, "_compiled_call_impl", None) is None:
            backbone.compile()
        return backbone

    def tokens(self, backbone: nn.Module, split: Any, images: SplitImages | None = None,
               batch_size: int = 32) -> torch.Tensor:
        """Backbone tokens of every image of ``split`` (``N x L x h x w x D``, ``token_dtype``, CPU).

        Computed at most once per (backbone, split) while the files stay; with
        ``settings.tokens`` off they are computed every time, in float32.
        """
        self.prepare_backbone(backbone)
        if not self.settings.tokens:
            self.stats["tokens_computed"] += 1
            return compute_tokens(backbone, images if images is not None else self.images(split), batch_size)
        key = _sha({"backbone": self.backbone_key(backbone), "split": split_key(split)})
        found = self._recall("tokens/" + key)
        if found is not None:
            self.stats["tokens_memory_hits"] += 1
            return found
        dtype = TOKEN_DTYPES[self.settings.token_dtype]
        np_dtype = np.dtype(np.float16 if dtype == torch.float16 else np.float32)
        path = self.settings.directory / "tokens" / f"{key}.npy"
        tokens = self._load(path, (len(split), None, None, None, None), np_dtype)
        if tokens is not None:
            self.stats["tokens_disk_hits"] += 1
        else:
            self.stats["tokens_computed"] += 1
            images = images if images is not None else self.images(split)
            start = time.perf_counter()
            shape: tuple[int, ...] = ()

            def write(tmp: str) -> None:
                nonlocal shape
                held: list[np.memmap] = []

                def allocate(full_shape: tuple[int, ...]) -> np.ndarray:
                    held.append(np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=full_shape))
                    return held[0]

                shape = tuple(compute_tokens(backbone, images, batch_size, dtype, allocate).shape)
                held[0].flush()

            atomic_write(path, write)
            atomic_write_json(path.with_suffix(".json"), {
                **_describe(split), "format": FORMAT, "shape": list(shape), "dtype": self.settings.token_dtype,
                "backbone": getattr(backbone, "source", type(backbone).__name__),
                "layers": list(getattr(backbone, "layers", []) or []), "seconds": time.perf_counter() - start})
            tokens = self._load(path, shape, np_dtype)
            if tokens is None:  # unreadable right after writing (full disk?): keep going uncached
                return compute_tokens(backbone, images, batch_size, dtype)
        self._remember("tokens/" + key, tokens, tokens.nbytes)
        return tokens

    def prime_text(self, model: nn.Module) -> None:
        """Put ``model``'s text-ensemble class embeddings into its ATE, from disk when cached.

        The frozen text encoder embeds hundreds of prompts per category (a minute and more
        for ViT-B-16-plus-240 on a CPU); the result depends only on the backbone's weights,
        the prompt config and the object word. No-op with ``settings.tokens`` off.
        """
        ate, backbone, word = model.ate, model.backbone, model.object_name
        if not self.settings.tokens or ate.has_class_embeddings(word, backbone):
            return
        key = _sha({"backbone": self.backbone_key(backbone), "prompts": build_prompts(word, ate.cfg.prompts),
                    "embed_dim": ate.embed_dim})
        path = self.settings.directory / "text" / f"{key}.npy"
        emb = self._load(path, (2, ate.embed_dim), np.dtype(np.float32))
        if emb is not None:
            self.stats["text_disk_hits"] += 1
            ate.set_class_embeddings(word, backbone, emb.clone().to(_device_of(backbone)))
            return
        self.stats["text_computed"] += 1
        emb = ate.class_embeddings(word, backbone)
        self._save(path, emb.detach().float().cpu().numpy())


def _describe(split: Any) -> dict:
    return {"dataset": getattr(split, "dataset_name", None), "category": getattr(split, "category", None),
            "split": getattr(split, "split", None), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def settings_dict(cache: FeatureCache) -> dict:
    """What a result file records about the caches (they can change maps by fp16 rounding)."""
    s = cache.settings
    return {"images": s.images, "tokens": s.tokens, "token_dtype": s.token_dtype if s.tokens else "float32",
            "compile": s.compile}


__all__ = ["FORMAT", "FeatureCache", "PerfSettings", "SplitImages", "compute_tokens", "decode_split",
           "settings_dict", "split_key", "supports", "weights_fingerprint"]
