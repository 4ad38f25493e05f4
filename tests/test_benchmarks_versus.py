"""benchmarks/versus.py: its ptth rows move messages end to end, a missing broker is
named with how to install it (and the rest is measured), ratios are taken within rounds,
and the broker rows run where the brokers are installed (skipped, saying why, elsewhere).
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from benchmarks import versus


def ptth_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RabbitMQ and no NATS, whatever this machine has."""
    monkeypatch.setattr(versus, "find_rabbitmq", lambda: None)
    monkeypatch.setattr(versus, "find_nats_server", lambda: None)


def test_ptth_rows_measured_and_missing_brokers_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ptth_only(monkeypatch)
    out = io.StringIO()
    argv = ["--messages", "30", "--rounds", "1", "--samples", "5", "--dir", str(tmp_path)]
    assert versus.main([*argv, "--json"], out=out) == 0
    result = json.loads(out.getvalue())

    ptth = {"ptth-1hop", "ptth-3hop", "ptth-3hop-trusted", "ptth-api"}
    for system in ptth:
        (rate,) = result["systems"][system]["rates"]
        assert rate is not None
        assert rate > 0
    if Path("/proc/self/stat").exists():  # each process's CPU, where /proc says it
        split = {
            system: list(result["systems"][system]["cpu us per message by process"])
            for system in ptth
        }
        assert split == {
            "ptth-1hop": ["here (origin, consumer)", "destination"],
            "ptth-3hop": ["here (origin, consumer)", "r1", "r2", "destination"],
            "ptth-3hop-trusted": ["here (origin, consumer)", "r1", "r2", "destination"],
            "ptth-api": ["here (client, consumer)", "sender", "receiver"],
        }
        # (30 messages may take less than one clock tick of a process's CPU: >= 0.)
        assert all(
            us >= 0
            for system in ptth
            for us in result["systems"][system]["cpu us per message by process"].values()
        )
    assert set(result["systems"]) == ptth
    assert "apt-get install rabbitmq-server" in result["missing"]["rabbitmq"]
    assert "pip install -e '.[bench]'" in result["missing"]["nats"]
    assert result["one at a time"]["ptth send until custody"]["samples"] == 5
    goals = {goal["goal"]: goal for goal in result["goals"]}
    assert goals["ptth-1hop >= 1.0x RabbitMQ end to end"]["met"] is None
    assert goals["ptth-1hop >= 0.6x Ed25519 verify of both cores"]["value"] > 0
    assert goals["ptth-3hop >= 0.7x ptth-1hop"]["met"] is not None
    trusted = "ptth-3hop-trusted >= 0.7x ptth-1hop (forwarders trusting their upstream)"
    assert goals[trusted]["met"] is not None
    assert goals["local API (ptth-api) >= 0.5x RabbitMQ"]["met"] is None  # no RabbitMQ
    assert list(tmp_path.iterdir()) == []  # every data directory removed


def test_text_report_names_missing_brokers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ptth_only(monkeypatch)
    out = io.StringIO()
    argv = ["--systems", "rabbitmq,nats", "--rounds", "1", "--samples", "0"]
    assert versus.main([*argv, "--dir", str(tmp_path)], out=out) == 0
    text = out.getvalue()
    assert (
        "rabbitmq: not measured: no rabbitmq-server found "
        "(Debian/Ubuntu: `apt-get install rabbitmq-server`)" in text
    )
    assert "nats: not measured: no nats-server found" in text
    assert "ptth-1hop >= 1.0x RabbitMQ end to end" in text
    assert "not measured\n" in text


def test_ratios_are_taken_within_rounds() -> None:
    rounds: list[dict[str, float | None]] = [
        {"ptth-1hop": 100.0, "ptth-3hop": 80.0, "rabbitmq": 200.0},
        {"ptth-1hop": 300.0, "ptth-3hop": 150.0, "rabbitmq": 200.0},
        {"ptth-1hop": 50.0, "ptth-3hop": None, "rabbitmq": 25.0},
    ]
    samples = {
        "ptth send until custody": [0.002] * 10,
        "rabbitmq publish+confirm": [0.001] * 10,
    }
    summary = versus.summarize(
        ["ptth-1hop", "ptth-3hop", "rabbitmq"], rounds, [100.0, 100.0, 100.0], samples
    )
    one_hop = summary["systems"]["ptth-1hop"]
    assert one_hop["vs rabbitmq"] == [0.5, 1.5, 2.0]
    assert one_hop["median vs rabbitmq"] == 1.5  # not median(ptth) / median(rabbitmq) = 0.5
    assert (one_hop["median"], one_hop["min"], one_hop["max"]) == (100.0, 50.0, 300.0)
    assert summary["systems"]["ptth-3hop"]["vs rabbitmq"] == [0.4, 0.75, None]
    met = {goal["goal"]: (goal["value"], goal["met"]) for goal in summary["goals"]}
    assert met["ptth-1hop >= 1.0x RabbitMQ end to end"] == (1.5, True)
    assert met["ptth-1hop >= 0.6x Ed25519 verify of both cores"] == (0.5, False)
    assert met["one at a time: ptth p50 <= 1.5x RabbitMQ publish+confirm"] == (2.0, False)
    assert met["ptth-3hop >= 0.7x ptth-1hop"] == (0.65, False)

    out = io.StringIO()
    versus.report(summary, out)
    assert "0.50 1.50 2.00" in out.getvalue()


