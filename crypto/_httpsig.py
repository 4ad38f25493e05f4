"""HTTP Message Signatures (RFC 9421) with ``ed25519``, and ``Content-Digest`` (RFC 9530).

Pure functions over a :class:`Message` (method, target URI or status, header lines):
no I/O, no clock (``now`` is passed in). A small strict parser for the Structured Field
dictionaries of RFC 8941 §4.2 reads ``Signature-Input``, ``Signature`` and
``Content-Digest``. The signature base is built as RFC 9421 §2.5 says, from HTTP fields
(§2.1) and derived components (§2.2); verification follows §3.2 and adds our policy:
``alg`` ed25519, a ``keyid``, a recent ``created`` and the components the caller requires.

Not supported, refused as :class:`Malformed`: component parameters (``;req``, ``;sf``,
``;key``, ``;bs``, ``;tr``), ``@query-param``, and signature parameters other than the
six of §2.3.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeAlias

import nacl.exceptions
import nacl.signing

from crypto._errors import BadSignature, Expired, Malformed
from crypto._identity import stand_in_signature, stand_in_verdict

__all__ = [
    "MAX_CLOCK_SKEW",
    "MAX_SIGNATURE_AGE",
    "Message",
    "SignatureParams",
    "VerifiedSignature",
    "content_digest",
    "sign_message",
    "signature_base",
    "verify_content_digest",
    "verify_message",
]

#: Oldest ``created`` we accept, in seconds: it bounds how long a captured request can be
#: replayed, yet leaves room for queueing and retries on a slow link.
MAX_SIGNATURE_AGE: Final = 300

#: How far, in seconds, ``created`` may lie in the future: node clocks drift a little, but
#: a signature from further ahead would stretch the replay window.
MAX_CLOCK_SKEW: Final = 60

_ALG: Final = "ed25519"
_ED25519_SIGNATURE_SIZE: Final = 64
_SHA256_SIZE: Final = 32
# RFC 8941 §3.3.1: an sf-integer has at most 15 digits.
_MAX_SF_INTEGER: Final = 999_999_999_999_999
# RFC 9110 §4.2.1, §4.2.2: the port an authority omits when normalized (§4.2.3).
_DEFAULT_PORTS: Final = MappingProxyType({"http": 80, "https": 443})

# --- RFC 8941 structured fields: the data model -----------------------------------------


@dataclass(frozen=True)
class _Token:
    """An sf-token (RFC 8941 §3.3.4), kept apart from an sf-string."""

    value: str


_BareItem: TypeAlias = int | float | str | bytes | bool | _Token
_Params: TypeAlias = dict[str, _BareItem]


@dataclass(frozen=True)
class _Item:
    """An Item: a bare item with parameters (RFC 8941 §3.3)."""

    value: _BareItem
    params: _Params


@dataclass(frozen=True)
class _InnerList:
    """An Inner List: items with parameters on the list (RFC 8941 §3.1.1)."""

    items: tuple[_Item, ...]
    params: _Params


# --- RFC 8941 §4.2: parsing ---------------------------------------------------------------

_KEY_RE: Final = re.compile(r"[a-z*][a-z0-9_\-.*]*")  # §3.1.2 key
_TOKEN_RE: Final = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")  # §3.3.4
_NUMBER_RE: Final = re.compile(r"-?([0-9]+)(?:\.([0-9]*))?")  # §4.2.4
_PLAIN_STRING_RE: Final = re.compile(r'"([ !#-\[\]-~]*)"')  # §4.2.5, no escapes
_BYTES_RE: Final = re.compile(r":([A-Za-z0-9+/=]*):")  # §3.3.5
_BOOLEAN_RE: Final = re.compile(r"\?([01])")  # §3.3.6
_PLAIN_STRING_VALUE_RE: Final = re.compile(r"[ !#-\[\]-~]*")  # printable, no '"' or '\\'
_DIGITS: Final = frozenset("-0123456789")
_OWS: Final = " \t"


class _Reader:
    """A cursor over one field value: the tokenizer the parsers below share."""

    def __init__(self, text: str, field: str) -> None:
        self._text = text
        self._pos = 0
        self._field = field

    def at_end(self) -> bool:
        return self._pos >= len(self._text)

    def peek(self) -> str:
        """The next character, or ``""`` at the end."""
        return self._text[self._pos : self._pos + 1]

    def take(self) -> str:
        """Consume and return the next character, or ``""`` at the end."""
        char = self.peek()
        self._pos += len(char)
        return char

    def skip(self, chars: str) -> None:
        while not self.at_end() and self.peek() in chars:
            self._pos += 1

    def match_if(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        """Consume ``pattern`` here if it matches; else consume nothing."""
        found = pattern.match(self._text, self._pos)
        if found is not None:
            self._pos = found.end()
        return found

    def match(self, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        """Consume ``pattern`` here, or fail naming ``what`` was expected."""
        found = pattern.match(self._text, self._pos)
        if found is None:
            raise self.fail(f"expected {what}")
        self._pos = found.end()
        return found

    def fail(self, problem: str) -> Malformed:
        shown = repr(self.peek()) if not self.at_end() else "end of value"
        return Malformed(f"{self._field}: {problem} at offset {self._pos} (found {shown})")


def _parse_dictionary(text: str, field: str) -> dict[str, _Item | _InnerList]:
    """Parse a whole field value as an sf-dictionary (RFC 8941 §4.2, §4.2.2)."""
    simple = _parse_simple_dictionary(text)
    if simple is not None:
        return simple
    reader = _Reader(text, field)
    reader.skip(" ")
    members: dict[str, _Item | _InnerList] = {}
    while not reader.at_end():
        key = _parse_key(reader)
        if reader.peek() == "=":
            reader.take()
            members[key] = _parse_item_or_inner_list(reader)
        else:  # a bare key is Boolean true (§4.2.2 step 2.3)
            members[key] = _Item(True, _parse_parameters(reader))
        reader.skip(_OWS)
        if reader.at_end():
            break
        if reader.take() != ",":
            raise reader.fail("expected ',' after a dictionary member")
        reader.skip(_OWS)
        if reader.at_end():
            raise reader.fail("trailing ',' after the last member")
    return members


# The shapes every signature and digest we make has, read in one match each: a
# dictionary of one member, either a byte sequence or an inner list of plain strings with
# integer or plain-string parameters (no escapes, single spaces). Anything else, errors
# included, is read by the general parser above; what the match reads, the general
# parser reads to the same members (a test compares the two).
_SIMPLE_BYTES_RE: Final = re.compile(r"([a-z*][a-z0-9_\-.*]*)=:([A-Za-z0-9+/]*={0,2}):")
_SIMPLE_INNER_RE: Final = re.compile(
    r'([a-z*][a-z0-9_\-.*]*)=\(((?:"[ !#-\[\]-~]*"(?: "[ !#-\[\]-~]*")*)?)\)'
    r'((?:;[a-z*][a-z0-9_\-.*]*=(?:-?[0-9]{1,15}|"[ !#-\[\]-~]*"))*)'
)
_SIMPLE_PARAM_RE: Final = re.compile(r';([a-z*][a-z0-9_\-.*]*)=(?:(-?[0-9]+)|"([^"]*)")')


def _parse_simple_dictionary(text: str) -> dict[str, _Item | _InnerList] | None:
    """``text`` read as a one-member dictionary of a simple shape, or None."""
    found = _SIMPLE_BYTES_RE.fullmatch(text)
    if found is not None:
        encoded = found.group(2)
        try:
            value = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            return None  # the general parser says what is wrong
        return {found.group(1): _Item(value, {})}
    found = _SIMPLE_INNER_RE.fullmatch(text)
    if found is None:
        return None
    key, items, params_text = found.groups()
    strings = items[1:-1].split('" "') if items else []
    params: _Params = {}
    for param in _SIMPLE_PARAM_RE.finditer(params_text):
        name, number, string = param.groups()
        params[name] = int(number) if number is not None else string
    return {key: _InnerList(tuple(_Item(string, {}) for string in strings), params)}


def _parse_item_or_inner_list(reader: _Reader) -> _Item | _InnerList:
    # RFC 8941 §4.2.1.1
    if reader.peek() == "(":
        return _parse_inner_list(reader)
    return _Item(_parse_bare_item(reader), _parse_parameters(reader))


def _parse_inner_list(reader: _Reader) -> _InnerList:
    # RFC 8941 §4.2.1.2
    reader.take()  # "("
    items: list[_Item] = []
    while True:
        reader.skip(" ")
        if reader.peek() == ")":
            reader.take()
            return _InnerList(tuple(items), _parse_parameters(reader))
        items.append(_Item(_parse_bare_item(reader), _parse_parameters(reader)))
        if reader.peek() not in (" ", ")"):
            raise reader.fail("expected ' ' or ')' after an inner-list item")


def _parse_parameters(reader: _Reader) -> _Params:
    # RFC 8941 §4.2.3.2; a repeated key overwrites the earlier value in place.
    params: _Params = {}
    while reader.peek() == ";":
        reader.take()
        reader.skip(" ")
        key = _parse_key(reader)
        value: _BareItem = True
        if reader.peek() == "=":
            reader.take()
            value = _parse_bare_item(reader)
        params[key] = value
    return params


def _parse_key(reader: _Reader) -> str:
    # RFC 8941 §4.2.3.3
    return reader.match(_KEY_RE, "a key (lowercase letter or '*' first)").group()


def _parse_bare_item(reader: _Reader) -> _BareItem:
    # RFC 8941 §4.2.3.1: the first character decides the type.
    char = reader.peek()
    if char in _DIGITS:
        return _parse_number(reader)
    if char == '"':
        return _parse_string(reader)
    if char == ":":
        return _parse_byte_sequence(reader)
    if char == "?":
        return reader.match(_BOOLEAN_RE, "a boolean ?0 or ?1").group(1) == "1"
    return _Token(reader.match(_TOKEN_RE, "an item").group())


def _parse_number(reader: _Reader) -> int | float:
    # RFC 8941 §4.2.4: integers have at most 15 digits; decimals at most 12 before the
    # point and 1 to 3 after it.
    found = reader.match(_NUMBER_RE, "a digit")
    whole, fraction = found.group(1), found.group(2)
    if fraction is None:
        if len(whole) > 15:
            raise reader.fail(f"integer has {len(whole)} digits, limit 15")
        return int(found.group())
    if len(whole) > 12 or not 1 <= len(fraction) <= 3:
        raise reader.fail(
            f"decimal has {len(whole)} digits before the point and {len(fraction)} after; "
            "limits are 12 and 1 to 3"
        )
    return float(found.group())


def _parse_string(reader: _Reader) -> str:
    # RFC 8941 §4.2.5: printable ASCII; only \" and \\ are escapes. Strings without
    # escapes (nearly all) are read in one match; the loop handles the rest and errors.
    plain = reader.match_if(_PLAIN_STRING_RE)
    if plain is not None:
        return plain.group(1)
    reader.take()  # '"'
    chars: list[str] = []
    while True:
        char = reader.take()
        if char == "":
            raise reader.fail("unterminated string")
        if char == '"':
            return "".join(chars)
        if char == "\\":
            char = reader.take()
            if char not in ('"', "\\"):
                raise reader.fail('only \\" and \\\\ may be escaped in a string')
        elif not " " <= char <= "~":
            raise reader.fail(f"character U+{ord(char):04X} is not allowed in a string")
        chars.append(char)


def _parse_byte_sequence(reader: _Reader) -> bytes:
    # RFC 8941 §4.2.7: base64 between colons; missing "=" padding is tolerated, as the
    # section recommends.
    encoded = reader.match(_BYTES_RE, "base64 between ':' and ':'").group(1)
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise reader.fail(f"invalid base64 in a byte sequence ({exc})") from exc


# --- RFC 8941 §4.1: serializing (what we put in @signature-params) -------------------------


def _serialize_string(value: str, what: str) -> str:
    # RFC 8941 §4.1.6
    if _PLAIN_STRING_VALUE_RE.fullmatch(value):
        return f'"{value}"'  # nothing to escape
    for char in value:
        if not " " <= char <= "~":
            raise Malformed(
                f"{what} {value!r} has character U+{ord(char):04X}; a structured-field "
                "string holds printable ASCII only"
            )
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _serialize_integer(value: int, what: str) -> str:
    # RFC 8941 §4.1.4
    if not -_MAX_SF_INTEGER <= value <= _MAX_SF_INTEGER:
        raise Malformed(f"{what} {value} does not fit a structured-field integer (15 digits)")
    return str(value)


# --- RFC 9421 §2.1, §2.2: component values -----------------------------------------------

# RFC 9110 §5.1 field-name (a token), lowercased as RFC 9421 §2.1 requires.
_FIELD_NAME_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
# RFC 9110 §9.1: a method is a token.
_METHOD_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Outside RFC 9110 §5.5 field-value without obs-text (visible ASCII, space and tab).
_BAD_FIELD_CHAR_RE: Final = re.compile(r"[^\t\x20-\x7e]")
# RFC 3986 Appendix B: the regular expression that splits any URI reference.
_URI_RE: Final = re.compile(r"(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(#.*)?")
_URI_CHARS_RE: Final = re.compile(r"[\x21-\x7e]+")
# Absolute URIs of the plainest shape (a lowercase scheme, a name or IPv4 host, a port
# under 60000, a path without a query): what _split_target_uri accepts as they are.
_PLAIN_TARGET_URI_RE: Final = re.compile(
    r"https?://[a-z0-9][a-z0-9.\-]*(?::(?:[0-9]{1,4}|[1-5][0-9]{4}))?(?:/[A-Za-z0-9\-._~/]*)?"
)
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")  # RFC 3986 §3.1
# RFC 3986 §3.2.2, §3.2.3: host (an IP literal in brackets, or a name) and optional port;
# no userinfo (RFC 9110 §4.2.4 forbids it in http(s) URIs).
_AUTHORITY_RE: Final = re.compile(r"(\[[0-9A-Za-z:.]+\]|[^:@\[\]]+)(?::([0-9]*))?")


@dataclass(frozen=True)
class _TargetURI:
    """An absolute target URI split into the parts RFC 9421 §2.2.2-§2.2.7 derive."""

    text: str
    scheme: str  # lowercased
    authority: str  # normalized, RFC 9110 §4.2.3
    path: str  # "/" when empty
    query: str | None  # None when there is no "?"


_URI_COMPONENTS: Final[Mapping[str, Callable[[_TargetURI], str]]] = MappingProxyType(
    {
        "@target-uri": lambda uri: uri.text,  # §2.2.2
        "@authority": lambda uri: uri.authority,  # §2.2.3
        "@scheme": lambda uri: uri.scheme,  # §2.2.4
        # §2.2.5, origin form: the path and the query as sent.
        "@request-target": lambda uri: uri.path if uri.query is None else f"{uri.path}?{uri.query}",
        "@path": lambda uri: uri.path,  # §2.2.6
        "@query": lambda uri: f"?{uri.query or ''}",  # §2.2.7: just "?" when absent
    }
)
_DERIVED: Final = frozenset({"@method", "@status", *_URI_COMPONENTS})


@dataclass(frozen=True)
class Message:
    """What a signature covers: for a request, method + target URI + headers; for a
    response, status + headers.

    ``headers`` are (name, value) pairs in the order they occur; names are compared
    case-insensitively and repeated fields are combined as RFC 9421 §2.1 says (each
    value stripped, joined with ``", "``). ``target_uri`` is the absolute URI of the
    request, e.g. ``"http://127.0.0.1:9000/ptth/v1/frames"``. Request components of a
    response (``;req``, §2.4) are not supported.
    """

    headers: Sequence[tuple[str, str]]
    method: str | None = None
    target_uri: str | None = None
    status: int | None = None


def _field_value(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The combined value of field ``name`` (lowercase), or None when absent (§2.1)."""
    size = len(name)
    values = [
        _clean_field_value(name, value)
        for field, value in headers
        if len(field) == size and (field == name or (field.isascii() and field.lower() == name))
    ]
    return ", ".join(values) if values else None


