"""One config system: dataclasses grouped in :class:`ExperimentConfig`, and named profiles.

Two profiles exist:

``quick``
    the ``tiny`` random open_clip backbone, the generated toy dataset and a short
    training schedule: every chapter runs on a laptop CPU in minutes. Its numbers
    show the mechanics of the method, never the paper's quality.
``paper``
    OpenCLIP ViT-B-16-plus-240 with the ``laion400m_e32`` weights, MVTec AD, and
    the paper's hyper-parameters (Sec. IV-A). Meant for a GPU.

The profile is chosen by an explicit argument, else ``$VTFUSION_PROFILE``, else
automatically (:func:`auto_profile`): ``paper`` only when CUDA, the weights and the
dataset are all present.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vtfusion import paths
from vtfusion.augment import AugmentConfig
from vtfusion.backbone import BackboneConfig
from vtfusion.das import DASConfig
from vtfusion.metrics import EvalConfig
from vtfusion.model.network import ModelConfig
from vtfusion.pocket.model import READING
from vtfusion.prompts import PromptConfig
from vtfusion.recipes import apply_recipe, recipe_of
from vtfusion.weights import locate_pretrained_weights

PROFILES = ("quick", "paper")
PROFILE_ENV = "VTFUSION_PROFILE"


@dataclass(frozen=True)
class DataConfig:
    """Which images are read and how.

    Attributes:
        dataset: ``toy`` | ``mvtec`` | ``visa`` | ``real_ad`` | ``folder`` (any MVTec-layout folder).
        root: where ``dataset`` lives; ``None`` means its default (see :mod:`vtfusion.paths`).
            Every runner reads it for ``dataset`` (:meth:`root_for`); a root passed to a
            runner (``--root``) wins, and another dataset never reads it.
        categories: categories to run; empty means every category of the dataset.
        image_size: images are resized to ``image_size x image_size`` without centre crop
            (DESIGN §7); masks are resized with nearest neighbour.
        shots: the k of k-shot (number of normal training images).
        seeds: shot-list seeds; results are reported as mean +- std over them.
    """

    dataset: str = "toy"
    root: str | None = None
    categories: tuple[str, ...] = ()
    image_size: int = 240
    shots: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if self.shots < 1:
            raise ValueError(f"DataConfig.shots (k) must be >= 1, got {self.shots}")
        if self.image_size < 1:
            raise ValueError(f"DataConfig.image_size must be >= 1, got {self.image_size}")
        if any(not 0 <= s < 2**31 for s in self.seeds):
            raise ValueError(f"DataConfig.seeds must be in [0, 2**31), got {self.seeds}")

    def root_for(self, dataset: str, given: str | Path | None = None) -> str | Path | None:
        """The root a runner reads ``dataset`` from: ``given`` when passed, else :attr:`root`
        when ``dataset`` is this config's dataset, else ``None`` (the dataset's default)."""
        if given is not None:
            return given
        return self.root if dataset == self.dataset else None


#: TrainConfig.calibration: where the late fusions' normal statistics come from.
CALIBRATIONS = ("shots", "augmented_single", "augmented")


@dataclass(frozen=True)
class TrainConfig:
    """Algorithm 1 schedule and optimiser (paper Sec. IV-A, DESIGN §6).

    Attributes:
        iterations: fixed iteration count for every category **[choice]**; the last
            iterate is evaluated (no checkpoint selection on the test split).
        lr_aie: Adam learning rate of the adaptive image encoder (paper: 1e-3).
        lr_ate: Adam learning rate of the adaptive text encoder (paper: 1e-4).
        lr_mpf: Adam learning rate of the fusion module (paper: 1e-4).
        adaptor_lr_scale: **[choice]** the AIE's feature adaptor learns at
            ``adaptor_lr_scale * lr_aie`` (1.0: the paper's single AIE rate). With Adam
            the first steps move every weight by about the learning rate, which for a
            zero-initialised 3x3 adaptor is a large change of CLIP's features.
        warmup_iterations: **[choice]** linear learning-rate warm-up over this many
            iterations for every module (0: none, the paper).
        leave_one_out: **[choice]** during training, compare each shot (and the synthetic
            anomaly made from it) with prototypes built from the *other* shots, so that
            the training normals' vision map looks like an unseen normal's instead of a
            copy of its own prototype (needs k >= 2; ignored for k = 1). False: the paper.
        augment: **[choice]** light augmentation of the shots each iteration
            (:class:`vtfusion.augment.AugmentConfig`; ``none``: the paper).
        calibration: **[choice, project]** which normal images give the statistics
            (mean, std) that :meth:`vtfusion.model.network.VTFusion.calibrate` stores
            after training, read by the late fusions (``final_map="mpf_vision"`` and
            ``"mpf_knn"``) and by ``ate_aie_fusion="standardised"``; the paper has no
            such step. ``shots``: the shots themselves, leave-one-out when k >= 2, and
            with k = 1 the single shot's own (near zero) distances with the std floored
            at 5% of the largest distance. ``augmented_single``: the same for k >= 2,
            but with k = 1 ``calibration_views`` light-augmented copies of the shot
            (:func:`vtfusion.augment.augment_shots`: small shifts, brightness and
            contrast, flips of textures) against the unaugmented bank, which look like
            new normal images. ``augmented``: augmented copies at every k.
        calibration_views: how many augmented copies ``calibration`` makes.
        diagnostics_every: every this many iterations (and in the first 10) the history
            also records the gradient norm each loss sends into the AIE and the AIE's
            relative feature change; 0 turns them off. Speed only: not part of a result.
        monitor_every: how often a validation monitor, when one is given to
            :func:`vtfusion.train.train_vtfusion`, scores the maps (0: only at the end).
        deterministic: use deterministic algorithms (``torch.use_deterministic_algorithms``)
            while training and predicting; CUDA runs are otherwise not bit-reproducible. The
            MPF's pooling and resizing then take a matrix form (:mod:`vtfusion.model.resample`);
            on an H200 two training runs then give identical weights, at 1.8x the time
            (``bench/cuda_determinism.py``). On the CPU training is deterministic either way.
        seed: torch/numpy seed of training (DAS draws, initialisation).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    iterations: int = 1000
    lr_aie: float = 1e-3
    lr_ate: float = 1e-4
    lr_mpf: float = 1e-4
    adaptor_lr_scale: float = 1.0
    warmup_iterations: int = 0
    leave_one_out: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    calibration: str = "shots"
    calibration_views: int = 16
    diagnostics_every: int = 25
    monitor_every: int = 50
    deterministic: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"TrainConfig.iterations must be >= 1, got {self.iterations}")
        if min(self.lr_aie, self.lr_ate, self.lr_mpf) < 0 or self.adaptor_lr_scale < 0:
            raise ValueError("TrainConfig learning rates and adaptor_lr_scale must be >= 0")
        if self.warmup_iterations < 0 or self.diagnostics_every < 0 or self.monitor_every < 0:
            raise ValueError("TrainConfig.warmup_iterations, diagnostics_every and monitor_every must be >= 0")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"TrainConfig.calibration must be one of {', '.join(CALIBRATIONS)}, "
                             f"got {self.calibration!r}")
        if self.calibration_views < 1:
            raise ValueError(f"TrainConfig.calibration_views must be >= 1, got {self.calibration_views}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines a run. Saved next to every result file."""

    profile: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    das: DASConfig = field(default_factory=DASConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dictionary (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        """Inverse of :meth:`to_dict` (results and checkpoints store configs this way)."""
        return from_dict(cls, data)

    def replace(self, **sections: Any) -> "ExperimentConfig":
        """Copy with whole sections or top-level fields replaced."""
        return dataclasses.replace(self, **sections)


#: Config fields that do not determine a cell: a cell names its dataset, category, k and
#: seed itself, so the profile's default dataset/root, the list of categories or seeds a
#: reproduction loops over and the default k never enter a cell's key (``reproduce
#: --categories chip weave`` and ``train --category chip`` share chip's run and result).
NOT_CELL = (("data", "dataset"), ("data", "root"), ("data", "categories"), ("data", "shots"), ("data", "seeds"))


#: Fields added after runs and results were stored, with the value every earlier run had.
#: At that value a field is left out of every key (:func:`without_fields`), so the runs and
#: results made before it existed keep their keys; any other value makes a new key.
KEY_NEUTRAL_DEFAULTS: dict[tuple[str, ...], Any] = {("model", "late_mean_weight"): 0.5,
                                                    ("model", "mpf", "text_skip"): False,
                                                    ("model", "ate", "image_features"): "aie"}


def without_fields(cfg: ExperimentConfig, dropped: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """``cfg.to_dict()`` without the ``dropped`` field paths (``("data", "root")``, ...), and
    without each field of :data:`KEY_NEUTRAL_DEFAULTS` that holds its neutral value."""
    data = cfg.to_dict()
    neutral = tuple(path for path, value in KEY_NEUTRAL_DEFAULTS.items() if _value_at(data, path) == value)
    for path in dropped + neutral:
        node = data
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1], None)
    return data


def _value_at(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at a field path of a nested config dictionary."""
    for part in path:
        data = data[part]
    return data


def cell_fields(cfg: ExperimentConfig) -> dict[str, Any]:
    """What of ``cfg`` determines one cell's result: everything but :data:`NOT_CELL`."""
    return without_fields(cfg, NOT_CELL)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from a plain dictionary; lists become tuples.

    Unknown keys are an error naming the key, so a stale results file is noticed.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}; "
                         "was this file written by another version of vtfusion?")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _paper() -> ExperimentConfig:
    return ExperimentConfig(
        profile="paper",
        data=DataConfig(dataset="mvtec", image_size=240, shots=2, seeds=(0, 1, 2)),
        backbone=BackboneConfig(arch="ViT-B-16-plus-240", weights="laion400m_e32",
                                layers=(3, 6, 9, 12), precision="fp32"),
        train=TrainConfig(iterations=1000),
    )


def _quick() -> ExperimentConfig:
    return ExperimentConfig(
        profile="quick",
        data=DataConfig(dataset="toy", image_size=240, shots=2, seeds=(0,)),
        backbone=BackboneConfig(arch="tiny", weights="random", layers=(1, 2, 3, 4), precision="fp32"),
        train=TrainConfig(iterations=300),
    )


_BUILDERS = {"paper": _paper, "quick": _quick}


def get_profile(name: str, recipe: str = "project") -> ExperimentConfig:
    """The :class:`ExperimentConfig` of a named profile (``quick`` or ``paper``).

    ``recipe``: ``project`` (the options chosen on validation, :mod:`vtfusion.recipes`) or
    ``paper`` (every option at the paper's literal reading).
    """
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILES)} "
            f"(argument --profile or ${PROFILE_ENV})"
        )
    return apply_recipe(_BUILDERS[name](), recipe)


