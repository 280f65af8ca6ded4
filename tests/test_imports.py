"""The package has no import cycle: no module imports (at the top or inside a function) one that imports it back,
and no subpackage (`dckp.don`, `dckp.policy`, ...) imports one that imports it back: folders follow the data flow."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    path: list[str] = []
    cycles = []

    def visit(module):
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def _packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph of `dckp.<first level>`: a top-level module (`dckp.pipeline`) or subpackage (`dckp.policy`)."""
    def top(module):
        return ".".join(module.split(".")[:2])

    packages = {top(m): set() for m in graph}
    for module, targets in graph.items():
        packages[top(module)] |= {top(t) for t in targets} - {top(module)}
    return packages


def test_no_import_cycle():
    graph = _graph()
    assert len(graph) > 40 and "dckp.encoders.base" in graph["dckp.encoders.blind"]
    assert _cycles(graph) == []


def test_no_cycle_between_subpackages():
    packages = _packages(_graph())
    assert "dckp.keypoints" in packages["dckp.encoders"] and "dckp.policy" in packages["dckp.evaluation"]
    assert _cycles(packages) == []


def test_a_cycle_is_found():
    """The check itself: a cycle through three modules, and one through two packages, are reported."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    packages = _packages({"dckp.x.one": {"dckp.y.two"}, "dckp.y.two": set(), "dckp.y.three": {"dckp.x.one"}})
    assert _cycles(packages) == [["dckp.x", "dckp.y", "dckp.x"]]


def test_training_commands_import_neither_mujoco_nor_robosuite(tmp_path):
    """A machine set up for training needs torch, h5py and safetensors: pretrain, pretrain-representation,
    eval-correspondence, keypoints (at given pixels) and train-policy run on tiny files in a fresh interpreter
    without loading the simulator."""
    import subprocess
    import sys

    from test_bad_inputs import _demos
    from test_pretrain import views_file

    _demos(tmp_path / "demos.h5")
    views_file(tmp_path / "views.h5", n=6)
    (tmp_path / "pixels.json").write_text('{"uv": [[8, 8], [20, 16]]}')
    tiny = ["--image-size", "32", "--steps", "2", "--batch-pairs", "1", "--n-matches", "20", "--n-non-matches", "2",
            "--min-pose-translation", "0.05", "--arm-fraction", "0"]
    commands = [["pretrain", "--views", "views.h5", "--out", "don", *tiny],
                ["pretrain-representation", "--method", "bvae", "--views", "views.h5", "--out", "bvae", "--steps", "2",
                 "--image-size", "32", "--batch", "2"],
                # its modules import nothing inside functions: a missing file stops it (rc 2) after importing them all
                ["eval-correspondence", "don", "--views", "missing.h5"],
                ["keypoints", "--don", "don", "--demos", "demos.h5", "--out", "refs.safetensors", "--pixels",
                 "robot0_eye_in_hand=pixels.json"],
                ["train-policy", "--demos", "demos.h5", "--encoder", "dckp-3d", "--don", "don", "--references",
                 "refs.safetensors", "--out", "policy", "--steps", "2"]]
    script = f"""
import sys, torch
torch.set_num_threads(1)
from dckp.cli.main import main
for argv in {commands!r}:
    assert main(argv) == (2 if "missing.h5" in argv else 0), argv
    loaded = [m for m in ("mujoco", "robosuite") if m in sys.modules]
    assert not loaded, (argv[0], loaded)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
