"""Copy ``../shared/datasets/real_ad`` at the model's input size, for a machine the originals cannot reach.

The device machine takes at most 64 MiB of files with a command, and the real_ad originals
are larger. The package resizes every image once, bicubic, to ``--size`` (240 for
ViT-B-16-plus-240) and every mask with nearest neighbour (:func:`vtfusion.image_io.resize_rgb`,
:func:`vtfusion.data.images.resize_mask`), and skips the resize when a file is already that
size. So a copy written here, losslessly (PNG), with those same functions gives the same tensors
as the originals (gray images are saved with one channel, which reads back as equal
R, G and B); ``--check`` verifies that on every file. The copy keeps the MVTec layout and
file names, so shot lists and results keys do not change. Point ``$VTFUSION_REAL_AD`` at it.

    .venv/bin/python bench/resize_real_ad.py --out .gpu/real_ad --check
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vtfusion import paths
from vtfusion.data.images import read_mask, resize_mask
from vtfusion.image_io import read_rgb, resize_rgb


def copy_resized(src: Path, dst: Path, size: int, check: bool) -> int:
    """Write every PNG under ``src`` to ``dst`` at ``size`` (masks nearest, images bicubic); return count."""
    n = 0
    for path in sorted(src.rglob("*")):
        out = dst / path.relative_to(src)
        if path.is_dir():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() != ".png":
            shutil.copy2(path, out)
            continue
        if "ground_truth" in path.parts:
            mask = resize_mask(read_mask(path), size)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out)
            if check and not np.array_equal(resize_mask(read_mask(out), size), mask):
                raise SystemExit(f"{out}: mask differs from the original's resize")
        else:
            rgb = resize_rgb(read_rgb(path), size)
            gray = (rgb[..., :1] == rgb).all()  # saved as one channel; read back as equal R, G, B
            Image.fromarray(rgb[..., 0] if gray else rgb).save(out, optimize=True)
            if check and not np.array_equal(resize_rgb(read_rgb(out), size), rgb):
                raise SystemExit(f"{out}: image differs from the original's resize")
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=None, help="default: ../shared/datasets/real_ad")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=240)
    p.add_argument("--check", action="store_true", help="re-read each written file and compare")
    args = p.parse_args(argv)
    src = args.src or paths.real_ad_root()
    if not src.is_dir():
        print(f"error: {src} not found; pass --src", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} is not empty; remove it or choose another --out", file=sys.stderr)
        return 2
    n = copy_resized(src, args.out, args.size, args.check)
    print(f"{n} images and masks written to {args.out} at {args.size} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
