"""The ``vtfusion`` command line.

Examples::

    vtfusion data toy                      # generate the toy dataset (data/toy)
    vtfusion data shots --dataset mvtec    # write vtfusion/resources/shots/mvtec/<category>/k<k>_seed<s>.json
    vtfusion data download mvtec --root data/mvtec_ad
    vtfusion pocket pretrain --out runs/pocket  # pre-train the pocket CLIP (resumable)
    vtfusion pocket release --run runs/pocket   # package its weights and model card
    vtfusion list methods                  # registered methods (also: datasets, das-kinds)
    vtfusion export --checkpoint model.pt --out model.onnx   # one ONNX graph (pip install 'vtfusion[deploy]')
    vtfusion predict --onnx model.onnx a.png b.png --out pred/  # ONNX Runtime, no torch

Errors are one line, ``error: <what> (<option or file>); <how to fix>``, with exit code 2;
``--debug`` (or ``VTFUSION_DEBUG=1``) also prints the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vtfusion import __version__, paths

# Commands import what they run inside their function: `vtfusion --help` and argument errors
# stay fast (no torch). Those function-local imports are marked "local: light CLI".

DEBUG_ENV = "VTFUSION_DEBUG"
SEED_LIMIT = 2**31
"""Seeds must be in ``[0, SEED_LIMIT)``: every generator the project seeds accepts them."""
LISTS = ("methods", "datasets", "das-kinds")
"""What ``vtfusion list`` prints: the registries (:mod:`vtfusion.registry`)."""


# --- errors and argument checks ----------------------------------------------------------

class CLIError(Exception):
    """A mistake on the command line: printed as ``error: <what> (<where>); <fix>``, exit code 2."""

    def __init__(self, what: str, where: str, fix: str) -> None:
        super().__init__(f"{what} ({where}); {fix}")
        self.what, self.where, self.fix = what, where, fix


@dataclass(frozen=True)
class IntRange:
    """The allowed values ``low <= v < high`` of an integer option (one value or a list)."""

    dest: str
    option: str
    low: int
    high: int | None
    fix: str


INT_RANGES = (
    IntRange("shots", "--shots", 1, None, "k is the number of normal training images: give 1 or more"),
    IntRange("k", "--k", 1, None, "give shot counts of 1 or more"),
    IntRange("iterations", "--iterations", 1, None, "give 1 or more training iterations"),
    IntRange("steps", "--steps", 1, None, "give 1 or more optimiser steps"),
    IntRange("threads", "--threads", 1, None, "give 1 or more threads"),
    IntRange("layers", "--layers", 1, None, "blocks are numbered from 1"),
    IntRange("seed", "--seed", 0, SEED_LIMIT, f"give a seed from 0 to {SEED_LIMIT - 1}"),
    IntRange("seeds", "--seeds", 0, SEED_LIMIT, f"give seeds from 0 to {SEED_LIMIT - 1}"),
    IntRange("slurm_time", "--slurm-time", 1, None, "give a time limit per cell of 1 minute or more"),
    IntRange("slurm_gpus_per_task", "--slurm-gpus-per-task", 0, None, "give 0 or more GPUs per task"),
    IntRange("slurm_array_parallelism", "--slurm-array-parallelism", 1, None, "give 1 or more tasks at once"),
)
"""Every integer option of every command, by its ``dest``: checked by :func:`validate_args`."""


def validate_args(args: argparse.Namespace) -> None:
    """The one check of a parsed command line, before any work starts; raises :class:`CLIError`.

    Integer ranges (:data:`INT_RANGES`), the dataset and its ``--root``, the ``--methods``,
    the input files a command declares (``set_defaults(inputs=...)``) and that every output location it declares
    (``set_defaults(outputs=...)``) is, or can be created as, a folder this process may write to.
    """
    for rule in INT_RANGES:
        _check_range(args, rule)
    _check_dataset_options(args)
    _check_methods(args)
    for dest in getattr(args, "inputs", ()):
        for path in _as_list(getattr(args, dest, None)):
            check_input_file(Path(path), "--" + dest if dest != "images" else "image")
    for dest in getattr(args, "outputs", ()):
        if getattr(args, dest, None) is not None:
            check_output_folder(Path(getattr(args, dest)), "--" + dest)


def _as_list(value: Any) -> list:
    """``None`` -> ``[]``, a list stays, anything else becomes a one-element list."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _check_range(args: argparse.Namespace, rule: IntRange) -> None:
    """Raise :class:`CLIError` when a value of the option ``rule.dest`` is out of its range."""
    for value in _as_list(getattr(args, rule.dest, None)):
        if value < rule.low or (rule.high is not None and value >= rule.high):
            bound = f"at least {rule.low}" if rule.high is None else f"from {rule.low} to {rule.high - 1}"
            raise CLIError(f"{rule.dest} must be {bound}, got {value}", rule.option, rule.fix)


