"""benchmarks/gpu_check.py: its CPU dry path runs the same code the GPU check runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_on_cpu_records_every_part(tmp_path):
    out = tmp_path / "out"
    code = _gpu_check().main(
        [
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(out),
            "--parts",
            "family,svd,swap",
            "--repeats",
            "1",
        ]
    )
    report = json.loads((out / "gpu_check.json").read_text())
    assert code == 0, {k: v.get("error") for k, v in report["parts"].items()}
    assert [n for n, e in report["parts"].items() if e["status"] == "ok"] == [
        "family",
        "svd",
        "swap",
    ]
    swap = report["parts"]["swap"]["result"]
    assert swap["max_relative_difference_vs_cpu"] == 0.0  # same device, same kernel: bit-exact
    assert report["parts"]["svd"]["result"]["rank_64"]["experts"] == 3
    assert "| swap | ok |" in (out / "gpu_check.md").read_text()


def test_a_failing_part_is_recorded_and_the_report_still_written(tmp_path):
    out = tmp_path / "out"
    code = _gpu_check().main(
        [
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "empty"),
            "--parts",
            "swap",
        ]
    )
    report = json.loads((out / "gpu_check.json").read_text())
    assert code == 1
    assert report["parts"]["swap"]["status"] == "error"
    assert (
        "family" in report["parts"]["swap"]["error"] or "base" in report["parts"]["swap"]["error"]
    )
    assert "| swap | error |" in (out / "gpu_check.md").read_text()
