"""`dckp table` at tiny sizes on one local Ray instance (shared by the module): 2 tasks x 2 methods write
table1.json and its markdown, figure and page; a deliberately broken cell is reported while the others finish; the
next invocation runs only that cell's evaluation, and the one after skips every stage. Evaluation seeds are the same
for every method, apart from the demonstrations', and an episode's actions do not depend on how the seeds were split
across Ray workers."""

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from dckp.cli.main import main
from dckp.data import Dataset
from dckp.pipeline import RUN_PRESETS, RunConfig
from dckp.policy.config import POLICY_PRESETS
from dckp.table.config import TableConfig

pytestmark = pytest.mark.xdist_group("ray")  # one pytest worker runs every Ray test: never two Ray instances at once
TASKS, METHODS = ["lift", "stack"], ["blind", "cnn"]  # cheap, and no references (none found at 64 px on stack)
RUN = {"demos": 1, "image_size": 64, "policy_steps": 2, "episodes": 2, "max_steps": 5}
FLAGS = ["--tasks", *TASKS, "--methods", *METHODS, "--chunk", "2",
         *(x for k, v in RUN.items() for x in (f"--{k.replace('_', '-')}", str(v)))]
SEEDS = [1_000_000, 1_000_001]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module's tests: the runner uses it and leaves it running."""
    import ray

    from dckp.table import start_ray

    assert start_ray(cpus=2)
    yield
    ray.shutdown()


