"""Signed, expiring device tokens: HMAC-SHA256 over compact claims, standard library only.

A device presents a token in ``hello``; the gateway verifies it with :func:`verify` before it
accepts anything else. Tokens are issued by the API (:func:`issue`) for one device and a set of
channel scopes, and expire.

Format (version ``hc1``)::

    hc1.<key id>.<claims>.<mac>

* ``key id`` — which signing secret was used, ``[A-Za-z0-9_-]{1,32}``. Key rotation: add the new
  key to the gateways' keyring, start issuing with it, and drop the old one once its tokens
  have expired. Verification costs one HMAC whatever the keyring's size.
* ``claims`` — unpadded base64url of the JSON object
  ``{"sub": device id, "ch": [scopes], "iat": issued at, "nbf": not before, "exp": expires at,
  "jti": token id}`` (times in µs since the Unix epoch; fields in that order, no spaces). The
  token id (random, 16 base64url characters) names one token for revocation
  (:mod:`hopcast.live.revocation`); tokens issued before it existed carry none and still verify
  (they can be revoked by subject only).
* ``mac`` — unpadded base64url of ``HMAC-SHA256(secret, "hc1.<key id>.<claims>")``: the MAC
  covers the version, the key id and the claims exactly as written, so none can be swapped.

A scope is a channel name, or a prefix ending in ``*`` that allows every channel starting with
it (``event:*``; ``*`` alone allows all). Why not JWT: one fixed algorithm (no ``alg`` header to
confuse), no dependency, and times in the microseconds the rest of hopcast uses. The whole token
is URL-safe ASCII.

Verification order: shape → key id → MAC (constant-time compare) → claims → time window. The
claims are parsed only once the MAC has proved who wrote them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated

import msgspec
from msgspec import Meta

from hopcast.durations import SECOND
from hopcast.errors import ConfigError, InvalidInput
from hopcast.errors import TokenError as TokenError  # re-exported: part of this API
from hopcast.live.messages import MAX_CHANNELS, MAX_NAME_CHARS, MAX_TOKEN_CHARS

#: The format's version tag, first in every token; a new format gets a new tag.
TOKEN_VERSION = "hc1"
#: Key id used when the caller names none (a deployment with a single secret).
DEFAULT_KEY_ID = "k0"
#: Shortest accepted secret: HMAC-SHA256's key should be at least its 32-byte output to keep
#: its full strength (RFC 2104 §3).
MIN_SECRET_BYTES = 32
#: Clock difference tolerated between the issuer and the gateway when checking ``nbf`` and
#: ``exp``; NTP keeps hosts within milliseconds, 30 s covers a badly synced one.
DEFAULT_LEEWAY_US = 30 * SECOND

#: Longest token lifetime (``exp - nbf``) that :func:`issue` makes and :func:`verify` accepts.
#: A revocation is kept :data:`hopcast.live.revocation.DEFAULT_RETENTION_US` (7 days) and then
#: pruned, so a token outliving that would be accepted again once its revocation is gone;
#: devices refresh their token on an open connection long before this.
MAX_TTL_US = 7 * 24 * 3600 * SECOND
#: Random bytes in a default token id: 96 bits make a collision among billions of tokens
#: negligible, in 16 base64url characters.
TOKEN_ID_BYTES = 12

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_TOKEN_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_NAME_CHARS}}}")
# The MAC's 32 bytes are 43 unpadded base64url characters.
_TOKEN = re.compile(r"hc1\.([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})")


class TokenProblem(enum.StrEnum):
    """Why a token was refused (:attr:`TokenError.problem`)."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    #: Verified, but revoked by id or subject (raised by the gateway, not by :func:`verify`).
    REVOKED = "revoked"
    #: Verified, but a fresh token on an open connection names another subject than the
    #: connection's (raised by the gateway): a token swap, not a garbled token.
    WRONG_SUBJECT = "wrong_subject"


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says.

    Attributes:
        device: the device id the token was issued to.
        scopes: channel names or ``prefix*`` patterns the device may subscribe to.
        issued_at, not_before, expires_at: µs since the Unix epoch.
        key_id: the id of the secret that signed it.
        token_id: the ``jti`` claim, or ``None`` for a token issued without one.
    """

    device: str
    scopes: tuple[str, ...]
    issued_at: int
    not_before: int
    expires_at: int
    key_id: str
    token_id: str | None = None

    def allows(self, channel: str) -> bool:
        """Whether a scope names ``channel`` exactly or is a ``prefix*`` it starts with."""
        for scope in self.scopes:
            if scope == channel or (scope.endswith("*") and channel.startswith(scope[:-1])):
                return True
        return False


_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]


class _Payload(msgspec.Struct, frozen=True, omit_defaults=True):
    sub: _Name
    ch: Annotated[tuple[_Name, ...], Meta(max_length=MAX_CHANNELS)]
    iat: int
    nbf: int
    exp: int
    jti: Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)] | None = None


_encode_payload = msgspec.json.Encoder().encode
_decode_payload = msgspec.json.Decoder(_Payload).decode


def issue(
    secret: bytes,
    device_id: str,
    scopes: Iterable[str],
    now: int,
    ttl_us: int,
    *,
    key_id: str = DEFAULT_KEY_ID,
    not_before: int | None = None,
    token_id: str | None = None,
) -> str:
    """Issue a token for ``device_id`` allowing ``scopes``, valid from ``now`` for ``ttl_us``.

    Args:
        secret: the signing secret, at least :data:`MIN_SECRET_BYTES` bytes.
        device_id: the device, 1 to ``MAX_NAME_CHARS`` characters.
        scopes: channel names or ``prefix*`` patterns, 1 to ``MAX_CHANNELS`` of them.
        now: the issue time, µs since the epoch.
        ttl_us: how long the token stays valid, 0 < ttl_us <= :data:`MAX_TTL_US`.
        key_id: the secret's id, ``[A-Za-z0-9_-]{1,32}``; verifiers look the secret up by it.
        not_before: when the token becomes valid (default ``now``).
        token_id: the ``jti`` claim, ``[A-Za-z0-9_-]{1,128}`` (default: 96 random bits,
            :func:`secrets.token_urlsafe`), for revocation by id.

    Returns:
        The token, URL-safe ASCII, at most ``MAX_TOKEN_CHARS`` characters.

    Raises:
        ConfigError: the secret is too short or the key id malformed.
        InvalidInput: the device id, a scope or the ttl is invalid.
    """
    _check_secret(secret, key_id)
    if not _KEY_ID.fullmatch(key_id):
        raise ConfigError(f"key id must match [A-Za-z0-9_-]{{1,32}}: {key_id!r}")
    if not 1 <= len(device_id) <= MAX_NAME_CHARS:
        raise InvalidInput(f"device id must have 1 to {MAX_NAME_CHARS} characters")
    scope_list = tuple(scopes)
    if not 1 <= len(scope_list) <= MAX_CHANNELS:
        raise InvalidInput(f"a token needs 1 to {MAX_CHANNELS} scopes, got {len(scope_list)}")
    for scope in scope_list:
        if not 1 <= len(scope) <= MAX_NAME_CHARS or "*" in scope[:-1]:
            raise InvalidInput(
                f"scope {scope!r}: a channel name of 1 to {MAX_NAME_CHARS} characters, "
                "with '*' allowed only at the end"
            )
    if not 0 < ttl_us <= MAX_TTL_US:
        raise InvalidInput(
            f"ttl must be positive and at most {MAX_TTL_US // SECOND} s (7 days: revocations "
            f"are kept that long), got {ttl_us} µs"
        )
    jti = new_token_id() if token_id is None else token_id
    if not _TOKEN_ID.fullmatch(jti):
        raise InvalidInput(f"token id must match [A-Za-z0-9_-]{{1,{MAX_NAME_CHARS}}}: {jti!r}")
    start = now if not_before is None else not_before
    payload = _Payload(
        sub=device_id, ch=scope_list, iat=now, nbf=start, exp=start + ttl_us, jti=jti
    )
    signing_input = f"{TOKEN_VERSION}.{key_id}.{_b64(_encode_payload(payload))}"
    token = f"{signing_input}.{_mac(secret, signing_input)}"
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidInput(f"token would be {len(token)} characters (limit {MAX_TOKEN_CHARS})")
    return token


def verify(
    keys: bytes | Mapping[str, bytes],
    token: str,
    now: int,
    *,
    leeway_us: int = DEFAULT_LEEWAY_US,
) -> Claims:
    """Check a token's signature and validity window and return its claims.

    Steps: 1. shape; 2. key id in ``keys``; 3. MAC, compared in constant time; 4. claims;
    5. ``not_before - leeway <= now < expires_at + leeway``, and a lifetime
    (``expires_at - not_before``) of at most :data:`MAX_TTL_US`, so no token outlives the
    revocation that names it.

    Args:
        keys: key id → secret (the keyring; several during a rotation), or one secret, taken
            as the :data:`DEFAULT_KEY_ID` key.
        token: the token as received.
        now: the current time, µs since the epoch.
        leeway_us: clock difference tolerated at both ends of the window.

    Returns:
        The verified claims.

    Raises:
        TokenError: ``malformed`` (also a lifetime over :data:`MAX_TTL_US`), ``unknown_key``,
            ``bad_signature``, ``expired`` or ``not_yet_valid``.
        ConfigError: a secret in ``keys`` is too short.
    """
    keyring = {DEFAULT_KEY_ID: keys} if isinstance(keys, bytes) else keys
    # 1. Shape.
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(TokenProblem.MALFORMED, f"longer than {MAX_TOKEN_CHARS} characters")
    match = _TOKEN.fullmatch(token) if token.isascii() else None
    if match is None:
        raise TokenError(TokenProblem.MALFORMED, f"not of the form {TOKEN_VERSION}.kid.claims.mac")
    key_id, claims_b64, mac = match.groups()
    # 2. Key id.
    secret = keyring.get(key_id)
    if secret is None:
        raise TokenError(TokenProblem.UNKNOWN_KEY, f"no key with id {key_id!r}")
    _check_secret(secret, key_id)
    # 3. MAC.
    signing_input = token[: -len(mac) - 1]
    if not hmac.compare_digest(_mac(secret, signing_input), mac):
        raise TokenError(TokenProblem.BAD_SIGNATURE, "the MAC does not match")
    # 4. Claims.
    try:
        payload = _decode_payload(_unb64(claims_b64))
    except (binascii.Error, msgspec.DecodeError) as exc:
        raise TokenError(TokenProblem.MALFORMED, f"claims: {exc}") from None
    # 5. Validity window.
    if payload.exp - payload.nbf > MAX_TTL_US:
        raise TokenError(
            TokenProblem.MALFORMED,
            f"lifetime {payload.exp - payload.nbf} µs is over {MAX_TTL_US} µs (7 days)",
        )
    if now < payload.nbf - leeway_us:
        raise TokenError(TokenProblem.NOT_YET_VALID, f"valid from {payload.nbf}, now is {now}")
    if now >= payload.exp + leeway_us:
        raise TokenError(TokenProblem.EXPIRED, f"expired at {payload.exp}, now is {now}")
    return Claims(
        device=payload.sub,
        scopes=payload.ch,
        issued_at=payload.iat,
        not_before=payload.nbf,
        expires_at=payload.exp,
        key_id=key_id,
        token_id=payload.jti,
    )


def new_token_id() -> str:
    """A random token id (the ``jti`` :func:`issue` makes when given none), for an issuer that
    hands the id back with the token so it can be revoked by id."""
    return secrets.token_urlsafe(TOKEN_ID_BYTES)


def _check_secret(secret: bytes, key_id: str) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"token secret {key_id!r} is {len(secret)} bytes; use at least {MIN_SECRET_BYTES}"
        )


def _mac(secret: bytes, signing_input: str) -> str:
    return _b64(hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