def _clean_field_value(name: str, value: str) -> str:
    # RFC 9421 §2.1 step 2: strip each value. A newline or non-ASCII character would make
    # the base ambiguous or unencodable, so it is refused rather than folded.
    bad = _BAD_FIELD_CHAR_RE.search(value)
    if bad is not None:
        raise Malformed(
            f"header {name!r} has character U+{ord(bad.group()):04X}; only visible ASCII, "
            "space and tab are allowed"
        )
    return value.strip(_OWS)


def _split_target_uri(text: str) -> _TargetURI:
    if not _URI_CHARS_RE.fullmatch(text):
        raise Malformed(f"target URI {text!r} must be non-empty visible ASCII")
    found = _URI_RE.fullmatch(text)
    assert found is not None  # the RFC 3986 Appendix B expression matches any string
    scheme, authority, path, query, fragment = found.groups()
    if scheme is None or not _SCHEME_RE.fullmatch(scheme) or authority is None:
        raise Malformed(f"target URI {text!r} is not absolute (scheme://authority/path)")
    if fragment is not None:
        raise Malformed(f"target URI {text!r} has a fragment; a target URI has none")
    host_port = _AUTHORITY_RE.fullmatch(authority)
    if host_port is None:
        raise Malformed(f"target URI {text!r}: authority {authority!r} is not host[:port]")
    scheme = scheme.lower()
    host, port = host_port.group(1).lower(), host_port.group(2)
    if port and (len(port) > 5 or int(port) > 65535):
        raise Malformed(f"target URI {text[:80]!r}...: port {port[:10]!r} is not 0..65535")
    # RFC 9110 §4.2.3: an empty or default port is omitted.
    if port and int(port) != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{int(port)}"
    return _TargetURI(text=text, scheme=scheme, authority=host, path=path or "/", query=query)


