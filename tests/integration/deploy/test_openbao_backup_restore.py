"""docs/runbooks/openbao-backup-restore.md, exercised on a real OpenBao with integrated (raft) storage.

``bao server -dev`` keeps everything in memory (no raft, no snapshots), so this starts a single-node raft
server from the same configuration ``steward run`` uses, in a temporary folder. The shipped CronJob script
(deploy/k8s/openbao/snapshot-cronjob.yaml) takes the snapshots with the shipped snapshot policy and prunes to
``KEEP``; the runbook's restore command brings back a tenant key deleted after the snapshot, and what was
wrapped under it decrypts again.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest

from services.chassis.transit import KeyUnavailable, TransitClient
from services.devstack.openbao import bring_up, render_server_config
from tests.plugins.infra import free_port, wait_for_port, which
from tests.plugins.k8s import K8S, load_docs

RUNBOOK = Path(__file__).parents[3] / "docs" / "runbooks" / "openbao-backup-restore.md"
AAD = b"v1|tenant|key"


@dataclass
class RaftOpenBao:
    url: str
    root_token: str
    home: Path

    def bao(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {
            "BAO_ADDR": self.url,
            "BAO_TOKEN": token or self.root_token,
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        return subprocess.run([which("bao"), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def raft_openbao(tmp_path: Path) -> Iterator[RaftOpenBao]:
    port, cluster_port = free_port(), free_port()
    raft = tmp_path / "raft"
    raft.mkdir()
    config = tmp_path / "openbao.hcl"
    config.write_text(render_server_config(raft_dir=raft, host="127.0.0.1", port=port, cluster_port=cluster_port))
    log = (tmp_path / "openbao.log").open("wb")
    proc = subprocess.Popen([which("bao"), "server", f"-config={config}"], stdout=log, stderr=log)
    try:
        wait_for_port(port, proc=proc)
        url = f"http://127.0.0.1:{port}"
        material, _ = bring_up(url, tmp_path / "init.json")
        yield RaftOpenBao(url, material.root_token, tmp_path)
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _cronjob_script(snapshots: Path) -> str:
    """The CronJob's shell script with the Kubernetes login swapped for the token in the environment."""
    (_, _, cronjob) = load_docs(K8S / "openbao" / "snapshot-cronjob.yaml")
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    script, logins = re.subn(r'BAO_TOKEN="\$\(bao write .*?\)"\n', "", script, flags=re.S)
    assert logins == 1, "the CronJob script changed shape"
    return script.replace("/snapshots", str(snapshots))


def test_snapshot_then_restore_brings_a_deleted_key_back(raft_openbao: RaftOpenBao, tmp_path: Path) -> None:
    bao = raft_openbao
    root = hvac.Client(url=bao.url, token=bao.root_token)
    root.sys.create_or_update_policy("openbao-snapshot", (K8S / "openbao" / "openbao-snapshot.hcl").read_text())
    snapshot_token = root.auth.token.create(policies=["openbao-snapshot"], ttl="10m", no_default_policy=True)["auth"][
        "client_token"
    ]

    transit = TransitClient(bao.url, bao.root_token)
    transit.create_tenant_key("acme")
    (wrapped,) = transit.wrap("acme", [(b"k" * 32, AAD)])

    # The CronJob's script with KEEP=1: the new snapshot stays, an older one is pruned.
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    old = snapshots / "openbao-20260101T000000Z.snap"
    old.write_bytes(b"an older snapshot")
    os.utime(old, (1_767_225_600, 1_767_225_600))
    env = {**os.environ, "BAO_ADDR": bao.url, "BAO_TOKEN": snapshot_token, "KEEP": "1", "HOME": str(tmp_path)}
    env["PATH"] = f"{Path(which('bao')).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    run = subprocess.run(["sh", "-ec", _cronjob_script(snapshots)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (snapshot,) = sorted(snapshots.glob("openbao-*.snap"))
    assert snapshot != old and snapshot.stat().st_size > 0 and not list(snapshots.glob("*.part"))

    # The snapshot identity can take snapshots and nothing else: no restore, no Transit.
    refused = bao.bao("operator", "raft", "snapshot", "restore", str(snapshot), token=snapshot_token)
    assert refused.returncode != 0 and "permission denied" in refused.stderr
    assert bao.bao("read", "transit/keys/steward-tenant-acme", token=snapshot_token).returncode != 0

    transit.delete_tenant_key("acme")  # the incident: a key deleted (or the whole store lost) after the snapshot
    with pytest.raises(KeyUnavailable):
        transit.unwrap("acme", [(wrapped, AAD)])

    restored = bao.bao("operator", "raft", "snapshot", "restore", str(snapshot))  # the runbook's command
    assert restored.returncode == 0, restored.stderr
    bring_up(bao.url, bao.home / "init.json")  # the runbook's next step: wait until active (unseal if sealed)
    after = TransitClient(bao.url, bao.root_token)  # a fresh client: no state carried over
    assert after.unwrap("acme", [(wrapped, AAD)]) == [b"k" * 32]
    assert after.key_info("acme").deletion_allowed is False


def test_the_runbook_uses_the_commands_this_test_runs() -> None:
    text = RUNBOOK.read_text()
    for command in (
        "bao operator raft snapshot save",
        "bao operator raft snapshot restore",
        "kubectl -n openbao create job",
        "bao audit list",
    ):
        assert command in text, command
    (_, _, cronjob) = load_docs(K8S / "openbao" / "snapshot-cronjob.yaml")
    assert f"--from=cronjob/{cronjob['metadata']['name']}" in text
