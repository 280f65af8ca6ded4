"""`dckp table` on Ray: the stages of `dckp.pipeline.plan` for every task, as Ray tasks with their resource needs.

Each task's folder `out/<task>` is a `dckp run` folder (the same stages, files and checks; its report.html covers the
task's cells). Which stages run is decided on the driver first (`dckp.pipeline.decide`: a stage whose artefact
exists, reads back and was made with the settings asked for now is skipped); each stage that runs is one Ray task,
running the stage's own `work` on whichever node Ray picks (so the run folder must be on a file system every node
sees). An evaluation is split into chunks of seeds, one Ray task each (`evaluation.run_episodes`); a last task writes
`eval.json` from them, with the node that ran each chunk (`chunks`). Evaluation seeds are the pipeline's: the same
for every method, from 1,000,000.

The driver starts each Ray task once the tasks it needs have finished and the cluster has the CPUs (and GPUs) free
for it, evaluations first, then short stages, then trainings (`_placeable`): a cell is finished as soon as its
policy is, rather than its evaluation waiting behind the next hour-long training.

A stage that fails fails the cells that need it, and only those: the others finish, and the failures are reported
at the end (one line each, naming the task, the stage and the error).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from dckp.config import save_json
from dckp.encoders.config import encoder_names
from dckp.errors import DckpError, Interrupted, OverBudget
from dckp.pipeline import RunConfig, Stage, decide, plan, write_report
from dckp.table import cost
from dckp.table.config import TableConfig
from dckp.table.outputs import recorded

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 100 * 1024**2  # the stages pass only small results through Ray; their data go through files
WORKER_ENV = {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", "OMP_NUM_THREADS": "1"}
TRAINING = ("pretrain", "representation", "policy")  # stages that train a network (a GPU where they run on cuda)
STOP_GRACE_S = 120.0  # seconds the running tasks of an interrupted table get to save their state
EVAL_GPU_SHARE = 0.25  # of a GPU per evaluation chunk on cuda: the simulator, on the CPU, is most of a chunk's time


class StageFailed(Exception):
    """A stage's work raised: the message names the task, the stage and the error, on one line."""


class StageOverBudget(StageFailed):
    """A policy training stopped over its time budget (`--max-cell-hours`): its cell is left pending."""


PENDING = "pending"  # the status of a cell left to run, and of the stages it needs that stopped over the budget


def start_ray(address: str = "", cpus: int = 0) -> bool:
    """Connect to the Ray cluster at `address`, or start a new Ray instance on this machine (`cpus` CPUs, 0: all; no
    dashboard, a small object store), even where `RAY_ADDRESS` or an earlier `ray start` names a cluster. Workers get
    `WORKER_ENV` (this process's values where set). False when Ray was already running in this process (it is then
    used, and left running)."""
    import ray

    if address:
        _reachable(address)
    if ray.is_initialized():
        return False
    env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
    local = {} if address else {"num_cpus": cpus or os.cpu_count(), "object_store_memory": OBJECT_STORE_BYTES,
                                "include_dashboard": False}
    # Ray's driver handlers (SIGTERM: exit at once) would skip the interrupt that passes the signal on to the running
    # tasks, which then save: the handlers in place before (the CLI's, SIGTERM as Ctrl-C) are put back
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        ray.init(address=address or "local", runtime_env={"env_vars": env}, log_to_driver=False,
                 configure_logging=False, **local)
    except ConnectionError as e:
        raise DckpError(f"cannot reach the Ray cluster ({e})".replace("\n", " "), field="--address") from None
    if threading.current_thread() is threading.main_thread():
        for s, handler in kept.items():
            if handler is not None:
                signal.signal(s, handler)
    return True


