"""The table's outputs, from the run folder: `table1.json`, `table1.md` (the paper's numbers beside each stand-in
task, the methods ranked per task), `table1.png` (grouped bars with 95 % Wilson intervals) and `table1.html` (each
cell linked to its task's report.html and eval.json).

`table1.json`: `cells.<task>.<method>` = `{rate, ci95, episodes, mean_steps, train_s, eval_s}` (`train_s` the
policy's training and `eval_s` the evaluation chunks' summed wall time, in seconds, null where the stage ran
elsewhere, some of the cell's episodes did, or the stage resumed from state an interrupted run left without a
record of its time; a resumed stage otherwise counts the interrupted pieces' time up to its checkpoint), `paper.<paper
task>.<method>` = the paper's success rate (null: not reported), `stand_in.<task>` = the paper's task it stands in
for (null: none), `config` = the settings the cells were made with (the run preset and its settings but the episode
count, which is each cell's `episodes`, the stage presets, the per-encoder policy overrides, the first evaluation
seed, `render`: what the cameras drew, `dckp.sim.config.RENDER`), `don.<task>.<pair type>` = `{pck@5%,
wrong_object_rate}` of the task's own DON on its held-out scenes (tasks with a DON method); for a protocol other
than the paper's, `pending.<task>.<method>` = `{estimate_h}`: a cell left to run over `--max-cell-hours`, with its
estimated training hours (null: unknown; `dckp.table.cost`). A later run with the same `config` adds its cells to
the file's; with another config it replaces the file.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import os
from pathlib import Path

from dckp.config import atomic_write_bytes, save_json
from dckp.pipeline import POLICY_OVERRIDES, RunConfig
from dckp.table.config import TableConfig

STAND_IN = {"close_door": "Microwave", "lift": "Lid", "stack": "Phone", "pick_place_clutter": "Rubbish",
            "nut_assembly": None}
PAPER_METHODS = ["cnn", "cnnd", "bvae", "transporter", "monet", "dckp-2d", "dckp-3d", "gt-kp"]
# Table I of von Hartz et al. 2022 (200 episodes per cell), in PAPER_METHODS order; None: not reported
PAPER = {task: dict(zip(PAPER_METHODS, rates, strict=True)) for task, rates in {
    "Microwave": [0.615, 0.560, 0.110, 0.035, 0.785, 0.805, 0.935, 0.875],
    "Lid": [0.315, 0.180, 0.000, 0.075, 0.875, 0.280, 0.800, 0.990],
    "Phone": [0.420, None, 0.005, 0.000, 0.385, None, 0.640, 0.720],
    "Rubbish": [0.245, None, 0.000, 0.005, 0.760, None, 0.590, 0.885],
}.items()}
PAPER_READING = (
    "The paper's Table I merges cells in its multi-object columns; read here as: Phone and Rubbish report no CNND "
    "and no DC-KP-2D (the authors dropped both after the single-object tasks), so their single values belong to "
    "CNN, and DC-KP-3D, GT-KP in that order. The paper bolds DC-KP-3D on Microwave and GT-KP on Lid and Rubbish "
    "as the best.")
# set per task by the table, or where and how parallel the work ran, which does not change the cells; the episode
# count, which may differ between cells (each cell's `episodes`; an evaluation grows on the same seeds); and the
# time budget, which decides whether a cell runs, not what it measures
RUN_ONLY = ("task", "encoder", "baselines", "workers", "device", "don_workers", "episodes", "max_train_hours")


def table_config(run: RunConfig, preset: str) -> dict:
    """`config` of table1.json: what the cells' numbers depend on (not which cells, nor how they were spread): the
    run preset and its settings, and the stage presets they start from (`run` replaces some of their fields; the
    policy's: the protocol's, `converged` for that protocol). Not the episode count: cells may differ in it (each
    cell's `episodes`), all on seeds from `eval_seed_start`."""
    from dckp.don.config import DON_PRESETS
    from dckp.evaluation.rollout import EVAL_SEED_START
    from dckp.geometry.config import MASK_PRESETS
    from dckp.policy.config import POLICY_PRESETS
    from dckp.sim.config import COLLECT_PRESETS, RENDER, VIEWS_PRESETS

    sp = "paper" if preset == "paper" else "cpu"
    stages = {"collect": COLLECT_PRESETS, "views": VIEWS_PRESETS, "masks": MASK_PRESETS, "don": DON_PRESETS,
              "policy": POLICY_PRESETS}
    settings = {k: dataclasses.asdict(v[sp]) for k, v in stages.items()}
    if run.protocol != "paper":  # its cells were trained with the converged preset: a change of it remakes them
        settings["policy"] = dataclasses.asdict(POLICY_PRESETS["converged"])
    del settings["collect"]["workers"]  # how many processes collect does not change the demonstrations
    for stage in ("don", "policy"):  # nor does compiling the networks change what they learn (beyond rounding)
        del settings[stage]["compile"]
    return {"preset": preset, "run": {k: v for k, v in dataclasses.asdict(run).items() if k not in RUN_ONLY},
            "stage_preset": sp, "stages": settings,
            "policy_overrides": POLICY_OVERRIDES, "eval_seed_start": EVAL_SEED_START, "render": RENDER}


def table_stem(run: RunConfig) -> str:
    """`table1` for the paper's protocol, `table1_<variant>` for another (`RunConfig.variant`)."""
    return "table1" + (f"_{run.variant()}" if run.variant() else "")


def agreement(ours: dict[str, dict], paper: dict[str, float]) -> tuple[int, int, list[str]]:
    """How a task's ranking agrees with the paper's: over the pairs of methods both rate (a tie on either side gives
    no order), how many pairs, how many in the paper's order, and the pairs in the other order ("a > b", ours) whose
    95 % intervals do not overlap: those the sampling alone does not explain."""
    both = sorted(m for m in ours if paper.get(m) is not None)
    pairs, same, apart = 0, 0, []
    for i, a in enumerate(both):
        for b in both[i + 1:]:
            if ours[a]["rate"] == ours[b]["rate"] or paper[a] == paper[b]:
                continue
            pairs += 1
            hi, lo = (a, b) if ours[a]["rate"] > ours[b]["rate"] else (b, a)
            if paper[hi] > paper[lo]:
                same += 1
            elif ours[hi]["ci95"][0] > ours[lo]["ci95"][1]:
                apart.append(f"{hi} > {lo}")
    return pairs, same, apart


def recorded(table: TableConfig, run: RunConfig, preset: str) -> set[tuple[str, str]]:
    """The (task, method) cells the table's json in `table.results` holds with this run's config and at least its
    episodes: made before, maybe on another machine whose run folder is gone. Committed, they are what a table
    moved to another machine goes on from (`run_table` does not make them again)."""
    data = _same_config(Path(table.results) / f"{table_stem(run)}.json", table_config(run, preset))
    return {(t, m) for t, per in data.get("cells", {}).items() for m, c in per.items() if c["episodes"] >= run.episodes}


def _same_config(path: Path, config: dict) -> dict:
    """The table json at `path` when it was made with `config`; else (or missing) {}."""
    old = json.loads(path.read_text()) if path.exists() else {}
    return old if old.get("config") == json.loads(json.dumps(config)) else {}


def read_cell(folder: Path, run: RunConfig, method: str) -> dict:
    """A cell's numbers from a task folder: its eval.json and stage_seconds.json; for a protocol other than the
    paper's also the policy's `head`, its training `steps` and the `best_step` kept (policy.json)."""
    policy = folder / run.policy_folder(method)
    ev = json.loads((policy / "eval" / "eval.json").read_text())
    path = folder / "stage_seconds.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    cell = {"rate": ev["success_rate"], "ci95": ev["ci95"], "episodes": ev["episodes"],
            "mean_steps": ev["mean_steps"], "train_s": timings.get(run.stage("policy", method)),
            "eval_s": _eval_seconds(ev)}
    if run.variant():
        meta = json.loads((policy / "policy.json").read_text())
        cell.update(head=meta["head"]["name"], steps=meta["config"]["steps"], best_step=meta["best_step"])
    return cell


