"""Bad input: one clear line naming file and field, exit code 2, never a traceback."""

import json
import shutil
import subprocess
import sys

import pytest

from autoscaler.errors import InputError
from autoscaler.optimizer.loader import load_system

from .samples import SAMPLES, require_samples


@pytest.fixture
def problem(tmp_path):
    require_samples()
    target = tmp_path / "problem"
    shutil.copytree(SAMPLES / "125ab02" / "small", target)
    (target / "system-data.json").unlink()
    return target


def edit(path, change):
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "autoscaler", *args], capture_output=True, text=True, timeout=60)


def set_load(field, value):
    def change(doc):
        doc["servers"][2]["currentAlloc"]["load"][field] = value

    return change


@pytest.mark.parametrize(
    "file, change, expected",
    [
        ("server-data.json", set_load("arrivalRate", -5), "servers[2].currentAlloc.load.arrivalRate: must be >= 0, got -5"),
        ("server-data.json", set_load("arrivalRate", "fast"), "servers[2].currentAlloc.load.arrivalRate: expected a number"),
        ("server-data.json", set_load("AvgOutTokens", 12.5), "avgOutTokens: expected a whole number, got 12.5"),
        ("server-data.json", lambda d: d["servers"][0].update(model="gpt-5"), "servers[0].model: unknown model 'gpt-5'"),
        (
            "server-data.json",
            lambda d: d["servers"][0].update({"class": "Gold"}),
            "servers[0].class: unknown service class 'Gold'",
        ),
        ("server-data.json", lambda d: d["servers"].append(d["servers"][0]), "servers[15]: duplicate server"),
        ("model-data.json", lambda d: d["models"][0].pop("perfParms"), "models[0]: needs perfParms"),
        ("model-data.json", lambda d: d["models"][0].update(acc="TPU"), "models[0].acc: unknown accelerator 'TPU'"),
        (
            "model-data.json",
            lambda d: d["models"][0].update(prefillParms={"gamma": 4.3, "delta": -0.02}),
            "models[0].prefillParms.delta: must be >= 0, got -0.02",
        ),
        ("accelerator-data.json", lambda d: d["accelerators"][1].pop("cost"), "accelerators[1].cost: missing"),
        ("optimizer-data.json", lambda d: d["optimizer"].update(saturationPolicy="Greedy"), "unknown policy 'Greedy'"),
        ("capacity-data.json", lambda d: d.update(count={"G2": 3}), "count: expected a list"),
    ],
)
def test_bad_field_names_file_and_field(problem, file, change, expected):
    edit(problem / file, change)
    with pytest.raises(InputError) as caught:
        load_system(problem)
    message = str(caught.value)
    assert message.startswith(f"{problem / file}: ") and expected in message


def test_cli_reports_bad_input_in_one_line_with_exit_code_2(problem):
    edit(problem / "server-data.json", set_load("arrivalRate", -1))
    result = run_cli("optimize", str(problem))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "server-data.json: servers[2].currentAlloc.load.arrivalRate: must be >= 0" in lines[0]


def test_cli_missing_file_and_malformed_json(problem, tmp_path):
    (problem / "capacity-data.json").unlink()
    missing = run_cli("optimize", str(problem))
    assert missing.returncode == 2 and "capacity-data.json: file not found" in missing.stderr

    broken = tmp_path / "system-data.json"
    broken.write_text('{"system": {"acceleratorData": [1, 2,,]}}')
    malformed = run_cli("optimize", str(broken))
    assert malformed.returncode == 2
    assert "system-data.json: line 1 column" in malformed.stderr and "malformed JSON" in malformed.stderr
    assert "Traceback" not in malformed.stderr

    nowhere = run_cli("optimize", str(tmp_path / "does-not-exist.json"))
    assert nowhere.returncode == 2 and "does-not-exist.json: file not found" in nowhere.stderr


def test_keys_are_matched_case_insensitively(problem):
    text = (problem / "server-data.json").read_text().replace('"arrivalRate"', '"ARRIVALRATE"')
    (problem / "server-data.json").write_text(text)
    assert load_system(problem).servers[0].load.arrival_rate_rpm == 60


def test_cli_json_output_is_solution_data_format():
    require_samples()
    result = run_cli("optimize", str(SAMPLES / "125ab02" / "large"), "--json")
    assert result.returncode == 0, result.stderr
    produced = json.loads(result.stdout)["allocations"]
    recorded = json.loads((SAMPLES / "125ab02" / "large" / "solution-data.json").read_text())["allocations"]
    assert produced.keys() == recorded.keys()
    for name, alloc in produced.items():
        assert alloc.keys() == recorded[name].keys()
        assert (alloc["accelerator"], alloc["numReplicas"], alloc["cost"]) == (
            recorded[name]["accelerator"],
            recorded[name]["numReplicas"],
            recorded[name]["cost"],
        )
        assert alloc["load"] == recorded[name]["load"]


def test_cli_default_runs_the_embedded_problem():
    result = run_cli("optimize")
    assert result.returncode == 0, result.stderr
    assert "total cost 27007 cents/h for 27 of 27 servers" in result.stdout