def _reachable(address: str, timeout: float = 5.0) -> None:
    """DckpError unless a `host:port` address accepts a connection (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "/" in host:  # ray://, auto: Ray's own forms
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise DckpError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start it with `ray start "
                        "--head` and give the address it prints", field="--address") from None


def task_config(run: RunConfig, task: str, methods: list[str]) -> RunConfig:
    """The `dckp run` settings of one task's cells: the first method is the run's encoder, the others its
    baselines."""
    return dataclasses.replace(run, task=task, encoder=methods[0], baselines=list(methods[1:]))


def _stage_resources(stage: Stage, run: RunConfig, table: TableConfig) -> dict:
    """Ray resources of a stage: `train_cpus` for training (and a GPU on cuda) and for the demonstrations (as many
    worker processes, `run_table`), 1 CPU otherwise."""
    training = stage.name.split(" ")[0] in TRAINING
    gpu = training and run.device.startswith("cuda")
    cpus = table.train_cpus if training or stage.name == "demonstrations" else 1
    return {"num_cpus": cpus, "num_gpus": 1 if gpu else 0}


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def interruptible() -> None:
    """Ray stops a running task (`ray.cancel`, which the table's driver sends on Ctrl-C or SIGTERM) through the task's
    SIGINT handler. A worker started with SIGINT ignored has none, and runs on until Ray kills it: Ray's processes
    inherit the driver's ignored SIGINT, as a table started in the background by a script (`dckp table ... &`, a
    batch job) has it. Python's own handler is put in place."""
    if threading.current_thread() is threading.main_thread() and not callable(signal.getsignal(signal.SIGINT)):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_stage(config: dict, folder: str, sp: str, name: str, threads: int) -> dict:
    """Ray task: stage `name` of the plan of `config` in `folder` (rebuilt here, on the worker). Its seconds include
    those of earlier, interrupted runs up to the state it resumed from (`Stage.start_piece`; None where not
    recorded)."""
    import torch

    interruptible()
    torch.set_num_threads(threads)
    stage = {s.name: s for s in plan(RunConfig(**config), Path(folder), sp)}[name]
    seconds = stage.start_piece()
    try:
        stage.work()
    except OverBudget as e:
        raise StageOverBudget(f"{config['task']}: stage {name!r}: {e}".replace("\n", " ")) from None
    except Exception as e:
        raise StageFailed(f"{config['task']}: stage {name!r}: {type(e).__name__}: {e}".replace("\n", " ")) from None
    return {"seconds": seconds(), "node": _node()}


def _run_chunk(task: str, name: str, evaluation: dict, jobs: list) -> dict:
    """Ray task: the episodes `jobs` ((seed, record) pairs) of an evaluate stage's policy. Each episode's record is
    saved as it finishes, so a table stopped before `_finish_evaluation` keeps them (`evaluation.missing_jobs`)."""
    from dckp.evaluation import run_episodes

    interruptible()
    out = Path(evaluation["policy_dir"]) / "eval"
    start = time.time()
    try:
        out.mkdir(parents=True, exist_ok=True)
        results = run_episodes(evaluation["policy_dir"], jobs, out, evaluation["max_steps"],
                               device=evaluation["device"], node=_node())
    except Exception as e:
        raise StageFailed(f"{task}: stage {name!r}, seeds {jobs[0][0]}..{jobs[-1][0]}: {type(e).__name__}: "
                          f"{e}".replace("\n", " ")) from None
    return {"results": results, "seeds": [jobs[0][0], jobs[-1][0]], "node": _node(),
            "seconds": round(time.time() - start, 1)}


def _finish_evaluation(evaluation: dict, *chunks) -> dict:
    """Ray task: eval.json from the chunks of one evaluation and the episodes recorded before (an evaluation grows);
    its seconds are its chunks' summed, those recorded before included."""
    from dckp.evaluation import write_evaluation

    seeds = list(range(evaluation["seed_start"], evaluation["seed_start"] + evaluation["episodes"]))
    report = write_evaluation([r for c in chunks for r in c["results"]], evaluation["policy_dir"],
                              Path(evaluation["policy_dir"]) / "eval", seeds, evaluation["max_steps"],
                              evaluation["device"], chunks=[{k: c[k] for k in ("seeds", "node", "seconds")}
                                                            for c in chunks])
    return {"seconds": round(sum(c["seconds"] for c in report.get("chunks", [])), 1), "node": _node()}


