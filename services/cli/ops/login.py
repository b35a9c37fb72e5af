"""``steward login``: an operator token from the operator IdP by the OIDC device authorization grant (RFC 8628).

The CLI reads the IdP's discovery document (``<issuer URL>/.well-known/openid-configuration``), asks for a device
code, prints where to go and which code to enter, then polls the token endpoint with
``grant_type=urn:ietf:params:oauth:grant-type:device_code`` at the interval the IdP asks for (slower after
``slow_down``) until the operator approved, denied, or the code expired. The token is kept in
``<home>/login.json`` (0600, :class:`services.cli.state.OperatorLogin`); operator commands send it until it
expires. Locally, the dev IdP (:class:`services.devstack.devidp.DevIdpServer`) answers the same protocol.

Exit status: 0 signed in; 1 the code expired or the IdP refused the request; 2 usage (no issuer URL);
3 the IdP is unreachable or the wait ran out (retry); 4 the operator denied the request.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import jwt
import requests
from pydantic import SecretStr

from services.cli.client import EXIT_DENIED, EXIT_REFUSED, EXIT_RETRYABLE
from services.cli.home import StewardHome
from services.cli.ops.invocation import HOME_OPTION
from services.cli.state import OperatorLogin, StackState

__all__ = ["DEVICE_GRANT", "LoginFailed", "device_login", "login"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
HTTP_TIMEOUT_S = 10.0


class LoginFailed(RuntimeError):
    """The device flow ended without a token; ``exit_code`` says how (see the module docstring)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _json(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise LoginFailed(f"the IdP's {what} answered HTTP {response.status_code} without JSON", EXIT_REFUSED) from None
    if not isinstance(body, dict):
        raise LoginFailed(f"the IdP's {what} answered an unexpected document", EXIT_REFUSED)
    return body


def _post(session: requests.Session, url: str, form: dict[str, str], what: str) -> tuple[int, dict[str, Any]]:
    try:
        response = session.post(url, data=form, timeout=HTTP_TIMEOUT_S)
    except requests.RequestException as exc:
        raise LoginFailed(f"cannot reach the IdP's {what} ({type(exc).__name__})", EXIT_RETRYABLE) from None
    return response.status_code, _json(response, what)


def device_login(
    issuer_url: str,
    *,
    client_id: str,
    scope: str,
    announce: Callable[[str, str, str], None],
    wait_s: float,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> OperatorLogin:
    """Run the device flow against ``issuer_url``; ``announce(verification_uri, user_code, complete_uri)`` tells
    the operator what to do. Raises :class:`LoginFailed`."""
    session = requests.Session()
    discovery_url = issuer_url.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = session.get(discovery_url, timeout=HTTP_TIMEOUT_S)
    except requests.RequestException as exc:
        raise LoginFailed(f"cannot reach the IdP at {issuer_url} ({type(exc).__name__})", EXIT_RETRYABLE) from None
    if response.status_code != 200:
        raise LoginFailed(f"{discovery_url} answered HTTP {response.status_code}: is this the IdP?", EXIT_REFUSED)
    discovery = _json(response, "discovery document")
    device_endpoint, token_endpoint = discovery.get("device_authorization_endpoint"), discovery.get("token_endpoint")
    if not device_endpoint or not token_endpoint:
        raise LoginFailed("the IdP does not offer the device authorization grant (no endpoint in discovery)", 1)
    status, grant = _post(session, str(device_endpoint), {"client_id": client_id, "scope": scope}, "device endpoint")
    if status != 200 or "device_code" not in grant or "user_code" not in grant:
        error = grant.get("error", f"HTTP {status}")
        raise LoginFailed(f"the IdP refused a device code for client {client_id!r} ({error})", EXIT_REFUSED)
    uri = str(grant.get("verification_uri", ""))
    announce(uri, str(grant["user_code"]), str(grant.get("verification_uri_complete", uri)))
    interval = max(float(grant.get("interval", 5)), 0.0)
    give_up = monotonic() + min(wait_s, float(grant.get("expires_in", wait_s)))
    form = {"grant_type": DEVICE_GRANT, "device_code": str(grant["device_code"]), "client_id": client_id}
    while True:
        if monotonic() >= give_up:
            raise LoginFailed("nobody approved the code in time; run `steward login` again", EXIT_RETRYABLE)
        sleep(interval)  # RFC 8628 3.5: wait the interval between polls
        status, body = _post(session, str(token_endpoint), form, "token endpoint")
        if status == 200 and body.get("access_token"):
            return _login_from(body, issuer=str(discovery.get("issuer", issuer_url)))
        error = body.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "access_denied":
            raise LoginFailed("the sign-in was denied at the IdP", EXIT_DENIED)
        if error == "expired_token":
            raise LoginFailed("the code expired before it was approved; run `steward login` again", EXIT_REFUSED)
        raise LoginFailed(f"the IdP's token endpoint refused the device code ({error or f'HTTP {status}'})", 1)


def _login_from(body: dict[str, Any], *, issuer: str) -> OperatorLogin:
    token = str(body["access_token"])
    now = dt.datetime.now(dt.UTC)
    # The CLI only reads sub/exp for display and expiry; the gateway verifies the signature on every call.
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        claims = {}
    if "exp" in claims:
        expires_at = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
    else:
        expires_at = now + dt.timedelta(seconds=int(body.get("expires_in", 3600)))
    return OperatorLogin(
        issuer=issuer,
        subject=str(claims.get("sub", "")),
        access_token=SecretStr(token),
        expires_at=expires_at,
        obtained_at=now,
    )


@click.command()
@click.option(
    "--issuer-url",
    envvar="STEWARD_OIDC_ISSUER_URL",
    metavar="URL",
    help="The operator IdP (its /.well-known/openid-configuration is read).",
)
@click.option("--client-id", envvar="STEWARD_OIDC_CLIENT_ID", default="steward-cli", show_default=True)
@click.option("--scope", default="openid", show_default=True, help="Scopes to ask for.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=1), default=600, show_default=True, help="Seconds.")
@HOME_OPTION
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object instead of text.")
def login(issuer_url: str | None, client_id: str, scope: str, wait_s: float, home: Path, json_output: bool) -> None:
    """Sign in as an operator (OIDC device code): prints a URL and a code to approve there, then keeps the token.

    Without --issuer-url, the dev IdP of the local stack (`steward run`) in --home is used.

    The token is stored in <home>/login.json (0600) and used by every operator command until it expires.
    """
    steward_home = StewardHome(home.expanduser().resolve())
    if not issuer_url:
        # Without an issuer: the dev IdP of a local stack that `steward run` keeps running in this home.
        local = StackState.read(steward_home.state_file)
        issuer_url = local.idp_url if local is not None and local.running else None
    if not issuer_url:
        raise click.UsageError(
            "pass --issuer-url URL (or set STEWARD_OIDC_ISSUER_URL): the operator IdP; "
            "without it the dev IdP of a running `steward run` in --home is used"
        )
    if not issuer_url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise click.UsageError("--issuer-url must be https:// (plain http only for a local dev IdP)")

    def announce(uri: str, code: str, complete: str) -> None:
        click.echo(f"To sign in, open {uri} and enter the code: {code}", err=True)
        if complete and complete != uri:
            click.echo(f"(or open {complete})", err=True)

    try:
        signed_in = device_login(issuer_url, client_id=client_id, scope=scope, announce=announce, wait_s=wait_s)
    except LoginFailed as exc:
        click.echo(f"steward: {exc}", err=True)
        if json_output:
            click.echo(json.dumps({"error": {"code": "LOGIN_FAILED", "message": str(exc)}}))
        raise SystemExit(exc.exit_code) from None
    steward_home.root.mkdir(parents=True, exist_ok=True)
    signed_in.save(steward_home.login_file)
    expires = signed_in.expires_at.isoformat(timespec="seconds")
    payload = {"subject": signed_in.subject, "issuer": signed_in.issuer, "expires_at": expires}
    text = f"signed in as {signed_in.subject or '?'} until {expires} (token in {steward_home.login_file})"
    click.echo(json.dumps(payload) if json_output else text)
