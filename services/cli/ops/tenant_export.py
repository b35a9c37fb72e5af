"""``steward tenant export --out DIR`` and ``steward tenant export --verify DIR``: a tenant-wide export.

Called with the tenant admin's API key (scope ``keys:manage``) as ``--token``: the vault streams every subject and
record of the key's tenant (``VaultService.ExportTenant``). Each chunk is written to DIR as ``chunk-NNNNNN.pb``
(its body bytes, exactly as hashed) before its continuation token is saved to ``resume.token``, so a dropped
stream — or a second run of the command — resumes after the last chunk on disk. The signed manifest ends up in
``manifest.pb`` and is verified at once: every chunk's SHA-256, the digest of the whole, and the Ed25519 signature
(the public key is in the manifest; compare it with the one ``GetAuditCheckpoint`` gives to anchor it).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from steward.vault.v1 import vault_pb2

from services.cli.client import GatewayCallError, GatewayClient
from services.cli.home import write_file_atomically
from services.cli.ops.invocation import Invocation, operator_command
from services.cli.ops.tenant import tenant
from services.vault.exports import FORMAT, signature_valid, whole_digest

__all__ = ["ExportCheck", "download_tenant_export", "verify_export_dir"]

MANIFEST_FILE = "manifest.pb"
TOKEN_FILE = "resume.token"  # noqa: S105 - a file name
RETRYABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL", "UNKNOWN", "CANCELLED", "RESOURCE_EXHAUSTED"}


def chunk_path(folder: Path, seq: int) -> Path:
    """Where chunk ``seq`` is kept."""
    return folder / f"chunk-{seq:06d}.pb"


@dataclass
class ExportCheck:
    """The outcome of verifying an export folder."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    manifest: vault_pb2.ExportManifest | None = None


def verify_export_dir(folder: Path) -> ExportCheck:
    """Check ``folder`` offline against its manifest: chunk digests, the whole digest, the signature, and that every
    chunk is a ``steward.export.v1`` body of this export in order, with the manifest's counts."""
    path = folder / MANIFEST_FILE
    if not path.exists():
        return ExportCheck(False, ["no manifest.pb: the export did not finish; run the export again to resume"])
    manifest = vault_pb2.ExportManifest()
    manifest.ParseFromString(path.read_bytes())
    problems = []
    subjects = records = 0
    for seq, expected in enumerate(manifest.chunk_sha256, start=1):
        chunk = chunk_path(folder, seq)
        if not chunk.exists():
            problems.append(f"chunk {seq} is missing")
            continue
        body = chunk.read_bytes()
        if hashlib.sha256(body).hexdigest() != expected:
            problems.append(f"chunk {seq}: SHA-256 differs from the manifest (altered or truncated)")
            continue
        parsed = vault_pb2.ExportChunkBody()
        parsed.ParseFromString(body)
        if parsed.format != FORMAT or parsed.export_id != manifest.export_id or parsed.seq != seq:
            problems.append(f"chunk {seq}: not chunk {seq} of export {manifest.export_id}")
        subjects += len(parsed.subjects)
        records += len(parsed.records)
    if chunk_path(folder, len(manifest.chunk_sha256) + 1).exists():
        problems.append("there are more chunks than the manifest lists")
    if whole_digest(manifest.chunk_sha256) != manifest.sha256:
        problems.append("the whole-export digest does not match the chunk digests")
    if not problems and (subjects, records) != (manifest.subject_count, manifest.record_count):
        problems.append("the chunks do not hold the subject and record counts the manifest states")
    if not signature_valid(manifest):
        problems.append("the manifest's signature does not verify with its public key (the manifest was altered)")
    return ExportCheck(not problems, problems, manifest)


def _last_seq(folder: Path) -> int:
    seq = 0
    while chunk_path(folder, seq + 1).exists():
        seq += 1
    return seq


