"""The NATS streams' declaration in the manifests: one Job applies it, every service checks against the same values.

``components/nats-streams`` runs ``steward nats apply`` with ``STEWARD_OPS__NATS__*``; each service's ConfigMap
in the prod overlay must declare the same replicas and retention, or its start-up check would compare the live
streams with something else. All values are real settings (loaded through the settings classes here).
"""

from __future__ import annotations

from services.chassis.settings import NatsSettings
from services.chassis.streams import declared_streams
from services.cli.ops.nats import NatsOpsSettings
from tests.plugins.k8s import K8S, Obj, render

DECLARATION = ("stream_replicas", "stream_max_age_s", "dlq_max_age_s", "dlq_stream", "stream")


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def _nats_settings(data: dict[str, str], prefix: str) -> NatsSettings:
    fields = {k.removeprefix(prefix).lower(): v for k, v in data.items() if k.startswith(prefix)}
    return NatsSettings(**fields)


def test_every_service_declares_what_the_job_applies() -> None:
    objects = render(K8S / "overlays" / "prod")
    maps = {o["metadata"]["name"]: o["data"] for o in of_kind(objects, "ConfigMap")}
    job_env = maps["nats-streams-config"]
    applied = _nats_settings(job_env, "STEWARD_OPS__NATS__")
    assert applied.stream_replicas == 3 and applied.dlq_max_age_s > applied.stream_max_age_s > 0
    assert NatsOpsSettings(nats=applied).nats == applied
    for service in ("gateway", "vault", "dsr"):
        declared = _nats_settings(maps[f"{service}-config"], f"STEWARD_{service.upper()}__NATS__")
        for field in DECLARATION:
            assert getattr(declared, field) == getattr(applied, field), (service, field)
        assert declared_streams(declared) == declared_streams(applied)


def test_the_job_runs_nats_apply_as_ops_over_tls() -> None:
    objects = render(K8S / "overlays" / "prod")
    (job,) = [j for j in of_kind(objects, "Job") if j["metadata"]["name"] == "nats-streams"]
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["nats", "apply"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["nats-nkey"]["secret"]["secretName"] == "ops-nats-nkey"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {o["metadata"]["name"]: o["data"] for o in of_kind(objects, "ConfigMap")}["nats-streams-config"]
    assert env["STEWARD_OPS__NATS__NKEY_SEED_FILE"] == f"{mounts['nats-nkey']}/seed"
    assert env["STEWARD_OPS__NATS__TLS_CA_FILE"].startswith(mounts["nats-ca"] + "/")
