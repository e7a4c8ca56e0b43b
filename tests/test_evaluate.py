"""The Pareto comparison end to end on one short workload, and its command line."""

import json
import subprocess
import sys

import pytest

from autoscaler.simulator import load_test
from autoscaler.simulator.evaluate import FAMILIES, GOAL, KNOBS, as_document, evaluate, run_static, table_rows
from autoscaler.simulator.plot import save_frontier_plot


@pytest.fixture(scope="module")
def results():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(load_test, "MEASURED_REQUESTS", 5_000)  # precision is tested on its own
        return evaluate(["square-2.5m"], [60.0], duration_s=600.0, jobs=1)


def test_every_family_runs_over_its_knob_grid(results):
    (result,) = results
    assert list(result.families) == list(FAMILIES)
    for family, runs in result.families.items():
        assert [run.knob for run in runs] == list(KNOBS[family])
    static = [run.gpu_hours for run in result.families["static-peak"]]
    assert static == sorted(static) and static[0] < static[-1]
    # a lower per-pod target means more replicas
    hpa = result.families["hpa"]
    assert hpa[0].gpu_hours > hpa[-1].gpu_hours


def test_oracle_is_the_fewest_static_replicas_meeting_the_goal(results):
    (result,) = results
    assert all(met >= GOAL for met in result.oracle.isvc_attainment)
    index = max(range(len(result.oracle_replicas)), key=lambda i: result.oracle_replicas[i])
    fewer = list(result.oracle_replicas)
    fewer[index] -= 1
    assert run_static(result.case, tuple(fewer)).isvc_attainment[index] < GOAL


def test_report_table_json_and_plot(results, tmp_path):
    (row,) = table_rows(results)
    assert row[:2] == ("square-2.5m", "60") and len(row) == 8
    document = json.loads(json.dumps(as_document(results), allow_nan=False))
    assert {s["family"] for s in document["cases"][0]["standings"]} == set(FAMILIES)
    plot = tmp_path / "square.png"
    save_frontier_plot(results, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workloads", "tsunami"], "--workloads: unknown tsunami"),
        (["--cold-starts", "60,x"], "--cold-starts: expected numbers"),
        (["--cold-starts", "-1"], "--cold-starts: must be a finite number > 0"),
        (["--jobs", "0"], "--jobs: must be >= 1"),
        (["--plots", "/nonexistent/folder"], "--plots: '/nonexistent/folder' is not a folder"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "autoscaler", "evaluate", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