def _check_dataset_options(args: argparse.Namespace) -> None:
    """A registered ``--dataset``; one without a default location (``folder``) needs ``--root``,
    one without a category table needs ``--categories`` where they default."""
    dataset = getattr(args, "dataset", None)
    if dataset is None:
        return
    from vtfusion.data import get_dataset, list_datasets  # local: light CLI

    if dataset not in list_datasets():
        raise CLIError(f"unknown dataset {dataset!r}", "--dataset", f"use one of {', '.join(list_datasets())}")
    spec = get_dataset(dataset)
    if spec.default_root is None and spec.prepare_root is None and getattr(args, "root", None) is None:
        raise CLIError(f"the {dataset} dataset needs its location", "--root",
                       "give --root <folder in MVTec layout: <root>/<category>/train/good/...>")
    if spec.categories is None and hasattr(args, "categories") and not args.categories:
        raise CLIError("a folder dataset has no list of categories to run", "--categories",
                       "name the category folders to run with --categories")


def _check_methods(args: argparse.Namespace) -> None:
    """Every ``--methods`` name is registered, and other methods than VTFusion are asked of table1 only."""
    methods = getattr(args, "methods", None)
    if not methods:
        return
    from vtfusion.methods import list_methods  # local: light CLI

    for name in methods:
        if name not in list_methods():
            raise CLIError(f"unknown method {name!r}", "--methods", f"use one of {', '.join(list_methods())}")
    if getattr(args, "table", "table1") != "table1" and list(methods) != ["vtfusion"]:
        raise CLIError(f"{args.table} compares configs of VTFusion; other methods are rows of table1", "--methods",
                       "run `vtfusion reproduce table1 --methods ...`")


def check_categories(dataset: str, names: list[str], option: str) -> None:
    """Raise :class:`CLIError` when a category is not one of a known dataset's."""
    from vtfusion.data import categories, category_info  # local: light CLI

    for name in names:
        try:
            category_info(dataset, name)
        except ValueError:
            raise CLIError(f"unknown category {name!r} of dataset {dataset}", option,
                           f"choose from {', '.join(categories(dataset))}") from None


def check_input_file(path: Path, option: str) -> None:
    """Raise :class:`CLIError` unless ``path`` is an existing file."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise CLIError(f"{path} {what}", option, "give the path of an existing file")


def check_output_folder(path: Path, option: str) -> None:
    """Raise :class:`CLIError` unless ``path`` is, or can be created as, a folder we may write to.

    Checked before any work, so a long run never fails only when it saves.
    """
    if path.exists() and not path.is_dir():
        raise CLIError(f"output location {path} is a file, not a folder", option,
                       "give a folder (it is created if missing) or move the file away")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CLIError(f"cannot create folder {path}: {existing} is a file", option, "choose another location")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"no permission to write in {existing}", option,
                       "choose a folder you can write to, or change its permissions")


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that report a user's mistake or an unusable file (printed in one line), not a bug.

    The project's own error classes are taken from ``sys.modules``: one whose module was never
    imported cannot have been raised, and this keeps ``vtfusion --help`` light.
    """
    types: list[type[BaseException]] = [CLIError, ValueError, OSError]  # OSError: files, ImageReadError
    for module, name in (("PIL.Image", "DecompressionBombError"), ("vtfusion.data.download", "DownloadError"),
                         ("vtfusion.pocket.model", "PocketWeightsError"), ("vtfusion.paper_tables", "PaperCellNotFound"),
                         ("torch.cuda", "OutOfMemoryError")):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            types.append(cls)
    return tuple(types)


_OS_FIXES = ((PermissionError, "choose a location you can write to, or change its permissions"),
             (FileNotFoundError, "check the path"),
             (IsADirectoryError, "give a file, not a folder"),
             (NotADirectoryError, "a part of the path is a file, not a folder: choose another path"))


def format_error(err: BaseException) -> str:
    """``error: <what> (<option or file>); <how to fix>`` on one line."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        fix = next((f for cls, f in _OS_FIXES if isinstance(err, cls)), "check the file")
        text = f"{err.strerror} ({err.filename}); {fix}"
    elif isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    return "error: " + " ".join(text.split())


def debug_requested(args: argparse.Namespace | None) -> bool:
    """``--debug`` was given or ``$VTFUSION_DEBUG`` is set to something other than 0/false/no."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def _cmd_download(args: argparse.Namespace) -> int:
    from vtfusion.data.datasets import dataset_root  # local: light CLI
    from vtfusion.data.download import download_dataset

    root = dataset_root(args.name, args.root)
    out = download_dataset(args.name, root, force=args.force, progress=not args.quiet)  # DownloadError: main()
    print(f"{args.name} is ready in {out}")
    return 0


