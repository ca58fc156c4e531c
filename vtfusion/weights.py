"""Finding pretrained CLIP weights on disk (no network access here).

Search order for ``(arch, tag)``:

1. ``$VTFUSION_CLIP_WEIGHTS`` (a file path);
2. ``<cache>/weights/<arch>_<tag>.{pt,bin,safetensors}`` (``vtfusion.paths.cache_dir``);
3. open_clip's own download cache (Hugging Face hub cache or the URL cache).
"""

from __future__ import annotations

import os
from pathlib import Path

from vtfusion import paths

WEIGHTS_ENV = "VTFUSION_CLIP_WEIGHTS"
_SUFFIXES = (".pt", ".bin", ".safetensors")


def candidate_weight_paths(arch: str, tag: str) -> list[Path]:
    """Every path that :func:`locate_pretrained_weights` looks at, in order."""
    out: list[Path] = []
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        out.append(Path(env))
    base = paths.cache_dir() / "weights"
    out += [base / f"{arch}_{tag}{s}" for s in _SUFFIXES]
    out += _open_clip_cache_paths(arch, tag)
    return out


def locate_pretrained_weights(arch: str, tag: str) -> Path | None:
    """First existing weights file for ``arch``/``tag``, or ``None``."""
    for p in candidate_weight_paths(arch, tag):
        if p.is_file():
            return p
    return None


def _squash(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def _open_clip_cache_paths(arch: str, tag: str) -> list[Path]:
    try:
        import open_clip  # local: open_clip is slow to import
    except ImportError:  # the package is importable without torch installed
        return []
    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    out: list[Path] = []
    url = cfg.get("url")
    if url:
        out.append(Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url))
    hub = cfg.get("hf_hub")
    # open_clip 3.3.0 lists the laion400m_e31 repository as the hub entry of the
    # laion400m_e32 tag: a hub folder that does not name the tag holds other weights.
    if hub and _squash(tag) in _squash(hub):
        hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
        repo = hub.strip("/").split("/")
        if len(repo) >= 2:
            snap = hf_home / "hub" / f"models--{repo[0]}--{repo[1]}" / "snapshots"
            if snap.is_dir():
                for d in sorted(snap.iterdir()):
                    out += [d / "open_clip_model.safetensors", d / "open_clip_pytorch_model.bin"]
    return out
