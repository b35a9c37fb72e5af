"""``steward tombstones apply --tenant T | --all``: erase again what a restored vault database brought back.

The vault does this by itself at start-up for the tombstones its erasure ledger holds beyond the database's
applied mark (health stays NOT_SERVING until it is done); the command is for operators who want it run now,
or for every tombstone of the ledger (``--all``), e.g. after restoring the ledger too.
"""

from __future__ import annotations

import click
from steward.vault.v1 import vault_pb2

from services.cli.client import LONG_TIMEOUT_S
from services.cli.ops.invocation import Invocation, operator_command

__all__ = ["tombstones"]


@click.group()
def tombstones() -> None:
    """Tombstones of erased subjects (kept in the vault's separate erasure ledger)."""


@operator_command(tombstones, "apply")
@click.option("--tenant", "tenant_id", help="Only this tenant's tombstones.")
@click.option("--all", "all_tenants", is_flag=True, help="Every tenant's tombstones, and advance the applied mark.")
def tombstones_apply(run: Invocation, tenant_id: str | None, all_tenants: bool) -> None:
    """Re-erase every subject the erasure ledger lists that the vault database has again (ops:admin, ops:oncall).

    Safe to repeat: a subject already erased, or one created after its erasure, is left alone.
    """
    if bool(tenant_id) == all_tenants:
        raise click.UsageError("pass either --tenant TENANT or --all")
    client = run.client
    if all_tenants:
        done = client.call(
            client.vault_admin.ApplyAllTombstones, vault_pb2.ApplyAllTombstonesRequest(), timeout_s=LONG_TIMEOUT_S
        )
        run.emit(
            {
                "tombstones_checked": done.tombstones_checked,
                "subjects_reerased": done.subjects_reerased,
                "tenants": done.tenants,
                "high_water_mark": done.high_water_mark,
            },
            f"all tenants: {done.tombstones_checked} tombstones checked in {done.tenants} tenants, "
            f"{done.subjects_reerased} subjects erased again; applied up to ledger sequence {done.high_water_mark}",
        )
        return
    one = client.call(
        client.vault_admin.ApplyTombstones,
        vault_pb2.ApplyTombstonesRequest(),
        tenant_id=tenant_id,
        timeout_s=LONG_TIMEOUT_S,
    )
    run.emit(
        {
            "tenant_id": tenant_id,
            "tombstones_checked": one.tombstones_checked,
            "subjects_reerased": one.subjects_reerased,
        },
        f"{tenant_id}: {one.tombstones_checked} tombstones checked, {one.subjects_reerased} subjects erased again",
    )