def _chunks(evaluation: dict, size: int, policy_runs: bool) -> list[list[tuple[int, bool]]]:
    """The seeds of an evaluation not recorded yet (`evaluation.missing_jobs`; all of them when its policy is
    trained in this run), in chunks of `size`."""
    from dckp.evaluation import missing_jobs

    seeds = list(range(evaluation["seed_start"], evaluation["seed_start"] + evaluation["episodes"]))
    if policy_runs:
        jobs = [(seed, i < evaluation["videos"]) for i, seed in enumerate(seeds)]
    else:
        jobs = missing_jobs(Path(evaluation["policy_dir"]) / "eval", evaluation["policy_dir"], seeds,
                            evaluation["videos"], evaluation["max_steps"], evaluation["device"])
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def _closure(stages: list[Stage], name: str) -> set[str]:
    """`name` and every stage it needs, directly or not."""
    needs = {s.name: s.needs for s in stages}
    seen, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n not in seen and n in needs:
            seen.add(n)
            todo.extend(needs[n])
    return seen


def _cause(error: Exception) -> str:
    """One line for a Ray task's error: the stage's own message where there is one."""
    cause = getattr(error, "cause", None) or error
    text = str(cause) if isinstance(cause, StageFailed) else f"{type(cause).__name__}: {cause}"
    return text.strip().splitlines()[0] if text.strip() else type(cause).__name__


@dataclasses.dataclass
class _Job:
    """One Ray task the driver places: a stage, an evaluation's chunk of seeds, or the task writing its eval.json
    from the chunks."""

    key: tuple  # (task, stage name), or (task, stage name, chunk index) for a chunk
    needs: list[tuple]  # the jobs it starts after
    submit: Callable  # called with the results of the `inputs` jobs
    resources: dict  # {"CPU": n, "GPU": n} it asks Ray for
    rank: int  # placed before ready jobs of a higher rank: 0 an evaluation's part, 1 a stage that trains nothing,
    # 2 a training (minutes to hours)
    inputs: list[tuple] = dataclasses.field(default_factory=list)  # of `needs`, those whose results `submit` takes
    # (an eval.json's job: its chunks)


def _placeable(ready: list[_Job], used: dict, capacity: dict, idle: bool) -> list[_Job]:
    """The ready jobs to start now, by rank (evaluation parts, then short stages such as references, then
    trainings) and within a rank in plan order, each while the cluster's CPUs and GPUs (`capacity`) hold it beside
    those `used` by running jobs. With nothing running (`idle`), the first job starts even when it asks for more
    than the cluster has (Ray then waits for the resources to appear).

    Ray itself starts whichever ready task fits a free slot, so a training submitted early could take the slot of a
    finished policy's evaluation, or of the references five cells wait for, and hold it for an hour; placing the
    jobs here finishes cells first."""
    used, chosen = dict(used), []
    for job in sorted(ready, key=lambda j: j.rank):  # stable: plan order within a rank
        if (idle and not chosen) or all(used.get(r, 0) + n <= capacity.get(r, 0) for r, n in job.resources.items()
                                        if n):
            chosen.append(job)
            for r, n in job.resources.items():
                used[r] = used.get(r, 0) + n
    return chosen


def trainings(table: TableConfig, run: RunConfig, out: str | Path, preset: str, remove: bool = False
              ) -> tuple[dict, dict]:
    """Per task its plan and the stages to run (`decide`; none for a cell recorded in the table's json whose
    policy folder is not here, `outputs.recorded`, and none at all for a task with only such cells left), and per cell
    whose policy would train: its estimated training seconds (`dckp.table.cost`) and whether it stays pending (over
    `table.max_cell_hours`)."""
    out, sp = Path(out).resolve(), "paper" if preset == "paper" else "cpu"
    rates = _rates(table, run, out)
    made = recorded(table, run, preset)
    plans, train = {}, {}
    for task in table.tasks:
        cfg = task_config(run, task, table.methods)
        stages = plan(cfg, out / task, sp)
        here = out / task
        elsewhere = {m for m in cfg.encoders() if (task, m) in made and not (here / cfg.policy_folder(m)).exists()}
        if elsewhere:  # their stages, and the shared ones only they need, are not decided on, run or removed
            cell = {m: _closure(stages, cfg.stage("evaluate", m)) for m in cfg.encoders()}
            ends = [cfg.stage("evaluate", m) for m in cfg.encoders() if m not in elsewhere]
            ends += [s.name for s in stages if s.name not in set().union(*cell.values())] if ends else []  # reports
            keep = set().union(*(_closure(stages, n) for n in ends))
            stages_left = [s for s in stages if s.name in keep]
        todo = decide(stages_left if elsewhere else stages, remove=remove)
        plans[task] = (cfg, stages, todo, elsewhere)
        for method in cfg.encoders():
            if cfg.stage("policy", method) in todo:
                seconds = cost.estimate_s(rates, cfg, task, method, sp)
                over = bool(table.max_cell_hours) and seconds is not None and seconds > table.max_cell_hours * 3600
                train[task, method] = {"estimate_s": seconds, "pending": over}
    return plans, train


