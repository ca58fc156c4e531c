"""The heatmap explorer: what travels in the page, its checks, and its front end run in Node.

The browser test (tests/test_book_browser.py) clicks the built book's explorers; these tests
check the data path without a browser: the packed payload decodes to what was given (in
Python and in the front end's own decoder under Node), and the front end's panel pixels
follow the threshold, the opacity and the ground-truth toggle.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from vtfusion import explorer
from vtfusion.explorer import explorer_payload, heatmap_explorer, unpack

REPO = Path(__file__).resolve().parents[1]


def _scene(n: int = 4, size: int = 96):
    """Images with a bright square on the defective half, maps that find it, masks of it."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=gen) * 0.4 + 0.3
    masks = torch.zeros(n, 1, size, size)
    masks[: n // 2, :, 20:50, 30:70] = 1.0
    final = torch.rand(n, 1, size, size, generator=gen) * 0.3 + masks * 0.6
    vision = torch.rand(n, 1, 12, 12, generator=gen) * 5.0 - 2.0  # a coarse grid, another range
    return images, {"vision": vision, "final": final}, masks


def test_payload_round_trips_images_maps_and_masks():
    images, maps, masks = _scene()
    payload = explorer_payload(images, maps, masks, size=48, map_size=48)
    h, w = payload["size"]
    assert (h, w) == (48, 48) and payload["count"] == 4
    rgb = unpack(payload["images"], (4, h, w, 3))
    expected = torch.nn.functional.interpolate(images, size=(h, w), mode="bilinear", antialias=True)
    assert np.abs(rgb.astype(float) / 255 - expected.permute(0, 2, 3, 1).numpy()).max() <= 1 / 255 + 1e-6
    bits = np.unpackbits(unpack(payload["masks"], (-1,)))[: 4 * h * w].reshape(4, h, w)
    assert bits[:2].sum() > 0 and bits[2:].sum() == 0
    assert payload["labels"] == [1, 1, 0, 0]  # from the masks
    by_name = {m["name"]: m for m in payload["maps"]}
    vision = by_name["vision"]
    assert vision["shape"] == [12, 12]  # coarser than the images: kept at its own resolution
    values = vision["lo"] + unpack(vision["data"], (4, 12, 12)) / 255 * (vision["hi"] - vision["lo"])
    step = (vision["hi"] - vision["lo"]) / 255
    assert np.abs(values - maps["vision"][:, 0].numpy()).max() <= step / 2 + 1e-4
    final = by_name["final"]
    assert final["shape"] == [48, 48]  # finer than map_size: brought down to it
    assert explorer_payload(images, maps, masks, size=48, map_size=24)["maps"][1]["shape"] == [24, 24]
    assert final["scores"] == pytest.approx(maps["final"].flatten(1).amax(1).tolist(), rel=1e-5)


def test_aspect_ratio_is_kept_and_images_never_upsampled():
    images = torch.rand(2, 3, 60, 120)
    payload = explorer_payload(images, {"m": torch.rand(2, 1, 6, 12)}, size=64)
    assert payload["size"] == [32, 64]
    assert explorer_payload(images, {"m": torch.rand(2, 1, 6, 12)}, size=512)["size"] == [60, 120]


@pytest.mark.parametrize("call, option", [
    (lambda i, m, k: heatmap_explorer(i, m, k, titles=["a"]), "titles"),
    (lambda i, m, k: heatmap_explorer(i, {"final": m["final"][:2]}, k), "maps['final']"),
    (lambda i, m, k: heatmap_explorer(i, m, k[:1]), "masks"),
    (lambda i, m, k: heatmap_explorer(i, m, k, map_name="fused"), "map_name"),
    (lambda i, m, k: heatmap_explorer(i, m, k, compare="nope"), "compare"),
    (lambda i, m, k: heatmap_explorer(i, m, k, threshold={"nope": 1.0}), "threshold"),
    (lambda i, m, k: heatmap_explorer(i, m, k, opacity=2.0), "opacity"),
    (lambda i, m, k: heatmap_explorer(i, m, k, size=4), "size"),
    (lambda i, m, k: heatmap_explorer(i, m, k, map_size=2), "map_size"),
    (lambda i, m, k: heatmap_explorer(i, m, k, labels=[1, 0]), "labels"),
    (lambda i, m, k: heatmap_explorer(i, m, k, scores=[0.5]), "scores"),
    (lambda i, m, k: heatmap_explorer(i, {}, k), "maps"),
])
def test_bad_input_names_the_option(call, option):
    images, maps, masks = _scene()
    with pytest.raises(ValueError, match=r"^" + re.escape(option)) as info:
        call(images, maps, masks)
    assert "\n" not in str(info.value)


def test_widget_state_defaults():
    images, maps, masks = _scene()
    widget = heatmap_explorer(images, maps, masks, [f"t{i}" for i in range(4)], compare="vision",
                              scores=[0.9, 0.8, 0.1, 0.2])
    assert widget.map_name == "final" and widget.compare_name == "vision"
    lo, hi = float(maps["vision"].min()), float(maps["vision"].max())
    assert widget.thresholds["vision"] == pytest.approx((lo + hi) / 2, rel=1e-4)
    assert widget.payload["scores"] == [0.9, 0.8, 0.1, 0.2]
    assert "export default" in widget._esm and ".vtf-explorer" in widget._css
    same = heatmap_explorer(images, maps, masks, threshold=0.25)
    assert set(same.thresholds.values()) == {0.25}


def test_viz_re_exports_the_explorer():
    from vtfusion import viz

    images, maps, masks = _scene()
    assert isinstance(viz.heatmap_explorer(images, maps, masks, labels=[1, 1, 0, 0]), explorer.HeatmapExplorer)


def test_book_serves_the_anywidget_version_the_package_pins():
    """The static book's front-end module (tools/book_assets.py) and the kernel's must agree."""
    import anywidget

    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = next(p.split("==")[1] for p in pins if p.startswith("anywidget=="))
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import book_assets
    finally:
        sys.path.remove(str(REPO / "tools"))
    assert book_assets.PACKAGES["anywidget"]["version"] == pinned == anywidget.__version__
    assert "offline/anywidget/index.js" in book_assets.ENTRY_POINTS
    assert '"anywidget"' in (REPO / "book" / "_static" / "widgets_offline.js").read_text()


# ----------------------------------------------------------------------------- the front end

_NODE_SCRIPT = """
import {readFileSync} from "node:fs";
const {decode, panelPixels} = await import(process.argv[2]);
const payload = JSON.parse(readFileSync(process.argv[3], "utf8"));
const data = await decode(payload);
const b64 = (a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("base64");
const count = (px, r, g, b) => { let n = 0; for (let i = 0; i < px.length; i += 4)
  if (px[i] === r && px[i + 1] === g && px[i + 2] === b) n++; return n; };
const out = {images: b64(data.images), masks: b64(data.masks), vision: b64(data.maps.vision.data),
             panels: {}};
const final = data.maps.final;
const cases = {plain: [final.hi + 1, 0, false], low: [final.lo + 0.5 * (final.hi - final.lo), 0.5, false],
               high: [final.lo + 0.9 * (final.hi - final.lo), 0.5, false],
               opaque: [final.hi + 1, 1, false], truth: [final.hi + 1, 0, true]};
for (const [name, [t, a, truth]] of Object.entries(cases)) {
  const p = panelPixels(data, 0, final, t, a, truth);
  out.panels[name] = {width: p.width, height: p.height, pixels: b64(p.pixels),
                      white: count(p.pixels, 255, 255, 255), red: count(p.pixels, 255, 0, 0)};
}
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def front_end(tmp_path_factory):
    """Decoded arrays and panel pixels computed by ``explorer.js`` itself, under Node."""
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed (the front end is checked in the browser test too)")
    tmp = tmp_path_factory.mktemp("explorer")
    module = tmp / "explorer.mjs"
    module.write_text((REPO / "vtfusion" / "explorer.js").read_text())
    (tmp / "run.mjs").write_text(_NODE_SCRIPT)
    images, maps, masks = _scene()
    payload = explorer_payload(images, maps, masks, size=64)
    (tmp / "payload.json").write_text(json.dumps(payload))
    proc = subprocess.run([node, str(tmp / "run.mjs"), module.as_uri(), str(tmp / "payload.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return payload, json.loads(proc.stdout)


def test_front_end_decodes_what_python_packed(front_end):
    payload, out = front_end
    assert base64.b64decode(out["images"]) == unpack(payload["images"], (-1,)).tobytes()
    vision = next(m for m in payload["maps"] if m["name"] == "vision")
    assert base64.b64decode(out["vision"]) == unpack(vision["data"], (-1,)).tobytes()
    h, w = payload["size"]
    bits = np.unpackbits(unpack(payload["masks"], (-1,)))[: payload["count"] * h * w]
    assert np.array_equal(np.frombuffer(base64.b64decode(out["masks"]), np.uint8), bits)


def _pixels(panel) -> np.ndarray:
    return np.frombuffer(base64.b64decode(panel["pixels"]), np.uint8).reshape(panel["height"], panel["width"], 4)


def test_front_end_panel_follows_threshold_opacity_and_truth(front_end):
    payload, out = front_end
    panels = out["panels"]
    assert panels["plain"]["width"] == panels["plain"]["height"] == 256  # PANEL in explorer.js
    # opacity 0, threshold above every value, no truth: the image alone, bilinearly resized
    h, w = payload["size"]
    rgb = torch.from_numpy(unpack(payload["images"], (payload["count"], h, w, 3))[0]).permute(2, 0, 1).float()
    resized = torch.nn.functional.interpolate(rgb[None], size=(256, 256), mode="bilinear", align_corners=False)
    plain = _pixels(panels["plain"])[..., :3].astype(float)
    assert np.abs(plain - resized[0].permute(1, 2, 0).numpy()).max() <= 1.0
    # the white outline grows with a lower threshold (the defect plus noise) and is there at all
    assert panels["high"]["white"] > 50 and panels["low"]["white"] > panels["high"]["white"]
    assert panels["plain"]["white"] < 5
    # full opacity shows the map, not the image
    assert np.abs(_pixels(panels["opaque"]).astype(float) - _pixels(panels["plain"])).mean() > 20
    # the ground truth: red pixels only when asked
    assert panels["truth"]["red"] > 100 and panels["plain"]["red"] < 5
