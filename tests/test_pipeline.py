"""`dckp run` end to end at tiny sizes: every stage runs once, a second run skips them, report.html is written."""

import json

from dckp.cli.main import main


def test_run_pipeline_and_skip(tmp_path):
    out = tmp_path / "run"
    argv = ["run", "--task", "lift", "--out", str(out), "--demos", "2", "--scenes", "1", "--arm-only", "0",
            "--image-size", "64", "--don-steps", "2", "--policy-steps", "2", "--episodes", "1", "--workers", "1"]
    assert main(argv) == 0
    report = (out / "report.html").read_text()
    assert "success rate" in report and "data:video/mp4;base64" in report and "data:image/png;base64" in report
    ev = json.loads((out / "policy_dckp-3d" / "eval" / "eval.json").read_text())
    assert ev["episodes"] == 1 and ev["task"] == "lift"
    stamps = {p: p.stat().st_mtime_ns for p in (out / "demos.h5", out / "don" / "don.safetensors",
                                                  out / "policy_dckp-3d" / "policy.safetensors")}
    assert main(argv) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished stages are skipped
    assert main(["run", "--task", "nope", "--out", str(out)]) == 2