def _rates(table: TableConfig, run: RunConfig, out: Path) -> dict:
    """The seconds per training step measured in the run folder (`cost.measured`), under both protocols."""
    return cost.measured(out, table.tasks, encoder_names(), [run, dataclasses.replace(run, protocol="paper", head="")])


def dry_run(table: TableConfig, run: RunConfig, out: str | Path, preset: str = "cpu") -> list[str]:
    """Per task, a line of its cells done and one of the stages `run_table` would run now: a stage whose artefact is
    there says why it runs again (the table removes that artefact first, `decide`), and one that continues from an
    interrupted run's state says so; then each training's estimated time, and the cells left pending over
    `max_cell_hours`. Nothing is run, written or removed."""
    plans, train = trainings(table, run, out, preset)
    lines = []
    for task, (cfg, stages, todo, elsewhere) in plans.items():
        done = [m for m in cfg.encoders()
                if m not in elsewhere and not _closure(stages, cfg.stage("evaluate", m)) & set(todo)]
        runs = [s.name + (f" (replaces its artefact: {todo[s.name]})" if s.artefact.exists() else
                          f" (starts over: {todo[s.name]})" if s.resumes() and todo[s.name] else
                          " (resumes)" if s.resumes() else "") for s in stages if s.name in todo]
        lines += [f"{task}: {len(done)} of {len(cfg.encoders())} cells done: {', '.join(done) or 'none'}"
                  + (f"; recorded in {table.results}, not made here: {', '.join(sorted(elsewhere))}"
                     if elsewhere else ""), f"  would run: {'; '.join(runs) or 'nothing'}"]
        lines += [f"  training {m}: {cost.hours(t['estimate_s'])}" + (" (pending: over --max-cell-hours)"
                                                                       if t["pending"] else "")
                  for (tk, m), t in train.items() if tk == task]
    known = [t["estimate_s"] for t in train.values() if t["estimate_s"] is not None and not t["pending"]]
    lines.append(f"trainings to run: {sum(not t['pending'] for t in train.values())}, estimated "
                 f"{sum(known) / 3600:.1f} h for the {len(known)} with an estimate; pending: "
                 f"{sum(t['pending'] for t in train.values())}")
    return lines


