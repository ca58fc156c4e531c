"""``vtfusion reproduce --launcher``: a table's cells over local worker processes or a submitit
job array give the sequential run's summary; a failed or killed cell is reported, the others
finish, and a rerun redoes only it; ``--dry-run`` runs nothing (:mod:`vtfusion.launch`)."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import quick_config

from vtfusion.launch import CellsFailed, SlurmOptions, launch, worker_cell
from vtfusion.reproduce import plan, reproduce, summarise

SHOTS, SEEDS, CATS = (1,), (0,), ("chip", "weave")


def _plan(tmp_path, name: str):
    return plan("table1", quick_config(2), "toy", shots=SHOTS, seeds=SEEDS, categories=CATS,
                results_root=tmp_path / name / "results", runs_root=tmp_path / name / "runs")


def _files(p) -> dict[str, float]:
    """``{<row folder>/<category>/<file>: mtime}`` of the plan's result files."""
    root = p.results_root / "quick" / "toy"
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for f in root.glob("*/*/*.json")}


def killed_on_weave(p, cell) -> dict:
    """A worker that dies (as if killed) on the ``weave`` cell; a top-level function, sent to
    the spawned workers by name."""
    if cell.category == "weave":
        os._exit(9)
    return worker_cell(p, cell)


def test_local_launcher_on_two_cpu_workers_gives_the_sequential_summary(toy_root, tmp_path, monkeypatch):
    # Each run starts from an empty token cache, so both compute the same tokens the same way,
    # and with the torch thread count each CPU worker gets (launch.pin_device shares the cores):
    # another count changes float reduction order, hence the last bits of the metrics.
    monkeypatch.setenv("VTFUSION_CACHE", str(tmp_path / "cache-seq"))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) // 2)))
    try:
        sequential = reproduce("table1", quick_config(2), "toy", shots=SHOTS, seeds=SEEDS, categories=CATS,
                               results_root=tmp_path / "seq" / "results", runs_root=tmp_path / "seq" / "runs",
                               progress=False)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("VTFUSION_CACHE", str(tmp_path / "cache-local"))
    p = _plan(tmp_path, "local")
    launched = summarise(p, launch(p, "local", ["cpu", "cpu"], progress=False))
    assert launched == sequential
    assert sorted(_files(p)) == sorted(_files(_plan(tmp_path, "seq")))


def test_a_killed_worker_is_reported_and_a_rerun_redoes_only_its_cell(toy_root, tmp_path):
    p = _plan(tmp_path, "kill")
    with pytest.raises(CellsFailed) as failed:
        launch(p, "local", ["cpu", "cpu"], progress=False, runner=killed_on_weave)
    (line,) = failed.value.failures
    assert line.startswith("vtfusion k=1 seed=0 weave: ") and "BrokenProcessPool" in line
    assert failed.value.path.read_text().strip() == line
    before = _files(p)
    assert [f.split("/")[1] for f in before] == ["chip"], "the other worker's cell finished"
    rows = summarise(p, launch(p, "local", ["cpu", "cpu"], progress=False))
    after = _files(p)
    assert {f.split("/")[1] for f in after} == {"chip", "weave"}
    assert {f: after[f] for f in before} == before, "a finished cell was run again"
    assert rows[0]["cells"] == 2


def test_slurm_launcher_through_submitits_local_executor(toy_root, tmp_path):
    pytest.importorskip("submitit")
    p = plan("table1", quick_config(2), "toy", shots=SHOTS, seeds=SEEDS, categories=("chip",),
             results_root=tmp_path / "results", runs_root=tmp_path / "runs")
    rows = summarise(p, launch(p, "slurm", slurm=SlurmOptions(cluster="local", time_min=10), progress=False))
    assert rows[0]["cells"] == 1 and 0 <= rows[0]["image_auroc_mean"] <= 100
    (submission,) = (tmp_path / "results" / "quick" / "launch").iterdir()
    assert list(submission.glob("*/*_log.out")), "one log folder per array task"
    # A resubmission of a finished plan submits nothing and gives the same rows.
    assert summarise(p, launch(p, "slurm", slurm=SlurmOptions(cluster="local"), progress=False)) == rows
    assert len(list((tmp_path / "results" / "quick" / "launch").iterdir())) == 1


def test_dry_run_prints_the_plan_and_runs_nothing(toy_root, tmp_path, capsys):
    from vtfusion.cli import main

    results = tmp_path / "results"
    code = main(["reproduce", "table1", "--profile", "quick", "--backbone", "tiny", "--weights", "random",
                 "--shots", "1", "--seeds", "0", "--categories", *CATS, "--results", str(results),
                 "--runs", str(tmp_path / "runs"), "--launcher", "local", "--devices", "cpu,cpu", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "2 cells" in out and "0 finished, 2 to run" in out
    assert "worker cpu: 1 cells (chip)" in out and "worker cpu: 1 cells (weave)" in out
    assert "estimated" in out
    assert not list(results.glob("**/*.json")), "a dry run ran a cell"


def test_devices_need_the_local_launcher_and_name_known_devices(capsys):
    from vtfusion.cli import main

    assert main(["reproduce", "table1", "--profile", "quick", "--devices", "cpu"]) == 2
    assert "--devices" in capsys.readouterr().err
    assert main(["reproduce", "table1", "--profile", "quick", "--launcher", "local", "--devices", "tpu:0"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'tpu:0'" in err and "--devices" in err
