"""deploy/k8s/postgres: every CloudNativePG cluster replicates synchronously, archives WAL and has a nightly backup.

Synchronous replication (``minSyncReplicas >= 1``) is what makes a failover lose no acknowledged write (an audit
entry, a tombstone); the object store (placeholders) and the ScheduledBackup give point-in-time recovery.
"""

from __future__ import annotations

from tests.plugins.k8s import K8S, load_docs


def _docs(kind: str) -> list[dict]:  # type: ignore[type-arg]
    return [d for path in sorted((K8S / "postgres").glob("*.yaml")) for d in load_docs(path) if d["kind"] == kind]


def test_every_cluster_commits_synchronously_to_a_standby() -> None:
    clusters = _docs("Cluster")
    assert {c["metadata"]["name"] for c in clusters} == {
        "gateway-db",
        "vault-db",
        "vault-tombstones-db",
        "dsr-db",
        "notify-db",
    }
    for cluster in clusters:
        spec = cluster["spec"]
        assert spec["minSyncReplicas"] >= 1, cluster["metadata"]["name"]
        # One instance may be down (maintenance) and writes still find a standby to wait for.
        assert spec["minSyncReplicas"] <= spec["maxSyncReplicas"] < spec["instances"] - 1


def test_every_cluster_archives_to_its_own_place_and_is_backed_up_nightly() -> None:
    clusters = _docs("Cluster")
    scheduled = {b["spec"]["cluster"]["name"]: b for b in _docs("ScheduledBackup")}
    paths = set()
    for cluster in clusters:
        name = cluster["metadata"]["name"]
        store = cluster["spec"]["backup"]["barmanObjectStore"]
        assert store["destinationPath"].endswith(f"/{name}")
        assert store["wal"]["encryption"] and store["data"]["encryption"]
        assert cluster["spec"]["backup"]["retentionPolicy"].endswith("d")
        paths.add(store["destinationPath"])
        assert scheduled[name]["spec"]["method"] == "barmanObjectStore"
        assert len(scheduled[name]["spec"]["schedule"].split()) == 6  # CloudNativePG: seconds first
    assert len(paths) == len(clusters)  # the ledger is restored apart from the vault's records
    assert set(scheduled) == {c["metadata"]["name"] for c in clusters}
