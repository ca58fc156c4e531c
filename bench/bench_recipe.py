"""VTFusion against the training-free patch-kNN on the same frozen tokens: paper recipe vs project recipe.

Parts (``--parts``), each a grid of cells through the package's cached, resumable runners:

* ``toy``: every toy category, k = 1, 2, 4, 8, seeds 0-2, the quick schedule, on each
  ``--backbones`` (``tiny`` random, ``pocket``): rows patch-kNN, VTFusion with the paper's
  literal recipe, VTFusion with the project's recipe (chosen on validation);
* ``real``: ``../shared/datasets/real_ad`` tire and magnetic_tile (``--real-categories``),
  k = 2, 4 (``--real-shots``), seed 0 (``--real-seeds``), the random ViT-B-16-plus-240
  (300 iterations): the same three rows;
* ``claims``: the paper's other claims on our implementation, toy test split, k = 2,
  seeds 0-2, project recipe: Table II (``ate`` < ``ate_aie`` < ``full``), Table III (each DAS
  type alone < all types), and fusion against direct concatenation (Fig. 7).

    .venv/bin/python bench/bench_recipe.py --parts toy claims --backbones tiny pocket
    .venv/bin/python bench/bench_recipe.py --parts real

Prints tables (mean +- std over seeds, %) and writes ``runs/bench/recipe.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import BACKBONES, Row, environment, grid_table, quick_config, resolve_device, run_grid  # noqa: E402

from vtfusion.config import BackboneConfig  # noqa: E402
from vtfusion.data.categories import categories as dataset_categories  # noqa: E402
from vtfusion.io import atomic_write_json  # noqa: E402


def backbone_config(name: str) -> BackboneConfig:
    return BACKBONES[name]


def configs(backbone: BackboneConfig, iterations: int):
    return quick_config(backbone, iterations, "paper"), quick_config(backbone, iterations, "project")


RECIPE_ROWS = ("patch_knn", "paper", "project")


def recipe_rows(backbone: str, iterations: int, which: tuple[str, ...] = RECIPE_ROWS) -> list[Row]:
    """The reference and the two recipes (``which`` of :data:`RECIPE_ROWS`) on ``backbone``."""
    paper, project = configs(backbone_config(backbone), iterations)
    rows = {"patch_knn": Row(f"patch_knn/{backbone}", "patch_knn", project),
            "paper": Row(f"vtfusion-paper/{backbone}", "vtfusion", paper),
            "project": Row(f"vtfusion-project/{backbone}", "vtfusion", project)}
    return [rows[name] for name in which]


def claim_rows(backbone: str, iterations: int) -> list[Row]:
    _, project = configs(backbone_config(backbone), iterations)
    rows = [Row(f"{v}/{backbone}", "vtfusion", project.replace(model=dataclasses.replace(project.model, variant=v)))
            for v in ("ate", "ate_aie", "full")]
    rows += [Row(f"das-{t}/{backbone}", "vtfusion", project.replace(das=project.das.only(t)))
             for t in ("misplaced", "blurry", "crack", "noise")]
    concat = dataclasses.replace(project.model, mpf=dataclasses.replace(project.model.mpf, fusion="concat"))
    rows.append(Row(f"concat/{backbone}", "vtfusion", project.replace(model=concat)))
    return rows


def grid_parser(doc: str, out_name: str, shots: list[int]) -> argparse.ArgumentParser:
    """The options of a toy-grid quality benchmark: cells (``--shots``, ``--seeds``), the quick
    schedule's length, torch threads, the shared result and run folders, and the output JSON
    ``runs/bench/<out_name>.json``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--shots", type=int, nargs="+", default=shots)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=Path("runs/bench/recipe/results"))
    p.add_argument("--runs", type=Path, default=Path("runs/bench/recipe/runs"))
    p.add_argument("--out", type=Path, default=Path(f"runs/bench/{out_name}.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    p = grid_parser(__doc__, "recipe", shots=[1, 2, 4, 8])
    p.add_argument("--parts", nargs="+", default=["toy", "claims"], choices=("toy", "real", "claims"))
    p.add_argument("--real-categories", nargs="+", default=["tire", "magnetic_tile"],
                   help="real_ad categories of the real part")
    p.add_argument("--real-shots", type=int, nargs="+", default=[2, 4], help="k of the real part")
    p.add_argument("--real-seeds", type=int, nargs="+", default=[0],
                   help="shot seeds of the real part (its ViT-B cells take minutes each on a CPU)")
    p.add_argument("--backbones", nargs="+", default=["tiny", "pocket"],
                   choices=[b for b in BACKBONES if b != "vitb_random"])
    p.add_argument("--rows", nargs="+", default=list(RECIPE_ROWS), choices=RECIPE_ROWS,
                   help="rows of the toy and real parts (default: all three)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = {"argv": sys.argv, "environment": environment(resolve_device("auto"), args.threads), "parts": {}}
    if args.out.is_file():  # parts run separately accumulate in one file
        record["parts"] = json.loads(args.out.read_text()).get("parts", {})
    toy = tuple(dataset_categories("toy"))
    grid = dict(results_root=args.results, runs_root=args.runs)
    start = time.perf_counter()
    for part in args.parts:
        if part == "toy":
            for bb in args.backbones:
                print(f"\n== toy, {bb}: k {args.shots}, seeds {args.seeds}", flush=True)
                s = run_grid(recipe_rows(bb, args.iterations, tuple(args.rows)), "toy", toy, tuple(args.shots), tuple(args.seeds), **grid)
                print(grid_table(s))
                record["parts"][f"toy/{bb}"] = s
        elif part == "real":
            for cat in args.real_categories:
                print(f"\n== real_ad {cat}, random ViT-B-16-plus-240: k {args.real_shots}, "
                      f"seeds {args.real_seeds}", flush=True)
                s = run_grid(recipe_rows("vitb_random", args.iterations, tuple(args.rows)), "real_ad", (cat,),
                             tuple(args.real_shots), tuple(args.real_seeds), **grid)
                print(grid_table(s))
                record["parts"][f"real/{cat}"] = s
                atomic_write_json(args.out, record)  # each category as soon as it is done: ViT-B cells are slow
        else:
            for bb in args.backbones:
                print(f"\n== claims, {bb}: k 2, seeds {args.seeds}", flush=True)
                s = run_grid(claim_rows(bb, args.iterations), "toy", toy, (2,), tuple(args.seeds), **grid)
                print(grid_table([r for r in s if r["k"] == "all"]))
                record["parts"][f"claims/{bb}"] = s
        record["seconds"] = time.perf_counter() - start
        atomic_write_json(args.out, record)
    print(f"\nwrote {args.out} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