def _derived_value(message: Message, name: str) -> str:
    # RFC 9421 §2.2
    if name == "@status":  # §2.2.9
        if message.status is None:
            raise Malformed("covered component '@status' needs a response; the message has none")
        if not 100 <= message.status <= 999:
            raise Malformed(f"status {message.status} is not a three-digit code")
        return str(message.status)
    if name == "@method":  # §2.2.1: case-sensitive, taken as is
        if message.method is None:
            raise Malformed("covered component '@method' needs a request; the message has none")
        if not _METHOD_RE.fullmatch(message.method):
            raise Malformed(f"method {message.method!r} is not an HTTP token")
        return message.method
    if message.target_uri is None:
        raise Malformed(
            f"covered component {name!r} needs a request target URI; the message has none"
        )
    if name == "@target-uri" and _PLAIN_TARGET_URI_RE.fullmatch(message.target_uri):
        return message.target_uri  # absolute, as _split_target_uri would find it
    return _URI_COMPONENTS[name](_split_target_uri(message.target_uri))


def _component_value(message: Message, name: str) -> str:
    if name.startswith("@"):
        return _derived_value(message, name)
    value = _field_value(message.headers, name)
    if value is None:
        raise Malformed(f"covered component {name!r} is not in the message: no {name} header")
    return value


