"""benchmarks/mesh.py: the latency is measured in rounds, each round's figures printed,
then their medians and the goal; a short run end to end; bad flags refused."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import trio

import crypto
from benchmarks import mesh as bench


def _round(one_way_ms: float) -> dict[str, list[float]]:
    seconds = one_way_ms / 1000
    return {
        "custody": [0.0005] * 100,
        "one way": [seconds] * 98 + [3 * seconds] * 2,  # the slowest two: its p99
        "receipt back": [2 * seconds] * 100,
    }


def test_the_medians_of_the_rounds_decide_the_goal() -> None:
    out = io.StringIO()
    medians = bench.summarise([_round(9.0), _round(30.0), _round(8.0)], out)
    assert medians["one way"] == pytest.approx((9.0, 27.0))  # p99: 3x, from the slow two
    assert medians["receipt back"][0] == pytest.approx(18.0)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0].strip() for line in lines[:3]] == ["round 1", "round 2", "round 3"]
    assert "one way 30.00 / 90.00" in lines[1]
    assert "(8.00-30.00)" in out.getvalue()  # the range of the p50s
    assert lines[-1].endswith("(medians of 3 rounds): met")

    out = io.StringIO()
    bench.summarise([_round(9.0), _round(11.0), _round(12.0)], out)
    assert out.getvalue().splitlines()[-1].endswith(": not met")  # p50 11 ms


def test_a_short_run_prints_every_round_and_the_goal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench.main(["--frames", "50", "--messages", "5", "--rounds", "2", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "round 1: p50 / p99 ms: custody" in out
    assert "round 2: p50 / p99 ms: custody" in out
    assert "round 3" not in out
    assert "frames/s" in out
    assert "goal: 5 hops one way p50 <= 10 ms and p99 <= 30 ms (medians of 2 rounds)" in out
    assert list(tmp_path.iterdir()) == []  # the chains' directories removed


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--rounds", "x"]])
def test_bad_rounds_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.main(argv)
    assert exited.value.code == 2
    assert "--rounds" in capsys.readouterr().err


async def test_a_trusted_chain_has_each_forwarder_trust_the_node_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trusts: list[tuple[crypto.NodeId, crypto.NodeId]] = []
    trust = bench.InProcess.trust

    async def recorded(self: bench.InProcess, node: crypto.NodeId) -> None:
        trusts.append((self.node_id, node))
        await trust(self, node)

    monkeypatch.setattr(bench.InProcess, "trust", recorded)
    async with bench.chain(tmp_path, 3, None, trusted=True) as (origin, last):
        sent = await origin.send(last.node_id, b"x", receipt=True)
        with trio.fail_after(30):
            assert (await origin.delivered(sent.id)).state == "delivered"
    first, second = (forwarder for forwarder, _ in trusts)
    assert trusts == [(first, origin.node_id), (second, first)]
    assert last.node_id not in {first, second}  # the destination trusts nobody


async def test_a_drop_on_the_way_ends_the_run_with_words(autojump_clock: object) -> None:
    class Statistics:
        receipts_received_dropped = 0

    class Origin:
        statistics = Statistics()

    origin: Any = Origin()
    with trio.move_on_after(60) as waited:
        await bench.none_dropped(origin)  # nothing dropped: it watches on
    assert waited.cancelled_caught
    origin.statistics.receipts_received_dropped = 3
    with pytest.raises(RuntimeError, match=r"^3 frames were dropped on the way"):
        await bench.none_dropped(origin)


async def test_arrivals_are_acknowledged_as_an_application_would(tmp_path: Path) -> None:
    """Left in the inbox they would fill their origin's share of it, and the rest of a
    long run be refused at the destination."""
    async with bench.chain(tmp_path, 1, None) as (origin, last):
        assert isinstance(last, bench.InProcess)
        await bench.send_batches(origin, last.node_id, 3, b"x")
        async with last.arrivals(acknowledge=True) as arrivals:
            for _ in range(3):
                await anext(arrivals)
            # Each is acknowledged as the next is asked for: the third is still held.
            assert last.node.store.statistics().inbox_frames == 1