def test_crypto_ceiling_is_what_the_signatures_alone_allow() -> None:
    # 10,000 signs/s and 5,000 verifies/s per core: 300 us of signature work per message
    # on one core, so both cores carry at most 2 / 300 us = 6,667 messages/s.
    rounds: list[dict[str, float | None]] = [
        {"ptth-1hop": 1_000.0, "rabbitmq": 5_000.0},
        {"ptth-1hop": None, "rabbitmq": 4_000.0},
    ]
    summary = versus.summarize(
        ["ptth-1hop", "rabbitmq"], rounds, [5_000.0, 5_000.0], {}, [10_000.0, 10_000.0]
    )
    crypto = summary["crypto ceiling"]
    assert crypto["median"] == pytest.approx(20_000 / 3)
    assert crypto["fraction"]["ptth-1hop"] == pytest.approx(0.15)
    assert crypto["fraction"]["rabbitmq"] == pytest.approx((0.75 + 0.6) / 2)
    assert crypto["most vs 2x verify"] == pytest.approx(2 / 3)
    # RabbitMQ's median, 4,500/s, gives each message 444 us of the two cores: 144 us left.
    assert crypto["us left at rabbitmq's rate"] == pytest.approx(2e6 / 4_500 - 300)
    out = io.StringIO()
    versus.report(summary, out)
    assert "ceiling of one hop" in out.getvalue()
    assert "144 us of CPU per message" in out.getvalue()
    # Without the sign rate, nothing is claimed.
    assert versus.summarize(["ptth-1hop"], rounds, [5_000.0, 5_000.0], {})["crypto ceiling"] is None


def test_cpu_per_message_and_what_the_cores_allow_three_hops() -> None:
    # Round 1: one hop 2,000/s at 800 us of CPU a message (1.6 cores busy), three hops
    # at 2,000 us: 2.5x the CPU, so two cores carry at most 1,000/s, 0.5x one hop.
    rounds: list[dict[str, float | None]] = [
        {"ptth-1hop": 2_000.0, "ptth-3hop": 900.0},
        {"ptth-1hop": 2_500.0, "ptth-3hop": None},
    ]
    cpu: list[dict[str, float | None]] = [
        {"ptth-1hop": 800.0, "ptth-3hop": 2_000.0},
        {"ptth-1hop": 700.0, "ptth-3hop": None},
    ]
    summary = versus.summarize(["ptth-1hop", "ptth-3hop"], rounds, [1.0, 1.0], {}, None, cpu, 2)
    one_hop = summary["systems"]["ptth-1hop"]
    assert one_hop["cpu us per message"] == 750.0
    assert one_hop["cores busy"] == pytest.approx((1.6 + 1.75) / 2)
    assert summary["systems"]["ptth-3hop"]["cores busy"] == pytest.approx(1.8)
    assert summary["cpu bound"] == {"3hop cpu vs 1hop": 2.5, "most 3hop vs 1hop": 0.5}
    out = io.StringIO()
    versus.report(summary, out)
    assert "ptth-3hop 2.50x ptth-1hop's" in out.getvalue()
    assert "at most 0.50x" in out.getvalue()
    # Without CPU figures (not Linux), nothing is claimed.
    assert versus.summarize(["ptth-1hop"], rounds, [1.0, 1.0], {})["cpu bound"] is None


def test_busy_cpu_seconds_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    hz = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    stat.write_text(f"cpu  {hz} {hz} {hz} {50 * hz} {9 * hz} 0 {hz} {hz} 0 0\ncpu0 1 2 3\n")
    assert versus.busy_cpu_seconds(stat) == 5.0
    stat.write_text("intr 1 2 3\n")
    assert versus.busy_cpu_seconds(stat) is None
    assert versus.busy_cpu_seconds(tmp_path / "missing") is None
    start = versus.Mark(10.0, 100.0)
    rate = versus.Rate.between(1_000, start, versus.Mark(12.0, 101.5))
    assert (rate.per_second, rate.cpu_us) == (500.0, 1_500.0)
    assert versus.Rate.between(10, versus.Mark(0.0, None), versus.Mark(1.0, 3.0)).cpu_us is None


