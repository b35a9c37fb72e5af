"""How the application is rolled out: one image whose command picks the service, migrations as Jobs before the
new pods start, a preStop delay before the drain, and images pinned by digest.

The ordering itself needs a cluster (or Argo CD); what is checked here is everything it relies on: the Jobs run
``steward db upgrade`` for exactly the services deployed, with the same image and settings as their Deployment;
the services refuse to migrate themselves in prod; the objects the Jobs need are the ones the documented
``kubectl apply -l`` selects; Argo CD's sync waves put them in the same order.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from services.cli.main import SERVE_SERVICES
from services.cli.ops.db import SERVICES as DB_SERVICES
from tests.plugins.k8s import APP_TREES, K8S, Obj, load_docs, pod_spec, render

# The selector of the first step in deploy/k8s/README.md ("Deploy and upgrade").
PRE_ROLLOUT_COMPONENTS = {"config", "migration"}
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def container(workload: Obj) -> dict[str, Any]:
    (only,) = pod_spec(workload)["containers"]  # type: ignore[index]
    return only  # type: ignore[no-any-return]


def env_of(objects: list[Obj], workload: Obj) -> dict[str, str]:
    maps = {o["metadata"]["name"]: o for o in of_kind(objects, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container(workload).get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    for entry in container(workload).get("env", []):
        env[entry["name"]] = entry.get("value", "<secret>")
    return env


def wave(obj: Obj) -> int:
    return int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


@pytest.mark.parametrize("name", APP_TREES)
def test_each_deployment_runs_its_service_through_the_image_entrypoint(name: str) -> None:
    deployments = of_kind(render(K8S / name), "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == set(SERVE_SERVICES) == set(DB_SERVICES)
    for deployment in deployments:
        main = container(deployment)
        assert "command" not in main, "the image's ENTRYPOINT is steward"
        assert main["args"] == ["serve", deployment["metadata"]["name"]]


@pytest.mark.parametrize("name", ["overlays/dev", "overlays/prod"])
def test_overlays_reference_the_image_by_digest(name: str) -> None:
    (kz,) = load_docs(K8S / name / "kustomization.yaml")
    (image,) = kz["images"]
    assert image["name"] == "steward" and "newTag" not in image
    assert DIGEST.match(image["digest"]), image
    for workload in of_kind(render(K8S / name), "Deployment") + of_kind(render(K8S / name), "Job"):
        assert container(workload)["image"] == f"{image['newName']}@{image['digest']}"


def test_prod_migrates_with_one_job_per_service_before_the_rollout() -> None:
    objects = render(K8S / "overlays" / "prod")
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    jobs = {j["metadata"]["name"]: j for j in of_kind(objects, "Job")}
    # Besides the migrations, one more pre-rollout Job: the NATS streams (tests/unit/deploy/test_nats_streams.py).
    assert set(jobs) - {"nats-streams"} == {f"{name}-migrate" for name in deployments}
    services = of_kind(objects, "Service")
    for name, deployment in deployments.items():
        job = jobs[f"{name}-migrate"]
        migrate, main = container(job), container(deployment)
        assert migrate["args"] == ["db", "upgrade", "--service", name]
        assert "command" not in migrate
        assert migrate["image"] == main["image"]
        # Exactly the service's settings: same ConfigMap, same variables from the same Secrets.
        assert migrate["envFrom"] == main["envFrom"]
        assert sorted(migrate["env"], key=str) == sorted(main["env"], key=str)
        assert pod_spec(job)["restartPolicy"] == "Never"  # type: ignore[index]
        assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["activeDeadlineSeconds"] > 0
        # The Job's pod is never an endpoint of the service it migrates.
        labels = job["spec"]["template"]["metadata"]["labels"]
        for service in services:
            assert not service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
        # The service checks its schema instead of migrating, so a pod can never run ahead of its Job.
        env = env_of(objects, deployment)
        assert env[f"STEWARD_{name.upper()}__MIGRATE_ON_START"] == "false"


def test_dev_migrates_at_start_up_and_has_no_jobs() -> None:
    """SQLite on a ReadWriteOnce volume: only the service's own pod can open the file."""
    objects = render(K8S / "overlays" / "dev")
    assert of_kind(objects, "Job") == []
    for deployment in of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        assert env_of(objects, deployment).get(f"STEWARD_{name.upper()}__MIGRATE_ON_START", "true") == "true"


def _component(obj: Obj) -> str:
    return str(obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))


def test_what_the_jobs_need_is_applied_before_them() -> None:
    """The documented first step (kubectl apply -l component in (config,migration)) and Argo CD's waves."""
    objects = render(K8S / "overlays" / "prod")
    first = [o for o in objects if _component(o) in PRE_ROLLOUT_COMPONENTS]
    first_names = {(o["kind"], o["metadata"]["name"]) for o in first}
    for job in of_kind(objects, "Job"):
        spec = pod_spec(job)
        assert spec is not None
        needs = {("ServiceAccount", spec["serviceAccountName"])}
        needs |= {("ConfigMap", s["configMapRef"]["name"]) for s in container(job)["envFrom"]}
        labels = job["spec"]["template"]["metadata"]["labels"]
        own_policies = {
            ("NetworkPolicy", p["metadata"]["name"])
            for p in of_kind(objects, "NetworkPolicy")
            if p["spec"]["podSelector"].get("matchLabels")
            and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        }
        assert own_policies, f"{job['metadata']['name']}: no NetworkPolicy lets it reach its database (or NATS)"
        assert needs | own_policies | {("Job", job["metadata"]["name"])} <= first_names
        # Argo CD: what the Job reads syncs in an earlier wave, the Deployments in a later one.
        for kind, name in needs | own_policies:
            (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
            assert wave(obj) < wave(job), (kind, name)
    for deployment in of_kind(objects, "Deployment"):
        assert _component(deployment) not in PRE_ROLLOUT_COMPONENTS
        assert all(wave(deployment) > wave(job) for job in of_kind(objects, "Job"))
