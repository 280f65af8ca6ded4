"""`dckp table` settings. Light: no torch and no Ray, so the CLI builds its flags from it quickly.

The stages of each task take their settings from `dckp.pipeline.RunConfig` (its preset and flags, as for `dckp
run`); this config says which cells to make and where the work runs."""

from __future__ import annotations

from dataclasses import dataclass

from dckp.config import option
from dckp.encoders.config import encoder_names
from dckp.errors import DckpError
from dckp.sim.tasks import TASKS

# the method first (each task's report shows it in detail), the paper's other seven, then ours: proprioception alone
# and robomimic's visual core
METHODS = ["dckp-3d", "dckp-2d", "gt-kp", "cnn", "cnnd", "bvae", "transporter", "monet", "blind", "resnet-ssm"]


@dataclass
class TableConfig:
    """Which (task, method) cells the table holds and where they run: per task the shared stages (demonstrations,
    views, masks, the DON, each pretrained representation, references) once, per cell the policy's training and its
    closed-loop evaluation, as Ray tasks."""

    tasks: list[str] = option(list(TASKS), "tasks, one group of cells each", choices=TASKS)
    methods: list[str] = option(METHODS, "policy encoders, one cell per task each; the first is the one each task's "
                                "report.html shows in detail", choices=encoder_names)
    chunk: int = option(5, "evaluation episodes per Ray task (a cluster runs the chunks of every cell in parallel)")
    address: str = option("", "Ray cluster to run on (`ray start --head` prints it; the run folder must be on a "
                          "file system every node sees); '' starts Ray on this machine")
    cpus: int = option(0, "CPUs of the Ray instance started on this machine (0: all of its cores; not with "
                       "--address)")
    train_cpus: int = option(1, "CPUs each training stage (its torch threads) and each task's demonstrations (their "
                             "worker processes) ask Ray for")
    max_cell_hours: float = option(0.0, "leave a cell whose training is estimated longer than this (hours, from the "
                                    "finished cells' time per step: dckp.table.cost) pending, with its estimate, "
                                    "instead of running it (0: run every cell)")
    results: str = option("results", "folder for table1.json, table1.md, table1.png and table1.html")
    dry_run: bool = option(False, "print each task's cells done and the stages that would run, with why, then stop "
                           "(nothing is run or removed)")

    def __post_init__(self):
        names = encoder_names()
        if not self.tasks:
            raise DckpError("give at least one task", field="tasks")
        if not self.methods:
            raise DckpError("give at least one method", field="methods")
        for task in self.tasks:
            if task not in TASKS:
                raise DckpError(f"unknown task {task!r}; choose from {sorted(TASKS)}", field="tasks")
        for method in self.methods:
            if method not in names:
                raise DckpError(f"unknown method {method!r}; choose from {names}", field="methods")
        for name in ("chunk", "train_cpus"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if self.max_cell_hours < 0:
            raise DckpError(f"must be >= 0, got {self.max_cell_hours}", field="max_cell_hours")
        if self.cpus < 0:
            raise DckpError(f"must be >= 0, got {self.cpus}", field="cpus")
        if self.cpus and self.address:
            raise DckpError("a cluster's CPUs are set where its nodes start (`ray start --num-cpus`)", field="cpus")
        self.tasks, self.methods = list(dict.fromkeys(self.tasks)), list(dict.fromkeys(self.methods))


def add_table_args(parser) -> None:
    """`dckp table`'s flags: this config's, then the stage settings of `dckp run` (but those the table sets per
    task: task, encoder, baselines; workers: the evaluation runs in chunks, the demonstrations in `train_cpus`
    processes; and max_train_hours: `max_cell_hours`)."""
    from dckp.config import add_config_args
    from dckp.pipeline import RUN_PRESETS, RunConfig

    add_config_args(parser, TableConfig, title="TableConfig fields")
    add_config_args(parser, RunConfig, RUN_PRESETS, title="RunConfig fields: the stages' settings (override the "
                    "preset)", skip=("task", "encoder", "baselines", "workers", "max_train_hours"))