def _stamps(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_table_broken_cell_resume_and_skip(tmp_path, local_ray, capsys, monkeypatch):
    out, results = tmp_path / "run", tmp_path / "results"
    argv = ["table", *FLAGS, "--out", str(out), "--results", str(results)]
    broken = out / "stack" / "policy_blind" / "eval"  # a file where the evaluation writes its folder
    broken.parent.mkdir(parents=True)
    broken.write_text("in the way")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: table: 1 cell(s) failed: stack/blind (stack: stage 'evaluate blind', "
                          "seeds 1000000..1000001: FileExistsError")
    data = json.loads((results / "table1.json").read_text())
    assert set(data) == {"cells", "paper", "stand_in", "config", "don"}
    assert {t: sorted(c) for t, c in data["cells"].items()} == {"lift": ["blind", "cnn"], "stack": ["cnn"]}
    for cells in data["cells"].values():
        for cell in cells.values():
            assert set(cell) == {"rate", "ci95", "episodes", "mean_steps", "train_s", "eval_s"}
            assert cell["episodes"] == 2 and 0 <= cell["ci95"][0] <= cell["rate"] <= cell["ci95"][1] <= 1
            assert cell["train_s"] >= 0 and cell["eval_s"] > 0
    assert data["stand_in"]["lift"] == "Lid" and data["stand_in"]["nut_assembly"] is None
    assert data["paper"]["Lid"]["gt-kp"] == 0.990 and data["paper"]["Phone"]["cnnd"] is None
    assert data["config"]["run"]["max_steps"] == 5 and data["config"]["preset"] == "cpu"
    assert data["config"]["render"] == "visual geoms" and "Images: visual geoms." in (results / "table1.md").read_text()
    assert data["don"] == {}  # no DON method in this table

    # the same seeds for every method, apart from the demonstrations'; an episode's actions are the same when its
    # seed runs alone as after another seed in the same worker
    evals = {(t, m): json.loads((out / t / f"policy_{m}" / "eval" / "eval.json").read_text())
             for t in TASKS for m in METHODS if (t, m) != ("stack", "blind")}
    for ev in evals.values():
        assert ev["seeds"] == SEEDS
        assert [c["seeds"] for c in ev["chunks"]] == [[1_000_000, 1_000_001]]
    for task in TASKS:
        with Dataset(out / task / "demos.h5") as ds:
            assert all(ds.episode_attrs(e)["seed"] < SEEDS[0] for e in ds.episodes)
    from dckp.evaluation import run_episodes

    alone = run_episodes(out / "lift" / "policy_cnn", [(SEEDS[1], False)], tmp_path / "alone", max_steps=5)
    second = evals["lift", "cnn"]["per_episode"][1]  # ran after seed 1000000 in the same worker
    assert (alone[0]["steps"], alone[0]["actions_sha256"]) == (second["steps"], second["actions_sha256"])

    md = (results / "table1.md").read_text()
    assert "| lift | Lid (paper) | stack | Phone (paper) |" in md and "- **lift**: " in md
    assert "| 0.315 |" in md  # the paper's CNN on Lid beside lift
    page = (results / "table1.html").read_text()
    assert 'href="../run/lift/report.html"' in page and "stack/policy_cnn/eval/eval.json" in page
    assert (results / "table1.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "lift" / "report.html").exists()

    # the obstacle removed: only the broken cell's evaluation runs; then every stage is skipped
    broken.unlink()
    stamps = _stamps(out / "lift")
    assert main(argv) == 0
    assert _stamps(out / "lift").keys() == stamps.keys()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name not in ("report.html", "run.config.json"))
    data = json.loads((results / "table1.json").read_text())
    assert sorted(data["cells"]["stack"]) == ["blind", "cnn"]

    from dckp.table import run_table

    run = RunConfig(**{**vars(RUN_PRESETS["cpu"]), **RUN})
    (results / "table1.json").unlink()  # the runner writes the table as cells finish, here all done at the start
    status = run_table(TableConfig(tasks=TASKS, methods=METHODS, chunk=2, results=str(results)), run, out)
    assert set(status["cells"].values()) == {"done"} and len(status["cells"]) == 4
    assert set(status["stages"].values()) == {"skipped"}
    assert json.loads((results / "table1.json").read_text())["cells"] == data["cells"]

    # --dry-run: what would run and why, nothing run or removed
    from dckp.table import dry_run

    capsys.readouterr()
    assert main([*argv, "--dry-run", "true"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "lift: 2 of 2 cells done: blind, cnn", "  would run: nothing", "stack: 2 of 2 cells done: blind, cnn",
        "  would run: nothing", "trainings to run: 0, estimated 0.0 h for the 0 with an estimate; pending: 0"]
    stamps = _stamps(out)
    lines = dry_run(TableConfig(tasks=["lift"], methods=METHODS), dataclasses.replace(run, policy_steps=3), out)
    assert lines[0] == "lift: 0 of 2 cells done: none"
    assert lines[1].startswith("  would run: policy blind (replaces its artefact: ")
    assert "train_policy.config.json: made with other settings: policy.steps 2 (now 3)); evaluate blind" in lines[1]
    # each training estimated from the finished ones like it: this task's lstm policies, 2 steps each
    seconds = json.loads((out / "lift" / "stage_seconds.json").read_text())
    for method in METHODS:
        assert f"  training {method}: {seconds[f'policy {method}'] / 2 * 3 / 3600:.1f} h" in lines
    # the converged protocol in the same run folder: its own policies, every shared stage and the paper's kept
    lines = dry_run(TableConfig(tasks=["lift"], methods=METHODS), dataclasses.replace(run, protocol="converged"), out)
    unknown = "unknown (no training of its head and encoder kind has finished)"
    assert lines == ["lift: 0 of 2 cells done: none", "  would run: policy blind converged; evaluate blind converged; "
                     "policy cnn converged; evaluate cnn converged", f"  training blind: {unknown}",
                     f"  training cnn: {unknown}", "trainings to run: 2, estimated 0.0 h for the 0 with an estimate; "
                     "pending: 0"]
    assert _stamps(out) == stamps
    # an interrupted training whose inputs run again starts over (its checkpoint is removed), and says so
    policy, config = out / "lift" / "policy_blind", out / "lift" / "demos.config.json"
    saved = config.read_text()
    (policy / "policy.safetensors").rename(policy / "policy_last.safetensors")
    config.write_text(json.dumps({**json.loads(saved), "seed": 7}))
    lines = dry_run(TableConfig(tasks=["lift"], methods=["blind"]), run, out)
    assert "policy blind (starts over: it needs demonstrations, which run again)" in lines[1]
    (policy / "policy_last.safetensors").rename(policy / "policy.safetensors")
    config.write_text(saved)

    # on another machine (a new run folder) the cells recorded in the committed results are not made again, nor the
    # shared stages only they need; a cell missing from them is made, with what it needs
    table = TableConfig(tasks=TASKS, methods=METHODS, chunk=2, results=str(results))
    lines = dry_run(table, run, tmp_path / "moved")
    assert lines[:2] == [f"lift: 0 of 2 cells done: none; recorded in {results}, not made here: blind, cnn",
                         "  would run: nothing"]
    status = run_table(table, run, tmp_path / "moved")
    assert set(status["cells"].values()) == {"recorded"} and set(status["stages"].values()) == {"skipped"}
    assert json.loads((results / "table1.json").read_text())["cells"] == data["cells"]
    partial = tmp_path / "partial"
    partial.mkdir()
    del data["cells"]["stack"]["cnn"]
    (partial / "table1.json").write_text(json.dumps(data))
    lines = dry_run(dataclasses.replace(table, results=str(partial)), run, tmp_path / "moved")
    assert lines[2:4] == [f"stack: 0 of 2 cells done: none; recorded in {partial}, not made here: blind",
                          "  would run: demonstrations; policy cnn; evaluate cnn"]
    assert not list((tmp_path / "moved").rglob("*.h5"))  # nothing was made there

    # lift's cells grown to 4 episodes: only their 2 new seeds run (one chunk), the table keeps stack's cells; then
    # asked 2 again, they report the first 2 without running any
    grow = ["table", "--tasks", "lift", *FLAGS[FLAGS.index("--methods"):], "--out", str(out), "--results",
            str(results)]
    grow[grow.index("--episodes") + 1] = "4"
    capsys.readouterr()
    assert main(grow) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"2 of 2 cells in {results / 'table1.md'} (")
    ev = json.loads((out / "lift" / "policy_cnn" / "eval" / "eval.json").read_text())
    assert [c["seeds"] for c in ev["chunks"]] == [SEEDS, [1_000_002, 1_000_003]] and ev["episodes"] == 4
    assert ev["per_episode"][:2] == evals["lift", "cnn"]["per_episode"]
    data = json.loads((results / "table1.json").read_text())
    assert {t: {m: c["episodes"] for m, c in cells.items()} for t, cells in data["cells"].items()} == {
        "lift": {"blind": 4, "cnn": 4}, "stack": {"blind": 2, "cnn": 2}}
    assert "episodes" not in data["config"]["run"]
    status = run_table(TableConfig(tasks=["lift"], methods=METHODS, chunk=2, results=str(results)), run, out)
    assert status["stages"]["lift", "evaluate cnn"] == "ran"
    ev = json.loads((out / "lift" / "policy_cnn" / "eval" / "eval.json").read_text())
    assert ev["per_episode"] == evals["lift", "cnn"]["per_episode"] and [c["seeds"] for c in ev["chunks"]] == [SEEDS]

    # every cell of the folder as a results/policy.json row, merged with the rows there
    import importlib.util

    spec = importlib.util.spec_from_file_location("policy_benchmark", Path(__file__).parents[1] / "benchmarks" /
                                                  "policy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gt_kp = {"don": None, "mean_steps": 59.0, "ms_per_step": {"encoder": 0.1, "policy": 0.7, "sim": 7.0}}
    (results / "policy.json").write_text(json.dumps({"success": {"lift": {"gt-kp": {
        "rate": 0.9, "ci95": [0.79, 0.96], "episodes": 50}}}, "details": {"lift": {"gt-kp": gt_kp, "cnn": {
            "train_threads": 1}}}}))
    rows = bench.table_rows(out, TASKS, METHODS, results)
    assert sorted(rows["success"]["lift"]) == ["blind", "cnn", "gt-kp"] and sorted(rows["success"]["stack"]) == [
        "blind", "cnn"]
    cnn = rows["details"]["lift"]["cnn"]
    assert rows["success"]["lift"]["cnn"] == {"rate": ev["success_rate"], "ci95": ev["ci95"], "episodes": 2}
    assert cnn["train_threads"] == 1 and cnn["mean_steps"] == ev["mean_steps"] and cnn["don"] is None
    assert cnn["train_s"] == data["cells"]["lift"]["cnn"]["train_s"] and set(cnn["ms_per_step"]) == {
        "encoder", "policy", "sim"}
    assert rows["details"]["lift"]["gt-kp"] == gt_kp  # a row the table has not made stays
    md = (results / "policy.md").read_text()
    assert "| lift | cnn | - | " in md and "| lift | gt-kp | - | 0.90 | [0.79, 0.96] | 50 | 59 |" in md

    # lift's finished cells adopted into another table's folder: nothing of them runs again there; a policy made
    # with other settings than the table's is not adopted, and its cell runs
    from dckp.table import task_config
    from dckp.table.adopt import adopt

    cfg = task_config(run, "lift", METHODS)
    sources = {"demos": out / "lift" / "demos.h5", "policies": {m: out / "lift" / f"policy_{m}" for m in METHODS}}
    result = adopt(tmp_path / "other" / "lift", cfg, **sources, train_s={"cnn": 12.5}, verify=1)
    assert result == {"demonstrations": "adopted", "policy blind": "adopted", "policy cnn": "adopted",
                      "evaluate blind": "adopted, 1 episodes re-run alike",
                      "evaluate cnn": "adopted, 1 episodes re-run alike"}
    assert json.loads((tmp_path / "other" / "lift" / "stage_seconds.json").read_text()) == {"policy cnn": 12.5}
    result = adopt(tmp_path / "third" / "lift", dataclasses.replace(cfg, policy_steps=3), **sources)
    assert result["policy cnn"].startswith("runs: not there (not adopted: ")
    assert result["policy cnn"].endswith("train_policy.config.json: made with other settings: policy.steps 2 (now 3))")
    assert result["demonstrations"] == "adopted" and not (tmp_path / "third" / "lift" / "policy_cnn").exists()
    # into a converged table, a policy goes to that protocol's folder and stages, and one trained under the
    # paper's protocol is refused there
    result = adopt(tmp_path / "fourth" / "lift", dataclasses.replace(cfg, protocol="converged"), **sources)
    assert result["policy cnn converged"].startswith("runs: not there (not adopted: ")
    assert "made with other settings" in result["policy cnn converged"] and "policy cnn" not in result
    assert not (tmp_path / "fourth" / "lift" / "policy_cnn_converged").exists()

    # a demonstrations file made with an explicit count (here 1) is adopted into a table that asks for the task's
    # number (demos=0) when the file holds that number, and refused when it does not
    from dckp.sim.tasks import get_task

    for count, want in ((1, "adopted"), (2, "runs: not there (not adopted: ")):
        monkeypatch.setitem(get_task("lift").demos, "cpu", count)
        result = adopt(tmp_path / f"demos{count}" / "lift", dataclasses.replace(cfg, demos=0),
                       demos=out / "lift" / "demos.h5")
        assert result["demonstrations"].startswith(want)
    assert result["demonstrations"].endswith("1 demonstrations, the table wants 2)")

    # a training resumed from the state an interrupted run left counts the earlier pieces' seconds up to the
    # checkpoint it resumes from, as each piece recorded when it began; without that record they are unknown
    folder = out / "lift" / "policy_cnn"
    (folder / "policy.safetensors").unlink()  # policy_last.safetensors stays, at the last step
    clock = folder / "policy_last.clock.json"
    os.utime(folder / "policy_last.safetensors", (1000.0, 1000.0))  # the last checkpoint: 100 s into a piece
    clock.write_text(json.dumps({"started": 900.0, "before": 20.0}))  # that began after 20 s of earlier pieces
    assert main(argv) == 0
    seconds = json.loads((out / "lift" / "stage_seconds.json").read_text())["policy cnn"]
    assert 120 <= seconds < 120 + 60 and json.loads(clock.read_text())["before"] == 120
    assert json.loads((results / "table1.json").read_text())["cells"]["lift"]["cnn"]["train_s"] == seconds
    (folder / "policy.safetensors").unlink()
    clock.unlink()
    assert main(argv) == 0
    assert json.loads((out / "lift" / "stage_seconds.json").read_text())["policy cnn"] is None
    assert json.loads((results / "table1.json").read_text())["cells"]["lift"]["cnn"]["train_s"] is None


def test_table_flags_are_checked(tmp_path):
    assert main(["table", "--methods", "nope", "--out", str(tmp_path / "x")]) == 2
    assert main(["table", "--chunk", "0", "--out", str(tmp_path / "x")]) == 2
    assert main(["table", "--address", "127.0.0.1:1", "--cpus", "2", "--out", str(tmp_path / "x")]) == 2
    assert main(["table", "--address", "127.0.0.1:1", "--out", str(tmp_path / "x")]) == 2  # nothing listens there
    assert not (tmp_path / "x").exists()


def test_evaluations_then_short_stages_are_placed_before_trainings():
    """With one CPU free, a finished policy's evaluation chunk starts before a training that was ready first (Ray
    would start either), and a short stage (references) before it too; trainings fill the CPUs that are left in
    plan order, an evaluation's eval.json (no CPU) always starts, and with nothing running a job larger than the
    cluster still starts."""
    from dckp.table.runner import _Job, _placeable

    def job(name, cpus, rank, gpus=0):
        return _Job(("lift", name), [], None, {"CPU": cpus, "GPU": gpus}, rank)

    train_a, train_b, refs = job("representation bvae", 1, 2), job("policy cnn", 1, 2), job("references", 1, 1)
    chunk, finish = job("evaluate c", 1, 0), job("evaluate c", 0, 0)
    ready = [train_a, train_b, refs, chunk, finish]
    assert _placeable(ready, {"CPU": 1}, {"CPU": 2}, idle=False) == [chunk, finish]
    assert _placeable(ready, {"CPU": 0}, {"CPU": 2}, idle=False) == [chunk, finish, refs]
    assert _placeable(ready, {"CPU": 0}, {"CPU": 3}, idle=False) == [chunk, finish, refs, train_a]
    assert _placeable([train_a, train_b, refs], {"CPU": 1}, {"CPU": 2}, idle=False) == [refs]
    big = job("pretrain", 8, 2)
    assert _placeable([big, train_a], {}, {"CPU": 2}, idle=True) == [big]
    assert _placeable([big, train_a], {"CPU": 1}, {"CPU": 2}, idle=False) == [train_a]
    gpu = job("policy g", 1, 2, gpus=1)
    assert _placeable([gpu, train_a], {"GPU": 1}, {"CPU": 4, "GPU": 1}, idle=False) == [train_a]

def test_outputs_merge_and_don_scores(tmp_path):
    """table1.json from task folders: a cell's numbers, the task's DON scores; a later run with the same config adds
    its cells, one with another config replaces the file."""
    from dckp.table.outputs import write_outputs

    out = tmp_path / "run"

    def cell(task, method, successes, train_s, first_timed=0):  # episodes before `first_timed` ran untimed
        folder = out / task / f"policy_{method}" / "eval"
        folder.mkdir(parents=True)
        chunks = [{"seeds": [s, s + 1], "node": "n", "seconds": 30.0} for s in range(first_timed, 4, 2)]
        (folder / "eval.json").write_text(json.dumps({"success_rate": successes / 4, "ci95": [0.1, 1.0],
                                                      "episodes": 4, "mean_steps": 30.0, "chunks": chunks}))
        path = out / task / "stage_seconds.json"
        timings = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**timings, f"policy {method}": train_s, f"evaluate {method}": 30.0}))

    cell("lift", "dckp-3d", 4, 100.0)
    cell("lift", "gt-kp", 3, 50.0, first_timed=2)  # adopted with 2 episodes, grown to 4 by the table
    scores = {k: {"pck@5%": 0.9, "wrong_object_rate": 0.01, "pck@1%": 0.5, "pairs": 100}
              for k in ("same_camera", "occlusion")}
    (out / "lift" / "heldout_correspondence.json").write_text(json.dumps({"results": scores}))
    table = TableConfig(tasks=["lift"], methods=["dckp-3d", "gt-kp"], results=str(tmp_path / "results"))
    run = RunConfig(**{**vars(RUN_PRESETS["cpu"]), **RUN})
    data = write_outputs(out, table, run, "cpu", [("lift", "dckp-3d"), ("lift", "gt-kp")])
    assert data["cells"]["lift"]["dckp-3d"] == {"rate": 1.0, "ci95": [0.1, 1.0], "episodes": 4, "mean_steps": 30.0,
                                                "train_s": 100.0, "eval_s": 60.0}
    assert data["cells"]["lift"]["gt-kp"]["eval_s"] is None  # half its episodes have no time: not 30 s for 4
    assert data["don"] == {"lift": {k: {"pck@5%": 0.9, "wrong_object_rate": 0.01, "pairs": 100} for k in scores}}
    md = (tmp_path / "results" / "table1.md").read_text()
    assert "- **lift**: dckp-3d 1.00 > gt-kp 0.75" in md and "| lift | 100 | 0.90 / 0.010 | 0.90 / 0.010 |" in md

    cell("stack", "gt-kp", 1, 70.0)
    data = write_outputs(out, table, run, "cpu", [("stack", "gt-kp")])
    assert sorted(data["cells"]) == ["lift", "stack"]  # the same config: added
    data = write_outputs(out, table, dataclasses.replace(run, episodes=8), "cpu", [("stack", "gt-kp")])
    assert sorted(data["cells"]) == ["lift", "stack"]  # another episode count: cells keep their own
    data = write_outputs(out, table, dataclasses.replace(run, policy_steps=3), "cpu", [("stack", "gt-kp")])
    assert sorted(data["cells"]) == ["stack"]  # another config: replaced


