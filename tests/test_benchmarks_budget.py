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


@pytest.mark.parametrize("argv", [["--messages", "0"], ["--batch", "0"], ["--dir", "/nonexistent"]])
def test_bad_flags_are_refused_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()[-1:]) == 1