def run_table(table: TableConfig, run: RunConfig, out: str | Path, preset: str = "cpu") -> dict:
    """Make every cell of `table` that is not done, in `out/<task>/`, with the stage settings of `run` (and the
    `paper` stage presets for `preset="paper"`, else `cpu`), writing `table.results`/table1.* as cells finish (those
    already done first), so a long run's partial table can be read and committed. Returns `{"cells": {(task,
    method): "done" | "pending" | error}, "stages": {(task, stage): "skipped" | "ran" | error}}`: a cell whose
    training is estimated over `table.max_cell_hours` stays pending, its estimate in the table's `pending`."""
    import ray

    from dckp.table.outputs import write_outputs

    # the demonstrations' processes (evaluation: chunks); a training stops once it measures itself over the budget
    run = dataclasses.replace(run, workers=table.train_cpus, max_train_hours=table.max_cell_hours)
    out = Path(out).resolve()
    sp = "paper" if preset == "paper" else "cpu"
    started = start_ray(table.address, table.cpus)
    try:
        stage_task = ray.remote(_run_stage)
        chunk_task, finish_task = ray.remote(_run_chunk), ray.remote(_finish_evaluation)
        jobs: list[_Job] = []
        status: dict[tuple[str, str], str] = {}
        cells: dict[tuple[str, str], set[str]] = {}  # (task, method) -> the stages it needs
        plans, train = trainings(table, run, out, preset, remove=True)
        pending = {cell: t["estimate_s"] for cell, t in train.items() if t["pending"]}
        for (task, method), seconds in pending.items():
            log.info("%s/%s: pending, its training estimated at %s is over --max-cell-hours %g", task, method,
                     cost.hours(seconds), table.max_cell_hours)
        for task, (cfg, stages, todo, elsewhere) in plans.items():
            folder = out / task
            folder.mkdir(parents=True, exist_ok=True)
            save_json({"preset": preset, **dataclasses.asdict(cfg)}, folder / "run.config.json")
            left = {cfg.stage(kind, m) for t, m in pending if t == task for kind in ("policy", "evaluate")}
            for stage in stages:
                if stage.name in left:
                    continue
                if stage.name not in todo:
                    status[task, stage.name] = "skipped"
                    continue
                deps = [(task, n) for n in stage.needs if n in todo]
                if stage.evaluation is not None:
                    ev = stage.evaluation
                    res = {"CPU": 1, "GPU": EVAL_GPU_SHARE if ev["device"].startswith("cuda") else 0}
                    parts = []
                    for i, seeds in enumerate(_chunks(ev, table.chunk, bool(deps))):
                        parts.append((task, stage.name, i))
                        jobs.append(_Job(parts[-1], deps, functools.partial(
                            chunk_task.options(num_cpus=1, num_gpus=res["GPU"]).remote, task, stage.name, ev, seeds),
                            res, 0))
                    # after its chunks, and after the policy where no chunk runs (every episode recorded before)
                    jobs.append(_Job((task, stage.name), parts + deps, functools.partial(
                        finish_task.options(num_cpus=0).remote, ev), {}, 0, inputs=parts))
                else:
                    res = _stage_resources(stage, cfg, table)
                    jobs.append(_Job((task, stage.name), deps, functools.partial(
                        stage_task.options(**res).remote, dataclasses.asdict(cfg), str(folder), sp, stage.name,
                        res["num_cpus"]), {"CPU": res["num_cpus"], "GPU": res["num_gpus"]},
                        2 if stage.name.split(" ")[0] in TRAINING else 1))
            for method in cfg.encoders():
                if (task, method) not in pending and method not in elsewhere:
                    cells[task, method] = _closure(stages, cfg.stage("evaluate", method))
        _wait(jobs, status, cells, out, lambda done: write_outputs(out, table, run, preset, done, pending))
    finally:
        if started:
            ray.shutdown()
    for task in table.tasks:
        try:
            write_report(out / task)
        except DckpError as e:  # a failed stage can leave the report without its inputs
            log.warning("%s: no report.html (%s)", task, e)
    cell_status = {cell: PENDING for cell in pending}
    cell_status.update({(task, m): "recorded" for task, (*_, elsewhere) in plans.items() for m in elsewhere})
    for (task, method), needs in cells.items():
        errors = [status[task, n] for n in sorted(needs) if status.get((task, n)) not in ("skipped", "ran")]
        cell_status[task, method] = errors[0] if errors else "done"
    if stopped := [cell for cell, s in cell_status.items() if s == PENDING and cell not in pending]:
        rates = _rates(table, run, out)  # with what the trainings stopped over the budget measured
        pending.update({(t, m): cost.estimate_s(rates, plans[t][0], t, m, sp) for t, m in stopped})
        write_outputs(out, table, run, preset, [], pending)
    return {"cells": cell_status, "stages": status}


