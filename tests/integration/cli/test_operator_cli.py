"""The operator side of the local stack, end to end: `steward run` prints a demo API key and an operator
token that work, and the operator commands drive the real gateway (and through it the real vault and
OpenBao) with them. Every command runs as a real `python -m services.cli.main` subprocess.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.devstack.catalog import SERVICES, installed
from services.devstack.devidp import AUDIENCE, ISSUER, ensure_dev_idp, load_dev_idp
from tests.integration.cli.launcher import Launcher, run_cli

pytestmark = pytest.mark.skipif(
    not all(installed(entry) for entry in SERVICES if entry.name in ("gateway", "vault")),
    reason="needs services/gateway and services/vault",
)

SKIP_OTHERS = tuple(f"--skip={entry.name}" for entry in SERVICES if entry.name not in ("gateway", "vault"))


@dataclass
class Stack:
    """A running stack and how to call it."""

    launcher: Launcher
    home: Path
    summary: dict[str, Any]

    def cli(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = [f"--token={token}"] if token is not None else []
        return run_cli(*args, f"--home={self.home}", *extra)

    def cli_json(self, *args: str, token: str | None = None) -> dict[str, Any]:
        result = self.cli(*args, "--json", token=token)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def vault(self) -> tuple[grpc.Channel, vault_pb2_grpc.VaultServiceStub]:
        """A TLS channel to the gateway, trusting the dev CA, with the vault's stub (the gateway forwards)."""
        credentials = grpc.ssl_channel_credentials(Path(self.summary["ca_file"]).read_bytes())
        channel = grpc.secure_channel(self.summary["services"]["gateway"]["address"], credentials)
        return channel, vault_pb2_grpc.VaultServiceStub(channel)  # type: ignore[no-untyped-call]


