"""``steward keys status|rotate|rewrap``: a tenant's key-encryption key in Transit, through the gateway."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, TextIO

import click
from steward.vault.v1 import vault_pb2

from services.cli.client import GatewayCallError
from services.cli.ops.invocation import Invocation, operator_command
from services.cli.render import as_json, enum_label, fields_text

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """A tenant's key-encryption key (KEK) in Transit: status, rotation, rewrapping stored DEKs."""


@operator_command(keys, "status")
@click.option("--tenant", "tenant_id", required=True)
def keys_status(run: Invocation, tenant_id: str) -> None:
    """KEK versions as Transit reports them now, next to the vault's record (ops:admin, ops:oncall).

    A sealed, unreachable or refusing Transit is not a success: the command says which, and exits 3 (retryable).
    """
    client = run.client
    found = client.call(client.vault_admin.GetTenant, vault_pb2.GetTenantRequest(), tenant_id=tenant_id).tenant
    try:
        key = client.call(client.vault_admin.GetKeyStatus, vault_pb2.GetKeyStatusRequest(), tenant_id=tenant_id)
    except GatewayCallError as exc:
        state = exc.metadata.get("transit_state")
        if exc.metadata.get("dependency") != "transit" or state is None:
            raise
        raise GatewayCallError(
            exc.code,
            f"Transit is {_TRANSIT_STATES.get(state, state)}: {tenant_id}'s key cannot be read, and writes and "
            "uncached reads fail until it is back (docs/runbooks/vault-sealed.md)",
            reason=exc.reason,
            metadata=exc.metadata,
        ) from None
    drift = "" if key.latest_version == found.key_version else " (differs from Transit: run `steward keys rewrap`)"
    run.emit(
        {"tenant": as_json(found), "key": as_json(key), "transit": "ok"},
        fields_text(
            [
                ("tenant", found.tenant_id),
                ("vault state", enum_label(found, "state")),
                ("transit", "reachable, unsealed"),
                ("transit key", key.key_name),
                ("key version", key.latest_version),
                ("vault key version", f"{found.key_version}{drift}"),
                ("min decryption version", key.min_decryption_version),
                ("deletion allowed", "yes" if key.deletion_allowed else "no"),
                ("exportable", "yes" if key.exportable else "no"),
            ]
        ),
    )


_TRANSIT_STATES = {
    "sealed": "SEALED",
    "unreachable": "UNREACHABLE (no connection)",
    "breaker_open": "failing (the vault's circuit breaker is open after repeated failures)",
    "refused": "refusing the vault's token (HTTP 401/403)",
    "unavailable": "answering with errors",
}