def _check_components(components: Sequence[str]) -> None:
    # RFC 9421 §2: each identifier once; derived names start with "@"; field names are
    # lowercase (§2.1). @signature-params may not be covered (§2.3).
    seen: set[str] = set()
    for name in components:
        if name in seen:
            raise Malformed(f"component {name!r} is covered twice")
        seen.add(name)
        if name.startswith("@"):
            if name not in _DERIVED:
                raise Malformed(
                    f"derived component {name!r} is not supported; supported: "
                    + ", ".join(sorted(_DERIVED))
                )
        elif not _FIELD_NAME_RE.fullmatch(name):
            raise Malformed(
                f"component {name!r} is neither a derived component nor a lowercase field name"
            )


# --- RFC 9421 §2.3, §2.5: signature parameters and the signature base ----------------------


def _serialize_signature_params(
    components: Sequence[str], params: Sequence[tuple[str, int | str]]
) -> str:
    """The @signature-params value: an inner list of component names with parameters.

    RFC 9421 §2.3 with RFC 8941 §4.1.1.1 and §4.1.1.2; ``params`` in the order given.
    """
    _check_components(components)
    # Checked names hold no '"' or '\\', so quoting them is their sf-string form.
    inner = " ".join(f'"{name}"' for name in components)
    return f"({inner})" + "".join(_serialize_param(key, value) for key, value in params)


