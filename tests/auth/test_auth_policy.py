"""The policy decision: who passes, who gets 401 and who 403."""

from __future__ import annotations

import pytest

from hopcast.auth.keys import Principal
from hopcast.auth.policy import Allowed, Policy, Refused, decide
from hopcast.auth.roles import Role, granted

KEYS = {
    f"hck_{'0' * 11}{i}_{'A' * 43}": Principal(f"{'0' * 11}{i}", role.value, (role,))
    for i, role in enumerate(Role)
}
BY_ROLE = {p.roles[0]: key for key, p in KEYS.items()}
DEVICE_TOKEN = "hc1.k0.claims.mac"


def run(policy: Policy, credential: str | None) -> Allowed | Refused:
    return decide(policy, credential, KEYS.get, lambda t: "tv-1" if t == DEVICE_TOKEN else None)


def test_admin_implies_every_role_and_writer_and_operator_only_reader() -> None:
    assert granted([Role.ADMIN]) == set(Role)
    assert granted([Role.WRITER]) == {Role.WRITER, Role.READER}
    assert granted([Role.OPERATOR]) == {Role.OPERATOR, Role.READER}
    assert granted([Role.READER]) == {Role.READER}


@pytest.mark.parametrize("needed", list(Role))
@pytest.mark.parametrize("held", list(Role))
def test_a_key_passes_exactly_when_its_role_implies_the_needed_one(
    needed: Role, held: Role
) -> None:
    verdict = run(Policy(needed), BY_ROLE[held])
    if needed in granted([held]):
        assert verdict == Allowed(KEYS[BY_ROLE[held]])
    else:
        assert isinstance(verdict, Refused) and verdict.status == 403
        assert verdict.error == "forbidden"


@pytest.mark.parametrize("credential", [None, "", "garbage", f"hck_{'f' * 12}_{'B' * 43}"])
def test_no_credential_or_an_unknown_one_is_a_401(credential: str | None) -> None:
    verdict = run(Policy(Role.READER, device=True), credential)
    assert isinstance(verdict, Refused) and (verdict.status, verdict.error) == (
        401,
        "unauthorized",
    )


@pytest.mark.parametrize("role", list(Role))
def test_a_device_token_never_passes_for_a_role(role: Role) -> None:
    verdict = run(Policy(role), DEVICE_TOKEN)
    assert isinstance(verdict, Refused) and verdict.status == 403


def test_a_device_token_passes_where_devices_may_call() -> None:
    assert run(Policy(Role.READER, device=True), DEVICE_TOKEN) == Allowed(device="tv-1")


def test_a_public_route_takes_anyone() -> None:
    assert run(Policy(None, reason="holds no data"), None) == Allowed()


def test_a_public_policy_must_say_why_and_buckets_are_known() -> None:
    with pytest.raises(ValueError, match="reason"):
        Policy(None)
    with pytest.raises(ValueError, match="bucket"):
        Policy(Role.WRITER, limit="everything")