def test_a_gt_kp_policy_is_adopted_from_references_without_descriptors(tmp_path):
    """gt-kp reads the references' pixels, objects and points: its policy made with references chosen without a DON
    is adopted beside a table's references chosen with one (the same but for the descriptors), not beside other
    points; a DON encoder's policy needs the very file."""
    import torch
    from safetensors.torch import save_file

    from dckp.table.adopt import _same

    def refs(name, descriptors, local):
        save_file({"agentview.descriptors": descriptors, "agentview.uv": torch.tensor([[3.0, 4.0], [5.0, 6.0]]),
                   "agentview.object": torch.tensor([0, 1]), "agentview.local": local}, str(tmp_path / name),
                  metadata={"dckp": json.dumps({"task": "lift"})})
        return tmp_path / name

    local = torch.arange(6.0).reshape(2, 3)
    without, with_don = refs("without.safetensors", torch.zeros(2, 0), local), refs("don.safetensors",
                                                                                      torch.randn(2, 8), local)
    moved = refs("moved.safetensors", torch.randn(2, 8), local + 0.01)
    reads = ("uv", "object", "local")
    assert _same(without, with_don, reads) and not _same(without, moved, reads)
    assert not _same(without, with_don)


def test_a_change_of_the_converged_preset_remakes_the_converged_cells(monkeypatch):
    """The converged table's cells depend on the converged policy preset (not the cpu one the paper's use): cells made
    with another preset (e.g. fewer steps) are not taken for done; the paper's table does not depend on it."""
    from dckp.table.outputs import table_config

    paper, converged = RunConfig(**{**vars(RUN_PRESETS["cpu"]), **RUN}), RunConfig(protocol="converged")
    assert table_config(converged, "cpu")["stages"]["policy"]["steps"] == POLICY_PRESETS["converged"].steps
    before = {r.protocol: table_config(r, "cpu") for r in (paper, converged)}
    monkeypatch.setitem(POLICY_PRESETS, "converged",
                        dataclasses.replace(POLICY_PRESETS["converged"], steps=POLICY_PRESETS["converged"].steps // 2))
    assert table_config(converged, "cpu") != before["converged"]
    assert table_config(paper, "cpu") == before["paper"]


def test_markdown_does_not_depend_on_the_order_cells_finished():
    from dckp.table.outputs import markdown

    cell = {"rate": 0.5, "ci95": [0.3, 0.7], "episodes": 50, "mean_steps": 100, "train_s": 60.0, "eval_s": 120.0}
    data = {"cells": {"nut_assembly": {"gt-kp": cell, "blind": {**cell, "rate": 0.1}}}, "paper": {}, "don": {},
            "config": {"preset": "cpu", "eval_seed_start": 1_000_000, "render": "visual geoms"}}
    swapped = {**data, "cells": {"nut_assembly": dict(reversed(list(data["cells"]["nut_assembly"].items())))}}
    assert markdown(data) == markdown(swapped)
    cost = markdown(data).split("## Cost per cell")[1]
    assert cost.index("| nut_assembly | blind |") < cost.index("| nut_assembly | gt-kp |")


def test_the_ranking_is_compared_with_the_papers_pair_by_pair():
    from dckp.table.outputs import agreement, markdown

    def c(rate, lo, hi):
        return {"rate": rate, "ci95": [lo, hi], "episodes": 100, "mean_steps": 100, "train_s": 1.0, "eval_s": 1.0}

    ours = {"gt-kp": c(0.8, 0.7, 0.9), "monet": c(0.1, 0.05, 0.2), "dckp-3d": c(0.5, 0.4, 0.6),
            "blind": c(0.45, 0.35, 0.55), "cnnd": c(0.3, 0.2, 0.4)}
    paper = {"gt-kp": 0.885, "monet": 0.76, "dckp-3d": 0.59, "blind": None, "cnnd": None, "cnn": 0.245}
    # pairs both rate: gt-kp/monet (same order), gt-kp/dckp-3d (same), monet/dckp-3d (ours the other way round,
    # intervals apart); blind and cnnd the paper does not rate, cnn we do not
    assert agreement(ours, paper) == (3, 2, ["dckp-3d > monet"])
    assert agreement({**ours, "dckp-3d": c(0.15, 0.05, 0.3)}, paper) == (3, 2, [])  # overlapping: not listed
    assert agreement({"gt-kp": ours["gt-kp"], "monet": c(0.8, 0.7, 0.9)}, paper) == (0, 0, [])  # a tie: no order
    data = {"cells": {"pick_place_clutter": ours}, "paper": {"Rubbish": paper}, "don": {},
            "config": {"preset": "cpu", "eval_seed_start": 1_000_000, "render": "visual geoms"}}
    assert ("  - order: 2 of 3 pairs of methods as in the paper; the other way round, with our 95 % intervals "
            "apart: dckp-3d > monet\n") in markdown(data)


def test_protocols_keep_their_policies_and_tables_apart(tmp_path):
    """A converged (or other-head) run's policies, stages and table files are named apart from the paper's, so both
    live in one run folder; its cells add the head, the training steps and the step kept."""
    from dckp.policy import Policy, PolicyConfig, save_policy
    from dckp.table.outputs import read_cell, table_stem

    paper, lstm = RunConfig(), RunConfig(head="lstm")
    converged, diffusion = RunConfig(protocol="converged"), RunConfig(protocol="converged", head="diffusion")
    assert [r.policy_folder("gt-kp") for r in (paper, lstm, converged, diffusion)] == [
        "policy_gt-kp", "policy_gt-kp", "policy_gt-kp_converged", "policy_gt-kp_converged-diffusion"]
    assert converged.stage("evaluate", "gt-kp") == "evaluate gt-kp converged"
    assert paper.stage("policy", "gt-kp") == "policy gt-kp"
    assert [table_stem(r) for r in (paper, converged)] == ["table1", "table1_converged"]
    for run, rate in ((paper, 0.5), (converged, 0.75)):
        folder = tmp_path / run.policy_folder("gt-kp")
        (folder / "eval").mkdir(parents=True)
        (folder / "eval" / "eval.json").write_text(json.dumps(
            {"success_rate": rate, "ci95": [0.1, 0.9], "episodes": 4, "mean_steps": 10.0}))
        save_policy(Policy(3, 7, PolicyConfig(head="rnn-gmm", head_options={"hidden": 4}, steps=30)), folder, best=20)
    (tmp_path / "stage_seconds.json").write_text(json.dumps({"policy gt-kp": 1.0, "policy gt-kp converged": 2.0}))
    assert read_cell(tmp_path, paper, "gt-kp") == {"rate": 0.5, "ci95": [0.1, 0.9], "episodes": 4, "mean_steps": 10.0,
                                                   "train_s": 1.0, "eval_s": None}
    assert read_cell(tmp_path, converged, "gt-kp") == {
        "rate": 0.75, "ci95": [0.1, 0.9], "episodes": 4, "mean_steps": 10.0, "train_s": 2.0, "eval_s": None,
        "head": "rnn-gmm", "steps": 30, "best_step": 20}


def _train_until_stopped(folder: str) -> str:
    """A Ray task standing in for a training: steps until its first interrupt, then saves."""
    import time

    from dckp.training import stop_after_step

    with stop_after_step() as stop:
        Path(folder, "started").touch()
        while not stop:
            time.sleep(0.05)
    Path(folder, "saved").touch()
    return "saved"


def test_an_interrupted_table_passes_the_signal_on_to_its_running_tasks(tmp_path, local_ray):
    import signal
    import threading
    import time

    import ray

    from dckp.errors import Interrupted
    from dckp.table.runner import _Job, _wait

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this module
    train = ray.remote(_train_until_stopped)
    job = _Job(("lift", "policy gt-kp"), [], lambda: train.remote(str(tmp_path)), {"CPU": 1, "GPU": 0}, 2)

    def ctrl_c_once_started():
        deadline = time.time() + 120
        while not (tmp_path / "started").exists() and time.time() < deadline:
            time.sleep(0.1)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises, as in the CLI
    try:
        threading.Thread(target=ctrl_c_once_started, daemon=True).start()
        with pytest.raises(Interrupted, match=f"^stopped lift: policy gt-kp, each keeping what it resumes from; "
                                              f"finished stages kept in {tmp_path}$"):
            _wait([job], {}, {("lift", "gt-kp"): {"policy gt-kp"}}, tmp_path, lambda done: None)
    finally:
        signal.signal(signal.SIGINT, before)
    assert (tmp_path / "started").exists() and (tmp_path / "saved").exists()  # the task saved before Ray went down


def _computing_with_sigint_ignored(folder: str) -> None:
    """A Ray task standing in for a stage's work outside a training loop (no SIGINT handler of its own) in a worker
    that inherited SIGINT ignored, as from a table started in the background by a script."""
    import time

    from dckp.table.runner import interruptible

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interruptible()
    Path(folder, "started").touch()
    try:
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        Path(folder, "stopped").touch()
        raise


def test_a_worker_that_inherited_sigint_ignored_is_stopped_all_the_same(tmp_path, local_ray):
    import time

    import ray

    from dckp.table.runner import _pass_on

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ref = ray.remote(_computing_with_sigint_ignored).remote(str(tmp_path))
    deadline = time.time() + 120
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.1)
    _pass_on([ref], grace_s=60)
    assert (tmp_path / "stopped").exists()


def _over_budget() -> None:
    from dckp.table.runner import StageOverBudget

    raise StageOverBudget("lift: stage 'policy cnn': 10000 steps at 2 s each would take 5.56 h, over the budget")


def test_a_training_over_its_budget_leaves_its_cell_pending(tmp_path, local_ray, caplog):
    import ray

    from dckp.table.runner import PENDING, _Job, _wait

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    resources = {"CPU": 1, "GPU": 0}
    train = _Job(("lift", "policy cnn"), [], lambda: ray.remote(_over_budget).remote(), resources, 2)
    evaluate = _Job(("lift", "evaluate cnn"), [("lift", "policy cnn")], lambda: pytest.fail("evaluated"), resources, 0)
    status = {}
    _wait([train, evaluate], status, {("lift", "cnn"): {"policy cnn", "evaluate cnn"}}, tmp_path, lambda done: None)
    assert status == {("lift", "policy cnn"): PENDING, ("lift", "evaluate cnn"): PENDING}
    assert "over the budget; its cell is left pending" in caplog.text and "failed" not in caplog.text


def test_ray_keeps_the_signal_handlers_in_place(local_ray):
    # ray.init installs its own SIGTERM handler (exit at once), which would skip the CLI's interrupt: the running
    # tasks would not be told to save. The handlers in place before it are kept.
    import signal

    import ray

    from dckp.table import start_ray

    ray.shutdown()
    mine = {s: (lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    before = {s: signal.signal(s, h) for s, h in mine.items()}
    try:
        assert start_ray(cpus=2)
        assert all(signal.getsignal(s) is h for s, h in mine.items())
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_the_page_shows_both_protocols_with_the_change(tmp_path):
    from dckp.table.outputs import protocols

    def cell(rate, low, high, **extra):
        return {"rate": rate, "ci95": [low, high], "episodes": 100, "mean_steps": 1.0, "train_s": None,
                "eval_s": None, **extra}

    (tmp_path / "table1.json").write_text(json.dumps({"cells": {"stack": {
        "gt-kp": cell(0.6, 0.5, 0.7), "blind": cell(0.04, 0.01, 0.1)}}}))
    assert protocols(tmp_path) == ""  # one protocol: nothing to compare
    (tmp_path / "table1_converged.json").write_text(json.dumps({"cells": {"stack": {
        "gt-kp": cell(0.9, 0.82, 0.95, head="rnn-gmm", steps=10, best_step=8),
        "blind": cell(0.08, 0.03, 0.15, head="rnn-gmm", steps=10, best_step=4)}}}))
    section = protocols(tmp_path)
    gt = section.split("<th>gt-kp</th>")[1].split("</tr>")[0]
    assert "0.60 [0.50, 0.70]" in gt and "0.90 [0.82, 0.95] (rnn-gmm, best step 8)" in gt
    assert "+0.30</td>" in gt and "0.720" in gt  # apart intervals; the paper's GT-KP on Phone
    blind = section.split("<th>blind</th>")[1].split("</tr>")[0]
    assert "+0.04 (intervals overlap)" in blind


def test_trainings_are_estimated_from_finished_ones_and_left_pending_over_budget(tmp_path):
    """A cell's training estimate is its steps times the seconds per step of finished trainings of its head and
    encoder kind (the same task first); over `max_cell_hours` it stays pending, in the converged table's `pending`
    until it is done."""
    from dckp.policy import Policy, PolicyConfig, save_policy
    from dckp.table import cost
    from dckp.table.outputs import write_outputs
    from dckp.table.runner import dry_run, trainings

    out, run = tmp_path / "run", RunConfig(protocol="converged")
    done = out / "nut_assembly" / run.policy_folder("gt-kp")
    save_policy(Policy(3, 7, PolicyConfig(head="rnn-gmm", head_options={"hidden": 4}, steps=10000)), done, best=1)
    (out / "nut_assembly" / "stage_seconds.json").write_text(json.dumps({run.stage("policy", "gt-kp"): 3000.0}))
    rates = cost.measured(out, ["nut_assembly", "stack"], ["gt-kp", "blind"], [run, RunConfig()])
    assert rates == {("nut_assembly", "rnn-gmm", "frozen, without images"): [0.3]}
    est = 0.3 * POLICY_PRESETS["converged"].steps  # the preset's steps at the finished training's 0.3 s a step
    assert cost.estimate_s(rates, run, "nut_assembly", "blind", "cpu") == est
    assert cost.estimate_s(rates, run, "stack", "blind", "cpu") == est  # another task's, of the same kind
    assert cost.estimate_s(rates, run, "stack", "cnn", "cpu") is None  # trained end to end: nothing like it yet
    assert cost.estimate_s(rates, run, "nut_assembly", "dckp-3d", "cpu") is None  # its rollouts render and encode
    assert cost.estimate_s(rates, dataclasses.replace(run, head="diffusion"), "stack", "blind", "cpu") is None

    table = TableConfig(tasks=["nut_assembly", "stack"], methods=["blind", "cnn"], max_cell_hours=0.5,
                        results=str(tmp_path / "results"))
    _, train = trainings(table, run, out, "cpu")
    assert train[("stack", "blind")] == {"estimate_s": est, "pending": True}
    assert train[("stack", "cnn")] == {"estimate_s": None, "pending": False}  # unknown: it runs, and is measured
    lines = dry_run(table, run, out)
    assert f"  training blind: {est / 3600:.1f} h (pending: over --max-cell-hours)" in lines
    assert lines[-1] == "trainings to run: 2, estimated 0.0 h for the 0 with an estimate; pending: 2"

    pending = {cell: t["estimate_s"] for cell, t in train.items() if t["pending"]}
    data = write_outputs(out, table, run, "cpu", [], pending)
    assert data["pending"] == {task: {"blind": {"estimate_h": round(est / 3600, 2)}} for task in ("nut_assembly",
                                                                                               "stack")}
    assert f"| stack | blind | {est / 3600:.2f} |" in (tmp_path / "results" / "table1_converged.md").read_text()
    folder = out / "stack" / run.policy_folder("blind")
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "eval.json").write_text(json.dumps({"success_rate": 0.5, "ci95": [0.1, 0.9], "episodes": 4,
                                                           "mean_steps": 10.0}))
    save_policy(Policy(3, 7, PolicyConfig(head="rnn-gmm", head_options={"hidden": 4}, steps=10000)), folder, best=1)
    data = write_outputs(out, table, run, "cpu", [("stack", "blind")])
    assert data["pending"] == {"nut_assembly": {"blind": {"estimate_h": round(est / 3600, 2)}}}  # stack's is done
    assert "pending" not in write_outputs(out, table, RunConfig(), "cpu", [])  # the paper's table keeps its keys
    # a training that stopped over its budget counts with the seconds per step it measured, for its kind
    stopped = out / "nut_assembly" / run.policy_folder("cnn")
    stopped.mkdir(parents=True)
    (stopped / "estimate.json").write_text(json.dumps({"head": "rnn-gmm", "steps": 10000, "at_step": 100,
                                                       "s_per_step": 2.0, "budget_s": 1800.0}))
    _, train = trainings(table, run, out, "cpu")
    assert train[("stack", "cnn")] == train[("nut_assembly", "cnn")] == {"estimate_s": 2.0 * POLICY_PRESETS[
        "converged"].steps, "pending": True}