def _cmd_toy(args: argparse.Namespace) -> int:
    from vtfusion.data import toy  # local: light CLI

    argv = ["--seed", str(args.seed)]
    if args.root:
        argv += ["--root", str(args.root)]
    argv.append("--force" if args.force else "--ensure")
    return toy.main(argv)


def _cmd_shots(args: argparse.Namespace) -> int:
    from vtfusion.data import get_dataset, list_datasets  # local: light CLI
    from vtfusion.data.shots import SHOT_KS, SHOT_SEEDS, generate_shot_lists

    datasets = [n for n in list_datasets() if get_dataset(n).committed_shots] if args.all else [args.dataset]
    if not args.all and args.dataset is None:
        raise CLIError("no dataset chosen", "--dataset", "give --dataset NAME or --all")
    for name in datasets:
        start = time.perf_counter()
        try:
            written = generate_shot_lists(name, root=args.root, ks=args.k or SHOT_KS, seeds=args.seeds or SHOT_SEEDS,
                                          base=args.out, validate_root=args.validate)
        except FileNotFoundError as err:
            if not args.all:
                raise
            print(f"skipped {name}: {err}")
            continue
        print(f"{name}: wrote {len(written)} shot lists in {time.perf_counter() - start:.2f}s"
              + (f" under {Path(written[0]).parents[2]}" if written else ""))
    return 0


def _experiment_config(args: argparse.Namespace):
    """The profile's config with the command-line overrides applied."""
    from vtfusion.config import load_config, with_pocket_backbone  # local: light CLI
    from vtfusion.pocket.model import READING
    from vtfusion.recipes import apply_recipe

    cfg = load_config(args.profile)
    backbone = cfg.backbone
    if args.backbone:
        backbone = dataclasses.replace(backbone, arch=args.backbone)
    if args.weights:
        backbone = dataclasses.replace(backbone, weights=args.weights)
    if backbone.arch == "pocket" and backbone.weights in READING:
        # a released pocket CLIP is read as chosen on validation: its blocks, prompts, temperature
        cfg = with_pocket_backbone(cfg.replace(backbone=backbone), backbone.weights)
        backbone = cfg.backbone
    if args.layers:
        backbone = dataclasses.replace(backbone, layers=tuple(args.layers))
    train = cfg.train
    if args.iterations is not None:
        train = dataclasses.replace(train, iterations=args.iterations)
    if args.device:
        train = dataclasses.replace(train, device=args.device)
    model = dataclasses.replace(cfg.model, variant=args.variant) if args.variant else cfg.model
    cfg = cfg.replace(backbone=backbone, train=train, model=model)
    if args.recipe:
        cfg = apply_recipe(cfg, args.recipe)
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    from vtfusion.config import describe  # local: light CLI
    from vtfusion.runs import train_or_load

    cfg = _experiment_config(args)
    dataset = args.dataset or cfg.data.dataset
    k = cfg.data.shots if args.shots is None else args.shots  # not `or`: --shots 0 is an error, not "default"
    print(describe(cfg, dataset=dataset, shots=k, data_root=args.root))
    model, info = train_or_load(cfg, dataset, args.category, k, args.seed, root=args.out, data_root=args.root,
                                progress=not args.quiet)
    if info["loaded"]:
        print(f"already trained (same config): {info['checkpoint']}")
    else:
        h = info["history"]
        print(f"trained {dataset}/{args.category} k={k} seed={args.seed}: {info['iterations']} iterations in "
              f"{info['seconds']:.1f}s, loss {h[0]['total']:.4f} -> {h[-1]['total']:.4f}")
        print(f"checkpoint: {info['checkpoint']}")
    return 0


#: Options of ``vtfusion predict`` that the ONNX path (image files, CPU) does not take.
NOT_WITH_ONNX = (("dataset", "--dataset"), ("category", "--category"), ("root", "--root"),
                 ("device", "--device"), ("require_masks", "--require-masks"))