def _serialize_param(key: str, value: int | str) -> str:
    # RFC 8941 §4.1.1.2: ";key=value" (our parameters are never Boolean true)
    if isinstance(value, int):
        return f";{key}={_serialize_integer(value, key)}"
    return f";{key}={_serialize_string(value, key)}"


@dataclass(frozen=True)
class SignatureParams:
    """The covered components and parameters of one signature (RFC 9421 §2.3).

    ``alg`` is None when the parameter is absent (the RFC's own examples omit it); the
    others are absent when None.
    """

    components: tuple[str, ...]
    created: int
    keyid: str
    alg: str | None = _ALG
    expires: int | None = None
    nonce: str | None = None
    tag: str | None = None

    def serialize(self) -> str:
        """The ``@signature-params`` value, also the ``Signature-Input`` member value.

        Parameters are written in a fixed order, ``created``, ``expires``, ``nonce``,
        ``alg``, ``keyid``, ``tag`` (the order the RFC lists them in §2.3), each only when
        present; a signature keeps the order it was made with (§2.3), so this never
        changes.

        Raises :class:`Malformed` for a duplicate or unsupported component, a value an
        sf-string cannot hold (non-ASCII), or an integer over 15 digits: the fault of
        whoever built these parameters.
        """
        params: list[tuple[str, int | str]] = [("created", self.created)]
        optional: list[tuple[str, int | str | None]] = [
            ("expires", self.expires),
            ("nonce", self.nonce),
            ("alg", self.alg),
            ("keyid", self.keyid),
            ("tag", self.tag),
        ]
        params.extend((key, value) for key, value in optional if value is not None)
        return _serialize_signature_params(self.components, params)