def download_tenant_export(
    client: GatewayClient,
    folder: Path,
    *,
    chunk_records: int = 0,
    retries: int = 5,
    on_chunk: Callable[[vault_pb2.ExportChunk], None] | None = None,
) -> vault_pb2.ExportManifest:
    """Run (or resume) the export into ``folder``; after a dropped stream, resume from the saved token up to
    ``retries`` times. Returns the manifest (not yet verified)."""
    folder.mkdir(parents=True, exist_ok=True)
    token_path = folder / TOKEN_FILE
    failures = 0
    while True:
        token = token_path.read_text().strip() if token_path.exists() else ""
        request = vault_pb2.ExportTenantRequest(continuation_token=token, chunk_records=chunk_records)
        try:
            for item in client.stream(client.vault.ExportTenant, request):
                if item.WhichOneof("item") == "chunk":
                    chunk = item.chunk
                    write_file_atomically(chunk_path(folder, chunk.seq), chunk.body)
                    write_file_atomically(token_path, chunk.continuation_token.encode())
                    if on_chunk is not None:
                        on_chunk(chunk)
                else:
                    write_file_atomically(folder / MANIFEST_FILE, item.manifest.SerializeToString())
                    # Chunks of a longer, abandoned attempt beyond the manifest's count would fail verification.
                    stale = len(item.manifest.chunk_sha256) + 1
                    while chunk_path(folder, stale).exists():
                        chunk_path(folder, stale).unlink()
                        stale += 1
                    return item.manifest
            error = GatewayCallError("ABORTED", "the export stream ended before the manifest")
        except GatewayCallError as exc:
            error = exc
        failures += 1
        if error.code not in RETRYABLE or failures > retries:
            raise error


@operator_command(tenant, "export")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), help="Folder to write the export to.")
@click.option(
    "--verify", "verify", type=click.Path(file_okay=False, path_type=Path), help="Only verify an export folder."
)
@click.option("--chunk-records", type=click.IntRange(0, 5000), default=0, help="Records per chunk [1000].")
@click.option("--retries", type=click.IntRange(0, 100), default=5, show_default=True, help="Resumes after drops.")
def tenant_export(run: Invocation, out: Path | None, verify: Path | None, chunk_records: int, retries: int) -> None:
    """Export every subject and record of your tenant (tenant admin key, keys:manage), resumable, then verify it.

    Plaintext customer data lands in the folder: keep it as carefully as the vault would.
    """
    if (out is None) == (verify is None):
        raise click.UsageError("give exactly one of --out DIR (export) or --verify DIR (check an export)")
    if out is not None:
        with contextlib.ExitStack() as stack:
            bar: Any = None
            shown = 0

            def progress(chunk: vault_pb2.ExportChunk) -> None:
                nonlocal bar, shown
                if run.json_output:
                    return
                if bar is None:
                    total = max(chunk.records_total + chunk.subjects_total, 1)
                    bar = stack.enter_context(click.progressbar(length=total, label="exporting", file=sys.stderr))
                done = chunk.records_done + chunk.subjects_done
                bar.update(max(done - shown, 0))
                shown = done

            download_tenant_export(run.client, out, chunk_records=chunk_records, retries=retries, on_chunk=progress)
        verify = out
    assert verify is not None
    check = verify_export_dir(verify)
    m = check.manifest
    payload: dict[str, Any] = {"folder": str(verify), "verified": check.ok, "problems": check.problems}
    if m is not None:
        payload |= {
            "export_id": m.export_id,
            "tenant_id": m.tenant_id,
            "subjects": m.subject_count,
            "records": m.record_count,
            "counts_by_kind": dict(m.counts_by_kind),
            "chunks": len(m.chunk_sha256),
            "sha256": m.sha256,
            "key_name": m.key_name,
            "key_version": m.key_version,
        }
    if check.ok and m is not None:
        text = (
            f"{verify}: export {m.export_id} of {m.tenant_id} verified — {m.subject_count} subjects, "
            f"{m.record_count} records in {len(m.chunk_sha256)} chunks; sha256 {m.sha256}; "
            f"signed by {m.key_name} v{m.key_version}"
        )
        run.emit(payload, text)
        return
    run.emit(payload, f"{verify}: export does NOT verify:\n  " + "\n  ".join(check.problems))
    sys.exit(1)
