"""Signed messages: HMAC-SHA256 over the encoded envelope, with key rotation.

Turned on by one setting, ``message_signing_keys``: a list of secret keys. The **first** key
signs every message this app sends; a message is accepted if it was signed with **any** key
of the list. To rotate, put the new key first and keep the old one second until no message
signed with it can still be queued (the longest countdown or retry delay), then drop it.

A signed body is ``cvsig1:<64 hex digits of HMAC-SHA256(key, payload)>:<payload>``, where the
payload is the envelope's JSON. A worker with keys dead-letters a body that is unsigned,
signed with no accepted key, or altered by a single bit as ``bad_signature`` before it
decodes it; nothing in it runs. The signature is compared as text (in constant time), so
no two spellings of one digest are accepted. A worker without keys does not verify: it
strips a signature and reads the payload.

Keys never appear in logs, errors or ``repr``. What signing protects, and what it does not
(replays of a signed message, confidentiality), is in ``docs/security.md``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from functools import lru_cache

from .exceptions import ConfigurationError, MalformedMessage

#: How a signed body starts.
PREFIX = b"cvsig1:"
#: The dead-letter reason of a message that fails verification.
BAD_SIGNATURE = "bad_signature"
#: The shortest key accepted (characters): 256 bits of entropy in URL-safe base64.
MIN_KEY_LENGTH = 32

_DIGEST_HEX = 64
_HEADER = len(PREFIX) + _DIGEST_HEX + 1  # prefix, digest, ":"


class Signer:
    """Signs with the first key and verifies against all of them. Holds the keys; its
    ``repr`` names how many there are, never what they are."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ConfigurationError("a Signer needs at least one key")
        self._keys = tuple(k.encode() if isinstance(k, str) else bytes(k) for k in keys)

    def __repr__(self) -> str:
        return f"<Signer: {len(self._keys)} key(s), redacted>"

    def sign(self, payload: bytes) -> bytes:
        """The signed body of ``payload``, signed with the first key."""
        return PREFIX + _digest(self._keys[0], payload) + b":" + payload

    def verify(self, body: bytes) -> bytes:
        """The payload of a body signed with one of the keys; otherwise raise
        :class:`MalformedMessage` with reason ``bad_signature`` (the detail names no key)."""
        data = bytes(body)
        if not data.startswith(PREFIX):
            raise MalformedMessage(BAD_SIGNATURE, "the message is not signed")
        if len(data) < _HEADER or data[_HEADER - 1 : _HEADER] != b":":
            raise MalformedMessage(BAD_SIGNATURE, "the signature is not 64 hex digits")
        given = data[len(PREFIX) : _HEADER - 1]
        payload = data[_HEADER:]
        # Every key is tried (no early exit), so timing says nothing about which one matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(_digest(key, payload), given)
        if not matched:
            raise MalformedMessage(BAD_SIGNATURE, "the signature matches no accepted key")
        return payload


def _digest(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).hexdigest().encode()


def key_ids(keys: Sequence[str]) -> list[str]:
    """Short public ids of keys (a hash prefix), for comparing configurations across hosts
    (``conveyor doctor``) without showing a key: 12 hex digits of SHA-256 over a fixed label
    and the key. A key of 256 random bits cannot be found from them."""
    return [hashlib.sha256(b"conveyor key id:" + key.encode()).hexdigest()[:12] for key in keys]


def strip_signature(body: bytes) -> bytes:
    """The payload of ``body`` without verifying anything (a worker without keys, listings
    of dead letters); an unsigned body is returned as it is."""
    data = bytes(body)
    if data.startswith(PREFIX) and data[_HEADER - 1 : _HEADER] == b":":
        return data[_HEADER:]
    return data


def is_signed(body: bytes) -> bool:
    """Whether ``body`` looks signed (says nothing about whether the signature is good)."""
    return bytes(body[: len(PREFIX)]) == PREFIX


@lru_cache(maxsize=16)
def _signer(keys: tuple[str, ...]) -> Signer:
    return Signer(keys)


def signer_for(keys: Sequence[str]) -> Signer | None:
    """The signer of the ``message_signing_keys`` setting (None: signing is off)."""
    return _signer(tuple(keys)) if keys else None


def check_keys(name: str, value: object) -> list[str]:
    """The check of the ``message_signing_keys`` setting. Errors describe a bad key by its
    position and length, never by its value."""
    if value is None:
        return []
    if isinstance(value, str):
        raise ConfigurationError(
            f"{name} must be a list of keys (the first signs), not one string: "
            f"{name} = [key] (value not shown)"
        )
    if not isinstance(value, list | tuple):
        raise ConfigurationError(f"{name} must be a list of key strings, got a {type(value)}")
    keys: list[str] = []
    for i, key in enumerate(value):
        if not isinstance(key, str):
            raise ConfigurationError(f"{name}[{i}] must be a string, got a {type(key).__name__}")
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigurationError(
                f"{name}[{i}] is {len(key)} characters; use at least {MIN_KEY_LENGTH} random "
                "ones, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if key in keys:
            raise ConfigurationError(f"{name}[{i}] repeats an earlier key")
        keys.append(key)
    return keys