def with_pocket_backbone(cfg: ExperimentConfig, name: str = "pocket-v2") -> ExperimentConfig:
    """``cfg`` on the released pocket CLIP ``name``, read as chosen on the toy validation split
    (:data:`vtfusion.pocket.model.READING`): its token blocks, prompt preset and temperature."""
    if name not in READING:
        raise ValueError(f"unknown pocket CLIP release {name!r}; released: {', '.join(READING)}")
    reading = READING[name]
    backbone = dataclasses.replace(cfg.backbone, arch="pocket", weights=name, layers=tuple(reading["layers"]))
    return with_text_reading(cfg.replace(backbone=backbone), reading["prompts"], reading["logit_scale"])


def with_text_reading(cfg: ExperimentConfig, prompts: str, logit_scale: float) -> ExperimentConfig:
    """``cfg`` with the text encoder (ATE) read through the prompt preset ``prompts`` at the
    softmax temperature ``logit_scale`` (Eq. 6); everything else unchanged."""
    ate = dataclasses.replace(cfg.model.ate, prompts=PromptConfig(prompts), logit_scale=logit_scale)
    return cfg.replace(model=dataclasses.replace(cfg.model, ate=ate))


def paper_requirements() -> dict[str, bool]:
    """Whether each thing the ``paper`` profile needs is present on this machine."""
    mvtec = paths.default_dataset_root("mvtec")
    return {
        "cuda": torch.cuda.is_available(),
        "weights": locate_pretrained_weights("ViT-B-16-plus-240", "laion400m_e32") is not None,
        "dataset": (mvtec / "bottle" / "train" / "good").is_dir(),
    }


