"""Existing artefacts adopted into a table's task folder, so that measured cells are not made again.

`adopt` copies each given artefact to where `dckp.pipeline.plan` makes it (originals are only read; what is already
there is never replaced), writes the
config file the stage's check reads where the source has it in another form, and keeps the copy only when that
stage's own check passes: the artefact reads back and was made with the settings the table asks for now. What
fails is removed again, with the reason. The last step says which stages the table would still run.

Policies written by an older dckp (run.json with encoder `kwargs`) are rewritten in today's form when their kwargs
are exactly the encoder's options and artefacts; `verify` then re-runs the first seeds of an adopted evaluation and
compares each episode's success and steps with the recorded ones, which shows whether today's code still gives the
measured episodes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

from dckp.config import save_json
from dckp.errors import DckpError
from dckp.pipeline import RunConfig, Stage, decide, plan

log = logging.getLogger(__name__)


def _copy(src: Path, dst: Path) -> None:
    """`src` (file or folder) to `dst`, through a temp copy renamed into place."""
    if not src.exists():
        raise DckpError("not found", path=str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.adopting")
    _remove(tmp)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copy2(src, tmp)
    tmp.rename(dst)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _demos_config(src: Path, cfg: RunConfig, sp: str) -> dict:
    """demos.config.json for a demonstrations file made elsewhere: its stored collect settings, checked against the
    number of demonstrations the table wants (`demos=0` meant the task's number when it was made) and, where
    `benchmarks/tasks.py` left it beside the file, the task randomisation it was made with."""
    import h5py

    from dckp.data import Dataset
    from dckp.sim.tasks import get_task

    task = get_task(cfg.task)
    with Dataset(src) as ds:
        n = len(ds.episodes)
    with h5py.File(src, "r") as f:
        stored = json.loads(f.attrs["config"])
    want = cfg.demo_count(sp) or task.demos[sp]
    if n != want:
        raise DckpError(f"{n} demonstrations, the table wants {want}", path=str(src))
    saved = src.with_name("tasks.config.json")
    if saved.exists() and json.loads(saved.read_text()).get("randomisation") != json.loads(
            json.dumps(task.randomisation)):
        raise DckpError("made with other randomisation ranges than the task's today", path=str(saved))
    # the count checked above, in the table's own terms; a file from before `render` was stored has images the
    # table no longer makes (None: not adopted)
    return {"preset": sp, "render": stored.get("render"), **stored["collect"], "demos": cfg.demo_count(sp)}


def _same(theirs: Path, ours: Path, reads: tuple[str, ...] = ()) -> bool:
    """Whether an artefact a policy was made from is the one adopted here: the same size and modification time of
    its file (for a folder, its model file), which the copy keeps. `reads`: for a references file, the tensors the
    policy's encoder reads of each camera, compared instead (gt-kp reads no descriptors: references chosen without
    a DON, from the same demonstrations and seed, are those chosen with one but for the descriptors)."""
    model = {"don": "don.safetensors"}.get(ours.name, "representation.safetensors")
    theirs, ours = (p / model if p.is_dir() else p for p in (theirs, ours))
    if not theirs.is_file() or not ours.is_file():
        return False
    if reads:
        import torch

        from dckp.keypoints.select import load_references

        (a, _), (b, _) = load_references(theirs), load_references(ours)
        return a.keys() == b.keys() and all(torch.equal(a[cam][k], b[cam][k]) for cam in a for k in reads)
    a, b = theirs.stat(), ours.stat()
    return (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def _policy_files(src: Path, dst: Path, name: str, folder: Path) -> None:
    """run.json and train_policy.config.json of a copied policy folder in today's form: its artefacts are the task
    folder's (don/, references.safetensors), its demonstrations demos.h5, and its training settings policy.json's
    (a field added to PolicyConfig since takes its default, which keeps the earlier behaviour). Its encoder options
    must be the defaults, which the table's policies use."""
    from dckp.encoders.base import encoder_class
    from dckp.encoders.config import EncoderConfig
    from dckp.policy.config import PolicyConfig
    from dckp.policy.folder import RUN, write_run

    run = json.loads((src / RUN).read_text())
    enc = run["encoder"]
    cls = encoder_class(name)
    if "kwargs" in enc:  # written by an older dckp: the same options and artefacts under one name
        kwargs = dict(enc["kwargs"])
        artefacts = {a: kwargs.pop({"don": "run"}.get(a, a), None) for a in cls.artefacts}
        fields = {f.name for f in dataclasses.fields(cls.options)}
        if set(kwargs) - fields or None in artefacts.values():
            raise DckpError(f"encoder kwargs {sorted(enc['kwargs'])} are not {name}'s options {sorted(fields)} and "
                            f"artefacts {list(cls.artefacts)}", path=str(src / RUN), field="encoder.kwargs")
        enc = {"name": name, "options": dataclasses.asdict(cls.options(**kwargs))}
    if enc.get("name") != name:
        raise DckpError(f"a policy of encoder {enc.get('name')!r}, expected {name!r}", path=str(src / RUN))
    if dataclasses.asdict(cls.options(**enc.get("options", {}))) != dataclasses.asdict(cls.options()):  # omitted:
        # the default, as loading reads them
        raise DckpError(f"encoder options {enc.get('options')}, the table's are {dataclasses.asdict(cls.options())}",
                        path=str(src / RUN), field="encoder.options")
    local = {"don": folder / "don", "references": folder / "references.safetensors"}
    local = {a: local.get(a, folder / f"representation_{name}") for a in cls.artefacts}
    made_from = {"demos": (Path(src, run.get("demos", "")), folder / "demos.h5"),
                 **{a: (Path(src, artefacts[a] if "kwargs" in run["encoder"] else run["encoder"]["artefacts"][a]),
                        local[a]) for a in cls.artefacts}}
    reads = ("uv", "object", "local") if "don" not in cls.artefacts else ()  # references without descriptors
    for what, (theirs, ours) in made_from.items():
        if not _same(theirs, ours, reads if what == "references" else ()):
            raise DckpError(f"trained from {theirs.resolve()}, which is not the table's {ours}", path=str(src / RUN),
                            field="demos" if what == "demos" else f"encoder.{what}")
    spec = {**enc, "artefacts": {a: str(p) for a, p in local.items()}}
    write_run(dst, run["task"], run["image_size"], run["cameras"], spec, folder / "demos.h5")
    enc_cfg = EncoderConfig(encoder=name, **{a: spec["artefacts"][a] for a in cls.artefacts})
    policy = {**dataclasses.asdict(PolicyConfig()), **json.loads((src / "policy.json").read_text())["config"]}
    save_json({"encoder": dataclasses.asdict(enc_cfg), "policy": policy}, dst / "train_policy.config.json")