def _signature_base(message: Message, components: Sequence[str], params_value: str) -> bytes:
    # RFC 9421 §2.5: one line per component, then @signature-params; no final newline.
    lines = [f'"{name}": {_component_value(message, name)}' for name in components]
    lines.append(f'"@signature-params": {params_value}')
    return "\n".join(lines).encode("ascii")


def signature_base(message: Message, params: SignatureParams) -> bytes:
    """The bytes a signature with ``params`` signs over ``message`` (RFC 9421 §2.5).

    Raises :class:`Malformed` when a covered component is missing from the message (a
    header, or a request part of a response), is unsupported or covered twice, or has a
    value that cannot be signed (a newline or non-ASCII character in a header, a target
    URI that is not absolute). Signing, that is the caller's fault; verifying, the
    sender's.
    """
    return _signature_base(message, params.components, params.serialize())


# --- RFC 9421 §3.1, §4: signing ------------------------------------------------------------


def sign_message(
    message: Message,
    *,
    signing_key: bytes | Callable[[bytes], bytes],
    keyid: str,
    created: int,
    components: Sequence[str],
    label: str = "sig",
    nonce: str | None = None,
    expires: int | None = None,
) -> list[tuple[str, str]]:
    """Sign ``message`` with ed25519 and return the two header fields to add.

    ``signing_key`` is the 32-byte Ed25519 seed, or a function that signs with it
    (``Identity.sign``: making the key from a seed costs about as much as a
    signature). The result is
    ``[("signature-input", 'sig=(...);created=...;keyid="...";alg="ed25519"'),
    ("signature", "sig=:<base64>:")]`` (RFC 9421 §4.1, §4.2), with parameters in the order
    :meth:`SignatureParams.serialize` documents.

    Raises :class:`Malformed` for a seed that is not 32 bytes, a label that is not an
    sf-key, and everything :func:`signature_base` refuses: all the caller's fault.
    """
    if not _KEY_RE.fullmatch(label):
        raise Malformed(f"label {label!r} is not a structured-field key (a-z, 0-9, _-.*)")
    if callable(signing_key):
        sign = signing_key
    else:
        try:
            key = nacl.signing.SigningKey(signing_key)
        except (nacl.exceptions.TypeError, nacl.exceptions.ValueError) as exc:
            size = len(signing_key)
            raise Malformed(f"signing key is {size} bytes; an Ed25519 seed is 32") from exc

        public = bytes(key.verify_key)

        def sign(base: bytes) -> bytes:
            stand_in = stand_in_signature(public, base)  # simulations only
            return key.sign(base).signature if stand_in is None else stand_in

    params = SignatureParams(
        components=tuple(components),
        created=created,
        keyid=keyid,
        expires=expires,
        nonce=nonce,
    )
    params_value = params.serialize()
    signature = sign(_signature_base(message, params.components, params_value))
    encoded = base64.b64encode(signature).decode("ascii")
    return [("signature-input", f"{label}={params_value}"), ("signature", f"{label}=:{encoded}:")]


# --- RFC 9421 §3.2: verifying --------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature that verified: who made it, what it covers, under which label."""

    keyid: str
    params: SignatureParams
    label: str
    #: The 64 signature bytes as decoded (canonical: libsodium refuses a malleated S),
    #: whatever the header's spelling: what a replay guard must remember.
    signature: bytes = field(default=b"", compare=False)


_INTEGER_PARAMS: Final = frozenset({"created", "expires"})
_STRING_PARAMS: Final = frozenset({"nonce", "alg", "keyid", "tag"})


def _kind(value: _BareItem) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes):
        return "a byte sequence"
    return "a token"


def _choose_label(members: Mapping[str, _Item | _InnerList], label: str | None, kind: str) -> str:
    if label is None:
        first = next(iter(members), None)
        if first is None:
            raise BadSignature(f"{kind} is not signed: Signature-Input is empty")
        return first
    if label not in members:
        raise BadSignature(
            f"{kind} has no signature labelled {label!r}; Signature-Input has "
            + ", ".join(repr(name) for name in members)
        )
    return label


