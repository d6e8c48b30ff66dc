"""Lock names and NATS subjects (docs/protocol.md, subjects.EncodeName)."""

from __future__ import annotations

import base64
import re

from .errors import InvalidLockNameError

DEFAULT_PREFIX = "ldlm"

OP_LOCK = "lock"
OP_TRYLOCK = "trylock"
OP_UNLOCK = "unlock"
OP_RENEW = "renew"
OP_ATTACH = "attach"

_ENCODED_MARKER = "~"


# Same rule as subjects.isPlainName: printable ASCII other than space, '*'
# and '>', no empty token, not starting with '~'. A token is made of
# 0x21-0x7e without '*' (0x2a), '.' (0x2e) and '>' (0x3e).
_PLAIN = re.compile(r"(?!~)[!-)+-\-/-=?-~]+(?:\.[!-)+-\-/-=?-~]+)*")


def _is_plain(name: str) -> bool:
    return _PLAIN.fullmatch(name) is not None


def encode_name(name: str) -> str:
    """Return the subject form of a lock name.

    A plain name ("job", "orders.123") is sent as it is; any other ("My lock",
    "a*b", "é", "~x", "a..b") as '~' followed by the unpadded base64url
    encoding of its UTF-8 bytes ("My lock" -> "~TXkgbG9jaw").
    """
    if not isinstance(name, str):
        raise TypeError(f"lock name must be a str, got {type(name).__name__}")
    if _is_plain(name):
        return name
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidLockNameError(f"lock name is not valid Unicode: {e}", lock_name=name) from None
    return _ENCODED_MARKER + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_name(tail: str) -> str:
    """Inverse of :func:`encode_name` (for tools and tests)."""
    if tail.startswith(_ENCODED_MARKER):
        body = tail[1:]
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
    return tail


def subject(prefix: str, op: str, name: str) -> str:
    """PREFIX.OP.NAME with the name encoded when needed."""
    return f"{prefix}.{op}.{encode_name(name)}"