def _wait(jobs: list[_Job], status: dict, cells: dict, out: Path, finished: Callable[[list], object]) -> None:
    """Start the jobs as the jobs they need finish (`_placeable`) and collect them: timings into each task's
    stage_seconds.json, failures logged (a job whose need failed fails with its error, unstarted), `finished` called
    with the cells done since its last call, and the progress of the cells (done, running: every shared stage it
    needs is done, waiting, failed)."""
    import ray
    from ray.exceptions import RayError

    def settled(cell) -> str | None:
        states = [status.get((cell[0], n)) for n in cells[cell]]
        if PENDING in states:
            return PENDING
        if any(s not in (None, "skipped", "ran") for s in states):
            return "failed"
        return "done" if all(s is not None for s in states) else None

    def shared_done(cell) -> bool:
        return all(status.get((cell[0], n)) is not None for n in cells[cell]
                   if not n.startswith(("policy ", "evaluate ")))

    def fail(job: _Job, error: str) -> None:
        failed[job.key] = error
        status.setdefault(job.key[:2], error)  # a chunk's error is its evaluation's (the first one)
        if error not in logged and error != PENDING:  # the jobs after a failed one fail with its error
            logged.add(error)
            log.error("failed: %s", error)

    waiting, running = list(jobs), {}  # running: ObjectRef -> job
    results, failed, logged, reported = {}, {}, set(), set()
    # no rate or ETA: the cells skipped at the start and the hour-long trainings make both meaningless
    bar = tqdm(total=len(cells), desc="table cells",
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
    try:
        while True:
            for job in [j for j in waiting if any(n in failed for n in j.needs)]:
                waiting.remove(job)
                fail(job, next(failed[n] for n in job.needs if n in failed))
            ready = [j for j in waiting if all(n in results for n in j.needs)]
            cluster = ray.cluster_resources()
            capacity = {r: cluster.get(r, 0) for r in ("CPU", "GPU")}
            used = {r: sum(j.resources.get(r, 0) for j in running.values()) for r in ("CPU", "GPU")}
            for job in _placeable(ready, used, capacity, idle=not running):
                waiting.remove(job)
                running[job.submit(*(results[n] for n in job.inputs))] = job
            states = {c: settled(c) for c in cells}
            if done := [c for c, s in states.items() if s == "done" and c not in reported]:
                finished(done)
                reported.update(done)
            bar.n = sum(s is not None for s in states.values())
            started = sum(s is None and shared_done(c) for c, s in states.items())
            bar.set_postfix(done=sum(s == "done" for s in states.values()), running=started,
                            waiting=sum(s is None for s in states.values()) - started,
                            failed=sum(s == "failed" for s in states.values()),
                            pending=sum(s == PENDING for s in states.values()))
            if not running:
                break
            ref = ray.wait(list(running), num_returns=1)[0][0]
            job = running.pop(ref)
            try:
                results[job.key] = ray.get(ref)
            except RayError as e:
                if isinstance(getattr(e, "cause", None), StageOverBudget):  # its cell, and the jobs after it: pending
                    log.warning("%s; its cell is left pending", e.cause)
                    fail(job, PENDING)
                else:
                    fail(job, _cause(e))
                continue
            if len(job.key) == 2:  # a stage, or an evaluation's eval.json
                status[job.key] = "ran"
                path = out / job.key[0] / "stage_seconds.json"
                timings = json.loads(path.read_text()) if path.exists() else {}
                save_json({**timings, job.key[1]: results[job.key]["seconds"]}, path)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP (the CLI's handlers)
        _pass_on(list(running))
        stopped = ", ".join(dict.fromkeys(f"{j.key[0]}: {j.key[1]}" for j in running.values()))
        raise Interrupted(f"stopped {stopped or 'no running stage'}, each keeping what it resumes from; finished "
                          f"stages kept in {out}") from None
    finally:
        bar.close()


def _pass_on(refs: list, grace_s: float = STOP_GRACE_S) -> None:
    """The driver's interrupt passed on to the running Ray tasks (`ray.cancel`: a KeyboardInterrupt in each task,
    whose training then saves its step as on Ctrl-C), which get `grace_s` seconds to stop before Ray shuts down."""
    import ray

    for ref in refs:
        ray.cancel(ref)
    if refs:
        log.warning("interrupted: stopping %d running stage(s); each saves what it can resume from", len(refs))
        ray.wait(refs, num_returns=len(refs), timeout=grace_s)
