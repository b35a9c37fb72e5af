"""The dev IdP's device authorization grant (RFC 8628) on an injected clock: pending, slow_down, approval gives one
token, denial, expiry, and refusals of bad input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from services.chassis.clock import ManualClock
from services.devstack.devidp import DEVICE_CODE_TTL, DeviceFlow, ensure_dev_idp, verify_with_jwks


@pytest.fixture
def flow(tmp_path: Path) -> DeviceFlow:
    idp, _ = ensure_dev_idp(tmp_path / "idp")
    return DeviceFlow(idp, clock=ManualClock(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)), interval_s=5)


def test_pending_then_slow_down_then_one_token_after_approval(flow: DeviceFlow, tmp_path: Path) -> None:
    clock = flow.clock
    assert isinstance(clock, ManualClock)
    grant = flow.authorize("steward-cli")
    assert flow.poll(grant.device_code, "steward-cli") == (400, {"error": "authorization_pending"})
    assert flow.poll(grant.device_code, "steward-cli") == (400, {"error": "slow_down"})  # inside the interval
    clock.advance(5)
    assert flow.decide(grant.user_code, subject="oncall-1", roles=["ops:oncall"]) is None
    status, body = flow.poll(grant.device_code, "steward-cli")
    assert status == 200 and body["token_type"] == "Bearer"
    claims = verify_with_jwks(str(body["access_token"]), flow.idp.jwks_file, now=clock.now())
    assert claims["roles"] == ["ops:oncall"]
    assert flow.poll(grant.device_code, "steward-cli")[1]["error"] == "invalid_grant"  # used up


def test_denied_and_expired_codes(flow: DeviceFlow) -> None:
    clock = flow.clock
    assert isinstance(clock, ManualClock)
    denied = flow.authorize("steward-cli")
    assert flow.decide(denied.user_code, subject="x", roles=["ops:admin"], deny=True) is None
    assert flow.poll(denied.device_code, "steward-cli")[1]["error"] == "access_denied"
    late = flow.authorize("steward-cli")
    clock.advance(DEVICE_CODE_TTL.total_seconds())
    assert flow.poll(late.device_code, "steward-cli")[1]["error"] == "expired_token"
    assert flow.decide(late.user_code, subject="x", roles=["ops:admin"]) == "unknown or expired user code"


def test_bad_input_is_refused(flow: DeviceFlow) -> None:
    grant = flow.authorize("steward-cli")
    assert flow.poll(grant.device_code, "another-client")[1]["error"] == "invalid_grant"
    assert flow.poll("no-such-code", "steward-cli")[1]["error"] == "invalid_grant"
    assert "roles" in str(flow.decide(grant.user_code, subject="x", roles=["root"]))
    assert "roles" in str(flow.decide(grant.user_code, subject="x", roles=[]))
    assert "subject" in str(flow.decide(grant.user_code, subject="", roles=["ops:admin"]))
    assert flow.decide("BBBB-CCCC", subject="x", roles=["ops:admin"]) == "unknown or expired user code"
