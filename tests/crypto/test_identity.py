"""Node ids, identities and key files (crypto._identity)."""

from __future__ import annotations

import base64
import binascii
import copy
import errno
import os
import pickle
import stat
from pathlib import Path

import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crypto
from crypto import (
    NODE_ID_TEXT_LENGTH,
    BadSignature,
    Identity,
    KeyFileError,
    Malformed,
    NodeId,
    _httpsig,
)

RAW = st.binary(min_size=32, max_size=32)
IDENTITIES = RAW.map(Identity)
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"

# RFC 8032 §7.1, TEST 1: an Ed25519 key pair and its signature of the empty message.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_TEXT = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena"
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
    "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


# -- NodeId ----------------------------------------------------------------------------


@given(RAW)
def test_node_id_text_round_trip(raw: bytes) -> None:
    node_id = NodeId(raw)
    text = node_id.text
    assert len(text) == NODE_ID_TEXT_LENGTH == 52
    assert set(text) <= set(ALPHABET)
    assert text == base64.b32encode(raw).decode().rstrip("=").lower()
    assert NodeId.parse(text) == node_id
    assert NodeId.parse(text).raw == raw
    assert str(node_id) == text
    assert repr(node_id) == f"NodeId({text!r})"
    assert node_id.short == text[:10]


def test_node_id_of_a_known_key() -> None:
    node_id = NodeId(RFC8032_PUBLIC)
    assert node_id.text == RFC8032_TEXT
    assert node_id.short == "25njqamcwe"
    assert NodeId.parse(RFC8032_TEXT) == node_id


@pytest.mark.parametrize("length", [0, 51, 53, 56])
def test_parse_refuses_wrong_length(length: int) -> None:
    with pytest.raises(Malformed, match=f"a node id is 52 characters of base32, got {length}$"):
        NodeId.parse("a" * length)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("A" + "a" * 51, "'A'", id="uppercase"),
        pytest.param("0189" + "a" * 48, "'0189'", id="digits-not-in-base32"),
        pytest.param("a" * 48 + "!=-a", "'!-='", id="punctuation"),
        pytest.param("é" + "a" * 51, "'é'", id="non-ascii"),
    ],
)
def test_parse_names_the_bad_characters(text: str, shown: str) -> None:
    with pytest.raises(Malformed, match=f"uses only a-z and 2-7 .*; found {shown}$"):
        NodeId.parse(text)


@given(RAW, st.sampled_from([c for c in ALPHABET if ALPHABET.index(c) & 0xF]))
def test_parse_refuses_nonzero_spare_bits(raw: bytes, last: str) -> None:
    # 52 characters carry 260 bits; the last character's low 4 bits are spare.
    text = NodeId(raw).text[:-1] + last
    with pytest.raises(Malformed, match="last character must leave its 4 spare bits zero"):
        NodeId.parse(text)


@pytest.mark.parametrize(
    ("raw", "got"),
    [
        pytest.param(b"\x00" * 31, "31", id="short"),
        pytest.param(b"\x00" * 33, "33", id="long"),
        pytest.param(b"", "0", id="empty"),
        pytest.param(bytearray(32), "bytearray", id="bytearray"),
        pytest.param("a" * 32, "str", id="str"),
    ],
)
def test_node_id_refuses_wrong_raw(raw: object, got: str) -> None:
    with pytest.raises(Malformed, match=f"a node id is 32 bytes, got {got}$"):
        NodeId(raw)  # type: ignore[arg-type]


@given(RAW, RAW)
def test_node_id_equality_hash_and_order(a: bytes, b: bytes) -> None:
    x, y = NodeId(a), NodeId(b)
    assert (x == y) == (a == b)
    assert (x != y) == (a != b)
    assert x == NodeId(a)
    assert hash(x) == hash(NodeId(a))
    assert (x < y) == (a < b)
    assert (x <= y) == (a <= b)
    assert (x > y) == (a > b)
    assert (x >= y) == (a >= b)
    assert sorted([x, y]) == [NodeId(r) for r in sorted([a, b])]
    assert len({x, y, NodeId(a)}) == len({a, b})


def test_node_id_is_not_equal_to_other_types() -> None:
    node_id = NodeId(RFC8032_PUBLIC)
    assert node_id != RFC8032_PUBLIC
    assert node_id != node_id.text
    with pytest.raises(TypeError):
        _ = node_id < RFC8032_PUBLIC
    with pytest.raises(TypeError):
        _ = node_id >= 1


def test_node_id_is_immutable() -> None:
    node_id = NodeId(RFC8032_PUBLIC)
    with pytest.raises(AttributeError, match="NodeId is immutable"):
        node_id._bytes = b"\x00" * 32
    with pytest.raises(AttributeError, match="NodeId is immutable"):
        node_id.other = 1
    with pytest.raises(AttributeError, match="NodeId is immutable"):
        del node_id._bytes
    with pytest.raises(AttributeError):
        node_id.raw = b""  # type: ignore[misc]
    assert node_id.raw == RFC8032_PUBLIC


