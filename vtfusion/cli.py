"""The ``vtfusion`` command line.

Examples::

    vtfusion data toy                      # generate the toy dataset (data/toy)
    vtfusion data shots --dataset mvtec    # write data/shots/mvtec/<category>/k<k>_seed<s>.json
    vtfusion data download mvtec --root data/mvtec_ad
    vtfusion pocket pretrain --out runs/pocket  # pre-train the pocket CLIP (resumable)
    vtfusion pocket release --run runs/pocket   # package its weights and model card
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vtfusion import __version__


def _cmd_download(args: argparse.Namespace) -> int:
    from vtfusion.data.download import DownloadError, download_dataset
    from vtfusion.data.datasets import dataset_root

    root = dataset_root(args.name, args.root)
    try:
        out = download_dataset(args.name, root, force=args.force, progress=not args.quiet)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.name} is ready in {out}")
    return 0


def _cmd_toy(args: argparse.Namespace) -> int:
    from vtfusion.data import toy

    argv = ["--seed", str(args.seed)]
    if args.root:
        argv += ["--root", str(args.root)]
    argv.append("--force" if args.force else "--ensure")
    return toy.main(argv)


def _cmd_shots(args: argparse.Namespace) -> int:
    from vtfusion.data.shots import SHOT_KS, SHOT_SEEDS, generate_shot_lists

    datasets = ["mvtec", "visa", "toy", "real_ad"] if args.all else [args.dataset]
    if not args.all and args.dataset is None:
        print("error: give --dataset NAME or --all", file=sys.stderr)
        return 2
    for name in datasets:
        start = time.perf_counter()
        try:
            written = generate_shot_lists(name, root=args.root, ks=args.k or SHOT_KS, seeds=args.seeds or SHOT_SEEDS,
                                          base=args.out, validate_root=args.validate)
        except FileNotFoundError as err:
            if args.all:
                print(f"skipped {name}: {err}")
                continue
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{name}: wrote {len(written)} shot lists in {time.perf_counter() - start:.2f}s"
              + (f" under {Path(written[0]).parents[2]}" if written else ""))
    return 0


def _experiment_config(args: argparse.Namespace):
    """The profile's config with the command-line overrides applied."""
    import dataclasses

    from vtfusion.config import load_config

    cfg = load_config(args.profile)
    backbone = cfg.backbone
    if args.backbone:
        backbone = dataclasses.replace(backbone, arch=args.backbone)
    if args.weights:
        backbone = dataclasses.replace(backbone, weights=args.weights)
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
        from vtfusion.recipes import apply_recipe

        cfg = apply_recipe(cfg, args.recipe)
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    from vtfusion.config import describe
    from vtfusion.train import train_or_load

    cfg = _experiment_config(args)
    dataset = args.dataset or cfg.data.dataset
    k = args.shots or cfg.data.shots
    print(describe(cfg))
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


def _cmd_predict(args: argparse.Namespace) -> int:
    from vtfusion.checkpoint import load_checkpoint
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
            print("error: give image files, or --dataset and --category", file=sys.stderr)
            return 2
        split = load_dataset(dataset, category, args.split, args.root, None)
        files = [r.image for r in split.records]
    table = predict_files(model, files, args.out, image_size=cfg.data.image_size)
    print(f"scored {len(files)} image(s): maps, overlays and {table}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import dataclasses

    from vtfusion import paths
    from vtfusion.config import describe
    from vtfusion.reproduce import format_rows, reproduce, run_dataset_for, write_summary

    cfg = _experiment_config(args)
    dataset = run_dataset_for(cfg, args.dataset)
    if args.dataset != dataset:
        print(f"note: the quick profile runs on the {dataset} data; its table is printed beside the paper's "
              f"{args.dataset} values as a reference, not a comparison")
    if args.categories:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, categories=tuple(args.categories)))
    print(describe(cfg))
    rows = reproduce(args.table, cfg, dataset, shots=tuple(args.shots) if args.shots else None,
                     seeds=tuple(args.seeds) if args.seeds else None, results_root=args.results,
                     runs_root=args.runs, data_root=args.root,
                     paper_dataset=args.dataset if args.dataset in ("mvtec", "visa") else None,
                     progress=not args.quiet)
    print(format_rows(rows))
    out = Path(args.results or paths.PROJECT_ROOT / "results") / cfg.profile
    json_path, csv_path = write_summary(rows, out)
    print(f"wrote {csv_path} and {json_path}")
    return 0


def _cmd_pocket_pretrain(args: argparse.Namespace) -> int:
    from vtfusion.pocket.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(**({"steps": args.steps} if args.steps else {}), seed=args.seed, threads=args.threads)
    try:
        state = pretrain(args.out, cfg, device=args.device, progress=not args.quiet)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    last = state.validation[-1]
    print(f"pocket CLIP: {state.step} steps in {state.seconds / 60:.1f} min; held-out families: zero-shot "
          f"AUROC {last['held_out_auroc']:.3f}, accuracy {last['held_out_accuracy']:.3f}; checkpoint in {args.out}")
    return 0