def _eval_seconds(ev: dict) -> float | None:
    """The evaluation's wall time: its chunks' summed seconds, or None when some of its episodes ran with no time
    recorded (adopted from a run outside the table, and perhaps grown since)."""
    chunks = ev.get("chunks", [])
    covered = sum(last - first + 1 for first, last in (c["seeds"] for c in chunks))
    return round(sum(c["seconds"] for c in chunks), 1) if chunks and covered >= ev["episodes"] else None


def read_don(folder: Path) -> dict | None:
    """The task's DON on its held-out scenes, per pair type: PCK@5 %, the wrong-object rate and the pairs scored."""
    path = folder / "heldout_correspondence.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())["results"]
    return {kind: {k: r[k] for k in ("pck@5%", "wrong_object_rate", "pairs")} for kind, r in results.items()}


def write_outputs(out: str | Path, table: TableConfig, run: RunConfig, preset: str, done: list[tuple[str, str]],
                  pending: dict[tuple[str, str], float | None] | None = None) -> dict:
    """table1.{json,md,png,html} (`table_stem`) in `table.results` from the cells `done` ((task, method) pairs) of
    the run folder `out`, merged with the file's earlier cells when they were made with the same config; for a
    protocol other than the paper's also `pending`: the cells left to run over `--max-cell-hours`, with their
    estimated training seconds (None: unknown)."""
    out, results, stem = Path(out).resolve(), Path(table.results), table_stem(run)
    results.mkdir(parents=True, exist_ok=True)
    config = table_config(run, preset)
    path = results / f"{stem}.json"
    old = _same_config(path, config)
    cells, don, waiting = old.get("cells", {}), old.get("don", {}), old.get("pending", {})
    for (task, method), seconds in (pending or {}).items():
        waiting.setdefault(task, {})[method] = {"estimate_h": None if seconds is None else round(seconds / 3600, 2)}
    for task, method in done:
        cells.setdefault(task, {})[method] = read_cell(out / task, run, method)
        waiting.get(task, {}).pop(method, None)
        if (scores := read_don(out / task)) is not None:
            don[task] = scores
    data = {"cells": cells, "paper": PAPER, "stand_in": STAND_IN, "config": config, "don": don}
    if run.variant():
        data["pending"] = {task: per for task, per in waiting.items() if per}
    save_json(data, path)
    atomic_write_bytes(results / f"{stem}.md", markdown(data, stem).encode())
    if cells:  # not while every cell is pending
        figure(data, results / f"{stem}.png")
    atomic_write_bytes(results / f"{stem}.html", page(data, out, results, run, stem).encode())
    if stem != "table1" and (results / "table1.json").exists():  # the paper's page shows both protocols
        paper_run = dataclasses.replace(run, protocol="paper", head="")
        atomic_write_bytes(results / "table1.html", page(json.loads((results / "table1.json").read_text()), out,
                                                         results, paper_run).encode())
    return data