def test_node_id_copies_and_pickles() -> None:
    node_id = NodeId(RFC8032_PUBLIC)
    for twin in (
        copy.copy(node_id),
        copy.deepcopy(node_id),
        pickle.loads(pickle.dumps(node_id)),
    ):
        assert type(twin) is NodeId
        assert twin == node_id
        assert hash(twin) == hash(node_id)


# -- Identity --------------------------------------------------------------------------


def test_identity_matches_rfc8032_test_vector() -> None:
    identity = Identity(RFC8032_SEED)
    assert identity.node_id.raw == RFC8032_PUBLIC
    assert identity.seed == RFC8032_SEED
    assert identity.sign(b"") == RFC8032_SIGNATURE
    identity.node_id.verify(b"", RFC8032_SIGNATURE)


@given(IDENTITIES, st.binary(max_size=100))
def test_sign_and_verify(identity: Identity, message: bytes) -> None:
    signature = identity.sign(message)
    assert len(signature) == 64
    identity.node_id.verify(message, signature)
    assert Identity(identity.seed).node_id == identity.node_id


@given(IDENTITIES, IDENTITIES, st.binary(max_size=100))
def test_verify_with_the_wrong_key_fails(signer: Identity, other: Identity, message: bytes) -> None:
    signature = signer.sign(message)
    if other.node_id == signer.node_id:
        return
    with pytest.raises(BadSignature, match=f"does not verify for node {other.node_id.short}"):
        other.node_id.verify(message, signature)


@given(IDENTITIES, st.binary(max_size=100), st.data())
def test_verify_refuses_a_changed_message_or_signature(
    identity: Identity, message: bytes, data: st.DataObject
) -> None:
    signature = identity.sign(message)
    with pytest.raises(BadSignature):
        identity.node_id.verify(message + b"x", signature)
    index = data.draw(st.integers(0, 63))
    mask = data.draw(st.integers(1, 255))
    bad = bytearray(signature)
    bad[index] ^= mask
    with pytest.raises(BadSignature) as info:
        identity.node_id.verify(message, bytes(bad))
    assert info.value.status_hint == 401


@pytest.mark.parametrize("size", [0, 1, 63, 65, 128])
def test_verify_refuses_a_wrong_length_signature(size: int) -> None:
    identity = Identity(RFC8032_SEED)
    signature = (identity.sign(b"m") * 3)[:size]
    # Refused for its length before it reaches libsodium: concatenated with the
    # message, a short signature would otherwise borrow the message's first bytes.
    with pytest.raises(BadSignature, match=f"does not verify .*: it is {size} bytes, expected 64"):
        identity.node_id.verify(b"m", signature)


def test_verify_maps_arguments_of_the_wrong_type() -> None:
    identity = Identity(RFC8032_SEED)
    signature = identity.sign(b"m")
    # A signature that is not bytes is refused before PyNaCl sees it ...
    with pytest.raises(
        BadSignature, match=r"does not verify for node 25njqamcwe: it is not bytes, expected 64"
    ):
        identity.node_id.verify(b"m", "not bytes")  # type: ignore[arg-type]
    # ... a message that is not bytes fails in PyNaCl, with a builtin TypeError.
    with pytest.raises(
        BadSignature, match="signature cannot be checked for node 25njqamcwe: "
    ) as info:
        identity.node_id.verify("m", signature)  # type: ignore[arg-type]
    assert type(info.value.__cause__) is TypeError


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_identity_refuses_a_wrong_seed_length(size: int) -> None:
    with pytest.raises(Malformed, match=f"an Ed25519 seed is 32 bytes, got {size}$"):
        Identity(b"\x01" * size)


def test_generated_identities_differ_and_hide_their_seed() -> None:
    a, b = Identity.generate(), Identity.generate()
    assert a.node_id != b.node_id
    assert repr(a) == f"Identity({a.node_id.text!r})"
    assert a.seed.hex() not in repr(a)
    assert base64.urlsafe_b64encode(a.seed).decode() not in repr(a)


# -- key files -------------------------------------------------------------------------


