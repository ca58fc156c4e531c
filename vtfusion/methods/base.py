"""The interface every anomaly-detection method implements, so that one runner evaluates them all.

A method is fitted on the k normal shots of one category (VTFusion trains on them;
patch-kNN keeps their tokens; zero-shot CLIP needs none and only reads the category's
word), then predicts an anomaly map and an image score for batches of test images or of
their frozen-backbone tokens. The runner (:func:`vtfusion.evaluate.run_method`) reads
those tokens from the shared token cache, so every method on the same backbone pays for
the backbone once. A method also reports its config (what determines its result: result
files are keyed by its hash) and its cost (fit seconds, predict seconds per image).

A new method is one file: a subclass of :class:`AnomalyMethod` with
:meth:`~AnomalyMethod.fit_shots` and :meth:`~AnomalyMethod.predict_batch`, registered with
:func:`vtfusion.methods.registry.register_method`. Everything it needs comes from the
:class:`~vtfusion.config.ExperimentConfig` it is built with (backbone, image size,
evaluation options) and from its own ``options`` dataclass.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from vtfusion.backbone import build_backbone
from vtfusion.config import ExperimentConfig


@dataclass
class Shots:
    """The k normal images of one (dataset, category, k, seed) cell, as a method is fitted on them.

    Attributes:
        images: ``k x 3 x S x S`` float in [0, 1] (``0 x 3 x S x S`` for a method without shots).
        dataset, category: where they come from (prompt words, texture or object).
        seed: the shot-list seed.
        files: the shots' paths relative to the category folder (their shot list).
        backbone: the frozen backbone whose tokens :attr:`tokens` returns.
    """

    images: torch.Tensor
    dataset: str
    category: str
    seed: int = 0
    files: tuple[str, ...] = ()
    backbone: nn.Module | None = None
    _tokens: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def k(self) -> int:
        return int(self.images.shape[0])

    @property
    def tokens(self) -> torch.Tensor:
        """``k x L x h x w x D`` frozen-backbone tokens of the shots, computed once."""
        if self._tokens is None:
            if self.backbone is None:
                raise ValueError("Shots.tokens needs the backbone: Shots(..., backbone=method.backbone)")
            with torch.no_grad():
                self._tokens = self.backbone(self.images.to(_device_of(self.backbone)))
        return self._tokens


@dataclass
class Prediction:
    """What a method predicts for a batch of ``B`` images.

    Attributes:
        maps: ``B x H x W`` pixel anomaly scores at the image size (higher: more anomalous).
        scores: ``B`` image anomaly scores.
        extra_maps: named intermediate maps (``B x h x w`` or ``B x H x W``), each scored like
            ``maps`` when the method lists it in :attr:`AnomalyMethod.map_names` (VTFusion's
            ``vision``, ``text`` and ``fused`` maps).
    """

    maps: torch.Tensor
    scores: torch.Tensor
    extra_maps: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MethodCost:
    """What a method cost in this process: the fit, and prediction per image (backbone excluded
    when it predicts from cached tokens)."""

    fit_seconds: float = 0.0
    predict_seconds: float = 0.0
    predicted_images: int = 0

    @property
    def predict_seconds_per_image(self) -> float | None:
        return self.predict_seconds / self.predicted_images if self.predicted_images else None

    def to_dict(self) -> dict[str, float | int | None]:
        return {"fit_seconds": self.fit_seconds, "predict_seconds": self.predict_seconds,
                "predicted_images": self.predicted_images,
                "predict_seconds_per_image": self.predict_seconds_per_image}


@dataclass
class FitContext:
    """What the caller lends a fit.

    Attributes:
        progress: show a progress bar while training.
        monitor: ``monitor(model) -> dict`` of validation numbers, for a method that trains
            (:func:`vtfusion.evaluate.map_monitor`).
        text_cache: anything with ``prime_text(model)`` (a :class:`~vtfusion.cache.FeatureCache`):
            the frozen text encoder's prompt-ensemble embeddings, read from disk.
    """

    progress: bool = False
    monitor: Callable[[nn.Module], dict] | None = None
    text_cache: Any = None


class AnomalyMethod(ABC):
    """A few-shot (or zero-shot) anomaly-detection method.

    Args:
        cfg: the experiment config (backbone, image size, evaluation and training options).
        backbone: a frozen backbone to share (built from ``cfg.backbone`` when None).
        options: the method's own options, an instance of :attr:`options_type` (its default when None).

    Subclasses implement :meth:`fit_shots` and :meth:`predict_batch`; callers use
    :meth:`fit` and :meth:`predict`, which also measure :attr:`cost`.
    """

    #: the registered name (set by :func:`~vtfusion.methods.registry.register_method`)
    name: ClassVar[str] = ""
    #: False: the method needs no normal image (zero-shot); its cells are ``k = 0``, one per category
    uses_shots: ClassVar[bool] = True
    #: True: it predicts from the frozen backbone's tokens (read from the shared cache)
    reads_tokens: ClassVar[bool] = True
    #: names in :attr:`Prediction.extra_maps` that are scored beside the final map
    map_names: ClassVar[tuple[str, ...]] = ()
    #: its row in the paper's tables (``vtfusion/resources/paper``), or None
    paper_key: ClassVar[str | None] = None
    #: the dataclass of its own options (None: it has none)
    options_type: ClassVar[type | None] = None

    def __init__(self, cfg: ExperimentConfig, backbone: nn.Module | None = None, options: Any = None) -> None:
        self.cfg = cfg
        self.options = options if options is not None else (self.options_type() if self.options_type else None)
        self._backbone = backbone
        self.cost = MethodCost()
        self.context = FitContext()

    # -- what every method has -------------------------------------------------------------
    @classmethod
    def description(cls) -> str:
        """One line: the first line of the class docstring."""
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]

    @property
    def backbone(self) -> nn.Module:
        """The frozen backbone (built from the config on first use, seeded by :attr:`backbone_seed`)."""
        if self._backbone is None:
            self._backbone = build_backbone(self.cfg.backbone, seed=self.backbone_seed)
        return self._backbone

    @property
    def backbone_seed(self) -> int:
        """Seed of a backbone built from the config (it matters only for random weights)."""
        return 0

    @property
    def device(self) -> torch.device:
        """Where it predicts: its backbone's device (the CPU for a method that reads no tokens)."""
        return _device_of(self.backbone) if self.reads_tokens else torch.device("cpu")

    def config(self) -> dict[str, Any]:
        """Everything that determines the method's result on a cell besides the cell itself, as plain
        JSON values: the runner keys result files by its hash. Default: the method's name and
        options, the image size, the evaluation options and (when it reads tokens) the backbone."""
        out: dict[str, Any] = {"method": self.name, "image_size": self.cfg.data.image_size,
                               "eval": dataclasses.asdict(self.cfg.eval)}
        if self.reads_tokens:
            out["backbone"] = dataclasses.asdict(self.cfg.backbone)
        if self.options is not None:
            out["options"] = dataclasses.asdict(self.options)
        return out

    def fit(self, shots: Shots, context: FitContext | None = None) -> dict[str, Any]:
        """Fit on the shots (:meth:`fit_shots`) and time it; returns what the fit recorded."""
        self.context = context or FitContext()
        start = time.perf_counter()
        record = self.fit_shots(shots) or {}
        self.cost.fit_seconds = time.perf_counter() - start
        return record

    def prepare(self) -> None:
        """Called once before a split is predicted (VTFusion: the text embeddings, from the context's cache)."""

    @torch.no_grad()
    def predict(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> Prediction:
        """Maps and scores of a batch: ``images`` (``B x 3 x S x S`` in [0, 1]) or, for a method that
        :attr:`reads_tokens`, their backbone ``tokens`` (``B x L x h x w x D``). ``size``: the
        maps' size (default: the images', else the config's image size)."""
        if images is None and tokens is None:
            raise ValueError(f"{self.name}: predict needs images or tokens")
        if size is None:
            size = tuple(images.shape[-2:]) if images is not None else (self.cfg.data.image_size,) * 2
        if images is not None:
            images = images.to(self.device)
        if self.reads_tokens and tokens is None:
            tokens = self.backbone(images)
        start = time.perf_counter()
        pred = self.predict_batch(images, tokens, size)
        self.cost.predict_seconds += time.perf_counter() - start
        self.cost.predicted_images += int(pred.scores.shape[0])
        return pred

    # -- what a method implements ----------------------------------------------------------
    @abstractmethod
    def fit_shots(self, shots: Shots) -> dict[str, Any] | None:
        """Fit on the k shots (``self.context`` holds the caller's :class:`FitContext`).
        Returns a JSON-like record of the fit (VTFusion: its loss history), or None."""

    @abstractmethod
    def predict_batch(self, images: torch.Tensor | None, tokens: torch.Tensor | None,
                      size: tuple[int, int]) -> Prediction:
        """The :class:`Prediction` of one batch; ``tokens`` are given when :attr:`reads_tokens`,
        ``images`` may be None then (predicting from cached tokens)."""

    # -- a fit worth keeping on disk (optional) --------------------------------------------
    def fit_config(self) -> dict[str, Any] | None:
        """What determines the fitted state, when it is worth saving (a trained model): the run
        store (:mod:`vtfusion.runs`) keys it by its hash and reuses it. None (the default): the
        fit is cheap and is redone. It should name the method so that no two methods share a run."""
        return None

    def save(self, path: Path, record: dict[str, Any]) -> None:
        """Write the fitted state and the fit's ``record`` to ``path`` (when :meth:`fit_config` is not None)."""
        raise NotImplementedError(f"{self.name} keeps no fitted state on disk")

    def load(self, path: Path, context: FitContext | None = None) -> dict[str, Any]:
        """Read the fitted state written by :meth:`save`; returns its record. Raises ``ValueError``
        (or ``KeyError``, ``TypeError``, ``RuntimeError``) for a file it cannot use."""
        raise NotImplementedError(f"{self.name} keeps no fitted state on disk")


def _device_of(module: nn.Module) -> torch.device:
    mean = getattr(module, "mean", None)  # FrozenCLIP keeps its normalisation on the device
    if isinstance(mean, torch.Tensor):
        return mean.device
    return next(module.parameters()).device


__all__ = ["AnomalyMethod", "FitContext", "MethodCost", "Prediction", "Shots"]