def protocols(results: Path) -> str:
    """An HTML table of the paper protocol's cells beside the converged protocol's (where both tables exist in
    `results`): per task and method both rates with their 95 % intervals, the change, whether the intervals
    overlap, and the paper's rate."""
    paths = [results / "table1.json", results / "table1_converged.json"]
    if not all(p.exists() for p in paths):
        return ""
    paper, converged = (json.loads(p.read_text()) for p in paths)
    tasks, methods = _order({"cells": {t: {**paper["cells"].get(t, {}), **c} for t, c in converged["cells"].items()}})
    rows = []
    for t in tasks:
        for m in methods:
            a, b = paper["cells"].get(t, {}).get(m), converged["cells"][t].get(m)
            if b is None:
                continue
            change = "-" if a is None else (f"{b['rate'] - a['rate']:+.2f}" + (
                " (intervals overlap)" if a["ci95"][1] >= b["ci95"][0] and b["ci95"][1] >= a["ci95"][0] else ""))
            theirs = _paper(PAPER[STAND_IN[t]].get(m)) if STAND_IN.get(t) and m in PAPER_METHODS else ""
            rows.append(f"<tr><td>{html.escape(t)}</td><th>{html.escape(m)}</th><td>{_rate(a)}</td><td>{_rate(b)} "
                        f"({html.escape(b.get('head', '?'))}, best step {b.get('best_step')})</td><td>{change}</td>"
                        f"<td>{theirs}</td></tr>")
    return ("<h2>The two protocols</h2><p>Each method under the paper's protocol (table1.json) and the converged one "
            "(table1_converged.json: the converged policy preset, the checkpoint best on validation seeds), with "
            "95 % Wilson intervals, and the paper's rate on the task ours stands in for.</p><table><tr><th>task</th>"
            "<th>method</th><th>paper protocol</th><th>converged</th><th>change</th><th>paper</th></tr>"
            + "".join(rows) + "</table>")


