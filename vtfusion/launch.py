"""Reproducing a table over several devices or a Slurm cluster: ``vtfusion reproduce --launcher``.

A table is a :class:`~vtfusion.reproduce.Plan` of cells, each an evaluation run with its own
result file (:mod:`vtfusion.reproduce`). A launcher only decides *where* the unfinished
cells run; the summary is built afterwards in this process from the cells' results by
:func:`~vtfusion.reproduce.summarise`, the code path of a sequential run, so it is the same.

* ``local``: one worker process per device (``--devices cuda:0,cuda:1``; ``cpu,cpu`` runs
  two CPU workers), started with ``spawn`` (CUDA cannot be forked). Each worker sees only
  its device (``CUDA_VISIBLE_DEVICES``) and keeps one backbone and token cache for its
  cells, which are grouped by category so a category's test tokens are computed once per
  worker. One progress bar counts the cells of all workers.
* ``slurm``: one job array through `submitit <https://github.com/facebookincubator/submitit>`_
  (the optional extra ``[cluster]``), one array task and one log per cell, in a folder per
  submission. submitit's ``local`` and ``debug`` executors run the same path without a cluster.

Resume is the sequential run's: finished cells are read from their result files and never
sent to a worker, so running the same command again (or resubmitting) runs exactly the
failed or killed cells. A failed cell does not stop the others; the launch then raises
:class:`CellsFailed`, one line per cell, also written to ``failures.txt`` of the
submission's folder. A cell runs under a lock beside its result file
(:func:`~vtfusion.reproduce.run_plan_cell`), so no cell runs twice at once, even across
launches. The disk caches (:mod:`vtfusion.cache`) are written atomically (temporary file
and rename), so workers on one machine share them safely.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vtfusion import paths
from vtfusion.backbone import build_backbone
from vtfusion.cache import FeatureCache
from vtfusion.data.registry import storage_name
from vtfusion.io import atomic_write_text
from vtfusion.reproduce import Cell, Plan, finished_cell, run_plan_cell, run_sequential

LAUNCHERS = ("sequential", "local", "slurm")


class CellsFailed(RuntimeError):
    """Some cells of a launch failed; the others finished and are on disk.

    Attributes:
        failures: one line per failed cell, ``<cell>: <error>``.
        path: the file listing them.
    """

    def __init__(self, failures: list[str], path: Path) -> None:
        super().__init__(f"{len(failures)} cell(s) failed (listed in {path}); run the same command again "
                         "to redo only them:\n" + "\n".join(failures))
        self.failures, self.path = failures, path


@dataclass(frozen=True)
class SlurmOptions:
    """The Slurm resources of each array task (one cell).

    Attributes:
        partition: ``--partition`` (None: the cluster's default).
        time_min: the time limit of a task, in minutes.
        gpus_per_task: GPUs given to each task.
        array_parallelism: at most this many tasks of the array run at once.
        cluster: ``slurm``; ``local`` or ``debug`` run submitit's local executors (no cluster).
    """

    partition: str | None = None
    time_min: int = 240
    gpus_per_task: int = 1
    array_parallelism: int = 32
    cluster: str = "slurm"


# --- the plan: which cells are left, who runs them, how long ----------------------------

def parse_devices(text: str) -> list[str]:
    """``cuda:0,cuda:1`` -> ``["cuda:0", "cuda:1"]``; each is ``cpu``, ``cuda`` or ``cuda:<index>``.

    A device may repeat (``cpu,cpu``: two CPU workers). Raises ValueError naming a bad one.
    """
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise ValueError("no device given; e.g. cuda:0,cuda:1 or cpu,cpu")
    for d in devices:
        if d != "cpu" and d != "cuda" and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise ValueError(f"unknown device {d!r}; use cpu, cuda or cuda:<index>")
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {d!r} but no CUDA device is available here; use cpu")
        if d.startswith("cuda:") and int(d[5:]) >= torch.cuda.device_count():
            raise ValueError(f"device {d!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return devices


def split_finished(p: Plan, backbone=None) -> tuple[dict[Cell, dict], list[Cell]]:
    """``(results of the finished cells, the unfinished cells in plan order)``."""
    backbone = build_backbone(p.cfg.backbone, seed=0) if backbone is None else backbone
    done, todo = {}, []
    for cell in p.cells:
        result = finished_cell(p, cell, backbone)
        if result is None:
            todo.append(cell)
        else:
            done[cell] = result
    return done, todo


def distribute(cells: list[Cell], n_workers: int) -> list[list[Cell]]:
    """The cells of each worker: whole categories (one worker computes a category's test
    tokens once for all its cells), the largest first to the least loaded worker."""
    by_category: dict[str, list[Cell]] = {}
    for cell in cells:
        by_category.setdefault(cell.category, []).append(cell)
    shares: list[list[Cell]] = [[] for _ in range(n_workers)]
    for group in sorted(by_category.values(), key=len, reverse=True):
        min(shares, key=len).extend(group)
    return shares


def measured_seconds(p: Plan) -> dict[str, float | None]:
    """The mean measured wall time of one cell of each row family (``wall_seconds`` of the
    cells that trained, else of any, in the result files of the same table row and dataset, any k, seed or config), or None
    where none has run yet."""
    base = Path(p.results_root) if p.results_root is not None else paths.results_dir()
    out = {}
    for method in p.rows:
        folder = base / p.cfg.profile / storage_name(p.dataset, p.data_root, "test") / f"{p.table}-{method.key}"
        seconds = []
        for f in folder.glob("*/*.json"):
            try:
                result = json.loads(f.read_text())
                value, loaded = result.get("wall_seconds"), bool(result.get("model_loaded_from_cache"))
            except (OSError, ValueError, AttributeError):
                continue  # a broken file is redone by the run; it measures nothing
            if isinstance(value, (int, float)):
                seconds.append((loaded, float(value)))
        # A cell that loaded a saved model did not train: its time underestimates a fresh cell's.
        fresh = [v for loaded, v in seconds if not loaded] or [v for _, v in seconds]
        out[method.key] = statistics.fmean(fresh) if fresh else None
    return out


def describe_plan(p: Plan, launcher: str = "sequential", devices: list[str] | None = None,
                  backbone=None) -> str:
    """The cell plan of ``vtfusion reproduce --dry-run``: cells finished and left, the cells
    of each worker, and the time they need estimated from measured per-cell costs."""
    done, todo = split_finished(p, backbone)
    cost = measured_seconds(p)
    lines = [f"{p.table} on {p.dataset}: {len(p.cells)} cells ({len(p.rows)} row(s) x their k and seeds x "
             f"{len(p.categories)} categories), {len(done)} finished, {len(todo)} to run"]
    for method in p.rows:
        left = sum(c.method == method for c in todo)
        per_cell = cost[method.key]
        known = "unknown (no measured cell yet)" if per_cell is None else f"{per_cell:.0f} s"
        lines.append(f"  {method.key}: {left} to run, measured time per cell {known}")

    def estimate(cells: list[Cell]) -> str:
        costs = [cost[c.method.key] for c in cells]
        if any(c is None for c in costs):
            return "unknown"
        return _duration(sum(costs))

    if launcher == "local":
        for device, share in zip(devices or ["cpu"], distribute(todo, len(devices or ["cpu"]))):
            cats = sorted({c.category for c in share})
            lines.append(f"  worker {device}: {len(share)} cells ({', '.join(cats) or 'none'}), "
                         f"estimated {estimate(share)}")
    elif launcher == "slurm":
        lines.append(f"  slurm: one job array of {len(todo)} tasks (one per cell)")
    lines.append(f"estimated device time: {estimate(todo)} in all" + (" (nothing to run)" if not todo else ""))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


# --- running the cells ------------------------------------------------------------------

def launch(p: Plan, launcher: str, devices: list[str] | None = None, slurm: SlurmOptions | None = None,
           progress: bool = True, runner=None) -> dict[Cell, dict]:
    """Run the unfinished cells of ``p`` with ``launcher`` and return the results of every cell.

    ``runner``: what a local worker calls per cell (:func:`run_local`; tests make one fail). Raises :class:`CellsFailed` (after every other cell finished) when some cells failed.
    """
    backbone = build_backbone(p.cfg.backbone, seed=0)
    if launcher == "sequential":  # the plain loop, cache and bar of `reproduce`
        return run_sequential(p, progress, backbone=backbone)
    results, todo = split_finished(p, backbone)
    folder = _submission_folder(p)
    if launcher == "local":
        new, failures = run_local(p, todo, devices or ["cpu"], progress, runner)
    elif launcher == "slurm":
        new, failures = run_slurm(p, todo, folder, slurm or SlurmOptions(), progress)
    else:
        raise ValueError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    results.update(new)
    if failures:
        path = atomic_write_text(folder / "failures.txt", "\n".join(failures) + "\n")
        raise CellsFailed(failures, path)
    return results


def _submission_folder(p: Plan) -> Path:
    """``<results>/<profile>/launch/<table>_<dataset>_<UTC time>/``: logs and failures of one launch."""
    base = Path(p.results_root) if p.results_root is not None else paths.results_dir()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return base / p.cfg.profile / "launch" / f"{p.table}_{p.dataset}_{stamp}"


def _failure(cell: Cell, err: BaseException, where: str = "") -> str:
    """One line: the cell and the last line of its error."""
    message = (str(err).strip().splitlines() or [""])[-1]
    return f"{cell.label()}: {type(err).__name__}: {message}{where}"


def run_local(p: Plan, cells: list[Cell], devices: list[str], progress: bool = True,
              runner=None) -> tuple[dict[Cell, dict], list[str]]:
    """Run ``cells`` in one spawned worker process per device; ``(results, failure lines)``.

    ``runner(plan, cell)``: what a worker calls per cell (default: :func:`worker_cell`; a
    top-level function, since it is sent to the workers by name). A worker that dies (killed,
    out of memory) fails its remaining cells; the other workers go on.
    """
    runner = runner or worker_cell
    context = multiprocessing.get_context("spawn")
    pools = [cf.ProcessPoolExecutor(1, mp_context=context, initializer=pin_device, initargs=(d, len(devices)))
             for d in devices]
    futures: dict[cf.Future, Cell] = {}
    try:
        for pool, share in zip(pools, distribute(cells, len(devices))):
            for cell in share:  # one task per cell: a finished cell is reported as soon as it is written
                futures[pool.submit(runner, p, cell)] = cell
        return _collect(futures, progress, f"{p.table} {p.dataset} on {','.join(devices)}")
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


def _collect(futures: dict, progress: bool, desc: str) -> tuple[dict[Cell, dict], list[str]]:
    """Wait for every future; the results of those that finished and a line per failure."""
    results, failures = {}, []
    bar = tqdm(total=len(futures), desc=desc) if progress else None
    for future in cf.as_completed(futures):
        cell = futures[future]
        try:
            results[cell] = future.result()
        except Exception as err:  # a failed cell must not stop the others
            failures.append(_failure(cell, err))
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(cell.label() + (" FAILED" if cell not in results else ""))
    if bar is not None:
        bar.close()
    return results, failures


def pin_device(device: str, n_workers: int = 1) -> None:
    """Make this worker process see only ``device`` (run before it touches CUDA).

    ``cuda:<i>`` is the i-th device this machine's ``CUDA_VISIBLE_DEVICES`` lists (all when
    unset); ``cpu`` hides every GPU, so ``auto`` resolves to the CPU. CPU workers share the
    cores instead of each starting one thread per core.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // n_workers)))
    elif device.startswith("cuda:"):
        index = int(device[5:])
        ids = visible.split(",") if visible else [str(i) for i in range(index + 1)]
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[index]