def _read_signature_input(label: str, member: _Item | _InnerList) -> tuple[SignatureParams, str]:
    """The parameters of one Signature-Input member, and their serialization as received.

    The base is rebuilt with the parameters in the order the signer sent them (§2.3), so a
    signer that orders them differently from us still verifies.
    """
    where = f"Signature-Input {label!r}"
    if not isinstance(member, _InnerList):
        raise Malformed(f"{where} must be an inner list of components, got {_kind(member.value)}")
    components: list[str] = []
    for item in member.items:
        if not isinstance(item.value, str):
            raise Malformed(f"{where}: a component must be a string, got {_kind(item.value)}")
        if item.params:
            raise Malformed(
                f"{where}: component parameters are not supported "
                f"({item.value!r};{';'.join(item.params)})"
            )
        components.append(item.value)
    params: list[tuple[str, int | str]] = []
    for key, value in member.params.items():
        if key in _INTEGER_PARAMS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise Malformed(
                    f"{where}: parameter {key!r} must be an integer, got {_kind(value)}"
                )
        elif key in _STRING_PARAMS:
            if not isinstance(value, str):
                raise Malformed(f"{where}: parameter {key!r} must be a string, got {_kind(value)}")
        else:
            raise Malformed(f"{where}: unknown signature parameter {key!r}")
        params.append((key, value))
    found = dict(params)
    created, keyid = found.get("created"), found.get("keyid")
    if not isinstance(created, int):
        raise BadSignature(f"{where} has no created parameter; we require one")
    if not isinstance(keyid, str):
        raise BadSignature(f"{where} has no keyid parameter; we require one")
    expires, alg = found.get("expires"), found.get("alg")
    nonce, tag = found.get("nonce"), found.get("tag")
    signature_params = SignatureParams(
        components=tuple(components),
        created=created,
        keyid=keyid,
        alg=alg if isinstance(alg, str) else None,
        expires=expires if isinstance(expires, int) else None,
        nonce=nonce if isinstance(nonce, str) else None,
        tag=tag if isinstance(tag, str) else None,
    )
    return signature_params, _serialize_signature_params(components, params)


def _read_signature(label: str, member: _Item | _InnerList) -> bytes:
    # RFC 9421 §4.2: each member is a byte sequence.
    if not isinstance(member, _Item) or not isinstance(member.value, bytes):
        shown = "an inner list" if isinstance(member, _InnerList) else _kind(member.value)
        raise Malformed(f"Signature {label!r} must be a byte sequence, got {shown}")
    if len(member.value) != _ED25519_SIGNATURE_SIZE:
        raise BadSignature(
            f"signature {label!r} is {len(member.value)} bytes; an ed25519 signature is "
            f"{_ED25519_SIGNATURE_SIZE}"
        )
    return member.value


def _check_freshness(label: str, params: SignatureParams, now: int, max_age: int) -> None:
    # RFC 9421 §3.2.1: created and expires are checked against the verifier's clock.
    age = now - params.created
    if age > max_age:
        raise Expired(f"signature {label!r} created {age} s ago, window is {max_age} s")
    if -age > MAX_CLOCK_SKEW:
        raise Expired(
            f"signature {label!r} created {-age} s in the future, "
            f"allowed clock skew is {MAX_CLOCK_SKEW} s"
        )
    if params.expires is not None and now > params.expires:
        raise Expired(
            f"signature {label!r} expired {now - params.expires} s ago "
            f"(expires={params.expires}, now={now})"
        )


