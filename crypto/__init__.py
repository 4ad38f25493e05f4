"""ptth's crypto layer: identities, signed envelopes, address records, frame payloads.

Pure functions over bytes (docs/architecture.md): nothing here does I/O but reading and
writing a key file, reads the clock (``now`` is passed in), or imports the rest of ptth.
"""

from crypto._address import (
    MAX_ENDPOINTS,
    TOKEN_PREFIX,
    AddressRecord,
    SignedAddress,
    parse_token,
    sign_address,
    validate_endpoint,
)
from crypto._cbor import MAX_ENVELOPE_SIZE
from crypto._envelope import Opened, Purpose, open, seal
from crypto._errors import (
    BadSignature,
    CryptoError,
    Expired,
    KeyFileError,
    Malformed,
    Stale,
    TooLarge,
    WrongPurpose,
)
from crypto._frames import (
    FRAME_ID_SIZE,
    MAX_BODY_SIZE,
    MAX_HOPS,
    MAX_LIFETIME_MS,
    MAX_WHY_LENGTH,
    Frame,
    Kind,
    validate_pattern,
    validate_topic,
)
from crypto._identity import NODE_ID_TEXT_LENGTH, Identity, NodeId

__all__ = [
    "FRAME_ID_SIZE",
    "MAX_BODY_SIZE",
    "MAX_ENDPOINTS",
    "MAX_ENVELOPE_SIZE",
    "MAX_HOPS",
    "MAX_LIFETIME_MS",
    "MAX_WHY_LENGTH",
    "NODE_ID_TEXT_LENGTH",
    "TOKEN_PREFIX",
    "AddressRecord",
    "BadSignature",
    "CryptoError",
    "Expired",
    "Frame",
    "Identity",
    "KeyFileError",
    "Kind",
    "Malformed",
    "NodeId",
    "Opened",
    "Purpose",
    "SignedAddress",
    "Stale",
    "TooLarge",
    "WrongPurpose",
    "open",
    "parse_token",
    "seal",
    "sign_address",
    "validate_endpoint",
    "validate_pattern",
    "validate_topic",
]