def start_stack(home: Path, log: Path, extra_args: tuple[str, ...] = SKIP_OTHERS) -> tuple[Launcher, dict[str, Any]]:
    launcher = Launcher(home=home, log_file=log, extra_args=extra_args)
    try:
        return launcher, launcher.start()
    except BaseException:
        launcher.kill_everything()
        raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the tests that only add things to it (each uses its own tenant where it matters)."""
    folder = tmp_path_factory.mktemp("operator-cli")
    launcher, summary = start_stack(folder / "home", folder / "run.log")
    yield Stack(launcher, folder / "home", summary)
    launcher.kill_everything()


def note(text: str) -> Struct:
    data = Struct()
    data.update({"text": text})
    return data


def put_note(stub: vault_pb2_grpc.VaultServiceStub, api_key: str, text: str) -> str:
    record = vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE, data=note(text))
    response = stub.PutRecord(
        vault_pb2.PutRecordRequest(record=record), metadata=[("authorization", f"Bearer {api_key}")], timeout=30
    )
    return str(response.record.id)


def read_note(stub: vault_pb2_grpc.VaultServiceStub, api_key: str, record_id: str) -> str:
    response = stub.GetRecord(
        vault_pb2.GetRecordRequest(record_id=record_id), metadata=[("authorization", f"Bearer {api_key}")], timeout=30
    )
    return str(response.record.data["text"])


def call_code(fn: Any, *args: Any) -> grpc.StatusCode:
    try:
        fn(*args)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return, attr-defined]
    return grpc.StatusCode.OK


# The documented exit codes (steward --help): 1 refused for good, 4 unauthenticated or denied.
EXIT_FOR = {"INVALID_ARGUMENT": 1, "NOT_FOUND": 1, "UNAUTHENTICATED": 4, "PERMISSION_DENIED": 4}


def one_line_error(result: subprocess.CompletedProcess[str], code: str) -> str:
    """The command failed with the exit code documented for ``code`` and exactly one stderr line,
    ``steward: CODE[ REASON]: message``; returns that line."""
    assert result.returncode == EXIT_FOR[code], (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.match(rf"steward: {code}( [A-Z][A-Z0-9_]*)?: ", lines[0]), lines[0]
    return lines[0]


def new_tenant(stack: Stack, company: str) -> str:
    created = stack.cli_json(
        "tenant", "create", f"--company={company}", "--rep-name=Ravi Menon", "--rep-email=ravi@example.org"
    )
    return str(created["tenant"]["tenant_id"])


# ----------------------------------------------------------------------------------------- steward run


def test_run_prints_a_demo_api_key_that_writes_and_reads_records_and_a_working_operator_token(stack: Stack) -> None:
    demo = stack.summary["demo"]
    assert demo["company_name"] == "Demo CRM Client"
    assert demo["api_key"].startswith("stw_live_")
    assert "records:write" in demo["scopes"] and "keys:manage" not in demo["scopes"]
    assert stack.summary["demo_problem"] is None

    channel, vault = stack.vault()
    with channel:
        record_id = put_note(vault, demo["api_key"], "first contact went well")
        assert read_note(vault, demo["api_key"], record_id) == "first contact went well"

    token = stack.summary["operator_token"]
    assert stack.summary["operator_roles"] == ["ops:admin"]
    expires = dt.datetime.fromisoformat(stack.summary["operator_token_expires_at"])
    assert dt.timedelta(hours=11) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=12)
    me = stack.cli_json("whoami", token=token)["whoami"]
    assert me["principal"] == "operator:local-admin" and me["roles"] == ["ops:admin"]
    assert stack.cli_json("whoami")["whoami"]["credential_id"] == me["credential_id"], "default: idp/operator.jwt"

    idp = stack.home / "idp"
    for secret in (idp / "signing-key.pem", idp / "operator.jwt", stack.home / "demo.json"):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    assert (idp / "operator.jwt").read_text().strip() == token
    assert json.loads((stack.home / "demo.json").read_text())["api_key"] == demo["api_key"]
    run_json = (stack.home / "run.json").read_text()
    assert demo["api_key"] not in run_json and token not in run_json, "run.json holds paths, never secrets"
    assert "dev-only operator sign-in" in stack.launcher.log_text()


def test_doctor_reports_the_operator_token(stack: Stack) -> None:
    result = run_cli("doctor", f"--home={stack.home}", "--json")
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    assert result.returncode == 0, checks
    assert checks["operator-token"]["status"] == "ok"
    assert "ops:admin as local-admin" in checks["operator-token"]["detail"]


def test_restart_prints_the_same_demo_key_and_a_fresh_token_and_steward_demo_replaces_a_revoked_key(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    first, summary = start_stack(home, tmp_path / "first.log")
    try:
        assert "created demo tenant" in first.log_text()
        assert first.stop(signal.SIGTERM) == 0
    finally:
        first.kill_everything()
    again, summary_again = start_stack(home, tmp_path / "second.log")
    stack = Stack(again, home, summary_again)
    try:
        assert summary_again["demo"] == summary["demo"], "a later start prints the stored key again"
        assert summary_again["operator_token"] != summary["operator_token"], "a fresh token on every start"
        assert "created demo tenant" not in again.log_text() and "issued demo API key" not in again.log_text()
        old_key = summary["demo"]["api_key"]
        channel, vault = stack.vault()
        with channel:
            record_id = put_note(vault, old_key, "kept across restarts")

            revoked = stack.cli_json("apikey", "revoke", summary["demo"]["key_id"])["api_key"]
            assert revoked["state"] == "API_KEY_STATE_REVOKED"
            repaired = stack.cli_json("demo")["demo"]
            assert repaired["tenant_id"] == summary["demo"]["tenant_id"], "the tenant is kept"
            assert repaired["api_key"] != old_key
            assert json.loads((home / "demo.json").read_text())["api_key"] == repaired["api_key"]
            assert call_code(put_note, vault, old_key, "x") == grpc.StatusCode.UNAUTHENTICATED
            assert read_note(vault, repaired["api_key"], record_id) == "kept across restarts"
        assert stack.cli_json("demo")["demo"] == repaired, "steward demo is idempotent"
    finally:
        again.kill_everything()


def test_format_summary_shows_the_demo_key_and_the_dev_operator_token(stack: Stack) -> None:
    from services.cli.state import StackState
    from services.devstack.demo import DemoCredentials
    from services.devstack.stack import LocalCredentials, format_summary

    state = StackState.read(stack.home / "run.json")
    assert state is not None
    idp = load_dev_idp(stack.home / "idp")
    issued = idp.mint()
    demo = DemoCredentials(tenant_id="tnt_x", key_id="k", api_key="stw_live_k_secret")
    text = format_summary(state, LocalCredentials(operator_token=issued, demo=demo, demo_file=stack.home / "demo.json"))
    assert "API key stw_live_k_secret" in text and "tenant tnt_x (Demo CRM Client)" in text
    assert issued.token in text and "DEV-ONLY" in text


# ------------------------------------------------------------------------------------- tenant + apikey


def test_tenant_create_and_apikey_create_give_a_key_that_works_only_for_its_tenant(stack: Stack) -> None:
    tenant_id = new_tenant(stack, "Kiran Exports")
    shown = stack.cli_json("tenant", "get", tenant_id)["tenant"]
    assert shown["details"]["company_name"] == "Kiran Exports"
    assert shown["state"] == "TENANT_STATE_ACTIVE"

    created = stack.cli_json(
        "apikey", "create", f"--tenant={tenant_id}", "--name=crm sync", "--scope=records:read", "--scope=records:write"
    )
    key = created["token"]
    assert created["api_key"]["tenant_id"] == tenant_id
    assert sorted(created["api_key"]["scopes"]) == ["records:read", "records:write"]
    listed = stack.cli_json("apikey", "list", f"--tenant={tenant_id}")["api_keys"]
    assert [k["key_id"] for k in listed] == [created["api_key"]["key_id"]]
    assert key not in json.dumps(listed), "the secret is shown once"

    channel, vault = stack.vault()
    with channel:
        record_id = put_note(vault, key, "pipeline review on Monday")
        assert read_note(vault, key, record_id) == "pipeline review on Monday"
        demo_key = stack.summary["demo"]["api_key"]
        assert call_code(read_note, vault, demo_key, record_id) == grpc.StatusCode.NOT_FOUND, "tenant isolation"

        rotated = stack.cli_json("apikey", "rotate", created["api_key"]["key_id"])
        assert rotated["previous"]["state"] == "API_KEY_STATE_REVOKED", "no --grace: the old key stops at once"
        assert rotated["api_key"]["rotated_from"] == created["api_key"]["key_id"]
        assert read_note(vault, rotated["token"], record_id) == "pipeline review on Monday"
        assert call_code(read_note, vault, key, record_id) == grpc.StatusCode.UNAUTHENTICATED
        one_line_error(stack.cli("whoami", token=key), "UNAUTHENTICATED")  # a revoked key: exit 4

    text = stack.cli("apikey", "list", f"--tenant={tenant_id}", "--all")
    assert text.returncode == 0 and "revoked" in text.stdout and "active" in text.stdout

    closed = stack.cli_json("tenant", "close", tenant_id, "--yes")["tenant"]
    assert closed["state"] == "TENANT_STATE_CLOSED"
    unconfirmed = run_cli("tenant", "close", tenant_id, f"--home={stack.home}")
    assert unconfirmed.returncode != 0, "closing asks first; no input means no"


def test_bad_input_gets_the_gateway_status_in_one_line_and_nothing_is_created(stack: Stack) -> None:
    bad_email = stack.cli(
        "tenant", "create", "--company=Bad Email Ltd", "--rep-name=Someone", "--rep-email=not-an-email"
    )
    line = one_line_error(bad_email, "INVALID_ARGUMENT")
    assert "email" in line and "not-an-email" not in line, "the message names the field, not the value"

    not_found = stack.cli("tenant", "get", "tnt_00000000000000000000000000000000", "--json")
    assert not_found.returncode == 1, "NOT_FOUND is a permanent refusal"
    error = json.loads(not_found.stdout)["error"]
    assert (error["code"], error["message"]) == ("NOT_FOUND", "no such tenant: check tenant_id")
    assert isinstance(error["reason"], str) and isinstance(error["metadata"], dict)

    one_line_error(stack.cli("apikey", "revoke", "0000000000000000"), "NOT_FOUND")
    one_line_error(stack.cli("keys", "rotate", "--tenant=tnt_nope"), "NOT_FOUND")
    tenant_id = stack.summary["demo"]["tenant_id"]
    one_line_error(
        stack.cli(
            "support", "grant", f"--tenant={tenant_id}", "--principal=sam", "--reason=too short", "--ticket=INC-1"
        ),
        "INVALID_ARGUMENT",
    )
    assert stack.cli_json("support", "list", f"--tenant={tenant_id}", "--all")["grants"] == []

    usage = stack.cli("apikey", "create", f"--tenant={tenant_id}", "--name=x", "--scope=records:read", "--ttl=soon")
    assert usage.returncode == 2 and "not a duration" in usage.stderr
    unknown_scope = stack.cli("apikey", "create", f"--tenant={tenant_id}", "--name=x", "--scope=records:everything")
    assert unknown_scope.returncode == 2
    assert [k["key_id"] for k in stack.cli_json("apikey", "list", f"--tenant={tenant_id}")["api_keys"]] == [
        stack.summary["demo"]["key_id"]
    ], "no key was created by the refused calls"


# ------------------------------------------------------------------------------------------------ keys


def test_keys_rotate_then_rewrap_completes_and_every_record_stays_readable(stack: Stack) -> None:
    tenant_id = new_tenant(stack, "Rotation Drill Pvt")
    key = stack.cli_json(
        "apikey", "create", f"--tenant={tenant_id}", "--name=app", "--scope=records:read", "--scope=records:write"
    )["token"]
    channel, vault = stack.vault()
    with channel:
        before = [put_note(vault, key, f"note {n}") for n in range(3)]

        assert stack.cli_json("keys", "rotate", f"--tenant={tenant_id}")["key_version"] == 2
        after_rotation = put_note(vault, key, "written under v2")
        progress = stack.cli("keys", "rewrap", f"--tenant={tenant_id}", "--batch-size=1")
        assert progress.returncode == 0, progress.stderr
        assert "rewrapped" in progress.stdout and "versions below 2 can no longer decrypt" in progress.stdout

        for n, record_id in enumerate(before):
            assert read_note(vault, key, record_id) == f"note {n}"
        assert read_note(vault, key, after_rotation) == "written under v2"

    status = stack.cli_json("keys", "status", f"--tenant={tenant_id}")["tenant"]
    assert (status["key_version"], status["min_decryption_version"]) == ("2", "2")
    again = stack.cli_json("keys", "rewrap", f"--tenant={tenant_id}")
    assert again["rewrapped"] == again["total"] == 0 and again["min_decryption_version"] == 2

    actions = [event["action"] for event in stack.cli_json("audit", "list", f"--tenant={tenant_id}", "--all")["events"]]
    assert actions.index("key.rotate") < actions.index("key.rewrap.start") < actions.index("key.rewrap.done")
    verified = stack.cli_json("audit", "verify", f"--tenant={tenant_id}")
    assert verified["intact"] is True and verified["entries_checked"] >= len(actions)


def test_keys_rotate_all_tenants_rotates_and_rewraps_each_with_progress_and_names_a_failure(
    stack: Stack, tmp_path: Path
) -> None:
    tenants = [new_tenant(stack, f"Compromise Drill {n} Pvt") for n in range(2)]
    key = stack.cli_json("apikey", "create", f"--tenant={tenants[0]}", "--name=app", "--scope=records:write")["token"]
    channel, vault = stack.vault()
    with channel:
        put_note(vault, key, "stored before the compromise")
    listed = tmp_path / "tenants.txt"
    listed.write_text(f"# every tenant\n{tenants[0]}\n\ntnt_nope\n{tenants[1]}\n{tenants[0]}\n")

    result = stack.cli("keys", "rotate", "--all-tenants", f"--tenants-file={listed}")
    assert result.returncode == 1, result.stderr  # one tenant failed: the others still went through
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"\[1/3\] {tenants[0]}: KEK version 2, rewrapped (\d+) of \1 DEKs", lines[0]), lines[0]
    assert lines[1].startswith("[2/3] tnt_nope: FAILED NOT_FOUND")
    assert re.fullmatch(rf"\[3/3\] {tenants[1]}: KEK version 2, rewrapped (\d+) of \1 DEKs", lines[2]), lines[2]
    assert lines[3] == "2 of 3 tenants rotated and rewrapped; failed (re-run for these): tnt_nope"
    assert "rewrapping DEKs" in result.stderr  # the progress bars
    for tenant in tenants:
        status = stack.cli_json("keys", "status", f"--tenant={tenant}")["tenant"]
        assert (status["key_version"], status["min_decryption_version"]) == ("2", "2")

    usage = stack.cli("keys", "rotate", "--all-tenants")
    assert usage.returncode == 2 and "--tenants-file" in usage.stderr


# --------------------------------------------------------------------------------------------- support


def test_support_grant_request_approve_list_and_revoke(stack: Stack) -> None:
    tenant_id = new_tenant(stack, "Support Drill Co")
    grant = stack.cli_json(
        "support",
        "grant",
        f"--tenant={tenant_id}",
        "--principal=sam",
        "--reason=sync job fails for this tenant since 09:00",
        "--ticket=INC-4711",
        "--duration=30m",
    )["grant"]
    assert grant["state"] == "SUPPORT_GRANT_STATE_ACTIVE" and grant["emergency"] is True
    assert grant["principal"] == "operator:sam" and grant["duration_seconds"] == "1800"

    listed = stack.cli_json("support", "list", f"--tenant={tenant_id}")["grants"]
    assert [g["grant_id"] for g in listed] == [grant["grant_id"]]
    assert stack.cli_json("support", "accesses", grant["grant_id"])["accesses"] == []

    revoked = stack.cli_json("support", "revoke", grant["grant_id"])["grant"]
    assert revoked["state"] == "SUPPORT_GRANT_STATE_REVOKED" and revoked["revoked_by"] == "operator:local-admin"
    assert stack.cli_json("support", "list", f"--tenant={tenant_id}")["grants"] == []
    assert len(stack.cli_json("support", "list", f"--tenant={tenant_id}", "--all")["grants"]) == 1

    # The regular path: support asks, the tenant's own key approves.
    sam = run_cli("token", "mint", f"--home={stack.home}", "--role=support", "--subject=sam", "--ttl=10m").stdout
    pending = stack.cli_json(
        "support",
        "request",
        f"--tenant={tenant_id}",
        "--reason=export job stuck since the last deploy",
        "--ticket=INC-4712",
        token=sam.strip(),
    )["grant"]
    assert pending["state"] == "SUPPORT_GRANT_STATE_PENDING" and pending["principal"] == "operator:sam"
    approver = stack.cli_json(
        "apikey", "create", f"--tenant={tenant_id}", "--name=tenant admin", "--scope=support:approve"
    )["token"]
    one_line_error(stack.cli("support", "approve", pending["grant_id"]), "PERMISSION_DENIED")
    approved = stack.cli_json("support", "approve", pending["grant_id"], token=approver)["grant"]
    assert approved["state"] == "SUPPORT_GRANT_STATE_ACTIVE" and approved["emergency"] is False
    mine = stack.cli_json("support", "list", token=sam.strip())["grants"]
    assert [g["grant_id"] for g in mine] == [pending["grant_id"]], "support engineers see their own grants"


# ------------------------------------------------------------------------------------- bad credentials


def test_bad_expired_foreign_or_underprivileged_tokens_fail_in_one_line_with_a_non_zero_exit(
    stack: Stack, tmp_path: Path
) -> None:
    idp = load_dev_idp(stack.home / "idp")
    tenant_id = stack.summary["demo"]["tenant_id"]

    line = one_line_error(stack.cli("whoami", token="not-a-token"), "UNAUTHENTICATED")
    assert "malformed bearer token" in line

    expired = idp.mint(ttl=-dt.timedelta(minutes=5)).token
    line = one_line_error(stack.cli("tenant", "get", tenant_id, token=expired), "UNAUTHENTICATED")
    assert "expired" in line

    foreign, _ = ensure_dev_idp(tmp_path / "other-idp")
    line = one_line_error(stack.cli("whoami", token=foreign.mint().token), "UNAUTHENTICATED")
    assert "key the IdP does not publish" in line

    no_mfa = idp.mint(amr=("pwd",)).token
    assert "MFA" in one_line_error(stack.cli("whoami", token=no_mfa), "UNAUTHENTICATED")

    oncall = run_cli("token", "mint", f"--home={stack.home}", "--role=ops:oncall", "--ttl=10m")
    assert oncall.returncode == 0, oncall.stderr
    line = one_line_error(
        stack.cli("apikey", "create", f"--tenant={tenant_id}", "--name=x", "--scope=records:read", token=oncall.stdout),
        "PERMISSION_DENIED",
    )
    assert "CreateApiKey" in line
    assert stack.cli_json("apikey", "list", f"--tenant={tenant_id}", token=oncall.stdout.strip())["api_keys"]

    as_json = stack.cli("whoami", "--json", token=expired)
    assert as_json.returncode == 4
    assert json.loads(as_json.stdout)["error"]["code"] == "UNAUTHENTICATED"

    # A stale default token: the hint says how to get a fresh one.
    token_file = stack.home / "idp" / "operator.jwt"
    current = token_file.read_text()
    try:
        token_file.write_text(expired + "\n")
        line = one_line_error(stack.cli("whoami"), "UNAUTHENTICATED")
        assert "steward token mint --save" in line
    finally:
        token_file.write_text(current)


def test_without_a_gateway_address_or_a_token_the_cli_says_what_to_pass(tmp_path: Path) -> None:
    nowhere = run_cli("tenant", "get", "tnt_x", f"--home={tmp_path / 'empty'}")
    assert nowhere.returncode == 2
    assert nowhere.stderr.count("\n") == 1 and "--gateway" in nowhere.stderr and "steward run" in nowhere.stderr

    no_token = run_cli("whoami", f"--home={tmp_path / 'empty'}", "--gateway=127.0.0.1:1")
    assert no_token.returncode == 2 and "STEWARD_TOKEN" in no_token.stderr

    no_idp = run_cli("token", "mint", f"--home={tmp_path / 'empty'}")
    assert no_idp.returncode == 2 and "steward run" in no_idp.stderr


def test_tokens_minted_by_the_dev_idp_carry_what_the_gateway_requires(tmp_path: Path) -> None:
    import jwt

    idp, actions = ensure_dev_idp(tmp_path / "idp")
    assert actions == ["created dev IdP signing key", "wrote dev IdP JWKS"]
    same, again = ensure_dev_idp(tmp_path / "idp")
    assert again == [] and same.kid == idp.kid, "the key is kept across starts"
    assert (tmp_path / "idp").stat().st_mode & 0o777 == 0o700

    issued = idp.mint(ttl=dt.timedelta(days=3))
    assert issued.expires_at - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=12), "capped at 12 hours"
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "ES256" and header["kid"] == idp.kid
    jwks = json.loads(idp.jwks_file.read_text())
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(issued.token, key.key, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["roles"] == ["ops:admin"] and "mfa" in claims["amr"]
    assert {"exp", "iat", "sub", "jti"} <= claims.keys()
    assert "d" not in jwks["keys"][0], "the JWKS holds the public key only"
    with pytest.raises(ValueError, match="unknown operator role"):
        idp.mint(roles=["root"])