def _order(data: dict) -> tuple[list[str], list[str]]:
    """Tasks in the paper's order then ours, methods in the paper's (blind first, as the floor) then any others."""
    tasks = [t for t in STAND_IN if t in data["cells"]] + [t for t in data["cells"] if t not in STAND_IN]
    seen = {m for per in data["cells"].values() for m in per}
    rows = ["blind", *PAPER_METHODS, "resnet-ssm"]
    return tasks, [m for m in rows if m in seen] + sorted(seen - set(rows))


def _rate(cell: dict | None) -> str:
    if cell is None:
        return "-"
    return f"{cell['rate']:.2f} [{cell['ci95'][0]:.2f}, {cell['ci95'][1]:.2f}]"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def _paper(value: float | None) -> str:
    return "n/r" if value is None else f"{value:.3f}"


def caption(data: dict) -> str:
    counts = sorted({c["episodes"] for per in data["cells"].values() for c in per.values()})
    episodes = ("no" if not counts else f"{counts[0]}" if len(counts) == 1 else
                f"{counts[0]}-{counts[-1]} (see each cell)")
    return (f"Closed-loop success rate per task and policy encoder ({data['config']['preset']} preset, "
            f"{episodes} episodes per cell on seeds from {data['config']['eval_seed_start']:,}, the same for "
            "every method); bars show the 95 % Wilson interval, diamonds the paper's rate on the task ours stands in "
            f"for. Images: {data['config']['render']}.")