def _cmd_predict(args: argparse.Namespace) -> int:
    if (args.checkpoint is None) == (args.onnx is None):
        raise CLIError("give one model to predict with", "--checkpoint, --onnx",
                       "give --checkpoint model.pt (PyTorch) or --onnx model.onnx (`vtfusion export`)")
    if args.onnx is not None:
        return _predict_onnx(args)
    from vtfusion.checkpoint import load_checkpoint  # local: light CLI
    from vtfusion.data import load_dataset
    from vtfusion.predict import predict_files
    from vtfusion.train import resolve_device

    model, cfg, extra = load_checkpoint(args.checkpoint, device=resolve_device(args.device or "auto"))
    if args.images:
        files = list(args.images)
    else:
        dataset = args.dataset or extra.get("dataset")
        category = args.category or extra.get("category")
        if not dataset or not category:
            raise CLIError("nothing to score", "images, --dataset, --category",
                           "give image files, or --dataset and --category")
        split = load_dataset(dataset, category, args.split, args.root, None)
        files = [r.image for r in split.records]
    table = predict_files(model, files, args.out, image_size=cfg.data.image_size)
    print(f"scored {len(files)} image(s): maps/<name>.npy, overlays/<name>.png and {table} "
          "(path, name, image score)")
    return 0


def _predict_onnx(args: argparse.Namespace) -> int:
    """``vtfusion predict --onnx``: ONNX Runtime on image files; imports no torch."""
    for dest, option in NOT_WITH_ONNX:
        if getattr(args, dest):
            raise CLIError(f"{option} is not used with --onnx", option,
                           "give the image files to score, or use --checkpoint")
    if not args.images:
        raise CLIError("nothing to score", "images", "give the image files to score with --onnx")
    from vtfusion.deploy.onnx_predict import load_onnx, predict_files_onnx  # local: light CLI

    table = predict_files_onnx(load_onnx(args.onnx), args.images, args.out)
    print(f"scored {len(args.images)} image(s) with {args.onnx} (ONNX Runtime): maps/<name>.npy, "
          f"overlays/<name>.png and {table} (path, name, image score)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from vtfusion.deploy.export import export_checkpoint, quantize_int8  # local: light CLI

    if args.out.suffix != ".onnx":
        raise CLIError(f"{args.out} does not end in .onnx", "--out", "name the file model.onnx (or *.onnx)")
    if args.out.is_dir():
        raise CLIError(f"{args.out} is a folder", "--out", "give the path of the .onnx file to write")
    check_output_folder(args.out.parent, "--out")  # before the backbone is built
    if args.precision == "fp32":
        path = export_checkpoint(args.checkpoint, args.out, args.input_kind)
    else:
        fp32 = args.out.with_name(args.out.stem + ".fp32.onnx")
        export_checkpoint(args.checkpoint, fp32, args.input_kind)
        path = quantize_int8(fp32, args.out)
        print(f"fp32 graph: {fp32}")
    print(f"exported {args.checkpoint} -> {path} ({args.precision}, {args.input_kind} input, "
          f"{path.stat().st_size / 1e6:.1f} MB); run it with `vtfusion predict --onnx {path} IMAGES --out DIR`")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from vtfusion.config import describe  # local: light CLI
    from vtfusion.launch import CellsFailed, SlurmOptions, describe_plan, launch
    from vtfusion.reproduce import default_shots, format_rows, plan, reproduce, summarise, write_summary
    from vtfusion.tables import write_tables

    cfg = _experiment_config(args)
    dataset, paper_dataset = reproduce_datasets(cfg, args.dataset)
    shots = tuple(args.shots) if args.shots else default_shots(args.table)
    if dataset != paper_dataset:
        print(f"note: this runs on the {dataset} data; its table is printed beside the paper's "
              f"{paper_dataset} values as a reference, not a comparison")
    if args.categories:
        check_categories(dataset, args.categories, "--categories")
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, categories=tuple(args.categories)))
    devices = _launch_devices(args)
    print(describe(cfg, dataset=dataset, shots=shots, data_root=args.root))
    where = dict(shots=shots, seeds=tuple(args.seeds) if args.seeds else None, results_root=args.results,
                 runs_root=args.runs, data_root=args.root, paper_dataset=paper_dataset,
                 methods=tuple(args.methods) if args.methods else None)
    cells = plan(args.table, cfg, dataset, **where) if args.dry_run or args.launcher != "sequential" else None
    if args.dry_run:
        print(describe_plan(cells, args.launcher, devices))
        return 0
    slurm = SlurmOptions(args.slurm_partition, args.slurm_time, args.slurm_gpus_per_task,
                         args.slurm_array_parallelism, args.slurm_cluster)
    try:
        if cells is None:  # sequential: reproduce() is plan -> run_sequential -> summarise
            rows = reproduce(args.table, cfg, dataset, progress=not args.quiet, **where)
        else:
            rows = summarise(cells, launch(cells, args.launcher, devices, slurm, progress=not args.quiet))
    except CellsFailed as err:  # the other cells are on disk: a rerun redoes only these
        print("\n".join(f"failed: {line}" for line in err.failures), file=sys.stderr)
        print(f"{len(err.failures)} cell(s) failed (list: {err.path}); run the same command again to redo "
              "only them", file=sys.stderr)
        return 1
    print(format_rows(rows))
    out = Path(args.results or paths.results_dir()) / cfg.profile
    json_path, csv_path = write_summary(rows, out)
    # The paper's layout (categories x k, ours beside the paper), as the book shows it.
    md_path, table_csv_path = write_tables(rows, json_path)
    print(f"wrote {json_path}, {csv_path}, {md_path} and {table_csv_path}")
    return 0


