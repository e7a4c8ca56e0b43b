"""`inference-autoscaler simulate` end to end, traces, and its input errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoscaler.errors import InputError
from autoscaler.simulator.traffic import builtin_trace, read_azure_trace, read_simple_trace


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "autoscaler", "simulate", *args], capture_output=True, text=True, timeout=300)


def test_short_simulation_reports_every_policy_as_json(tmp_path):
    plot = tmp_path / "run.png"
    result = run_cli("--duration", "300", "--scenario", "step", "--json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    policies = {row["policy"] for row in document["outcomes"]}
    assert policies == {"ours", "knative-kpa", "hpa", "static-peak"}
    for row in document["outcomes"]:
        assert 0.0 <= row["attainment"] <= 1.0 and row["gpu_hours"] > 0 and row["cost"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_output(tmp_path):
    result = run_cli("--duration", "120", "--policies", "ours,static-peak")
    assert result.returncode == 0, result.stderr
    assert "SLO met" in result.stdout and "static-peak" in result.stdout and "knative-kpa" not in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--duration", "-5"], "--duration: must be a finite number > 0"),
        (["--policies", "ours,magic"], "--policies: unknown policy magic"),
        (["--cold-start", "0"], "--cold-start: must be a finite number > 0"),
        (["--trace", "/nonexistent.csv"], "/nonexistent.csv: cannot read"),
        (["--duration", "inf"], "--duration: must be a finite number > 0"),
        (["--duration", "1e9"], "--duration: must be at most 604800"),
        (["--period", "nan"], "--period: must be a finite number > 0"),
        (["--jobs", "0"], "--jobs: must be >= 1, got 0"),
        (["--plot", "/nonexistent/run.png"], "--plot: cannot write '/nonexistent/run.png'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_simple_trace_replay(tmp_path):
    trace = tmp_path / "simple.csv"
    rows = ["time,model,in,out"] + [f"{t * 0.5},llama-3-8b,500,50" for t in range(200)] + ["50,code-1b,1000,10"]
    trace.write_text("\n".join(rows) + "\n")
    result = run_cli("--trace", str(trace), "--json", "--policies", "ours")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["requests"] == 201 and document["scenario"] == "trace simple.csv"


def test_trace_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,model,in,out\n0,llama-3-8b,10,10\n1,gpt-9,10,10\n")
    with pytest.raises(InputError, match=r"bad.csv: line 3: unknown model 'gpt-9'"):
        read_simple_trace(bad, {"llama-3-8b": 0}.get)
    azure = tmp_path / "azure.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,10,x\n")
    with pytest.raises(InputError, match=r"azure.csv: line 2: expected TIMESTAMP"):
        read_azure_trace(azure)
    result = run_cli("--trace", str(bad))
    assert result.returncode == 2 and "line 3: unknown model 'gpt-9'" in result.stderr


def test_builtin_azure_traces_match_their_published_summary():
    code, conv = builtin_trace("code"), builtin_trace("conv")
    assert len(code.time) == 8819 and len(conv.time) == 19366
    assert 56 * 60 < code.time[-1] < 58 * 60
    assert conv.in_tokens.mean() == pytest.approx(1155, abs=2) and conv.out_tokens.mean() == pytest.approx(211, abs=1)


def test_runs_shorter_than_two_minutes_work():
    result = run_cli("--duration", "60", "--scenario", "bursty", "--json", "--policies", "ours")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["duration_s"] == 60


def test_trace_token_counts_beyond_any_context_are_refused(tmp_path):
    trace = tmp_path / "huge.csv"
    trace.write_text("time,model,in,out\n0,llama-3-8b,100,10\n1,llama-3-8b,100000000000,10\n")
    result = run_cli("--trace", str(trace))
    assert result.returncode == 2 and "huge.csv: line 3: tokens must be 0..10,000,000 in" in result.stderr
    azure = tmp_path / "azure.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,10,20000000\n")
    with pytest.raises(InputError, match=r"azure.csv: line 2: tokens must be"):
        read_azure_trace(azure)


def test_seed_on_a_trace_replay_says_it_changes_nothing(tmp_path):
    trace = tmp_path / "simple.csv"
    trace.write_text("time,model,in,out\n" + "".join(f"{t},llama-3-8b,200,20\n" for t in range(30)))
    result = run_cli("--trace", str(trace), "--seed", "7", "--json", "--policies", "static-peak")
    assert result.returncode == 0, result.stderr
    assert "--seed does not change a --trace replay" in result.stderr


def test_table_fits_100_columns(tmp_path):
    # one ISVC's traffic: one load test; the longest policy and class names are in the table
    trace = tmp_path / "one.csv"
    trace.write_text("time,model,in,out\n" + "".join(f"{t / 4},llama-3-8b,500,50\n" for t in range(240)))
    result = run_cli("--trace", str(trace), "--policies", "ours,knative-kpa,static-peak")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100
    assert any(line.split()[:2] == ["knative-kpa", "Premium"] for line in lines if line.strip())
    assert "…" not in result.stdout


def test_version():
    result = subprocess.run([sys.executable, "-m", "autoscaler", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("inference-autoscaler ")


def test_readme_names_the_test_prerequisites():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    tests_section = readme[readme.index("Run the tests") : readme.index("## The optimizer")]
    assert "apt-get install prometheus" in tests_section and "../shared" in tests_section