def markdown(data: dict, stem: str = "table1") -> str:
    tasks, methods = _order(data)
    head = ["method"]
    for t in tasks:
        head += [t] + ([f"{STAND_IN[t]} (paper)"] if STAND_IN.get(t) else [])
    protocol = data["config"].get("run", {}).get("protocol", "paper")  # tables before protocols: the paper's
    lines = [f"# Table I: closed-loop success by task and method ({protocol} protocol)", "",
             caption(data) + " Made with `dckp table`; cells are success rate [95 % Wilson interval]. The paper "
             "columns are von Hartz et al. 2022, Table I (RLBench, 200 episodes); our task stands in for it (n/r: not "
             "reported).", "", PAPER_READING, "", f"![Table I]({stem}.png)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = [m]
        for t in tasks:
            row.append(_rate(data["cells"][t].get(m)))
            if STAND_IN.get(t):
                row.append(_paper(data["paper"][STAND_IN[t]].get(m)) if m in PAPER_METHODS else "")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Methods ranked per task", ""]
    for t in tasks:
        ranked = sorted(data["cells"][t].items(), key=lambda kv: (-kv[1]["rate"], kv[0]))
        lines.append(f"- **{t}**: " + " > ".join(f"{m} {c['rate']:.2f}" for m, c in ranked))
        if STAND_IN.get(t):
            paper = sorted(((m, v) for m, v in data["paper"][STAND_IN[t]].items() if v is not None),
                           key=lambda kv: (-kv[1], kv[0]))
            lines.append(f"  - paper, {STAND_IN[t]}: " + " > ".join(f"{m} {v:.3f}" for m, v in paper))
            pairs, same, apart = agreement(data["cells"][t], dict(paper))
            if pairs:
                lines.append(f"  - order: {same} of {pairs} pairs of methods as in the paper" + (
                    f"; the other way round, with our 95 % intervals apart: {', '.join(apart)}" if apart else ""))
    lines += ["", "## Cost per cell", "", "Wall time on the table's workers (a cell's evaluation chunks run in "
              "parallel; their times are added up); - where the stage, or some of a cell's "
              "episodes, ran before the table did (adopted), or where the stage resumed from an interrupted run's "
              "state that has no record of its time: time not recorded. A training resumed across pieces counts "
              "each piece up to the checkpoint the next one resumed from.", "",
              "| task | method | episodes | mean steps | training min | evaluation min |", "|---|---|---|---|---|---|"]
    for t in tasks:
        for m in (m for m in methods if m in data["cells"][t]):  # the table's order, however the cells finished
            c = data["cells"][t][m]
            lines.append(f"| {t} | {m} | {c['episodes']} | {c['mean_steps']:.0f} | {_minutes(c['train_s'])} | "
                         f"{_minutes(c['eval_s'])} |")
    if data.get("pending"):
        lines += ["", "## Cells still to run", "", "Left pending by `--max-cell-hours`: each training's estimate "
                  "on the machine that made the finished cells (dckp.table.cost).", "", "| task | method | "
                  "estimated training h |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {'unknown' if p['estimate_h'] is None else p['estimate_h']} |"
                  for t, per in data["pending"].items() for m, p in per.items()]
    if data["don"]:
        kinds = sorted({k for per in data["don"].values() for k in per})
        lines += ["", "## Each task's DON on its held-out scenes", "",
                  "PCK@5 % / wrong-object rate per pair type (as `dckp eval-correspondence` gives them), over the "
                  "pairs per type the row says.", "",
                  "| task | pairs | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
        for t, per in data["don"].items():
            # scores saved before their count was kept here were made on (at most) 20 pairs per type
            pairs = {r.get("pairs", 20) for r in per.values()}
            lines.append(f"| {t} | {'/'.join(map(str, sorted(pairs)))} | " + " | ".join(
                f"{per[k]['pck@5%']:.2f} / {per[k]['wrong_object_rate']:.3f}" if k in per else "-" for k in kinds)
                + " |")
    return "\n".join(lines) + "\n"


def figure(data: dict, path: Path) -> Path:
    """Grouped bars: one group per task, one bar per method, 95 % Wilson intervals, captioned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, methods = _order(data)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tasks) + 0.25 * len(tasks) * len(methods)), 4.2))
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    labelled = False  # the paper's markers, in the legend once
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j, t in enumerate(tasks) if m in data["cells"][t]]
        cells = [data["cells"][t][m] for t in tasks if m in data["cells"][t]]
        rates = [c["rate"] for c in cells]
        err = [[max(0.0, c["rate"] - c["ci95"][0]) for c in cells], [max(0.0, c["ci95"][1] - c["rate"]) for c in cells]]
        ax.bar(xs, rates, width, yerr=err, capsize=2, label=m, color=colours(i))
        paper = [(j + (i - (len(methods) - 1) / 2) * width, data["paper"][STAND_IN[t]].get(m))
                 for j, t in enumerate(tasks) if STAND_IN.get(t) and m in data["cells"][t]]
        paper = [(x, v) for x, v in paper if v is not None]
        if paper:
            ax.plot(*zip(*paper, strict=True), "kD", markersize=4, markerfacecolor="none",
                    label=None if labelled else "paper, its task")
            labelled = True
    ax.set_xticks(range(len(tasks)), [f"{t}\n({STAND_IN[t]})" if STAND_IN.get(t) else t for t in tasks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.legend(ncol=min(5, len(methods)), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.text(0.5, 0.01, caption(data), ha="center", va="bottom", fontsize=8, wrap=True)
    fig.subplots_adjust(bottom=0.32)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def page(data: dict, out: Path, results: Path, run: RunConfig, stem: str = "table1") -> str:
    """table1.html: the table, each cell linked to its task's report.html and its eval.json."""
    tasks, methods = _order(data)

    def link(target: Path, text: str) -> str:
        return f'<a href="{html.escape(os.path.relpath(target, results.resolve()))}">{html.escape(text)}</a>'

    rows = []
    for m in methods:
        cells = []
        for t in tasks:
            c = data["cells"][t].get(m)
            cells.append("<td>-</td>" if c is None else
                         f"<td>{link(out / t / 'report.html', _rate(c))} "
                         f"({link(out / t / run.policy_folder(m) / 'eval' / 'eval.json', 'eval.json')})</td>")
        rows.append(f"<tr><th>{html.escape(m)}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{html.escape(t)}{f' ({STAND_IN[t]})' if STAND_IN.get(t) else ''}</th>" for t in tasks)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Table I</title><style>"
            "body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}"
            "</style></head><body><h1>Table I: closed-loop success by task and method</h1>"
            f"<p>{html.escape(caption(data))} Each cell links to its task's report (videos, keypoints, the DON) "
            "and its evaluation record.</p>"
            f"<table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"
            f"<p><img src='{stem}.png' alt='Table I bars' style='max-width:100%'></p>"
            f"<p>See {stem}.md for the paper's numbers beside each task.</p>{protocols(results)}</body></html>\n")
