"""quick_init: the same instances as the stock frozen dataclass, made faster; what it
cannot take refused when the class is made."""

from __future__ import annotations

import dataclasses
import os
import pickle

import pytest

import crypto
import mesh
from mesh._records import quick_init


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Quick:
    a: int
    b: bytes
    c: tuple[int, ...] = ()
    d: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Stock:
    a: int
    b: bytes
    c: tuple[int, ...] = ()
    d: str | None = dataclasses.field(default=None, repr=False)


def fields(record: object) -> tuple[object, ...]:
    return tuple(getattr(record, f.name) for f in dataclasses.fields(record))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, b"x"), {}),
        ((1, b"x", (2,)), {}),
        ((1,), {"b": b"y", "d": "z"}),
        ((), {"a": 3, "b": b""}),
    ],
)
def test_same_fields_as_the_stock_init(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    assert fields(Quick(*args, **kwargs)) == fields(Stock(*args, **kwargs))  # type: ignore[arg-type]


def test_still_a_frozen_dataclass() -> None:
    record = Quick(1, b"x", (2, 3))
    assert record == Quick(1, b"x", (2, 3)) != Quick(1, b"x")
    assert hash(record) == hash(Quick(1, b"x", (2, 3)))
    assert repr(record) == "Quick(a=1, b=b'x', c=(2, 3))"
    assert dataclasses.replace(record, a=5) == Quick(5, b"x", (2, 3))
    assert pickle.loads(pickle.dumps(record)) == record
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.a = 2  # type: ignore[misc]
    assert Quick.__init__.__qualname__ == "Quick.__init__"


def test_wrong_arguments_are_refused_as_before() -> None:
    with pytest.raises(TypeError):
        Quick(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick(1, b"x", (), None, 5)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick(1, b"x", e=5)  # type: ignore[call-arg]


def test_what_it_cannot_take_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="not a frozen dataclass with slots"):

        @quick_init
        @dataclasses.dataclass(frozen=True)
        class NoSlots:
            a: int

    with pytest.raises(TypeError, match="default factory"):

        @quick_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Factory:
            a: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="keyword-only"):

        @quick_init
        @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
        class KeywordOnly:
            a: int

    with pytest.raises(TypeError, match="__post_init__"):

        @quick_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class PostInit:
            a: int

            def __post_init__(self) -> None:
                pass

    with pytest.raises(TypeError, match="exactly its fields"):

        @quick_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Hidden:
            a: int
            b: int = dataclasses.field(default=0, init=False)


def test_the_records_a_frame_goes_through() -> None:
    identity = crypto.Identity.generate()
    dst = crypto.Identity.generate().node_id
    frame = crypto.Frame(
        kind=crypto.Kind.MSG,
        src=identity.node_id,
        id=os.urandom(16),
        ts=1,
        exp=100_000,
        hops=8,
        dst=dst,
        body=b"hello",
    )
    envelope = frame.seal(identity)
    wire = mesh.WireFrame(2, envelope)
    assert (wire.hops, wire.envelope, wire.to, wire.coords) == (2, envelope, (), None)
    admitted = mesh.admit(wire, now=5)
    assert isinstance(admitted, mesh.Admitted)
    assert (admitted.frame, admitted.hops, admitted.to) == (frame, 3, ())
    outgoing = mesh.Outgoing.of(frame, envelope, hops=3, next_hop=dst)
    assert (outgoing.src, outgoing.dst, outgoing.next_hop, outgoing.came_from) == (
        identity.node_id,
        dst,
        dst,
        None,
    )
    assert mesh.Result(mesh.Outcome.ACCEPTED).ok