def auto_profile() -> str:
    """``paper`` when CUDA, the CLIP weights and MVTec AD are all present, else ``quick``."""
    return "paper" if all(paper_requirements().values()) else "quick"


def resolve_profile(name: str | None = None) -> str:
    """Profile name from the argument, else ``$VTFUSION_PROFILE``, else :func:`auto_profile`.

    ``auto`` (as argument or environment value) also means automatic choice.
    """
    chosen = name or os.environ.get(PROFILE_ENV) or "auto"
    if chosen == "auto":
        return auto_profile()
    if chosen not in PROFILES:
        raise ValueError(
            f"unknown profile {chosen!r} (from {'argument' if name else '$' + PROFILE_ENV}); "
            f"choose one of {', '.join(PROFILES)} or auto"
        )
    return chosen


def load_config(profile: str | None = None, announce: bool = False) -> ExperimentConfig:
    """Resolve the profile (see :func:`resolve_profile`) and return its config.

    With ``announce=True`` one line says which profile runs and why, as every
    notebook shows at its top.
    """
    name = resolve_profile(profile)
    cfg = get_profile(name)
    if announce:
        print(describe(cfg, explicit=bool(profile or os.environ.get(PROFILE_ENV))))
    return cfg


def describe(cfg: ExperimentConfig, explicit: bool = True, dataset: str | None = None,
             shots: int | typing.Sequence[int] | None = None, data_root: str | Path | None = None) -> str:
    """One human sentence about what a config runs on.

    ``dataset``, ``shots`` and ``data_root``: what actually runs when a command overrides the
    profile's ``cfg.data.dataset``, ``cfg.data.shots`` (several k for a table) and
    ``cfg.data.root``, so the line never names data, a folder or a k that does not run.
    """
    dataset = cfg.data.dataset if dataset is None else dataset
    root = cfg.data.root_for(dataset, data_root)
    shots = cfg.data.shots if shots is None else shots
    ks = ",".join(str(k) for k in shots) if isinstance(shots, (tuple, list)) else str(shots)
    b = cfg.backbone
    weights = "random init (mechanics only, not the paper's quality)" if b.weights == "random" else b.weights
    if b.arch == "pocket" and b.weights != "random":
        weights += " (pocket CLIP, pre-trained by this project on generated images; not the paper's CLIP)"
    how = "chosen explicitly" if explicit else "chosen automatically"
    line = (f"profile: {cfg.profile} ({how}), recipe: {recipe_of(cfg)}; backbone: {b.arch}, weights: {weights}; "
            f"data: {dataset}{'' if root is None else f' in {root}'}; k={ks}; {cfg.train.iterations} training iterations")
    if cfg.profile == "quick" and not explicit:
        missing = [k for k, ok in paper_requirements().items() if not ok]
        line += f". The paper profile needs {', '.join(missing)}: not present here."
    return line