def _launch_devices(args: argparse.Namespace) -> list[str] | None:
    """The devices of ``--launcher local`` (:func:`vtfusion.launch.parse_devices`); None otherwise."""
    from vtfusion.launch import parse_devices  # local: light CLI

    if args.devices is not None and args.launcher != "local":
        raise CLIError(f"--devices is for --launcher local, not {args.launcher}", "--devices",
                       "add --launcher local, or drop --devices")
    if args.launcher != "local":
        return None
    try:
        return parse_devices(args.devices or "cuda:0")
    except ValueError as err:
        raise CLIError(str(err), "--devices", "e.g. --devices cuda:0,cuda:1 (or cpu,cpu)") from None


def reproduce_datasets(cfg, requested: str | None) -> tuple[str, str]:
    """``(the dataset that runs, the dataset of the paper column)`` of ``vtfusion reproduce``.

    An explicit ``--dataset`` always runs (whatever the profile). Without one the profile
    decides: the paper profile runs MVTec AD, the quick profile its own (toy) data, printed
    beside MVTec AD's paper values as a reference.
    """
    from vtfusion.data import get_dataset  # local: light CLI
    from vtfusion.reproduce import run_dataset_for

    if requested is None:
        return run_dataset_for(cfg, "mvtec"), "mvtec"
    return requested, requested if get_dataset(requested).paper_tables else "mvtec"


def _cmd_pocket_pretrain(args: argparse.Namespace) -> int:
    from vtfusion.pocket.pretrain import PretrainConfig, pretrain  # local: light CLI

    given = {name: getattr(args, name) for name in ("steps", "lr", "warmup") if getattr(args, name) is not None}
    cfg = PretrainConfig(**given, seed=args.seed, threads=args.threads,
                         single_family_share=args.single_family_share, val_batches=args.val_batches,
                         mask_loss_weight=args.mask_loss_weight, mask_head=args.mask_head,
                         recon_weight=args.recon_weight, match_weight=args.match_weight,
                         init="" if args.init == "random" else args.init)
    state = pretrain(args.out, cfg, device=args.device, progress=not args.quiet)  # ValueError: main()
    last = state.validation[-1]
    print(f"pocket CLIP: {state.step} steps in {state.seconds / 60:.1f} min; held-out families: zero-shot "
          f"AUROC {last['held_out_auroc']:.3f}, accuracy {last['held_out_accuracy']:.3f}; checkpoint in {args.out}")
    return 0


def _cmd_pocket_release(args: argparse.Namespace) -> int:
    from vtfusion.pocket.release import release  # local: light CLI

    weights, card = release(args.run, args.name, machine=args.machine, note=args.note)
    print(f"released {args.name}: {weights} ({weights.stat().st_size / 1e6:.1f} MB) with model card {card}")
    return 0


def _cmd_results_ls(args: argparse.Namespace) -> int:
    from vtfusion.results import format_listing, list_results  # local: light CLI

    root = args.results or paths.results_dir()
    print(format_listing(list_results(root), root))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    print(format_registry(args.what))
    return 0


def format_registry(what: str) -> str:
    """``vtfusion list <what>``: one registered name per line, with its one-line description."""
    if what == "methods":
        from vtfusion.methods import get_method, list_methods  # local: light CLI

        entries = [(n, get_method(n).description()) for n in list_methods()]
    elif what == "datasets":
        from vtfusion.data import get_dataset, list_datasets  # local: light CLI

        entries = [(n, get_dataset(n).description) for n in list_datasets()]
    elif what == "das-kinds":
        from vtfusion.das import get_das_kind, list_das_kinds  # local: light CLI

        entries = [(n, get_das_kind(n).description + (f" (also: {', '.join(get_das_kind(n).aliases)})"
                                                       if get_das_kind(n).aliases else "")) for n in list_das_kinds()]
    else:
        raise CLIError(f"nothing called {what!r} to list", "list", f"use one of {', '.join(LISTS)}")
    width = max(len(name) for name, _ in entries)
    return "\n".join(f"{name:<{width}}  {text}".rstrip() for name, text in entries)


