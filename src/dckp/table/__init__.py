"""`dckp table`: the paper's Table I, every (task, method) cell trained and evaluated on Ray, and its outputs.

Names are imported on first use, so `dckp.table.config` loads without torch or Ray (the CLI builds its flags
from it)."""

from dckp.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "dckp.table.runner": ("dry_run", "run_table", "start_ray", "task_config"),
    "dckp.table.outputs": ("write_outputs",),
})
