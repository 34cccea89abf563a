"""Device tokens: the documented format, forgery and time checks, key rotation, input checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from hopcast.durations import HOUR, SECOND
from hopcast.errors import ConfigError, InvalidInput
from hopcast.live import tokens as t
from hopcast.live.messages import MAX_CHANNELS, MAX_NAME_CHARS
from hopcast.live.tokens import TokenError, TokenProblem

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
NOW = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
SCOPES = ("global", "event:*")

# Golden vector: another platform's issuer must produce exactly this token for these inputs
# (token id TOKEN_ID).
TOKEN_ID = "Xc0-ZQx9_aB3kL7m"
GOLDEN_TOKEN = (
    "hc1.k0.eyJzdWIiOiJ0di00MiIsImNoIjpbImdsb2JhbCIsImV2ZW50OioiXSwiaWF0IjoxNzY3MjI1NjAwMDAwMDAwL"
    "CJuYmYiOjE3NjcyMjU2MDAwMDAwMDAsImV4cCI6MTc2NzIyOTIwMDAwMDAwMCwianRpIjoiWGMwLVpReDlfYUIza0w3bS"
    "J9.hDPlVFEhpkHHvQYBZyj1c8qetqFLZbpStGb8ySqq0cw"
)
# A token issued before the ``jti`` claim existed (same inputs): it still verifies.
LEGACY_TOKEN = (
    "hc1.k0.eyJzdWIiOiJ0di00MiIsImNoIjpbImdsb2JhbCIsImV2ZW50OioiXSwiaWF0IjoxNzY3MjI1NjAwMDAwMDAwL"
    "CJuYmYiOjE3NjcyMjU2MDAwMDAwMDAsImV4cCI6MTc2NzIyOTIwMDAwMDAwMH0.u8m7F9GlNNIxULI4VfgfV-nQHUxJH"
    "HVAD0A0MbdisXo"
)


def _issue(**kwargs: object) -> str:
    args: dict[str, object] = {
        "secret": SECRET,
        "device_id": "tv-42",
        "scopes": SCOPES,
        "now": NOW,
        "ttl_us": HOUR,
    }
    args.update(kwargs)
    return t.issue(**args)  # type: ignore[arg-type]


def _refused(keys: bytes | dict[str, bytes], token: str, now: int = NOW) -> TokenProblem:
    with pytest.raises(TokenError) as info:
        t.verify(keys, token, now, leeway_us=0)
    return info.value.problem


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- format --------------------------------------------------------------------------------


def test_issue_produces_the_golden_token() -> None:
    assert _issue(token_id=TOKEN_ID) == GOLDEN_TOKEN


def test_a_token_without_a_token_id_still_verifies_with_none_as_its_id() -> None:
    claims = t.verify(SECRET, LEGACY_TOKEN, NOW)
    assert (claims.device, claims.token_id) == ("tv-42", None)
    assert t.verify(SECRET, GOLDEN_TOKEN, NOW).token_id == TOKEN_ID


def test_every_issued_token_gets_a_distinct_random_id() -> None:
    ids = {t.verify(SECRET, _issue(), NOW).token_id for _ in range(50)}
    assert len(ids) == 50 and all(i is not None and len(i) == 16 for i in ids)


def test_a_malformed_token_id_is_refused_at_issue() -> None:
    with pytest.raises(InvalidInput, match="token id"):
        _issue(token_id="has space")


def test_the_token_is_version_key_id_claims_and_an_hmac_of_what_precedes_it() -> None:
    version, key_id, claims, mac = GOLDEN_TOKEN.split(".")
    assert (version, key_id) == ("hc1", "k0")
    assert json.loads(_unb64(claims)) == {
        "sub": "tv-42",
        "ch": ["global", "event:*"],
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + HOUR,
        "jti": TOKEN_ID,
    }
    expected = hmac.new(SECRET, f"hc1.k0.{claims}".encode(), hashlib.sha256).digest()
    assert _unb64(mac) == expected
    assert "=" not in GOLDEN_TOKEN
    assert all(c.isalnum() or c in "-_." for c in GOLDEN_TOKEN)


def test_verify_returns_the_claims_of_a_valid_token() -> None:
    assert t.verify(SECRET, GOLDEN_TOKEN, NOW) == t.Claims(
        device="tv-42",
        scopes=SCOPES,
        issued_at=NOW,
        not_before=NOW,
        expires_at=NOW + HOUR,
        key_id="k0",
        token_id=TOKEN_ID,
    )


# -- forgery -------------------------------------------------------------------------------


def test_a_token_with_edited_claims_is_refused_as_a_bad_signature() -> None:
    version, key_id, claims, mac = GOLDEN_TOKEN.split(".")
    edited = json.loads(_unb64(claims)) | {"ch": ["*"]}
    forged = ".".join([version, key_id, _b64(json.dumps(edited).encode()), mac])
    assert _refused(SECRET, forged) is TokenProblem.BAD_SIGNATURE


def test_a_token_with_an_edited_mac_is_refused() -> None:
    last = GOLDEN_TOKEN[-1]
    forged = GOLDEN_TOKEN[:-1] + ("A" if last != "A" else "B")
    assert _refused(SECRET, forged) is TokenProblem.BAD_SIGNATURE


def test_a_token_signed_with_another_secret_is_refused() -> None:
    assert _refused(SECRET, _issue(secret=OTHER_SECRET)) is TokenProblem.BAD_SIGNATURE


def test_a_token_whose_key_id_was_swapped_is_refused() -> None:
    forged = GOLDEN_TOKEN.replace("hc1.k0.", "hc1.k1.", 1)
    keys = {"k0": SECRET, "k1": OTHER_SECRET}
    assert _refused(keys, forged) is TokenProblem.BAD_SIGNATURE


def test_signed_claims_that_are_not_valid_json_are_malformed() -> None:
    signing_input = "hc1.k0." + _b64(b'{"sub": 1}')
    mac = _b64(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())
    assert _refused(SECRET, f"{signing_input}.{mac}") is TokenProblem.MALFORMED


def test_a_validly_signed_token_that_lives_longer_than_a_revocation_is_kept_is_refused() -> None:
    """Revocations are pruned after 7 days; a token signed (by another issuer with the same
    secret) to live longer would be accepted again afterwards, so verify refuses it."""
    claims = {"sub": "tv-42", "ch": ["global"], "iat": NOW, "nbf": NOW, "exp": NOW}
    for lifetime, accepted in ((t.MAX_TTL_US, True), (t.MAX_TTL_US + 1, False)):
        claims["exp"] = NOW + lifetime
        signing_input = "hc1.k0." + _b64(json.dumps(claims).encode())
        mac = _b64(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())
        token = f"{signing_input}.{mac}"
        if accepted:
            assert t.verify(SECRET, token, NOW + 1).expires_at == NOW + lifetime
        else:
            with pytest.raises(TokenError, match="over 604800000000 µs") as info:
                t.verify(SECRET, token, NOW + 1)
            assert info.value.problem is TokenProblem.MALFORMED


@pytest.mark.parametrize(
    "token",
    [
        "",
        "hello",
        "hc1.k0.claims",
        GOLDEN_TOKEN.replace("hc1.", "hc2.", 1),
        GOLDEN_TOKEN + ".extra",
        GOLDEN_TOKEN[:-1],
        GOLDEN_TOKEN.replace("k0", "k é", 1),
        GOLDEN_TOKEN.replace("k0", "k+0", 1),
        "hc1.k0." + "A" * 5000 + ".mac",
    ],
    ids=[
        "empty",
        "word",
        "three-parts",
        "version",
        "five-parts",
        "short-mac",
        "non-ascii",
        "bad-char",
        "too-long",
    ],
)
def test_a_token_of_the_wrong_shape_is_malformed(token: str) -> None:
    assert _refused(SECRET, token) is TokenProblem.MALFORMED


def test_token_errors_are_invalid_input_and_say_why() -> None:
    with pytest.raises(InvalidInput, match=r"token refused \(bad_signature\)"):
        t.verify(OTHER_SECRET, GOLDEN_TOKEN, NOW)


# -- time window -------------------------------------------------------------------------------


def test_a_token_is_valid_until_the_microsecond_before_it_expires() -> None:
    assert t.verify(SECRET, GOLDEN_TOKEN, NOW + HOUR - 1, leeway_us=0).device == "tv-42"
    assert _refused(SECRET, GOLDEN_TOKEN, NOW + HOUR) is TokenProblem.EXPIRED


def test_a_token_is_not_valid_before_its_not_before_time() -> None:
    token = _issue(not_before=NOW + HOUR)
    assert _refused(SECRET, token, NOW + HOUR - 1) is TokenProblem.NOT_YET_VALID
    claims = t.verify(SECRET, token, NOW + HOUR, leeway_us=0)
    assert (claims.not_before, claims.expires_at) == (NOW + HOUR, NOW + 2 * HOUR)


def test_the_leeway_tolerates_clock_difference_at_both_ends() -> None:
    leeway = 30 * SECOND
    assert t.verify(SECRET, GOLDEN_TOKEN, NOW - leeway, leeway_us=leeway).device == "tv-42"
    assert t.verify(SECRET, GOLDEN_TOKEN, NOW + HOUR + leeway - 1, leeway_us=leeway)
    with pytest.raises(TokenError, match="expired"):
        t.verify(SECRET, GOLDEN_TOKEN, NOW + HOUR + leeway, leeway_us=leeway)
    with pytest.raises(TokenError, match="not_yet_valid"):
        t.verify(SECRET, GOLDEN_TOKEN, NOW - leeway - 1, leeway_us=leeway)


# -- key rotation --------------------------------------------------------------------------------


def test_during_a_rotation_tokens_of_both_keys_verify_with_the_right_one() -> None:
    old = _issue(key_id="2025-12")
    new = _issue(key_id="2026-01", secret=OTHER_SECRET)
    keyring = {"2025-12": SECRET, "2026-01": OTHER_SECRET}
    assert t.verify(keyring, old, NOW).key_id == "2025-12"
    assert t.verify(keyring, new, NOW).key_id == "2026-01"


def test_once_the_old_key_is_dropped_its_tokens_name_an_unknown_key() -> None:
    old = _issue(key_id="2025-12")
    assert _refused({"2026-01": OTHER_SECRET}, old) is TokenProblem.UNKNOWN_KEY


def test_a_single_secret_is_the_default_key() -> None:
    assert _refused(SECRET, _issue(key_id="other")) is TokenProblem.UNKNOWN_KEY


# -- scopes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "channel", "allowed"),
    [
        (("global",), "global", True),
        (("global",), "global2", False),
        (("event:*",), "event:finale", True),
        (("event:*",), "event:", True),
        (("event:*",), "events", False),
        (("*",), "anything", True),
        (("region:eu", "event:*"), "region:us", False),
    ],
)
def test_claims_allow_exact_channels_and_prefix_scopes(
    scopes: tuple[str, ...], channel: str, allowed: bool
) -> None:
    claims = t.verify(SECRET, _issue(scopes=scopes), NOW)
    assert claims.allows(channel) is allowed


# -- issuing -----------------------------------------------------------------------------------


def test_a_secret_shorter_than_32_bytes_is_a_config_error_on_both_sides() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        _issue(secret=b"short")
    with pytest.raises(ConfigError, match="at least 32"):
        t.verify({"k0": b"short"}, GOLDEN_TOKEN, NOW)


def test_a_key_id_outside_the_url_safe_alphabet_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="key id"):
        _issue(key_id="has.dot")


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"device_id": ""}, "device id"),
        ({"device_id": "d" * (MAX_NAME_CHARS + 1)}, "device id"),
        ({"scopes": ()}, "1 to 64 scopes"),
        ({"scopes": [f"c{i}" for i in range(MAX_CHANNELS + 1)]}, "1 to 64 scopes"),
        ({"scopes": ["ev*nt"]}, "'*' allowed only at the end"),
        ({"scopes": [""]}, "scope ''"),
        ({"ttl_us": 0}, "ttl must be positive"),
        ({"ttl_us": t.MAX_TTL_US + 1}, "at most 604800 s"),
        ({"scopes": ["c" * (MAX_NAME_CHARS - 3) + f"{i:03}" for i in range(64)]}, "limit 4096"),
    ],
)
def test_issue_refuses_invalid_arguments(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidInput, match=says.replace("*", r"\*")):
        _issue(**kwargs)