#: A worker's backbone and caches, kept across its cells (built on its first cell).
_WORKER: dict = {}


def worker_cell(p: Plan, cell: Cell) -> dict:
    """Run one cell in a worker process, reusing the worker's backbone and token cache."""
    if _WORKER.get("backbone_config") != p.cfg.backbone:
        _WORKER.update(backbone_config=p.cfg.backbone, backbone=build_backbone(p.cfg.backbone, seed=0),
                       cache=FeatureCache.from_env())
    return run_plan_cell(p, cell, _WORKER["backbone"], _WORKER["cache"])


def run_slurm(p: Plan, cells: list[Cell], folder: Path, options: SlurmOptions,
              progress: bool = True) -> tuple[dict[Cell, dict], list[str]]:
    """Submit ``cells`` as one submitit job array (one task and one log per cell) and wait.

    Logs go to ``<folder>/<job id>_<task>/``. ``options.cluster``: ``local``/``debug`` use
    submitit's executors on this machine.
    """
    if not cells:  # a resubmission of a finished plan submits nothing
        return {}, []
    try:
        import submitit  # local: an optional extra (pip install 'vtfusion[cluster]')
    except ImportError as err:
        raise ValueError("--launcher slurm needs submitit: pip install 'vtfusion[cluster]'") from err
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=None if options.cluster == "slurm"
                                     else options.cluster)
    # slurm_* options are ignored by the local executors; timeout_min applies everywhere.
    params = dict(timeout_min=options.time_min, slurm_array_parallelism=options.array_parallelism,
                  slurm_gpus_per_task=options.gpus_per_task, slurm_job_name=f"vtfusion-{p.table}")
    if options.partition:
        params["slurm_partition"] = options.partition
    executor.update_parameters(**params)
    jobs = executor.map_array(slurm_cell, [p] * len(cells), cells)
    print(f"submitted {len(jobs)} cells as job array {jobs[0].job_id.split('_')[0]}; logs in {folder}")
    results, failures = {}, []
    bar = tqdm(total=len(jobs), desc=f"{p.table} {p.dataset} on {options.cluster}") if progress else None
    pending = dict(zip(jobs, cells))
    while pending:
        for job in [j for j in pending if j.done()]:
            cell = pending.pop(job)
            try:
                results[cell] = job.result()
            except Exception as err:  # one failed task must not stop the others
                failures.append(_failure(cell, err, f" (log {job.paths.stderr})"))
            if bar is not None:
                bar.update(1)
        if pending:
            time.sleep(1.0)
    if bar is not None:
        bar.close()
    return results, failures


def slurm_cell(p: Plan, cell: Cell) -> dict:
    """One array task: one cell, on the GPU Slurm gave the task (its own backbone and cache)."""
    return worker_cell(p, cell)
