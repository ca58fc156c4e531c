"""FineGrainedAD as a registered method (:mod:`vtfusion.model.finegrained`).

Fitted on a cell's k shots: the VAD memory is their tokens and the multi-level prompts
are trained on them for a fixed number of steps; the **last iterate** is evaluated (the
published code keeps the epoch of best test AUROC instead). Its prompts come from the
project's hand-written captions (:mod:`vtfusion.data.captions`). It predicts from the
cached backbone tokens, so it shares the token cache, shot lists and metrics of every
other method of ``vtfusion reproduce --methods``; the trained prompts are kept in the run
store (:mod:`vtfusion.runs`) and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vtfusion.config import ExperimentConfig
from vtfusion.data.captions import CAPTION_DATASETS, caption_file, load_captions
from vtfusion.io import atomic_write
from vtfusion.methods.base import AnomalyMethod, FitContext, Prediction, Shots
from vtfusion.methods.registry import register_method
from vtfusion.model.finegrained import FineGrainedAD, FineGrainedADConfig
from vtfusion.train import resolve_device

STATE_FORMAT = "vtfusion-finegrainedad/3"
#: bumped when the fitted prompts of the same options would change: part of the result and run keys
IMPLEMENTATION = 2


def captions_digest() -> str:
    """Short hash of every caption file: a caption edit is a new fit and a new result."""
    h = hashlib.sha256()
    for name in CAPTION_DATASETS:
        h.update(caption_file(name).read_bytes())
    return h.hexdigest()[:16]


@register_method("finegrainedad")
class FineGrainedADMethod(AnomalyMethod):
    """FineGrainedAD (Fan et al.): multi-level learnable prompts aligned to regions, fused with few-shot visual comparison."""

    options_type = FineGrainedADConfig
    #: scored beside the fused map: the PAD branch (``text``) and the VAD branch (``vision``)
    map_names = ("text", "vision")
    #: None: its reported values are the FineGrainedAD paper's, not a row of the VTFusion paper's tables
    #: (:func:`vtfusion.paper_tables.finegrainedad_reported`)
    paper_key = None

    def __init__(self, cfg: ExperimentConfig, backbone: nn.Module | None = None, options: Any = None) -> None:
        super().__init__(cfg, backbone, options)
        self.model: FineGrainedAD | None = None

    @property
    def backbone_seed(self) -> int:
        return self.cfg.train.seed

    def config(self) -> dict[str, Any]:
        """The backbone, image size, evaluation options, :class:`FineGrainedADConfig`, the
        cell's seed (it seeds the prompts), the captions' digest and :data:`IMPLEMENTATION`."""
        return {**super().config(), "seed": self.cfg.train.seed, "captions": captions_digest(),
                "implementation": IMPLEMENTATION}

    def fit_config(self) -> dict[str, Any]:
        """What determines the trained prompts: :meth:`config` without the evaluation options."""
        return {k: v for k, v in self.config().items() if k != "eval"}

    def _device(self) -> torch.device:
        return resolve_device(self.cfg.train.device)

    def _build(self, dataset: str, category: str) -> FineGrainedAD:
        backbone = self.backbone.to(self._device())
        return FineGrainedAD(backbone, load_captions(dataset, category), self.options,
                             seed=self.cfg.train.seed).to(self._device())

    def fit_shots(self, shots: Shots) -> dict[str, Any]:
        self.model = self._build(shots.dataset, shots.category)
        watch = None
        if self.context.monitor is not None:  # the caller's monitor scores this method, not the bare network
            def watch(_network: FineGrainedAD) -> dict:
                return self.context.monitor(self)
        record = self.model.fit(shots.tokens, progress=self.context.progress, monitor=watch)
        return record.to_dict()

    def save(self, path: Path, record: dict[str, Any]) -> None:
        model = self._trained()
        state = {"format": STATE_FORMAT, "dataset": model.captions.dataset, "category": model.captions.category,
                 "options": dataclasses.asdict(self.options), "state": model.state_dict(), "record": record}
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    def load(self, path: Path, context: FitContext | None = None) -> dict[str, Any]:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a FineGrainedAD fit ({STATE_FORMAT})")
        if saved["options"] != dataclasses.asdict(self.options):
            raise ValueError(f"{path} was fitted with other FineGrainedAD options")
        self.model = self._build(saved["dataset"], saved["category"])
        self.model.memory = torch.empty_like(saved["state"]["memory"])  # its size is the shots' token count
        self.model.load_state_dict(saved["state"])
        self.context = context or FitContext()
        return saved["record"]

    def prepare(self) -> None:
        self._trained().eval()

    def predict_batch(self, images: torch.Tensor | None, tokens: torch.Tensor | None,
                      size: tuple[int, int]) -> Prediction:
        out = self._trained().forward_tokens(tokens)
        up = {name: F.interpolate(out[name][:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
              for name in ("final", "text", "vision")}
        return Prediction(up["final"], out["score"], {"text": up["text"], "vision": up["vision"]})

    def _trained(self) -> FineGrainedAD:
        if self.model is None:
            raise RuntimeError("FineGrainedAD has no fitted prompts yet: fit it on the shots or load a saved run")
        return self.model


__all__ = ["FineGrainedADMethod", "captions_digest"]