def write(path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    path.chmod(mode)
    return path


def key_text(seed: bytes) -> str:
    return f"ptth-ed25519-seed-v1\n{base64.urlsafe_b64encode(seed).decode()}\n"


def test_save_creates_a_0600_file_and_load_reads_it(tmp_path: Path) -> None:
    identity = Identity(RFC8032_SEED)
    path = tmp_path / "key"
    old = os.umask(0)  # the mode must come from the create call, not from the umask
    try:
        identity.save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key_text(RFC8032_SEED)
    loaded = Identity.load(path)
    assert loaded.node_id == identity.node_id
    assert loaded.seed == RFC8032_SEED


def test_save_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "key"
    Identity(RFC8032_SEED).save(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match=f"key file {path} already exists; not overwriting it"):
        Identity.generate().save(path)
    assert path.read_bytes() == before
    other = write(tmp_path / "other", "something else")
    with pytest.raises(KeyFileError, match="already exists"):
        Identity.generate().save(other)
    assert other.read_text() == "something else"


def test_save_into_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "key"
    with pytest.raises(KeyFileError, match=f"cannot create key file {path}: No such file") as info:
        Identity.generate().save(path)
    assert info.value.status_hint == 500


def test_save_removes_a_partial_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "key"
    with pytest.raises(KeyFileError, match=f"cannot write key file {path}: No space left"):
        Identity.generate().save(path)
    assert not path.exists()  # so a retry can create it
    monkeypatch.undo()
    Identity(RFC8032_SEED).save(path)
    assert Identity.load(path).seed == RFC8032_SEED


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601, 0o610, 0o777])
def test_load_refuses_a_file_others_can_use(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "key", key_text(RFC8032_SEED), mode)
    with pytest.raises(KeyFileError, match=f"has mode {mode:04o}: readable by others") as info:
        Identity.load(path)
    assert f"run 'chmod 600 {path}'" in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_load_accepts_0600_or_stricter(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "key", key_text(RFC8032_SEED), mode)
    assert Identity.load(path).seed == RFC8032_SEED


def test_load_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(KeyFileError, match=f"no key file at {path}$"):
        Identity.load(path)


def test_load_an_unreachable_path(tmp_path: Path) -> None:
    path = write(tmp_path / "file", "x") / "key"  # a path through a regular file
    with pytest.raises(KeyFileError, match=f"cannot read key file {path}: Not a directory"):
        Identity.load(path)


def test_load_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match=f"key file {directory} is not a regular file"):
        Identity.load(directory)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("", id="empty"),
        pytest.param("garbage", id="garbage"),
        pytest.param(b"\xff\xfe\x00\x01binary", id="binary"),
        pytest.param(key_text(RFC8032_SEED).replace("v1", "v2"), id="wrong-header"),
        pytest.param(key_text(RFC8032_SEED).split()[1], id="no-header"),
        pytest.param(key_text(RFC8032_SEED) + "extra\n", id="extra-line"),
        pytest.param("ptth-ed25519-seed-v1\n", id="no-key"),
    ],
)
def test_load_refuses_what_is_not_a_key_file(tmp_path: Path, content: str | bytes) -> None:
    path = write(tmp_path / "key", content)
    with pytest.raises(
        KeyFileError, match=f"key file {path} is not a ptth key file \\(ptth-ed25519-seed-v1\\)"
    ):
        Identity.load(path)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_load_refuses_a_wrong_seed_length(tmp_path: Path, size: int) -> None:
    path = write(tmp_path / "key", key_text(b"\x07" * size) if size else "ptth-ed25519-seed-v1\n=")
    with pytest.raises(KeyFileError, match=f"holds a {size}-byte key, expected 32"):
        Identity.load(path)


@pytest.mark.parametrize(
    ("seed_line", "cause"),
    [
        pytest.param("abc", binascii.Error, id="bad-padding"),
        pytest.param("a", binascii.Error, id="one-char"),
        pytest.param("aé==", ValueError, id="non-ascii"),
    ],
)
def test_load_refuses_bad_base64(tmp_path: Path, seed_line: str, cause: type[Exception]) -> None:
    path = write(tmp_path / "key", f"ptth-ed25519-seed-v1\n{seed_line}\n")
    with pytest.raises(KeyFileError, match=f"key file {path} holds a damaged key") as info:
        Identity.load(path)
    assert isinstance(info.value.__cause__, cause)


def test_parse_is_cached_and_subclasses_get_their_own_type() -> None:
    node_id = crypto.Identity.generate().node_id
    assert crypto.NodeId.parse(node_id.text) is crypto.NodeId.parse(node_id.text)

    class Special(crypto.NodeId):
        __slots__ = ()

    special = Special.parse(node_id.text)
    assert type(special) is Special
    assert special == node_id


# -- verifying once (simulations) ---------------------------------------------------------