def verify_message(
    message: Message,
    *,
    public_key_for: Callable[[str], bytes],
    now: int,
    required_components: Sequence[str] = (),
    max_age: int = MAX_SIGNATURE_AGE,
    label: str | None = None,
) -> VerifiedSignature:
    """Verify the ed25519 signature on ``message`` (RFC 9421 §3.2) and return who made it.

    The signature checked is the one under ``label``, or the first in ``Signature-Input``
    when ``label`` is None. ``public_key_for(keyid)`` returns the signer's 32-byte Ed25519
    public key; whatever :class:`CryptoError` it raises propagates unchanged. ``now`` is
    the verifier's clock in Unix seconds.

    Raises, all the sender's fault:

    * :class:`BadSignature` (401): no ``Signature-Input`` or ``Signature`` header, no
      signature under ``label``, a signature without ``created`` or ``keyid``, an ``alg``
      other than ed25519, a component of ``required_components`` not covered, or a
      signature that does not verify;
    * :class:`Expired`: ``created`` more than ``max_age`` seconds ago or more than
      :data:`MAX_CLOCK_SKEW` ahead, or ``expires`` passed;
    * :class:`Malformed`: a header that is not a valid structured field or holds the
      wrong types, an unsupported component or parameter, a covered component missing
      from the message (see :func:`signature_base`), or a public key from
      ``public_key_for`` that is not 32 bytes (that one is the key source's fault).
    """
    kind = "request" if message.method is not None else "response"
    input_value = _field_value(message.headers, "signature-input")
    if input_value is None:
        raise BadSignature(f"{kind} is not signed: no Signature-Input header")
    signature_value = _field_value(message.headers, "signature")
    if signature_value is None:
        raise BadSignature(f"{kind} is not signed: no Signature header")
    inputs = _parse_dictionary(input_value, "Signature-Input")
    signatures = _parse_dictionary(signature_value, "Signature")
    chosen = _choose_label(inputs, label, kind)
    params, params_value = _read_signature_input(chosen, inputs[chosen])
    if chosen not in signatures:
        raise BadSignature(f"Signature-Input has {chosen!r} but the Signature header does not")
    signature = _read_signature(chosen, signatures[chosen])
    if params.alg is not None and params.alg != _ALG:
        raise BadSignature(f"signature {chosen!r} uses alg {params.alg!r}; we accept only {_ALG!r}")
    missing = [name for name in required_components if name not in params.components]
    if missing:
        raise BadSignature(
            f"signature {chosen!r} does not cover required "
            + ", ".join(repr(name) for name in missing)
        )
    _check_freshness(chosen, params, now, max_age)
    public_key = public_key_for(params.keyid)
    base = _signature_base(message, params.components, params_value)
    try:
        verify_key = nacl.signing.VerifyKey(public_key)
    except (nacl.exceptions.TypeError, nacl.exceptions.ValueError) as exc:
        raise Malformed(
            f"public key for keyid {params.keyid!r} is {len(public_key)} bytes; "
            "an Ed25519 public key is 32"
        ) from exc
    try:
        verdict = stand_in_verdict(public_key, base, signature)  # simulations only
        if verdict is None:
            verify_key.verify(base, signature)
        elif not verdict:
            raise nacl.exceptions.BadSignatureError("the stand-in signature differs")
    except nacl.exceptions.BadSignatureError as exc:
        raise BadSignature(
            f"signature {chosen!r} by keyid {params.keyid!r} does not verify "
            f"over its {len(base)}-byte signature base"
        ) from exc
    return VerifiedSignature(
        keyid=params.keyid, params=params, label=chosen, signature=bytes(signature)
    )


# --- RFC 9530: Content-Digest --------------------------------------------------------------


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` value for ``body``: ``sha-256=:<base64>:`` (RFC 9530 §2)."""
    encoded = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    return f"sha-256=:{encoded}:"


def verify_content_digest(header_value: str, body: bytes) -> None:
    """Check a ``Content-Digest`` value against ``body`` (RFC 9530 §2).

    The value is an sf-dictionary; its ``sha-256`` member is compared in constant time,
    and members for other algorithms are ignored.

    Raises :class:`Malformed` when the value does not parse or has no ``sha-256`` byte
    sequence of 32 bytes, and :class:`BadSignature` when the digest does not match the
    body: both the sender's fault.
    """
    members = _parse_dictionary(header_value, "Content-Digest")
    member = members.get("sha-256")
    if member is None:
        raise Malformed(
            "Content-Digest has no sha-256 member; it has "
            + (", ".join(repr(name) for name in members) or "none")
        )
    if not isinstance(member, _Item) or not isinstance(member.value, bytes):
        raise Malformed("Content-Digest sha-256 must be a byte sequence")
    if len(member.value) != _SHA256_SIZE:
        raise Malformed(
            f"Content-Digest sha-256 is {len(member.value)} bytes; a SHA-256 digest is "
            f"{_SHA256_SIZE}"
        )
    if not hmac.compare_digest(member.value, hashlib.sha256(body).digest()):
        raise BadSignature(f"Content-Digest sha-256 does not match the {len(body)}-byte body")
