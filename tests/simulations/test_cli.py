"""``python -m simulations``: the report on stdout, one-line errors, exit statuses."""

from __future__ import annotations

import json
import runpy
import sys

import pytest
import trio

from simulations import SCENARIOS
from simulations._cli import main
from simulations._errors import SimulationError


def test_run_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "chain", "--nodes", "3", "--seed", "1", "--duration", "2m"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("scenario    chain: 3 nodes, seed 1, full fidelity\n")
    assert "2m00s virtual" in out
    assert "duplicates 0" in out
    assert err == ""  # a short run prints no progress


def test_run_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "star", "--nodes", "3", "--duration", "90s", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scenario"] == "star"
    assert report["virtual_seconds"] == 90.0
    assert report["duplicates"] == 0
    assert report["seed"] == 0


def test_run_with_the_tree_and_announces_one_hop(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "mesh", "--nodes", "12", "--duration", "3m", "--fidelity", "engine"]
    reports = []
    for routing in ([], ["--tree", "--announce-radius", "1"]):
        assert main([*argv, *routing, "--json", "--quiet"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    flooded, tree = reports
    assert tree["sent"] == flooded["sent"] > 0
    assert tree["delivered"] + tree["pending"] == tree["sent"]
    assert tree["duplicates"] == 0
    # Announces go one hop: a fraction of what flooding carries.
    assert tree["announces_received"] * 3 < flooded["announces_received"]


def test_progress_lines_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("simulations._cli.PROGRESS_EVERY", 0.0)
    assert main(["run", "chain", "--nodes", "2", "--duration", "100s"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 100
    assert lines[0].startswith("chain:   1% (1.00 s of 1m40s virtual, ")
    assert lines[-1].startswith("chain: 100% (1m40s of 1m40s virtual, ")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["run", "nope"], "invalid choice: 'nope'"),
        (["run", "chain", "--nodes", "0"], "'0' is not a number of nodes"),
        (["run", "chain", "--nodes", "x"], "'x' is not a number of nodes"),
        (["run", "chain", "--duration", "1x"], "'1x' is not a duration like 90s"),
        (["run", "chain", "--duration", "0s"], "duration '0s' is not positive"),
        (["run", "chain", "--seed", "s"], "'s' is not an integer seed"),
        (
            ["run", "chain", "--fidelity", "tcp"],
            "invalid choice: 'tcp' (choose from 'full', 'engine')",
        ),
        (
            ["run", "chain", "--verify", "twice"],
            "invalid choice: 'twice' (choose from 'each', 'once')",
        ),
        (["run", "partition", "--nodes", "2"], "scenario partition needs at least 3 nodes"),
        (["run", "mesh", "--announce-radius", "2"], "an announce radius needs the tree (--tree)"),
        (
            ["run", "mesh", "--tree", "--announce-radius", "0"],
            "announce radius 0 is not within 1..48 hops",
        ),
        (["run", "mesh", "--tree", "--announce-radius", "x"], "'x' is not a number of hops"),
        (["run"], "the following arguments are required: SCENARIO"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    status: object
    try:
        status = main(argv)  # errors found running return 2 ...
    except SystemExit as exited:  # ... and argparse's raise it
        status = exited.code
    assert status == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert words in err
    assert "Traceback" not in err


def test_help_lists_the_scenarios(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["simulations", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("simulations", run_name="__main__")
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name, scenario in SCENARIOS.items():
        assert f"  {name}" in out
        assert scenario.summary in out


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(SCENARIOS)


def _run_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def run_scenario(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr("simulations._cli.run_scenario", run_scenario)


def test_an_error_from_inside_the_run_is_one_line_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As trio's nurseries raise it: the error where it happened, the tasks it cancelled.
    gone = SimulationError("node n28 cannot start: its identity key is gone from /x/n28")
    group = BaseExceptionGroup(
        "", [trio.Cancelled._create(), BaseExceptionGroup("", [gone, trio.Cancelled._create()])]
    )
    _run_raising(monkeypatch, group)
    assert main(["run", "star", "--nodes", "3", "--duration", "1m", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"python -m simulations: error: {gone}\n"


def test_a_bug_inside_the_run_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    bug = ValueError("a bug")
    _run_raising(monkeypatch, BaseExceptionGroup("", [SimulationError("known"), bug]))
    with pytest.raises(BaseExceptionGroup) as raised:
        main(["run", "star", "--nodes", "3", "--duration", "1m", "--quiet"])
    assert bug in raised.value.exceptions
