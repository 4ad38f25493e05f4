"""benchmarks/budget.py: every stage of one hop is timed over real stores, and the
table gives each per message beside the signatures; bad flags are refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks import budget as bench


def test_every_stage_of_a_hop_is_measured(tmp_path: Path) -> None:
    out = io.StringIO()
    argv = ["--messages", "300", "--batch", "120", "--dir", str(tmp_path), "--json"]
    assert bench.main(argv, out=out) == 0
    result = json.loads(out.getvalue())
    assert (result["messages"], result["batch"]) == (300, 120)
    assert set(result["stages"]) == {stage for _, stage in bench.STAGES}
    assert all(seconds > 0 for seconds in result["stages"].values())
    # The signature rates printed beside the stages are measured too. (Not compared
    # with seal and open: two figures timed apart, noise can put either first.)
    assert result["sign"] > 0
    assert result["verify"] > 0
    assert list(tmp_path.iterdir()) == []  # the stores removed

    text = io.StringIO()
    bench.table(result, text)
    lines = text.getvalue().splitlines()
    for node, stage in bench.STAGES:
        assert any(line.split()[:2] == [node, stage] for line in lines)
    assert any(line.split()[:2] == ["origin", "total"] for line in lines)
    assert any(line.split()[:2] == ["neighbour", "total"] for line in lines)


def test_in_memory_stores_as_a_simulation_keeps_them(tmp_path: Path) -> None:
    out = io.StringIO()
    argv = ["--messages", "40", "--batch", "1", "--store", "memory", "--hops", "2.5"]
    assert bench.main([*argv, "--dir", str(tmp_path), "--json"], out=out) == 0
    result = json.loads(out.getvalue())
    assert (result["store"], result["hops"]) == ("memory", 2.5)
    assert list(tmp_path.iterdir()) == []  # the stores closed, and gone with them

    with bench._open_store(tmp_path, "n", "memory") as store:
        assert store.path.startswith("file:")
        assert store.path.endswith("?mode=memory&cache=shared")
        assert list(tmp_path.iterdir()) == []  # no file: in memory
    with bench._open_store(tmp_path, "n", "disk") as store:
        assert (tmp_path / "n.db").is_file()
    stages = result["stages"]
    per_hop = stages["batch"] + stages["forwarded"] + stages["accept"]
    ends = stages["custody"] + stages["pending"] + stages["ack"]
    assert result["store_work"] == pytest.approx(ends + 2.5 * per_hop)

    text = io.StringIO()
    bench.table(result, text, hops=2.5)
    (line,) = [line for line in text.getvalue().splitlines() if "store's work alone" in line]
    assert "crossing 2.5 hop(s) (memory stores, batches of 1)" in line
    assert f"{result['store_work'] * 1e6:.0f} us" in line
    assert f"at most {1 / result['store_work']:,.0f} delivered a second" in line
    (line,) = [line for line in text.getvalue().splitlines() if "with its signatures" in line]
    signed = result["store_work"] + result["sign"] + 2.5 * result["verify"]
    assert f"{signed * 1e6:.0f} us; two cores doing nothing else: at most {2 / signed:,.0f}" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["--messages", "0"],
        ["--batch", "0"],
        ["--dir", "/nonexistent"],
        ["--store", "tape"],
        ["--hops", "0.5"],
        ["--hops", "nan"],
    ],
)
def test_bad_flags_are_refused_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()[-1:]) == 1