@contextlib.contextmanager
def require_masks_scope(enabled: bool) -> Iterator[None]:
    """``--require-masks`` for the duration of one command: ``$VTFUSION_REQUIRE_MASKS``, read
    by every dataset the command opens, is set and then restored (in-process callers of
    :func:`main` do not inherit it)."""
    if not enabled:  # nothing to set: and `predict --onnx` must not import the data layer (torch)
        yield
        return
    from vtfusion.data.datasets import REQUIRE_MASKS_ENV  # local: light CLI

    before = os.environ.get(REQUIRE_MASKS_ENV)
    if enabled:
        os.environ[REQUIRE_MASKS_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(REQUIRE_MASKS_ENV, None)
        else:
            os.environ[REQUIRE_MASKS_ENV] = before


def _add_require_masks_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--require-masks", action="store_true",
                   help="a defective test image without a ground-truth mask is an error (default: data with "
                        "image labels only is evaluated on image metrics; pixel metrics show n/a)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and schedule (default: the profile's)")
    g.add_argument("--profile", choices=["quick", "paper", "auto"], default=None,
                   help="config profile (default: $VTFUSION_PROFILE, else automatic)")
    g.add_argument("--backbone", default=None, help="open_clip architecture, 'tiny' (random test model) or 'pocket'")
    g.add_argument("--weights", default=None, help="pretrained tag (laion400m_e32), pocket-v1 or pocket-v2 (read as "
                        "vtfusion.pocket.model.READING says), a weights file, or 'random'")
    g.add_argument("--layers", type=int, nargs="+", default=None, help="1-indexed blocks whose tokens are used")
    g.add_argument("--variant", choices=["full", "ate_aie", "ate"], default=None, help="Table II row")
    g.add_argument("--iterations", type=int, default=None, help="training iterations")
    g.add_argument("--recipe", choices=["paper", "project"], default=None,
                   help="training recipe: the paper read literally, or the project's choice on validation "
                        "(default: the profile's)")
    g.add_argument("--device", default=None, help="auto, cpu or cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vtfusion",
        description="VTFusion: vision-text fusion for few-shot industrial anomaly detection.",
        epilog="Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"vtfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="get, generate and split datasets",
                          description="Get, generate and split datasets.")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = dsub.add_parser("download", help="download and extract MVTec AD or VisA",
                        description="Download (resumable, checksummed) and safely extract a benchmark.")
    p.add_argument("name", choices=["mvtec", "visa"], help="which dataset")
    p.add_argument("--root", type=Path, default=None,
                   help="target folder (default: data/mvtec_ad or data/visa, or $VTFUSION_<NAME>_ROOT)")
    p.add_argument("--force", action="store_true", help="extract again even if present (an archive already matching its published checksum is reused)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download, outputs=("root",))

    p = dsub.add_parser("toy", help="generate the toy industrial dataset",
                        description="Generate the procedurally drawn toy dataset in MVTec layout.")
    p.add_argument("--root", type=Path, default=None, help="target folder (default: data/toy)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--force", action="store_true", help="regenerate even if an identical copy exists")
    p.set_defaults(func=_cmd_toy, outputs=("root",))

    p = dsub.add_parser("shots", help="write the k-shot lists (vtfusion/resources/shots/...)",
                        description="Write k-shot lists for every category, k and seed. MVTec AD and VisA "
                                    "lists are built from the layout facts in ../shared/datasets, without the archives.")
    p.add_argument("--dataset", default=None, help="a dataset of `vtfusion list datasets`")
    p.add_argument("--all", action="store_true", help="every dataset whose lists ship with the package")
    p.add_argument("--root", type=Path, default=None, help="dataset folder (needed for --dataset folder)")
    p.add_argument("--k", type=int, nargs="+", default=None, help="shot counts (default 1 2 4 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--out", type=Path, default=None, help="output base folder (default: vtfusion/resources/shots for the named datasets, "
                        "$VTFUSION_DATA_DIR/shots for a folder)")
    p.add_argument("--validate", type=Path, default=None, metavar="ROOT",
                   help="check every listed file exists in this extracted copy of the dataset")
    p.set_defaults(func=_cmd_shots, outputs=("out",))

    p = sub.add_parser("train", help="train VTFusion on one category (Algorithm 1)",
                       description="Train VTFusion on the k-shot normal images of one category. A run with the "
                                   "same config, category, k and seed that already finished is reused.")
    p.add_argument("--dataset", default=None, help="toy, mvtec, visa, real_ad or folder (default: the profile's)")
    p.add_argument("--category", required=True, help="category name")
    p.add_argument("--root", type=Path, default=None, help="dataset root (needed for --dataset folder)")
    p.add_argument("--shots", type=int, default=None, help="k, the number of normal images (default: profile)")
    p.add_argument("--seed", type=int, default=0, help=f"shot-list and training seed, 0 to {SEED_LIMIT - 1} (default 0)")
    p.add_argument("--out", type=Path, default=None, help="runs folder (default: runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_options(p)
    _add_require_masks_option(p)
    p.set_defaults(func=_cmd_train, outputs=("out",))

    p = sub.add_parser("predict", help="score images with a trained model",
                       description="Write score maps (.npy), overlays (.png) and scores.csv for images or a test split.")
    p.add_argument("--checkpoint", type=Path, default=None, help="model.pt written by `vtfusion train`")
    p.add_argument("--onnx", type=Path, default=None,
                   help="instead of --checkpoint: a model.onnx written by `vtfusion export`, run by ONNX Runtime "
                        "on the CPU without PyTorch (image files only)")
    p.add_argument("images", nargs="*", type=Path, help="image files (default: the test split of --dataset/--category)")
    p.add_argument("--dataset", default=None, help="dataset of the split to score (default: the checkpoint's)")
    p.add_argument("--category", default=None, help="category (default: the checkpoint's)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--root", type=Path, default=None, help="dataset root")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    _add_require_masks_option(p)
    p.set_defaults(func=_cmd_predict, inputs=("checkpoint", "onnx", "images"), outputs=("out",))

    p = sub.add_parser("export", help="export a trained model as one ONNX graph",
                       description="Write a checkpoint as one ONNX graph: image pixels in, the pixel map M^f and "
                                   "the image score out (backbone, AIE, prototypes, text features and MPF folded "
                                   "in; dynamic batch size). Needs pip install 'vtfusion[deploy]'.")
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt written by `vtfusion train`")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the export format (onnx)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--input-kind", choices=["uint8", "float"], default="uint8",
                   help="the graph's input: uint8 pixels in [0, 255] (default) or float32 in [0, 1], NCHW RGB")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="fp32 (default), or int8: matrix weights quantised, activations quantised on the fly "
                        "(the fp32 graph is kept beside it as *.fp32.onnx); bench/bench_onnx.py measures the change")
    p.set_defaults(func=_cmd_export, inputs=("checkpoint",))

    p = sub.add_parser("reproduce", help="reproduce a table of the paper cell by cell",
                       description="Train and evaluate every (category, k, seed, method) cell of a paper table, "
                                   "print ours (mean +- std over seeds) beside the paper's values, write CSV/JSON. "
                                   "Finished cells are reused, so an interrupted run resumes.")
    p.add_argument("table", choices=["table1", "table2", "table3"])
    p.add_argument("--dataset", default=None,
                   help="the data that runs: mvtec, visa, toy, real_ad or folder (default: mvtec in the paper "
                        "profile; the quick profile's toy data, beside MVTec AD's paper values)")
    p.add_argument("--shots", type=int, nargs="+", default=None, help="k values (default 2 4 8; table3: 2)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="shot seeds (default: the profile's)")
    p.add_argument("--categories", nargs="+", default=None, help="subset of categories (default: all)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="table1 only: the registered methods that are rows (default: vtfusion; "
                        "`vtfusion list methods`), e.g. vtfusion winclip_plus patch_knn zero_shot")
    p.add_argument("--root", type=Path, default=None, help="dataset root")
    p.add_argument("--results", type=Path, default=None, help="results folder (default results/)")
    p.add_argument("--runs", type=Path, default=None, help="trained models folder (default runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--launcher", choices=["sequential", "local", "slurm"], default="sequential",
                   help="where the cells run: one after another here (default), one worker process per "
                        "--devices entry, or a Slurm job array through submitit (pip install 'vtfusion[cluster]')")
    p.add_argument("--devices", default=None, metavar="LIST",
                   help="--launcher local: comma-separated devices, one worker each (default cuda:0), "
                        "e.g. cuda:0,cuda:1 or cpu,cpu")
    p.add_argument("--dry-run", action="store_true",
                   help="print the cell plan (finished, to run, per worker) and its estimated time; run nothing")
    p.add_argument("--slurm-partition", default=None, help="--launcher slurm: the partition (default: the cluster's)")
    p.add_argument("--slurm-time", type=int, default=240, metavar="MINUTES",
                   help="--launcher slurm: time limit of each cell's task, in minutes (default 240)")
    p.add_argument("--slurm-gpus-per-task", type=int, default=1, help="--launcher slurm: GPUs per task (default 1)")
    p.add_argument("--slurm-array-parallelism", type=int, default=32,
                   help="--launcher slurm: at most this many cells run at once (default 32)")
    p.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"], default="slurm",
                   help="--launcher slurm: 'local' or 'debug' run submitit's executors on this machine, "
                        "to try the path without a cluster (default slurm)")
    _add_model_options(p)
    _add_require_masks_option(p)
    p.set_defaults(func=_cmd_reproduce, outputs=("results", "runs"))

    pocket = sub.add_parser("pocket", help="pre-train and release the pocket CLIP",
                            description="The pocket CLIP: a small CLIP pre-trained by this project on a generated, "
                                        "captioned world (opt-in: --backbone pocket --weights pocket-v2).")
    psub = pocket.add_subparsers(dest="pocket_command", metavar="ACTION", required=True)
    p = psub.add_parser("pretrain", help="pre-train on the pocket world (resumes from --out)",
                        description="Pre-train the pocket CLIP with open_clip's CLIP and ClipLoss. Checkpoints are "
                                    "written atomically to OUT/checkpoint.pt; rerun the same command to resume.")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt, curves.json)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the released recipe's)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data-stream seed")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--single-family-share", type=float, default=0.0,
                   help="share of the steps whose batch holds one family only (default 0, the released recipe)")
    p.add_argument("--mask-loss-weight", type=float, default=0.0,
                   help="weight of the auxiliary per-patch damage loss (default 0, the released recipe)")
    p.add_argument("--mask-head", default="linear", choices=("linear", "text"),
                   help="what reads the patches for the damage loss: a linear head, or the text tower's prompts")
    p.add_argument("--recon-weight", type=float, default=0.0,
                   help="weight of the auxiliary per-patch pixel reconstruction loss (default 0, the released recipe)")
    p.add_argument("--match-weight", type=float, default=0.0,
                   help="weight of the auxiliary nearest-neighbour matching loss (default 0, the released recipe)")
    p.add_argument("--init", default="random", choices=("random", "pocket-v1", "pocket-v2"),
                   help="start from a random init (default) or continue from a released pocket CLIP")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's 1.5e-3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: the recipe's 150)")
    p.add_argument("--val-batches", type=int, default=2, help="validation batches of each family group (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pocket_pretrain, outputs=("out",))
    p = psub.add_parser("release", help="write a run's weights (fp16 safetensors) and model card into the package",
                        description="Convert a finished pre-training run into the package's released weights.")
    p.add_argument("--run", type=Path, required=True, help="the run folder of `vtfusion pocket pretrain`")
    p.add_argument("--name", default="pocket-v1", help="release name (default pocket-v1)")
    p.add_argument("--machine", default=None, help="where it was trained, for the model card")
    p.add_argument("--note", default="", help="a sentence for the model card's opening (how it is used, and why)")
    p.set_defaults(func=_cmd_pocket_release)

    results = sub.add_parser("results", help="list the results and table summaries on disk",
                             description="Inspect the results folder: table summaries (one per table, dataset, "
                                         "profile and config) and cells no summary covers.")
    rsub = results.add_subparsers(dest="results_command", metavar="ACTION", required=True)
    p = rsub.add_parser("ls", help="list summaries and cell groups: table, dataset, profile, config hash, cells, when",
                        description="List every table summary and every group of cells without a summary.")
    p.add_argument("--results", type=Path, default=None, help="results folder (default results/)")
    p.set_defaults(func=_cmd_results_ls)

    p = sub.add_parser("list", help="list the registered methods, datasets or DAS anomaly kinds",
                       description="Print the names registered in one of the package's registries, with a line "
                                   "about each: methods (rows of `reproduce table1 --methods`), datasets "
                                   "(--dataset) or das-kinds (DASConfig.types).")
    p.add_argument("what", choices=LISTS, help="which registry")
    p.set_defaults(func=_cmd_list)
    return parser


def add_debug_option(parser: argparse.ArgumentParser, top: bool = True) -> argparse.ArgumentParser:
    """Accept ``--debug`` on ``parser`` and on every (nested) subcommand, before or after it."""
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help=f"on an error also print the traceback (or set {DEBUG_ENV}=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_debug_option(sub, top=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line (exit 2), Ctrl-C exits with 130.

    Arguments are checked by :func:`validate_args` before any work. Errors that are not a
    user's mistake (see :func:`user_error_types`) are bugs and keep their traceback.
    """
    args = add_debug_option(build_parser()).parse_args(argv)
    try:
        validate_args(args)
        with require_masks_scope(getattr(args, "require_masks", False)):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug_requested(args):
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, user_error_types()):
            raise
        if debug_requested(args):
            traceback.print_exc()
        print(format_error(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
