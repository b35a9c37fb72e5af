"""The scope table covers every served method and nothing dangerous is open."""

from __future__ import annotations

import pytest
from steward.gateway.v1 import gateway_pb2

from services.gateway.forwarding import FORWARDED_SERVICES, method_names
from services.gateway.policy import POLICIES, SCOPES, check_complete


def served_methods() -> list[str]:
    names = method_names(gateway_pb2.DESCRIPTOR.services_by_name["GatewayAdminService"])
    for service in FORWARDED_SERVICES:
        names.extend(method_names(service.descriptor))
    return names


def test_every_served_method_has_a_policy() -> None:
    check_complete(served_methods())


def test_a_method_without_policy_fails_start_up() -> None:
    with pytest.raises(RuntimeError, match=r"/x\.Y/Z"):
        check_complete([*served_methods(), "/x.Y/Z"])


def test_support_may_only_read_records() -> None:
    readable = sorted(m.rsplit("/", 1)[1] for m, p in POLICIES.items() if p.support_read)
    assert readable == ["GetRecord", "ListRecords", "ResolveSubject"]


def test_operators_never_touch_customer_records_without_a_grant() -> None:
    for method, policy in POLICIES.items():
        if method.startswith("/steward.vault.v1.VaultService/"):
            assert not policy.roles, method


def test_policies_use_only_known_scopes() -> None:
    for policy in POLICIES.values():
        assert policy.scopes <= SCOPES