def _cmd_pocket_release(args: argparse.Namespace) -> int:
    from vtfusion.pocket.release import release

    weights, card = release(args.run, args.name, machine=args.machine)
    print(f"released {args.name}: {weights} ({weights.stat().st_size / 1e6:.1f} MB) with model card {card}")
    return 0


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and schedule (default: the profile's)")
    g.add_argument("--profile", choices=["quick", "paper", "auto"], default=None,
                   help="config profile (default: $VTFUSION_PROFILE, else automatic)")
    g.add_argument("--backbone", default=None, help="open_clip architecture, 'tiny' (random test model) or 'pocket'")
    g.add_argument("--weights", default=None, help="pretrained tag (laion400m_e32), pocket-v1, a weights file, or 'random'")
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
    p.set_defaults(func=_cmd_download)

    p = dsub.add_parser("toy", help="generate the toy industrial dataset",
                        description="Generate the procedurally drawn toy dataset in MVTec layout.")
    p.add_argument("--root", type=Path, default=None, help="target folder (default: data/toy)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--force", action="store_true", help="regenerate even if an identical copy exists")
    p.set_defaults(func=_cmd_toy)

    p = dsub.add_parser("shots", help="write the k-shot lists (data/shots/...)",
                        description="Write k-shot lists for every category, k and seed. MVTec AD and VisA "
                                    "lists are built from the layout facts in ../shared/datasets, without the archives.")
    p.add_argument("--dataset", choices=["mvtec", "visa", "toy", "real_ad", "folder"], default=None)
    p.add_argument("--all", action="store_true", help="every known dataset")
    p.add_argument("--root", type=Path, default=None, help="dataset folder (needed for --dataset folder)")
    p.add_argument("--k", type=int, nargs="+", default=None, help="shot counts (default 1 2 4 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--out", type=Path, default=None, help="output base folder (default data/shots)")
    p.add_argument("--validate", type=Path, default=None, metavar="ROOT",
                   help="check every listed file exists in this extracted copy of the dataset")
    p.set_defaults(func=_cmd_shots)

    p = sub.add_parser("train", help="train VTFusion on one category (Algorithm 1)",
                       description="Train VTFusion on the k-shot normal images of one category. A run with the "
                                   "same config, category, k and seed that already finished is reused.")
    p.add_argument("--dataset", default=None, help="toy, mvtec, visa, real_ad or folder (default: the profile's)")
    p.add_argument("--category", required=True, help="category name")
    p.add_argument("--root", type=Path, default=None, help="dataset root (needed for --dataset folder)")
    p.add_argument("--shots", type=int, default=None, help="k, the number of normal images (default: profile)")
    p.add_argument("--seed", type=int, default=0, help="shot-list and training seed (default 0)")
    p.add_argument("--out", type=Path, default=None, help="runs folder (default: runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="score images with a trained model",
                       description="Write score maps (.npy), overlays (.png) and scores.csv for images or a test split.")
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt written by `vtfusion train`")
    p.add_argument("images", nargs="*", type=Path, help="image files (default: the test split of --dataset/--category)")
    p.add_argument("--dataset", default=None, help="dataset of the split to score (default: the checkpoint's)")
    p.add_argument("--category", default=None, help="category (default: the checkpoint's)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--root", type=Path, default=None, help="dataset root")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("reproduce", help="reproduce a table of the paper cell by cell",
                       description="Train and evaluate every (category, k, seed, method) cell of a paper table, "
                                   "print ours (mean +- std over seeds) beside the paper's values, write CSV/JSON. "
                                   "Finished cells are reused, so an interrupted run resumes.")
    p.add_argument("table", choices=["table1", "table2", "table3"])
    p.add_argument("--dataset", default="mvtec", help="mvtec or visa (quick profile: runs on toy data)")
    p.add_argument("--shots", type=int, nargs="+", default=None, help="k values (default 2 4 8; table3: 2)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="shot seeds (default: the profile's)")
    p.add_argument("--categories", nargs="+", default=None, help="subset of categories (default: all)")
    p.add_argument("--root", type=Path, default=None, help="dataset root")
    p.add_argument("--results", type=Path, default=None, help="results folder (default results/)")
    p.add_argument("--runs", type=Path, default=None, help="trained models folder (default runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_options(p)
    p.set_defaults(func=_cmd_reproduce)

    pocket = sub.add_parser("pocket", help="pre-train and release the pocket CLIP",
                            description="The pocket CLIP: a small CLIP pre-trained by this project on a generated, "
                                        "captioned world (opt-in: --backbone pocket --weights pocket-v1).")
    psub = pocket.add_subparsers(dest="pocket_command", metavar="ACTION", required=True)
    p = psub.add_parser("pretrain", help="pre-train on the pocket world (resumes from --out)",
                        description="Pre-train the pocket CLIP with open_clip's CLIP and ClipLoss. Checkpoints are "
                                    "written atomically to OUT/checkpoint.pt; rerun the same command to resume.")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt, curves.json)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the released recipe's)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data-stream seed")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pocket_pretrain)
    p = psub.add_parser("release", help="write a run's weights (fp16 safetensors) and model card into the package",
                        description="Convert a finished pre-training run into the package's released weights.")
    p.add_argument("--run", type=Path, required=True, help="the run folder of `vtfusion pocket pretrain`")
    p.add_argument("--name", default="pocket-v1", help="release name (default pocket-v1)")
    p.add_argument("--machine", default=None, help="where it was trained, for the model card")
    p.set_defaults(func=_cmd_pocket_release)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
