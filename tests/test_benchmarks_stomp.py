"""benchmarks/stomp.py: its ptth rows move messages through a `ptth run --stomp` node
with stomp.py, a missing RabbitMQ is named with how to install it (and ptth is still
measured), ratios are taken within rounds, and the RabbitMQ row runs where RabbitMQ is
installed (skipped, saying why, elsewhere).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks import stomp as bench
from benchmarks import versus


def test_ptth_rows_measured_and_a_missing_rabbitmq_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bench, "find_rabbitmq", lambda: None)
    out = io.StringIO()
    argv = ["--messages", "30", "--rounds", "1", "--in-flight", "5", "--dir", str(tmp_path)]
    assert bench.main([*argv, "--json"], out=out) == 0
    result = json.loads(out.getvalue())
    for mode in bench.MODES:
        (rate,) = result["systems"]["ptth"][mode]["rates"]
        assert rate is not None
        assert rate > 0
    assert set(result["systems"]) == {"ptth"}
    assert "apt-get install rabbitmq-server" in result["missing"]["rabbitmq"]
    assert "STOMP plugin" in result["missing"]["rabbitmq"]
    assert list(tmp_path.iterdir()) == []  # the node's data directory removed


def test_ratios_are_taken_within_rounds() -> None:
    rounds: list[dict[str, dict[str, float | None]]] = [
        {"ptth": {"receipts": 100.0}, "rabbitmq": {"receipts": 200.0}},
        {"ptth": {"receipts": 300.0}, "rabbitmq": {"receipts": 200.0}},
        {"ptth": {"receipts": 50.0}, "rabbitmq": {"receipts": None}},
    ]
    summary = bench.summarize(["ptth", "rabbitmq"], rounds)
    row = summary["ptth"]["receipts"]
    assert row["vs rabbitmq"] == [0.5, 1.5, None]
    assert row["median vs rabbitmq"] == 1.0
    assert (row["median"], row["min"], row["max"]) == (100.0, 50.0, 300.0)
    assert summary["ptth"]["no receipts"]["median"] is None
    assert "vs rabbitmq" not in summary["rabbitmq"]["receipts"]
    out = io.StringIO()
    bench.report(summary, out)
    assert "1.00x  (0.50 1.50 -)" in out.getvalue()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--messages", "0"], "must be at least 1, not 0"),
        (["--systems", "ptth,kafka"], "unknown system kafka"),
    ],
)
def test_bad_flags_are_refused_in_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_rabbitmq_row(tmp_path: Path) -> None:
    server = versus.find_rabbitmq()
    if server is None:
        pytest.skip(f"no rabbitmq-server ({versus.RABBITMQ_HINT})")
    with bench.rabbitmq_server(server, tmp_path) as rabbitmq:
        for receipts in (False, True):
            assert bench.measure(rabbitmq, 50, b"x" * 100, receipts, 10, 60) > 0
