"""Every decoder of network input refuses bad input only with its documented errors.

The targets are those of the fuzz harness (fuzz/_targets.py): here Hypothesis drives
them with arbitrary bytes, with mutations of valid encodings (the harness's own
mutator, seeded by Hypothesis), and with structured near-valid values (payload maps of
the right keys and any values). Valid inputs must be accepted and round-trip. Then the
harness itself: crashes are found, told apart, saved and replayed; hangs are stopped.

Crashes found in crypto/, mesh/ and node/ that are not fixed yet are listed in
``KNOWN_CRASHES``: the properties tolerate exactly those (type and file), and each has a
strict xfail test below that reproduces it, so fixing one turns that test into an
XPASS failure (then delete both entries).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crypto
from crypto import _cbor
from fuzz import TARGETS, Mutator, Target, cbor_heads, replay, run_target
from fuzz import _targets as targets
from fuzz.__main__ import main
from fuzz._harness import crash_key
from tests.strategies import cbor_values

# (exception type, file) of crashes found and not fixed yet: none today. A new one goes
# here with a strict xfail test reproducing it, until it is fixed.
KNOWN_CRASHES: frozenset[tuple[str, str]] = frozenset()

FAST = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
SLOW = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _known(exc: BaseException) -> bool:
    key = crash_key(exc)
    return any(key.startswith(f"{kind} at {where}:") for kind, where in KNOWN_CRASHES)


def run(target: Target, data: bytes) -> BaseException | None:
    """Feed ``data`` to ``target``; fail on a crash that is not a known one."""
    try:
        target.check(data)
    except Exception as exc:
        if target.is_crash(exc) and not _known(exc):
            raise AssertionError(f"{target.name} crashed on {data.hex()}: {exc!r}") from exc
        return exc
    return None


def _settings(name: str) -> settings:
    return SLOW if TARGETS[name].batch is not None else FAST


_SEEDS = {name: target.seeds() for name, target in TARGETS.items()}


@pytest.mark.parametrize("name", list(TARGETS))
def test_seeds_are_accepted(name: str) -> None:
    # The corpus is valid input: a decoder that refuses one is wrong, or the seed is.
    target = TARGETS[name]
    for seed in _SEEDS[name]:
        assert run(target, seed) is None, seed


@pytest.mark.parametrize("name", list(TARGETS))
def test_arbitrary_bytes_are_refused_cleanly(name: str) -> None:
    target = TARGETS[name]

    @_settings(name)
    @given(st.binary(max_size=300))
    def check(data: bytes) -> None:
        run(target, data)

    check()


@pytest.mark.parametrize("name", list(TARGETS))
def test_mutated_valid_inputs_are_refused_cleanly(name: str) -> None:
    target = TARGETS[name]

    @_settings(name)
    @given(st.randoms(use_true_random=False))
    def check(rng: random.Random) -> None:
        mutator = Mutator(_SEEDS[name], rng, words=target.words, cbor=target.cbor)
        run(target, mutator.mutate())

    check()


# -- structured near-valid inputs ------------------------------------------------------------

FRAME_KEYS = ["t", "src", "id", "ts", "exp", "hops", "dst", "topic", "pat", "body", "ct"]
FRAME_KEYS += ["ref", "rr", "st", "why", "n", "hello", "extra"]
NEAR_FRAME_VALUES = st.one_of(
    cbor_values(1),
    st.sampled_from(["msg", "pub", "sub", "unsub", "ann", "rcpt", "delivered", "a.b", "#"]),
    st.sampled_from([targets.IDENTITY.node_id.raw, targets.OTHER.node_id.raw, b"\x01" * 16]),
    st.integers(min_value=targets.NOW_MS - 10, max_value=targets.NOW_MS + 10**6),
    st.integers(min_value=0, max_value=70),
)


@FAST
@given(st.dictionaries(st.sampled_from(FRAME_KEYS), NEAR_FRAME_VALUES, min_size=4))
def test_signed_frame_payloads_of_any_values(payload: dict[str, Any]) -> None:
    run(TARGETS["frame"], _cbor.encode(payload))


@FAST
@given(st.integers(0, 8), st.dictionaries(st.sampled_from(FRAME_KEYS), NEAR_FRAME_VALUES))
def test_frames_with_one_key_changed(which: int, changes: dict[str, Any]) -> None:
    frame = targets._frames()[which]
    payload = {**frame.to_payload(), **changes}
    run(TARGETS["frame"], _cbor.encode(payload))


ADDRESS_VALUES = st.one_of(
    cbor_values(1),
    st.lists(st.sampled_from(["http://a", "https://b:1/x", "ftp://c", "http://[::1", "x"])),
    st.just(targets.IDENTITY.node_id.raw),
    st.integers(min_value=-1, max_value=2**64 - 1),
)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["node", "seq", "endpoints", "exp", "name", "other"]), ADDRESS_VALUES
    )
)
def test_signed_address_payloads_of_any_values(changes: dict[str, Any]) -> None:
    payload = {**targets._address().record.to_payload(), **changes}
    run(TARGETS["address"], _cbor.encode(payload))


@FAST
@given(cbor_values())
def test_valid_cbor_is_accepted_and_round_trips(value: Any) -> None:
    assert run(TARGETS["cbor"], _cbor.encode(value)) is None


@FAST
@given(st.lists(st.tuples(st.integers(0, crypto.MAX_HOPS), st.integers(0, 8)), min_size=1))
def test_valid_wire_frames_are_accepted_and_round_trip(items: list[tuple[int, int]]) -> None:
    sealed = targets._sealed_frames()
    import mesh

    body = mesh.encode_frames(mesh.WireFrame(hops, sealed[index]) for hops, index in items)
    assert run(TARGETS["wire_frames"], body) is None


@FAST
@given(
    st.lists(
        st.tuples(
            st.text(st.characters(codec="latin-1", exclude_characters="\n:"), max_size=12),
            st.text(st.characters(codec="latin-1", exclude_characters="\n"), max_size=20),
        ),
        max_size=4,
    ),
    st.binary(max_size=40),
)
def test_signed_requests_with_extra_headers(extra: list[tuple[str, str]], body: bytes) -> None:
    # Headers the signature does not cover change nothing. (No "\n" in them: it would end
    # the carrier's header block.)
    from node import _fabric

    url = targets.REQUEST_URL
    headers = _fabric.sign_request(targets.IDENTITY, "POST", url, body, now=targets.NOW_S)
    covered = {"signature", "signature-input", "content-digest"}
    extra = [(name.lower(), value) for name, value in extra if name.lower() not in covered]
    data = targets.join_message(f"POST {url}", [*headers, *extra], body)
    assert run(TARGETS["request_sig"], data) is None


@FAST
@given(st.text(st.characters(codec="latin-1"), max_size=60))
def test_any_header_number_text(text: str) -> None:
    run(TARGETS["header_numbers"], text.encode("latin-1"))


# -- crashes found by fuzzing, fixed: each input is now refused cleanly ---------------------


def _crash(name: str, data: bytes) -> None:
    target = TARGETS[name]
    failure: BaseException | None = None
    try:
        target.check(data)
    except Exception as exc:
        failure = exc
    assert not target.is_crash(failure), f"{name} crashed: {failure!r}"


def test_known_retry_after_superscript_digit() -> None:
    _crash("header_numbers", "²".encode("latin-1"))


def test_known_relay_session_deep_json() -> None:
    _crash("relay_session", b"[" * 100_000)


def test_known_api_ack_non_string_id() -> None:
    _crash("api", targets.join_message("POST /api/v1/inbox/ack", [], b'{"ids": [1]}'))


def test_known_api_ack_deep_json() -> None:
    _crash("api", targets.join_message("POST /api/v1/inbox/ack", [], b"[" * 100_000))


def test_known_signed_request_with_a_huge_port() -> None:
    from node import _fabric

    url = "http://a:" + "1" * 5000 + "/ptth/v1/frames"
    # Signed for a sane URL (ours refuses to sign that one); presented with the huge one.
    headers = _fabric.sign_request(
        targets.IDENTITY, "POST", "http://a:1/ptth/v1/frames", b"", now=targets.NOW_S
    )
    _crash("request_sig", targets.join_message(f"POST {url}", headers, b""))


# -- the harness ----------------------------------------------------------------------------


def test_mutator_is_deterministic_and_finds_cbor_heads() -> None:
    seeds = _SEEDS["wire_frames"]
    first = Mutator(seeds, random.Random(7))
    second = Mutator(seeds, random.Random(7))
    made = [first.mutate() for _ in range(200)]
    assert made == [second.mutate() for _ in range(200)]
    assert len(set(made)) > 150  # and they differ
    # A frames body: the [hops, envelope] array, its items, and the envelope's items.
    assert len(cbor_heads(seeds[0])) > 10


def _boom(data: bytes) -> None:
    if data[:1] == b"\x00":
        raise KeyError("boom")
    if data[:1] == b"\x01":
        raise crypto.Malformed("refused")


def _spin(data: bytes) -> None:
    if data[:1] == b"\x00":
        while True:
            pass


@pytest.fixture
def fake_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = [b"ok", b"\x01x"]
    monkeypatch.setitem(
        TARGETS, "boom", Target("boom", "test", _boom, (crypto.Malformed,), lambda: seeds)
    )
    monkeypatch.setitem(TARGETS, "spin", Target("spin", "test", _spin, (), lambda: [b"ok"]))


@pytest.mark.usefixtures("fake_targets")
def test_harness_finds_saves_and_replays_a_crash(tmp_path: Path) -> None:
    report = run_target("boom", 2000, seed=1, out=tmp_path)
    assert report.inputs == 2002
    assert report.accepted + report.refused + sum(c.count for c in report.crashes.values()) == 2002
    (crash,) = report.crashes.values()
    assert crash.key.startswith("KeyError at tests/test_fuzz.py:")
    assert crash.count > 1
    assert report.refused_seeds == ["Malformed: refused"]
    text = crash.path.read_text()
    assert "input: 00" in text
    assert "KeyError: 'boom'" in text
    assert replay(crash.path) == 1
    assert main(["--inputs", "300", "--targets", "boom", "--out", str(tmp_path)]) == 1


@pytest.mark.usefixtures("fake_targets")
def test_harness_stops_a_hang(tmp_path: Path) -> None:
    report = run_target("spin", 100, seed=3, out=tmp_path, timeout=0.05)
    (crash,) = report.crashes.values()
    assert crash.key == "Hang"
    assert report.max_seconds >= 0.05


def test_cli_lists_and_runs_clean_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in TARGETS)
    assert (
        main(["--inputs", "200", "--targets", "node_id,wire_results", "--out", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "node_id" in out
    assert "wire_results" in out
    assert "mean µs" in out
    assert not list(tmp_path.iterdir())
    assert main(["--targets", "nope"]) == 2