def adopt(folder: str | Path, cfg: RunConfig, sp: str = "cpu", demos: str | None = None, views: str | None = None,
          don: str | None = None, references: str | None = None, representations: dict[str, str] | None = None,
          policies: dict[str, str] | None = None, train_s: dict[str, float] | None = None, verify: int = 0
          ) -> dict[str, str]:
    """Adopt artefacts into the task folder `folder` of the table's run settings `cfg` (task, encoder and
    baselines set, as `dckp.table.task_config` gives them; `sp` the stage preset): a demonstrations file, a views
    file (with `<stem>.config.json`, `<stem>.fuse.config.json` and `<stem>_masks.png` beside it), a DON run
    folder, a references file, pretrained representation run folders by method, and policy folders by method
    (each with its `eval/`); `train_s` gives the policies' training seconds for table1.json. Returns
    `{stage: "adopted" | "already there" | why not}`, and `"runs: why"` for each stage the table would still run."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    stages = {s.name: s for s in plan(cfg, folder, sp)}
    result: dict[str, str] = {}

    def take(stage_names: list[str], copies: list[tuple[Path, Path]], write=None) -> None:
        missing = [n for n in stage_names if n not in stages]
        if missing:
            result[stage_names[0]] = f"not a stage of this table ({', '.join(missing)})"
            return
        if any(dst.exists() for _, dst in copies):  # never replaced: the table's own work, or an earlier adoption
            result.update({n: "already there" for n in stage_names})
            return
        try:
            for src, dst in copies:
                _copy(src, dst)
            if write is not None:
                write()
            for n in stage_names:
                stages[n].check()
        except (DckpError, OSError, KeyError, ValueError) as e:
            for _, dst in copies:
                _remove(dst)
            result[stage_names[0]] = f"not adopted: {e}".replace("\n", " ")
            return
        result.update({n: "adopted" for n in stage_names})

    if demos:
        src = Path(demos)
        take(["demonstrations"], [(src, folder / "demos.h5")],
             lambda: save_json(_demos_config(src, cfg, sp), folder / "demos.config.json"))
    if views:  # with its masks where the table has a masks stage (for a DON)
        src, masks = Path(views), "masks" in stages
        beside = [(src.with_name(src.stem + suffix), folder / name) for suffix, name in (
            (".config.json", "views.config.json"), (".fuse.config.json", "views.fuse.config.json"),
            ("_masks.png", "views_masks.png"))][:3 if masks else 1]
        take(["views", "masks"] if masks else ["views"], [(src, folder / "views.h5"), *beside])
    if don:
        take(["pretrain"], [(Path(don), folder / "don")])
    if references:
        take(["references"], [(Path(references), folder / "references.safetensors")])
    for name, src in (representations or {}).items():
        take([f"representation {name}"], [(Path(src), folder / f"representation_{name}")])
    seconds = {}
    for name, src in (policies or {}).items():  # into the protocol's folder and stages (RunConfig.variant)
        dst, train, evaluate = folder / cfg.policy_folder(name), cfg.stage("policy", name), cfg.stage("evaluate", name)
        take([train, evaluate], [(Path(src), dst)], lambda s=Path(src), d=dst, n=name: _policy_files(s, d, n, folder))
        if result.get(train) == "adopted" and name in (train_s or {}):
            seconds[train] = train_s[name]
        if result.get(evaluate) == "adopted" and verify:
            result[evaluate] = _verify(stages[evaluate], verify)
    if seconds:
        path = folder / "stage_seconds.json"
        save_json({**(json.loads(path.read_text()) if path.exists() else {}), **seconds}, path)
    for name, why in decide(list(stages.values()), remove=False).items():
        result[name] = f"runs: {why or 'not there'}" + (f" ({result[name]})" if name in result else "")
    return result


def _verify(stage: Stage, episodes: int) -> str:
    """Re-run the first `episodes` seeds of an adopted evaluation; "adopted" when every episode has the recorded
    success and steps, else which differ (the cell is still adopted: the table keeps its measured numbers)."""
    from dckp.evaluation import run_episodes

    ev = json.loads(stage.artefact.read_text())
    recorded = ev["per_episode"][:episodes]
    out = stage.artefact.parent / "verify"
    again = run_episodes(stage.evaluation["policy_dir"], [(r["seed"], False) for r in recorded], out,
                         stage.evaluation["max_steps"])
    shutil.rmtree(out, ignore_errors=True)
    differ = [f"seed {r['seed']}: {r['success']}/{r['steps']} steps, now {a['success']}/{a['steps']}"
              for r, a in zip(recorded, again, strict=True) if (r["success"], r["steps"]) != (a["success"], a["steps"])]
    return "adopted" + (f", but re-run episodes differ ({'; '.join(differ)})" if differ else
                        f", {len(recorded)} episodes re-run alike")