@operator_command(keys, "rotate")
@click.option("--tenant", "tenant_id", help="The tenant whose KEK to rotate.")
@click.option(
    "--all-tenants",
    is_flag=True,
    help="Every tenant listed in --tenants-file: rotate, then rewrap, one after the other, with progress.",
)
@click.option(
    "--tenants-file",
    type=click.File("r"),
    help="Tenant ids, one per line ('-' = stdin; blank lines and # comments ignored). With --all-tenants.",
)
@click.option("--batch-size", type=click.IntRange(0, 1000), default=0, help="DEKs per Transit call [200].")
def keys_rotate(
    run: Invocation, tenant_id: str | None, all_tenants: bool, tenants_file: TextIO | None, batch_size: int
) -> None:
    """Add a KEK version; new DEKs use it at once. Then run `steward keys rewrap` (ops:admin, ops:oncall).

    With --all-tenants (key compromise: docs/runbooks/key-compromise.md) each listed tenant is rotated and
    rewrapped in turn; a tenant that fails is reported and the rest go on; exit 1 if any failed. Re-running
    for the failed ones is safe (one more KEK version, and the rewrap finishes what is left).
    """
    if all_tenants == (tenant_id is not None) or all_tenants != (tenants_file is not None):
        raise click.UsageError("give --tenant ID, or --all-tenants with --tenants-file")
    if tenants_file is None:
        assert tenant_id is not None
        version = _rotate(run, tenant_id)
        run.emit(
            {"tenant_id": tenant_id, "key_version": version},
            f"{tenant_id}: KEK rotated to version {version}; next: steward keys rewrap --tenant {tenant_id}",
        )
        return
    tenants = _tenant_ids(tenants_file)
    failed: dict[str, str] = {}
    for number, tenant in enumerate(tenants, 1):
        label = f"[{number}/{len(tenants)}] {tenant}"
        try:
            version = _rotate(run, tenant)
            last = _rewrap(run, tenant, batch_size, label=f"{label}: rewrapping DEKs")
        except GatewayCallError as exc:
            failed[tenant] = str(exc)
            run.emit({"tenant_id": tenant, "error": str(exc)}, f"{label}: FAILED {exc}")
            continue
        run.emit(
            {"tenant_id": tenant, "key_version": version, "rewrapped": last.rewrapped, "total": last.total},
            f"{label}: KEK version {version}, rewrapped {last.rewrapped} of {last.total} DEKs",
        )
    done = len(tenants) - len(failed)
    run.emit(
        {"tenants": len(tenants), "done": done, "failed": sorted(failed)},
        f"{done} of {len(tenants)} tenants rotated and rewrapped"
        + (f"; failed (re-run for these): {' '.join(sorted(failed))}" if failed else ""),
    )
    if failed:
        sys.exit(1)


def _tenant_ids(source: TextIO) -> list[str]:
    ids = [line.split("#", 1)[0].strip() for line in source]
    unique = list(dict.fromkeys(i for i in ids if i))
    if not unique:
        raise click.UsageError("--tenants-file lists no tenant")
    return unique


def _rotate(run: Invocation, tenant_id: str) -> int:
    client = run.client
    return int(
        client.call(
            client.vault_admin.RotateTenantKey, vault_pb2.RotateTenantKeyRequest(), tenant_id=tenant_id
        ).key_version
    )


def _rewrap(run: Invocation, tenant_id: str, batch_size: int, *, label: str) -> Any:
    """Stream RewrapTenantKeys with a progress bar on stderr (none with --json); the final step."""
    client = run.client
    last: Any = None
    shown = 0
    with contextlib.ExitStack() as stack:
        bar: Any = None
        for step in client.stream(
            client.vault_admin.RewrapTenantKeys,
            vault_pb2.RewrapTenantKeysRequest(batch_size=batch_size),
            tenant_id=tenant_id,
        ):
            if bar is None and not run.json_output:
                bar = stack.enter_context(click.progressbar(length=max(step.total, 1), label=label, file=sys.stderr))
            if bar is not None:
                bar.update(max(step.rewrapped - shown, 0) if step.total else 1)
            shown = step.rewrapped
            last = step
    if last is None or not last.done:
        raise GatewayCallError("ABORTED", "the rewrap stream ended before the vault reported completion; re-run it")
    return last


@operator_command(keys, "rewrap")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--batch-size", type=click.IntRange(0, 1000), default=0, help="DEKs per Transit call [200].")
def keys_rewrap(run: Invocation, tenant_id: str, batch_size: int) -> None:
    """Rewrap every stored DEK to the newest KEK version, then retire older versions (ops:admin, ops:oncall).

    Data is not re-encrypted; progress streams from the vault. Safe to re-run after an interruption.
    """
    last = _rewrap(run, tenant_id, batch_size, label="rewrapping DEKs")
    run.emit(
        {
            "tenant_id": tenant_id,
            "rewrapped": last.rewrapped,
            "total": last.total,
            "min_decryption_version": last.min_decryption_version,
        },
        f"{tenant_id}: rewrapped {last.rewrapped} of {last.total} DEKs; "
        f"KEK versions below {last.min_decryption_version} can no longer decrypt",
    )
