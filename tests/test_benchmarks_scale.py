"""benchmarks/scale.py: a small mesh is measured in a process of its own (per-node
traffic, table sizes and memory), the table shows each cost per row, rows saved as JSON
join a later table and plot, the plot is a PNG where matplotlib is installed (and is
named with how to install it where it is not), and bad flags are refused in one line.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import resource
import sys
from pathlib import Path
from typing import Any

import pytest

import simulations
from benchmarks import scale as bench

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_small_mesh_is_measured(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    plot = tmp_path / "scale.png"
    # 12 virtual minutes: the window after the warm-up holds an announce round (10 min).
    argv = ["--nodes", "6", "--duration", "12m", "--warmup", "1m", "--plot", str(plot)]
    assert bench.main([*argv, "--label", "small", "--json"], out=out) == 0
    document = json.loads(out.getvalue())
    (row,) = document["rows"]
    assert (row["label"], row["scenario"], row["fidelity"]) == ("small", "chirp", "engine")
    assert (row["nodes"], row["natted"]) == (6, 2)  # a third NATed behind relays
    assert row["window_s"] == 11 * 60
    assert 1 <= row["nodes_up"] <= 6
    for key in (*(key for key, _, _, _ in bench.COSTS), *bench.MORE[:3]):
        assert 0 <= row[key]["median"] <= row[key]["max"]
        assert 0 <= row[key]["mean"] <= row[key]["max"]
    assert row["announces_received_per_hour"]["median"] > 0
    assert row["announces_sent_per_hour"]["median"] > 0
    # Every node floods its announce: a node knows routes to others, never to itself.
    assert 1 <= row["routes_known"]["median"] <= row["routes_known"]["max"] <= 5
    assert row["route_candidates"]["max"] >= row["routes_known"]["max"]
    assert row["interests_held"]["median"] > 0  # the users follow each other
    assert row["neighbours"]["median"] >= 1
    assert row["kib_per_node"] > 0
    assert row["store_kib_per_node"] > 0
    # The memory floor: as many idle nodes, in a process of their own.
    assert row["idle_nodes"] == 6
    assert row["idle_kib_per_node"] > 0
    assert row["wall_s"] > 0
    assert row["sent"] > 0
    assert 0 <= row["delivered"] <= row["sent"]
    assert row["duplicates"] == 0
    if document["plot"] is None:
        assert "pip install" in document["plot_missing"]
    else:
        assert plot.read_bytes().startswith(PNG)

    # Progress on stderr (from the measuring process): where the run is, and how long
    # it has taken, for runs that take hours.
    progress = capfd.readouterr().err
    assert re.search(
        r"scale: 6 nodes: 50% of the virtual time \(6m00s of 12m00s, [\d,]+ s wall\): "
        r"[\d,]+ sent, [\d,]+ delivered",
        progress,
    ), progress

    text = io.StringIO()
    bench.table(document["rows"], text)
    head, line = text.getvalue().splitlines()
    assert "announces in/h med/max" in head
    assert "interests held med/max" in head
    assert head.endswith("KiB/node  idle KiB")
    assert line.split()[:3] == ["small", "6", "2"]
    assert line.split()[-1] == f"{row['idle_kib_per_node']:,.0f}"


def test_idle_nodes_are_measured_alone() -> None:
    """The floor: nodes with the scenario's settings that know of no other and send
    nothing; every one of them up, and no frame between them."""
    run = bench.Run("mesh", 5, 180.0, 60.0, "engine", 1, tree=True, idle=True)
    figures = bench.one(run)
    assert (figures["nodes"], figures["nodes_up"], figures["idle"]) == (5, 5, True)
    assert figures["kib_per_node"] > 0
    assert figures["store_kib_per_node"] > 0  # their stores, open and empty
    assert "delivered" not in figures  # no scenario ran


def test_without_idle_the_floor_is_left_out(tmp_path: Path) -> None:
    out = io.StringIO()
    argv = ["--nodes", "4", "--duration", "2m", "--warmup", "1m", "--no-idle", "--json"]
    assert bench.main([*argv, "--plot", str(tmp_path / "p.png")], out=out) == 0
    (row,) = json.loads(out.getvalue())["rows"]
    assert "idle_kib_per_node" not in row
    text = io.StringIO()
    bench.table([row], text)
    assert text.getvalue().splitlines()[1].split()[-1] == "-"


def test_the_same_seed_gives_the_same_figures() -> None:
    # As run_scenario: trio's scheduling is seeded too, so only what the machine
    # measures (wall time, memory, the store's size on disk) may differ.
    run = bench.Run("mesh", 6, duration=8 * 60, warmup=60, fidelity="engine", seed=3)
    measured = ("wall_s", "kib_per_node", "store_kib_per_node")

    def figures(row: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in row.items() if key not in measured}

    first = bench.one(run)
    assert first["sent"] > 0
    assert figures(bench.one(run)) == figures(first)
    other = bench.one(dataclasses.replace(run, seed=4))
    assert figures(other) != figures(first)
    # The signature stand-in changes what is spent, not what is measured.
    stand_in = bench.one(dataclasses.replace(run, signatures="stand-in"))
    assert stand_in["signatures"] == "stand-in"
    assert {**figures(stand_in), "signatures": "ed25519"} == figures(first)
    # So does checking each signature and chain once in the whole simulation.
    once = bench.one(dataclasses.replace(run, verify="once"))
    assert once["verify"] == "once"
    assert {**figures(once), "verify": "each"} == figures(first)


def test_verify_once_is_asked_of_the_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []
    real = simulations.open_simulation

    def spy(**kwargs: Any) -> Any:
        asked.append(kwargs["verify_once"])
        return real(**kwargs)

    monkeypatch.setattr(bench, "open_simulation", spy)
    run = bench.Run("mesh", 4, duration=120, warmup=60, fidelity="engine", seed=1)
    bench.one(dataclasses.replace(run, verify="once"))
    bench.one(run)
    assert asked == [True, False]
    assert bench.parse(["--verify", "once"]).verify == "once"
    assert bench.parse([]).verify == "each"


def test_rows_are_named_by_the_routing_design_unless_labelled() -> None:
    assert bench.parse([]).label == "flood"
    assert bench.parse(["--tree"]).label == "tree"
    assert bench.parse(["--tree", "--announce-radius", "2"]).label == "tree-r2"
    assert bench.parse(["--tree", "--label", "mine"]).label == "mine"


def row(label: str, nodes: int, scale: float) -> dict[str, Any]:
    """A row as the benchmark makes one, each cost ``scale`` x N."""

    def spread(value: float) -> dict[str, float]:
        return {"median": value, "mean": value, "max": 2 * value}

    costs = {key: spread(scale * nodes) for key, _, _, _ in bench.COSTS}
    costs.update({key: spread(scale) for key in bench.MORE[:3]})
    return {
        "label": label,
        "scenario": "chirp",
        "nodes": nodes,
        "duration": 2400.0,
        "warmup": 600.0,
        "fidelity": "engine",
        "seed": 1,
        **costs,
        "nodes_up": nodes,
        "natted": nodes // 3,
        "kib_per_node": 300.0,
        "store_kib_per_node": 100.0,
        "window_s": 1800.0,
        "wall_s": nodes / 10,
    }


def test_saved_rows_join_the_table_and_the_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the bench extra)")
    saved = tmp_path / "flood.json"
    rows = [row("flood", 100, 6.0), row("flood", 300, 6.0)]
    saved.write_text(json.dumps({"benchmark": "scale", "rows": rows}))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmark": "scale", "rows": [row("tree", 100, 0.5)]}))
    plot = tmp_path / "both.png"
    out = io.StringIO()
    argv = ["--nodes", "--compare", str(saved), str(other), "--plot", str(plot)]
    assert bench.main(argv, out=out) == 0
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines[2:5]] == [
        ["flood", "100"],
        ["flood", "300"],
        ["tree", "100"],
    ]
    assert "600 / 1,200" in lines[2]  # median / max of 6 x 100
    assert lines[-1] == f"plot: {plot}"
    assert plot.read_bytes().startswith(PNG)


def test_without_matplotlib_the_table_still_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    saved = tmp_path / "flood.json"
    saved.write_text(json.dumps({"benchmark": "scale", "rows": [row("flood", 100, 1.0)]}))
    out = io.StringIO()
    plot = tmp_path / "none.png"
    assert bench.main(["--nodes", "--compare", str(saved), "--plot", str(plot)], out=out) == 0
    text = out.getvalue()
    assert "flood  100" in text
    assert "plot not written: matplotlib is missing: `pip install -e '.[bench]'`" in text
    assert not plot.exists()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--nodes", "3"], "must be at least 4 nodes, not 3"),
        (["--duration", "soon"], "not a positive duration: 'soon'"),
        (["--duration", "10m", "--warmup", "10m"], "--warmup (600 s) must end before"),
        (["--nodes"], "nothing to do: give --nodes counts or --compare files"),
        (["--scenario", "star"], "invalid choice: 'star'"),
    ],
)
def test_bad_flags_are_refused_in_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_more_nodes_on_disk_than_the_system_has_files_for_are_refused_up_front(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    with pytest.raises(SystemExit) as exit_info:
        bench.parse(["--nodes", "100", "1000"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "1,000 nodes with their stores on disk need about 6,000 open files" in err
    assert "allows (4,096): use --stores memory" in err
    bench.parse(["--nodes", "100", "1000", "--stores", "memory"])
    bench.parse(["--nodes", "100"])


def test_a_file_that_is_no_saved_run_is_named(tmp_path: Path) -> None:
    saved = tmp_path / "other.json"
    saved.write_text('{"something": "else"}')
    with pytest.raises(SystemExit, match=r"other\.json: not a --json document"):
        bench.main(["--nodes", "--compare", str(saved)])


def test_the_tree_with_an_announce_radius_is_measured_beside_flooding() -> None:
    out = io.StringIO()
    argv = ["--nodes", "8", "--duration", "14m", "--warmup", "4m", "--plot", "/dev/null"]
    argv += ["--tree", "--announce-radius", "1", "--label", "tree", "--json"]
    assert bench.main([*argv, "--stores", "memory"], out=out) == 0
    (row,) = json.loads(out.getvalue())["rows"]
    assert (row["tree"], row["announce_radius"], row["stores"]) == (True, 1, "memory")
    # Announces go one hop: a node holds routes to its neighbours only ...
    assert row["routes_known"]["max"] <= row["neighbours"]["max"]
    # ... and reaches the others by coordinates, learned from the DHT.
    assert row["dht_received_per_hour"]["median"] > 0
    assert row["tree_offers_received_per_hour"]["median"] > 0
    assert row["control_received_per_hour"]["median"] >= row["dht_received_per_hour"]["median"]
    assert row["sent"] > 0
    assert row["duplicates"] == 0


def test_an_announce_radius_needs_the_tree() -> None:
    with pytest.raises(SystemExit):
        bench.parse(["--nodes", "8", "--announce-radius", "2"])