def test_process_cpu_seconds_from_proc(tmp_path: Path) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    (tmp_path / "42").mkdir()
    # A command may hold spaces and parentheses: fields are counted after the last ")".
    fields = ["S", *["0"] * 10, str(3 * hz), str(2 * hz), *["0"] * 30]
    (tmp_path / "42" / "stat").write_text(f"42 (ptth (run) x) {' '.join(fields)}\n")
    assert versus.process_cpu_seconds(42, tmp_path) == 5.0
    assert versus.process_cpu_seconds(43, tmp_path) is None  # gone
    (tmp_path / "42" / "stat").write_text("42 (ptth) S 1 2\n")
    assert versus.process_cpu_seconds(42, tmp_path) is None
    assert (versus.process_cpu_seconds() or 0.0) > 0.0  # this process, if on Linux


def test_cpu_per_message_process_by_process() -> None:
    start = versus.Mark(0.0, 10.0, (1.0, 2.0, 3.0))
    rate = versus.Rate.between(1_000, start, versus.Mark(1.0, 11.0, (1.1, 2.3, 3.0)))
    assert rate.parts_us == pytest.approx((100.0, 300.0, 0.0))
    unread = versus.Mark(1.0, 11.0, (1.1, None, 3.0))
    assert versus.Rate.between(1_000, start, unread).parts_us is None
    assert versus.process_names("ptth-1hop", 2) == ["here (origin, consumer)", "destination"]
    assert versus.process_names("ptth-3hop", 4)[1:] == ["r1", "r2", "destination"]
    assert versus.process_names("ptth-api", 3) == ["here (client, consumer)", "sender", "receiver"]
    rounds: list[dict[str, float | None]] = [{"ptth-api": 5_000.0}] * 3
    parts: list[dict[str, tuple[float, ...] | None]] = [
        {"ptth-api": (20.0, 110.0, 140.0)},
        {"ptth-api": None},  # a round that failed
        {"ptth-api": (18.0, 120.0, 150.0)},
    ]
    summary = versus.summarize(["ptth-api"], rounds, [1.0] * 3, {}, None, None, 2, parts)
    assert summary["systems"]["ptth-api"]["cpu us per message by process"] == {
        "here (client, consumer)": 19.0,
        "sender": 115.0,
        "receiver": 145.0,
    }
    out = io.StringIO()
    versus.report(summary, out)
    assert "  ptth-api: here (client, consumer) 19, sender 115, receiver 145" in out.getvalue()
    # Not measured (another system): nothing is printed.
    bare = versus.summarize(["ptth-api"], rounds, [1.0] * 3, {})
    assert bare["systems"]["ptth-api"]["cpu us per message by process"] is None
    out = io.StringIO()
    versus.report(bare, out)
    assert "CPU by process" not in out.getvalue()


def test_rounds_rotate_the_order() -> None:
    systems = ["a", "b", "c"]
    assert [versus.rotated(systems, i) for i in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--messages", "0"], "must be at least 1, not 0"),
        (["--systems", "ptth-1hop,kafka"], "unknown system kafka"),
        (["--samples", "-1"], "must be 0 or more, not -1"),
    ],
)
def test_bad_flags_are_refused_in_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        versus.main(argv)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_a_missing_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert versus.main(["--dir", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"versus.py: --dir {tmp_path / 'absent'} is not a directory"
    )


def test_finders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert versus.find_rabbitmq(scripts=[]) is None
    script = tmp_path / "rabbitmq-server"
    script.write_text("#!/bin/sh\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert versus.find_rabbitmq(scripts=[]) == script
    server = tmp_path / "nats-server"
    server.write_text("#!/bin/sh\n")
    server.chmod(server.stat().st_mode | stat.S_IXUSR)
    assert versus.find_nats_server() == server


BODY = os.urandom(200)


def test_rabbitmq_row(tmp_path: Path) -> None:
    server = versus.find_rabbitmq()
    if server is None:
        pytest.skip(f"no rabbitmq-server ({versus.RABBITMQ_HINT})")
    if not versus.has_module("pika"):
        pytest.skip(f"no pika ({versus.BENCH_HINT})")
    with versus.rabbitmq_broker(server, tmp_path) as port:
        assert versus.rabbitmq_round(port, 50, BODY, 10, 60, 1).per_second > 0
        assert len(versus.rabbitmq_one_at_a_time(port, 3, BODY)) == 3


def test_nats_row(tmp_path: Path) -> None:
    server = versus.find_nats_server()
    if server is None:
        pytest.skip(f"no nats-server ({versus.BENCH_HINT})")
    if not versus.has_module("nats"):
        pytest.skip(f"no nats-py ({versus.BENCH_HINT})")
    with versus.nats_broker(server, tmp_path, "always") as url:
        assert versus.nats_round(url, 50, BODY, 10, 60, 1).per_second > 0
        assert len(versus.nats_one_at_a_time(url, 3, BODY)) == 3