def count_verifications(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls that reach libsodium's verification."""
    calls = [0]
    real = nacl.bindings.crypto_sign_open

    def counted(signed: bytes, key: bytes) -> bytes:
        calls[0] += 1
        result: bytes = real(signed, key)
        return result

    monkeypatch.setattr(nacl.bindings, "crypto_sign_open", counted)
    return calls


def test_a_signature_that_verified_is_not_verified_again_within_verifying_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_verifications(monkeypatch)
    identity = Identity(RFC8032_SEED)
    signature = identity.sign(b"m")
    with crypto.verifying_once():
        identity.node_id.verify(b"m", signature)
        identity.node_id.verify(b"m", signature)
        assert calls == [1]
        # Another message, or another signer, is verified (and refused) as ever.
        with pytest.raises(BadSignature, match="does not verify"):
            identity.node_id.verify(b"other", signature)
        with pytest.raises(BadSignature, match="does not verify"):
            Identity.generate().node_id.verify(b"m", signature)
        assert calls == [3]
    # Outside the block nothing is remembered.
    identity.node_id.verify(b"m", signature)
    assert calls == [4]


def test_a_signature_that_failed_is_checked_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_verifications(monkeypatch)
    identity = Identity(RFC8032_SEED)
    bad = bytes(64)
    with crypto.verifying_once():
        for _ in range(3):
            with pytest.raises(BadSignature):
                identity.node_id.verify(b"m", bad)
    assert calls == [3]


def test_verifying_once_forgets_past_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_verifications(monkeypatch)
    identity = Identity(RFC8032_SEED)
    signatures = {m: identity.sign(m) for m in (b"a", b"b", b"c")}
    with crypto.verifying_once(limit=2):
        identity.node_id.verify(b"a", signatures[b"a"])
        identity.node_id.verify(b"b", signatures[b"b"])
        identity.node_id.verify(b"a", signatures[b"a"])  # remembered
        assert calls == [2]
        identity.node_id.verify(b"c", signatures[b"c"])  # past the limit: a and b forgotten
        identity.node_id.verify(b"a", signatures[b"a"])
        assert calls == [4]


# -- the signature stand-in (simulations) -----------------------------------------------


def test_the_stand_in_signs_and_checks_without_ed25519(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_verifications(monkeypatch)
    alice, bob = Identity(RFC8032_SEED), Identity.generate()
    real = alice.sign(b"m")
    with crypto.standing_in():
        stand_in = alice.sign(b"m")
        assert len(stand_in) == 64
        assert stand_in != real
        alice.node_id.verify(b"m", stand_in)
        # Another message, another signer, a bad size, and a real signature: refused.
        for message, signature, node in (
            (b"other", stand_in, alice.node_id),
            (b"m", bob.sign(b"m"), alice.node_id),
            (b"m", stand_in, bob.node_id),
            (b"m", stand_in[:63], alice.node_id),
            (b"m", real, alice.node_id),
        ):
            with pytest.raises(BadSignature, match="does not verify"):
                node.verify(message, signature)
        assert calls == [0]  # libsodium never asked
    # Outside the block a stand-in signature is what it is: no signature at all.
    with pytest.raises(BadSignature, match="does not verify"):
        alice.node_id.verify(b"m", stand_in)
    alice.node_id.verify(b"m", real)


def test_envelopes_and_http_signatures_under_the_stand_in() -> None:
    alice, bob = Identity(RFC8032_SEED), Identity.generate()
    frame = crypto.Frame(
        kind=crypto.Kind.MSG, src=alice.node_id, id=bytes(16), ts=1, exp=100_000, hops=8,
        dst=bob.node_id, body=b"hi",
    )  # fmt: skip
    with crypto.standing_in():
        envelope = frame.seal(alice)
        assert crypto.Frame.open(envelope, now=5) == frame
        # Signed by Bob in Alice's name: refused as with Ed25519.
        forged = crypto.seal(bob, crypto.Purpose.FRAME, crypto.Frame.to_payload(frame))
        with pytest.raises(crypto.CryptoError):
            crypto.Frame.open(forged, now=5)
    with pytest.raises(BadSignature):
        crypto.Frame.open(envelope, now=5)  # a stand-in envelope never opens for real
    # RFC 9421: signed with a seed or by an identity, checked against the key.
    message = _httpsig.Message(headers=[("x", "1")], method="POST", target_uri="http://a/b")

    def verify(fields: list[tuple[str, str]], key: bytes) -> None:
        _httpsig.verify_message(
            _httpsig.Message(headers=[("x", "1"), *fields], method="POST", target_uri="http://a/b"),
            public_key_for=lambda _: key,
            now=10,
        )

    with crypto.standing_in():
        for signing_key in (RFC8032_SEED, alice.sign):
            fields = _httpsig.sign_message(
                message, signing_key=signing_key, keyid="a", created=10, components=("x",)
            )
            verify(fields, alice.node_id.raw)
            with pytest.raises(BadSignature, match="does not verify"):
                verify(fields, bob.node_id.raw)
    with pytest.raises(BadSignature, match="does not verify"):
        verify(fields, alice.node_id.raw)  # made by the stand-in: refused outside it
