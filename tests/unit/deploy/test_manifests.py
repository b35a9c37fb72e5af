"""Invariants of deploy/k8s: parsed as YAML and rendered, never applied to a cluster.

Every check reads the manifests as they are: every container hardened, probed and bounded; every
Deployment's service account present; a default-deny policy in every namespace and exactly the
flows the design allows; no Secret values anywhere; kustomizations that only reference existing
files; configuration that the services' own settings classes accept. The comparison with a real
``kubectl``/``kustomize`` runs a process, so it lives in tests/integration/deploy/test_kustomize.py.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool
from pydantic import BaseModel
from pydantic_settings import BaseSettings
from steward.dsr.v1 import dsr_pb2  # noqa: F401  (registers the descriptors)
from steward.gateway.v1 import gateway_pb2  # noqa: F401
from steward.notify.v1 import notify_pb2  # noqa: F401
from steward.vault.v1 import vault_pb2  # noqa: F401

from services.chassis.settings import load_settings
from services.dsr.settings import DsrSettings
from services.gateway.settings import GatewaySettings
from services.notify.settings import NotifySettings
from services.vault.main import VaultSettings
from tests.plugins.k8s import (
    ALL_TREES,
    APP_TREES,
    K8S,
    Network,
    Obj,
    Pod,
    RenderError,
    is_sidecar,
    key,
    kustomization_dirs,
    load_docs,
    pod_containers,
    pod_of,
    pod_spec,
    render,
    yaml_files,
)

SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "vault": VaultSettings,
    "dsr": DsrSettings,
    "notify": NotifySettings,
}
# The services that reach Transit through an OpenBao proxy sidecar, each with its own Kubernetes auth role.
OPENBAO_CLIENTS = ("vault", "dsr", "notify")
# Names of settings whose value is a credential: only ever from a Secret (a SQLite URL has none).
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PEPPER|SECRET|REGISTRY_KEY|HASH_KEY|DATABASE_URL|PRIVATE_KEY)$")
PROXY_MARKER = "replaced-by-openbao-proxy"
SHUTDOWN_MARGIN_S = 10


def tree(name: str) -> list[Obj]:
    return render(K8S / name)


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def app_name(obj: Obj) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/name"])


def config_env(objects: list[Obj], deployment: Obj) -> dict[str, str]:
    """The STEWARD_* environment a Deployment's app container gets: ConfigMaps, then env entries."""
    (container,) = pod_spec(deployment)["containers"]  # type: ignore[index]
    env: dict[str, str] = {}
    maps = {o["metadata"]["name"]: o for o in of_kind(objects, "ConfigMap")}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry["value"] if "value" in entry else "<secret>"
    return env


# ------------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_file_parses_and_names_its_objects(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        if "kind" in doc and doc["kind"] not in {"Kustomization", "Component"}:
            assert doc.get("apiVersion"), f"{path}: {doc['kind']} without apiVersion"
            assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without metadata.name"


@pytest.mark.parametrize("folder", kustomization_dirs(), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomizations_reference_only_existing_files(folder: Path) -> None:
    (kz,) = load_docs(folder / "kustomization.yaml")
    for entry in [*kz.get("resources", []), *kz.get("components", [])]:
        target = folder / entry
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{folder}: {entry} does not exist"
    for patch in kz.get("patches", []):
        assert (folder / patch["path"]).is_file(), f"{folder}: patch {patch['path']} does not exist"
    if kz.get("kind") != "Component":
        render(folder)  # and everything below renders


def test_every_yaml_file_is_used_or_is_helm_values() -> None:
    """A manifest no kustomization includes would silently never be applied."""
    used: set[Path] = set()
    for folder in kustomization_dirs():
        used.add(folder / "kustomization.yaml")
        (kz,) = load_docs(folder / "kustomization.yaml")
        for entry in [*kz.get("resources", []), *(p["path"] for p in kz.get("patches", []))]:
            used.add((folder / entry).resolve())
    unused = [p for p in yaml_files() if p.resolve() not in used and p.name != "values.yaml"]
    assert unused == []


def test_renderer_refuses_missing_files(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - nope.yaml\n")
    with pytest.raises(RenderError, match="does not exist"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("secretGenerator:\n  - name: x\n")
    with pytest.raises(RenderError, match="unsupported"):
        render(tmp_path)


# ------------------------------------------------------------------------------------------------ secrets


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_no_secret_values_in_the_repository(path: Path) -> None:
    for doc in load_docs(path):
        if doc.get("kind") == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{path}: Secret with literal values"
        assert "secretGenerator" not in doc, f"{path}: secretGenerator puts values in the repository"


@pytest.mark.parametrize("name", ALL_TREES)
def test_credentials_only_come_from_secret_references(name: str) -> None:
    for cm in of_kind(tree(name), "ConfigMap"):
        for var, value in cm.get("data", {}).items():
            if SECRET_NAME.search(var):
                allowed = value == PROXY_MARKER or value.startswith("sqlite:")
                assert allowed, f"ConfigMap {cm['metadata']['name']}: {var} holds a literal credential"
    for deployment in of_kind(tree(name), "Deployment"):
        for container in pod_containers(deployment):
            for entry in container.get("env", []):
                if SECRET_NAME.search(entry["name"]):
                    literal = entry.get("value")
                    assert literal is None or literal.startswith("sqlite:"), (
                        f"{entry['name']} inline in {key(deployment)}"
                    )
                    if literal is None:
                        assert "secretKeyRef" in entry["valueFrom"], f"{entry['name']} must be a secretKeyRef"


# ------------------------------------------------------------------------------------------------ pods


def deployments() -> list[tuple[str, list[Obj], Obj]]:
    return [(name, objs, d) for name in APP_TREES for objs in [tree(name)] for d in of_kind(objs, "Deployment")]


DEPLOYMENTS = deployments()
IDS = [f"{name}:{d['metadata']['name']}" for name, _, d in DEPLOYMENTS]
# Deployments and the migration Jobs (components/migrations): every pod the application runs.
WORKLOADS = DEPLOYMENTS + [(name, objs, j) for name in APP_TREES for objs in [tree(name)] for j in of_kind(objs, "Job")]
WORKLOAD_IDS = [f"{name}:{w['kind']}/{w['metadata']['name']}" for name, _, w in WORKLOADS]


def test_there_is_a_deployment_per_service() -> None:
    for name in APP_TREES:
        assert {d["metadata"]["name"] for d in of_kind(tree(name), "Deployment")} == set(SETTINGS)


@pytest.mark.parametrize(("name", "objects", "deployment"), WORKLOADS, ids=WORKLOAD_IDS)
def test_pods_are_hardened(name: str, objects: list[Obj], deployment: Obj) -> None:
    spec = pod_spec(deployment)
    assert spec is not None
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_sc.get("runAsUser", 0) != 0
    assert spec["automountServiceAccountToken"] is False
    for container in pod_containers(deployment):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
        assert not sc["capabilities"].get("add"), container["name"]
        assert sc.get("privileged", False) is False, container["name"]
        assert sc.get("runAsNonRoot", pod_sc["runAsNonRoot"]) is True, container["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{container['name']}: {kind}"
    for volume in spec.get("volumes", []):
        assert "hostPath" not in volume
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


@pytest.mark.parametrize(("name", "objects", "deployment"), DEPLOYMENTS, ids=IDS)
def test_native_grpc_probes_on_the_plaintext_health_port(name: str, objects: list[Obj], deployment: Obj) -> None:
    spec = pod_spec(deployment)
    assert spec is not None
    env = config_env(objects, deployment)
    prefix = f"STEWARD_{deployment['metadata']['name'].upper()}__"
    health_port = int(env[prefix + "GRPC__HEALTH_PORT"])
    assert health_port != int(env[prefix + "GRPC__PORT"])
    for container in pod_containers(deployment):
        if is_sidecar(container, spec):
            # The OpenBao proxy: loopback-only listener, no ports for anything to probe or call.
            assert not container.get("ports")
            assert container["restartPolicy"] == "Always"
            continue
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"]["port"] == health_port, probe
        # Liveness asks for the overall status only: it must not depend on any downstream.
        assert container["livenessProbe"]["grpc"].get("service", "") == ""
        service = container["readinessProbe"]["grpc"]["service"]
        descriptor_pool.Default().FindServiceByName(service)  # a real gRPC service name
        assert {"name": "health", "containerPort": health_port} in container["ports"]


@pytest.mark.parametrize(("name", "objects", "deployment"), DEPLOYMENTS, ids=IDS)
def test_termination_grace_outlasts_the_shutdown_grace(name: str, objects: list[Obj], deployment: Obj) -> None:
    env = config_env(objects, deployment)
    grace = float(env[f"STEWARD_{deployment['metadata']['name'].upper()}__GRPC__SHUTDOWN_GRACE_S"])
    # The preStop sleep runs before SIGTERM and counts against the same grace period.
    (container,) = pod_spec(deployment)["containers"]  # type: ignore[index]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop = float(command[1])
    assert pre_stop >= 1, "endpoints need time to drop the terminating pod before it stops accepting"
    total = pre_stop + grace + SHUTDOWN_MARGIN_S
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= total  # type: ignore[index]


@pytest.mark.parametrize(("name", "objects", "deployment"), WORKLOADS, ids=WORKLOAD_IDS)
def test_service_account_exists_and_mounts_no_token(name: str, objects: list[Obj], deployment: Obj) -> None:
    spec = pod_spec(deployment)
    assert spec is not None
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in of_kind(objects, "ServiceAccount")}
    account = accounts[(deployment["metadata"]["namespace"], spec["serviceAccountName"])]
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("name", "objects", "deployment"), WORKLOADS, ids=WORKLOAD_IDS)
def test_service_account_tokens_only_for_openbao_auth(name: str, objects: list[Obj], deployment: Obj) -> None:
    spec = pod_spec(deployment)
    assert spec is not None
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    projected = {
        v["name"]: src["serviceAccountToken"]
        for v in spec.get("volumes", [])
        for src in v.get("projected", {}).get("sources", [])
        if "serviceAccountToken" in src
    }
    if labels.get("steward.io/openbao-auth") != "true":
        assert projected == {}
        return
    role = json.loads((K8S / "openbao" / f"steward-{app_name(deployment)}-role.json").read_text())
    ((volume, token),) = projected.items()
    assert token["audience"] == role["audience"]  # never the API server's audience
    assert token["expirationSeconds"] <= 3600
    users = [c["name"] for c in pod_containers(deployment) if volume in {m["name"] for m in c.get("volumeMounts", [])}]
    # Only the OpenBao proxy sidecars (the vault runs two: data path and key administration), never the service.
    assert users[0] == "openbao-proxy" and set(users) <= {"openbao-proxy", "openbao-proxy-keys"}
    assert role["bound_service_account_names"] == [spec["serviceAccountName"]]
    assert role["bound_service_account_namespaces"] == [deployment["metadata"]["namespace"]]


@pytest.mark.parametrize(("name", "objects", "deployment"), DEPLOYMENTS, ids=IDS)
def test_tls_comes_from_a_certificate_named_after_the_service(name: str, objects: list[Obj], deployment: Obj) -> None:
    if name == "base":
        objects = objects + render(K8S / "overlays" / "prod")  # the base relies on the component
    spec = pod_spec(deployment)
    assert spec is not None
    service = deployment["metadata"]["name"]
    namespace = deployment["metadata"]["namespace"]
    (tls,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    certs = {c["spec"]["secretName"]: c for c in of_kind(objects, "Certificate")}
    cert = certs[tls["secret"]["secretName"]]["spec"]
    assert cert["commonName"] == service
    assert service in cert["dnsNames"] and f"{service}.{namespace}.svc" in cert["dnsNames"]
    issuers = {i["metadata"]["name"] for i in of_kind(objects, "Issuer")}
    assert cert["issuerRef"]["name"] in issuers
    env = config_env(objects, deployment)
    prefix = f"STEWARD_{service.upper()}__GRPC__TLS__"
    mount = next(m["mountPath"] for m in spec["containers"][0]["volumeMounts"] if m["name"] == "tls")
    assert env[prefix + "CERT_FILE"] == f"{mount}/tls.crt" and env[prefix + "KEY_FILE"] == f"{mount}/tls.key"


# Who each mTLS server admits (by the client certificate's DNS SAN), as the design has it.
CALLERS = {"vault": ["gateway", "dsr", "notify"], "dsr": ["gateway"], "notify": ["gateway"]}


@pytest.mark.parametrize(("server", "callers"), CALLERS.items())
def test_mtls_identity_matches_the_allowlist(server: str, callers: list[str]) -> None:
    objects = tree("overlays/prod")
    certs = {c["metadata"]["name"]: c["spec"] for c in of_kind(objects, "Certificate")}
    env = config_env(objects, next(d for d in of_kind(objects, "Deployment") if app_name(d) == server))
    prefix = f"STEWARD_{server.upper()}__GRPC__TLS__"
    allowed = json.loads(env[prefix + "ALLOWED_CLIENT_NAMES"])
    assert allowed == callers
    for caller in callers:
        # gRPC reports the peer's SANs (not its CN) when it has any: the name must be a DNS SAN.
        assert caller in certs[caller]["dnsNames"]
        assert "client auth" in certs[caller]["usages"]
    assert env[prefix + "CLIENT_CA_FILE"].endswith("/ca.crt")


def test_only_services_that_call_another_have_client_certificates() -> None:
    certs = {c["metadata"]["name"]: c["spec"] for c in of_kind(tree("overlays/prod"), "Certificate")}
    clients = {name for name, spec in certs.items() if "client auth" in spec.get("usages", [])}
    assert clients == {caller for callers in CALLERS.values() for caller in callers}
    assert "client auth" not in certs["vault"]["usages"]


# ------------------------------------------------------------------------------------------------ services, PDBs, HPAs


@pytest.mark.parametrize("name", APP_TREES)
def test_every_deployment_has_service_pdb_and_hpa_that_match_it(name: str) -> None:
    objects = tree(name)
    for deployment in of_kind(objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        pod = pod_of(deployment)
        (svc,) = [s for s in of_kind(objects, "Service") if s["metadata"]["name"] == deployment["metadata"]["name"]]
        assert svc["spec"]["selector"].items() <= labels.items()
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in pod.ports
        (pdb,) = [
            p for p in of_kind(objects, "PodDisruptionBudget") if p["spec"]["selector"]["matchLabels"] == selector
        ]
        assert pdb["spec"].get("maxUnavailable", 0) >= 1 or "minAvailable" in pdb["spec"]
        (hpa,) = [
            h
            for h in of_kind(objects, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        ]
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("name", APP_TREES)
def test_sqlite_deployments_never_run_twice(name: str) -> None:
    """A SQLite file per pod: two replicas (or a surge during a rollout) would split the data."""
    objects = tree(name)
    for deployment in of_kind(objects, "Deployment"):
        env = config_env(objects, deployment)
        if any(v.startswith("sqlite:") for v in env.values()):
            (hpa,) = [
                h
                for h in of_kind(objects, "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
            ]
            assert hpa["spec"]["maxReplicas"] == 1
            assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_prod_is_replicated_spread_and_guaranteed() -> None:
    objects = tree("overlays/prod")
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["minReplicas"] >= 3
    for deployment in of_kind(objects, "Deployment"):
        spec = pod_spec(deployment)
        assert spec is not None
        keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for constraint in spec["topologySpreadConstraints"]:
            assert constraint["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        for container in pod_containers(deployment):
            assert container["resources"]["requests"] == container["resources"]["limits"], container["name"]
        env = config_env(objects, deployment)
        urls = [v for k, v in env.items() if k.endswith("DATABASE_URL")]
        assert urls and all(v == "<secret>" for v in urls), "prod databases come from Secrets"
        assert re.fullmatch(r"[^@:]+@sha256:[0-9a-f]{64}", spec["containers"][0]["image"]), "prod pins a digest"


# ------------------------------------------------------------------------------------------------ settings


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in {typing.Union, types.UnionType}:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _field_path_exists(model: type[BaseModel], parts: list[str]) -> bool:
    """Does ``parts`` (a variable name after the prefix, split on ``__``) name a field of ``model``?"""
    if not parts or parts[0] not in model.model_fields:
        return False
    target = _unwrap_optional(model.model_fields[parts[0]].annotation)
    rest = parts[1:]
    if typing.get_origin(target) is dict:  # e.g. upstreams: dict[str, UpstreamSettings]
        value = typing.get_args(target)[1]
        if not rest:
            return False
        return len(rest) == 1 or (
            isinstance(value, type) and issubclass(value, BaseModel) and _field_path_exists(value, rest[1:])
        )
    if isinstance(target, type) and issubclass(target, BaseModel):
        return bool(rest) and _field_path_exists(target, rest)
    return not rest


@pytest.mark.parametrize(("name", "objects", "deployment"), DEPLOYMENTS, ids=IDS)
def test_every_variable_is_a_real_setting_and_loads(
    name: str, objects: list[Obj], deployment: Obj, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings classes ignore unknown variables, so a typo would otherwise pass silently."""
    service = deployment["metadata"]["name"]
    settings_cls = SETTINGS[service]
    prefix = f"STEWARD_{service.upper()}__"
    env = config_env(objects, deployment)
    for var in env:
        if var.startswith("STEWARD_"):
            assert var.startswith(prefix), var
            assert _field_path_exists(settings_cls, var[len(prefix) :].lower().split("__")), f"{var} is no setting"
    for var in list(os.environ):
        if var.startswith("STEWARD_"):
            monkeypatch.delenv(var)
    for var, value in env.items():
        if value == "<secret>":
            value = f"sqlite:////tmp/{var.lower()}.db" if var.endswith("DATABASE_URL") else "s" * 32
        monkeypatch.setenv(var, value)
    settings: Any = load_settings(settings_cls)
    assert settings.grpc.host == "0.0.0.0"
    assert settings.grpc.health_port == int(env[prefix + "GRPC__HEALTH_PORT"])
    assert settings.grpc.tls.enabled
    if service == "vault":
        assert settings.grpc.tls.client_ca_file is not None
        assert sorted(settings.grpc.tls.allowed_client_names) == ["dsr", "gateway", "notify"]
        assert settings.transit.token.get_secret_value() == PROXY_MARKER
    if service == "dsr":
        assert settings.grpc.tls.client_ca_file is not None and settings.grpc.tls.allowed_client_names == ["gateway"]
        assert settings.transit.token.get_secret_value() == PROXY_MARKER
        assert set(settings.upstreams) == {"vault"} and settings.upstreams["vault"].tls
        assert settings.upstreams["vault"].cert_file is not None, "the vault admits dsr by its client certificate"
    if service == "notify":
        assert settings.grpc.tls.client_ca_file is not None and settings.grpc.tls.allowed_client_names == ["gateway"]
        assert settings.transit.token.get_secret_value() == PROXY_MARKER
        assert settings.smtp.tls == "implicit" and settings.smtp.ca_file is None  # system roots, always verified
    if service == "gateway":
        assert set(settings.upstreams) == {"vault", "dsr", "notify"}
        assert all(upstream.tls and upstream.cert_file is not None for upstream in settings.upstreams.values())


# ------------------------------------------------------------------------------------------------ OpenBao proxy


def _proxy_hcl(objects: list[Obj], service: str) -> str:
    (cm,) = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == f"{service}-openbao-proxy"]
    return str(cm["data"]["proxy.hcl"])


def test_the_openbao_clients_are_exactly_the_pods_labelled_for_openbao_auth() -> None:
    labelled = {
        app_name(d)
        for d in of_kind(tree("base"), "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("steward.io/openbao-auth") == "true"
    }
    assert labelled == set(OPENBAO_CLIENTS)
    # The vault has a second role (key administration); the raft snapshot CronJob has its own in "openbao".
    roles = {f"steward-{s}-role.json" for s in labelled} | {
        "steward-vault-keys-role.json",
        "openbao-snapshot-role.json",
    }
    assert {p.name for p in (K8S / "openbao").glob("*-role.json")} == roles


@pytest.mark.parametrize("service", OPENBAO_CLIENTS)
def test_the_placeholder_token_is_really_replaced_by_the_proxy(service: str) -> None:
    objects = tree("base")
    hcl = _proxy_hcl(objects, service)
    workload = next(d for d in of_kind(objects, "Deployment") if app_name(d) == service)
    env = config_env(objects, workload)
    prefix = f"STEWARD_{service.upper()}__"
    assert env[prefix + "TRANSIT__TOKEN"] == PROXY_MARKER
    assert re.search(r'use_auto_auth_token\s*=\s*"force"', hcl)
    listen = re.search(r'listener "tcp" \{\s*address\s*=\s*"([^"]+)"', hcl)
    assert listen and listen.group(1).startswith("127.0.0.1:")
    assert env[prefix + "TRANSIT__URL"] == f"http://{listen.group(1)}"
    role = re.search(r'role\s*=\s*"([^"]+)"', hcl)
    assert role and role.group(1) == f"steward-{service}"
    token_path = re.search(r'token_path\s*=\s*"([^"]+)"', hcl)
    spec = pod_spec(workload)
    assert spec is not None
    proxy = next(c for c in spec["initContainers"] if c["name"] == "openbao-proxy")
    mounts = {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]}
    assert token_path and token_path.group(1) == f"{mounts['openbao-token']}/token"
    ca = re.search(r'ca_cert\s*=\s*"([^"]+)"', hcl)
    assert ca and ca.group(1).startswith(mounts["openbao-ca"] + "/")
    assert re.search(r'address\s*=\s*"https://', hcl), "Transit requests carry DEKs: TLS to OpenBao"


def test_the_vault_key_admin_proxy_is_a_second_identity() -> None:
    objects = tree("base")
    (cm,) = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == "vault-openbao-proxy"]
    data_hcl, keys_hcl = cm["data"]["proxy.hcl"], cm["data"]["proxy-keys.hcl"]
    workload = next(d for d in of_kind(objects, "Deployment") if app_name(d) == "vault")
    env = config_env(objects, workload)
    assert env["STEWARD_VAULT__TRANSIT_ADMIN__TOKEN"] == PROXY_MARKER
    listen = re.search(r'listener "tcp" \{\s*address\s*=\s*"([^"]+)"', keys_hcl)
    assert listen and env["STEWARD_VAULT__TRANSIT_ADMIN__URL"] == f"http://{listen.group(1)}"
    assert env["STEWARD_VAULT__TRANSIT_ADMIN__URL"] != env["STEWARD_VAULT__TRANSIT__URL"]
    role = re.search(r'role\s*=\s*"([^"]+)"', keys_hcl)
    assert role and role.group(1) == "steward-vault-keys"
    assert re.search(r'use_auto_auth_token\s*=\s*"force"', keys_hcl)
    # Everything but the role and the listener is the data-path proxy's configuration.
    uncommented = re.sub(r"(?m)^\s*#.*\n", "", keys_hcl)
    same = uncommented.replace("steward-vault-keys", "steward-vault").replace(":8101", ":8100")
    assert same == re.sub(r"(?m)^\s*#.*\n", "", data_hcl)
    spec = pod_spec(workload)
    assert spec is not None
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "openbao-proxy-keys")
    assert sidecar["args"] == ["proxy", "-config=/etc/openbao-proxy/proxy-keys.hcl"]
    admin = json.loads((K8S / "openbao" / "steward-vault-keys-role.json").read_text())
    assert admin["token_policies"] == ["steward-vault-keys"]
    data = json.loads((K8S / "openbao" / "steward-vault-role.json").read_text())
    assert "steward-vault-keys" not in data["token_policies"]


def test_policy_files_grant_no_export_backup_or_root() -> None:
    # The one policy outside Transit: the raft snapshot CronJob reads snapshots, and can do nothing else.
    snapshot = (K8S / "openbao" / "openbao-snapshot.hcl").read_text()
    assert re.findall(r'path "([^"]+)" \{(.*?)\n\}', snapshot, flags=re.S) == [
        ("sys/storage/raft/snapshot", '\n  capabilities = ["read"]')
    ]
    for path in (K8S / "openbao").glob("*.hcl"):
        if path.name == "openbao-snapshot.hcl":
            continue
        text = path.read_text()
        rules = re.findall(r'path "([^"]+)" \{(.*?)\n\}', text, flags=re.S)
        assert rules, path
        for rule_path, body in rules:
            assert not rule_path.startswith(("transit/export", "transit/backup", "transit/restore", "sys/")), rule_path
            assert "sudo" not in body and "root" not in body
            assert rule_path.startswith("transit/")
    crypto = (K8S / "openbao" / "steward-vault-crypto.hcl").read_text()
    assert set(re.findall(r'path "([^"]+)"', crypto)) == {
        "transit/encrypt/steward-tenant-*",
        "transit/decrypt/steward-tenant-*",
    }
    assert set(re.findall(r"capabilities = \[(.*?)\]", crypto)) == {'"update"'}
    # dsr: its evidence-signing key only (create/read it, sign with it), never a tenant key or a deletion.
    evidence = (K8S / "openbao" / "steward-dsr-evidence-signing.hcl").read_text()
    assert set(re.findall(r'path "([^"]+)"', evidence)) == {
        "transit/keys/steward-dsr-evidence",
        "transit/sign/steward-dsr-evidence",
    }
    assert "delete" not in re.findall(r"capabilities = \[(.*?)\]", evidence)[0]
    (dsr_config,) = load_docs(K8S / "base" / "dsr" / "configmap.yaml")
    assert dsr_config["data"]["STEWARD_DSR__TRANSIT__SIGNING_KEY"] == "steward-dsr-evidence"
    # notify: its own wrapping key only (create/read it, encrypt/decrypt with it), never a tenant key or a deletion.
    wrapping = (K8S / "openbao" / "steward-notify-transit.hcl").read_text()
    assert set(re.findall(r'path "([^"]+)"', wrapping)) == {
        "transit/keys/steward-notify",
        "transit/encrypt/steward-notify",
        "transit/decrypt/steward-notify",
        "transit/config/keys",
    }
    assert "delete" not in re.findall(r"capabilities = \[(.*?)\]", wrapping)[0]
    (notify_config,) = load_docs(K8S / "base" / "notify" / "configmap.yaml")
    assert notify_config["data"]["STEWARD_NOTIFY__TRANSIT__KEY"] == "steward-notify"


# ------------------------------------------------------------------------------------------------ network policies


def _namespaces(objects: list[Obj]) -> set[str]:
    return {o["metadata"]["name"] for o in of_kind(objects, "Namespace")} | {
        o["metadata"]["namespace"] for o in objects if o["metadata"].get("namespace")
    }


@pytest.mark.parametrize("name", ALL_TREES)
def test_every_namespace_has_a_default_deny_policy(name: str) -> None:
    objects = tree(name)
    for namespace in _namespaces(objects):
        deny = [
            p
            for p in of_kind(objects, "NetworkPolicy")
            if p["metadata"]["namespace"] == namespace
            and p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, f"namespace {namespace} has no default-deny NetworkPolicy"


def prod_network() -> tuple[Network, dict[str, Pod]]:
    objects = [o for name in ("overlays/prod", "postgres", "nats", "openbao") for o in tree(name)]
    namespaces = {o["metadata"]["name"]: o["metadata"].get("labels", {}) for o in of_kind(objects, "Namespace")}
    namespaces["crm"] = {"steward.io/gateway-client": "true"}
    net = Network(of_kind(objects, "NetworkPolicy"), namespaces)
    pods = {app_name(d): pod_of(d) for d in of_kind(objects, "Deployment") + of_kind(objects, "Job")}
    pods |= {
        "crm-app": Pod("crm-app", "crm", {"app": "crm"}),
        "stranger": Pod("stranger", "other", {"app": "stranger"}),
        "steward-stranger": Pod("steward-stranger", "steward", {"app": "debug"}),
        "nats": Pod("nats-0", "nats", {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "nats"}),
        "nats-box": Pod(
            "nats-box", "nats", {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "nats-box"}
        ),
        "openbao": Pod("openbao-0", "openbao", {"app.kubernetes.io/name": "openbao", "component": "server"}),
        "dns": Pod("coredns", "kube-system", {"k8s-app": "kube-dns"}),
        "prometheus": Pod("prometheus-0", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        "cnpg": Pod("cnpg", "cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"}),
        "ingress-controller": Pod(
            "ingress-nginx-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}
        ),
        "internet": Pod("idp", "", ip="203.0.113.10"),
        "private": Pod("private", "", ip="10.1.2.3"),
    }
    for cluster in ("gateway-db", "vault-db", "vault-tombstones-db", "dsr-db", "notify-db"):
        pods[cluster] = Pod(f"{cluster}-1", "steward-db", {"cnpg.io/cluster": cluster})
    return net, pods


FLOWS = [
    # (source, destination, port, allowed)
    ("crm-app", "gateway", 50051, True),
    ("stranger", "gateway", 50051, False),
    ("steward-stranger", "gateway", 50051, False),
    ("gateway", "vault", 50052, True),
    ("crm-app", "vault", 50052, False),
    ("vault", "gateway", 50051, False),
    ("steward-stranger", "vault", 50052, False),
    ("gateway", "nats", 4222, True),
    ("vault", "nats", 4222, True),
    ("gateway", "nats", 6222, False),
    ("stranger", "nats", 4222, False),
    ("nats-box", "nats", 4222, True),
    ("vault", "openbao", 8200, True),
    ("gateway", "openbao", 8200, False),
    ("crm-app", "openbao", 8200, False),
    ("gateway", "gateway-db", 5432, True),
    ("gateway", "vault-db", 5432, False),
    ("vault", "vault-db", 5432, True),
    ("vault", "vault-tombstones-db", 5432, True),
    ("vault", "gateway-db", 5432, False),
    ("crm-app", "vault-db", 5432, False),
    ("cnpg", "vault-db", 8000, True),
    ("vault-db", "vault-tombstones-db", 5432, True),
    # dsr: called by the gateway, calls the vault (subject resolution), signs with Transit, owns dsr-db.
    ("gateway", "dsr", 50053, True),
    ("crm-app", "dsr", 50053, False),
    ("steward-stranger", "dsr", 50053, False),
    ("vault", "dsr", 50053, False),
    ("dsr", "vault", 50052, True),
    ("dsr", "vault", 8081, False),
    ("dsr", "gateway", 50051, False),
    ("dsr", "nats", 4222, True),
    ("dsr", "openbao", 8200, True),
    ("dsr", "dsr-db", 5432, True),
    ("dsr", "vault-db", 5432, False),
    ("dsr", "gateway-db", 5432, False),
    ("vault", "dsr-db", 5432, False),
    ("gateway", "dsr-db", 5432, False),
    ("dsr", "internet", 443, False),
    # notify: called by the gateway, wraps keys with Transit, owns notify-db, sends mail to an outside relay.
    ("gateway", "notify", 50054, True),
    ("crm-app", "notify", 50054, False),
    ("vault", "notify", 50054, False),
    ("notify", "vault", 50052, True),  # subjects' addresses at send time (GetSubjectContact)
    ("notify", "gateway", 50051, False),
    ("notify", "nats", 4222, True),
    ("notify", "openbao", 8200, True),
    ("notify", "notify-db", 5432, True),
    ("notify", "dsr-db", 5432, False),
    ("dsr", "notify-db", 5432, False),
    ("notify", "internet", 465, True),
    ("notify", "internet", 587, True),
    ("notify", "internet", 443, False),
    ("notify", "private", 465, False),
    # notify's public HTTP endpoints (webhook, unsubscribe, breach ack): through the ingress controller only.
    ("ingress-controller", "notify", 8080, True),
    ("ingress-controller", "notify", 50054, False),
    ("ingress-controller", "notify", 8081, False),
    ("ingress-controller", "gateway", 50051, False),
    ("crm-app", "notify", 8080, False),
    ("stranger", "notify", 8080, False),
    ("steward-stranger", "notify", 8080, False),
    ("gateway", "notify", 8080, False),
    ("notify-migrate", "notify-db", 5432, True),
    ("notify-migrate", "internet", 465, False),
    ("notify-migrate", "openbao", 8200, False),
    ("gateway", "internet", 443, True),
    ("gateway", "private", 443, False),
    ("vault", "internet", 443, False),
    ("gateway", "vault", 8081, False),
    # The migration Jobs (components/migrations) reach their own databases and nothing else.
    ("vault-migrate", "vault-db", 5432, True),
    ("vault-migrate", "vault-tombstones-db", 5432, True),
    ("vault-migrate", "gateway-db", 5432, False),
    ("gateway-migrate", "gateway-db", 5432, True),
    ("gateway-migrate", "vault-db", 5432, False),
    ("vault-migrate", "openbao", 8200, False),
    ("vault-migrate", "nats", 4222, False),
    ("vault-migrate", "vault", 50052, False),
    ("gateway-migrate", "internet", 443, False),
    ("dsr-migrate", "dsr-db", 5432, True),
    ("dsr-migrate", "vault-db", 5432, False),
    ("dsr-migrate", "openbao", 8200, False),
    ("dsr-migrate", "nats", 4222, False),
    ("dsr-migrate", "vault", 50052, False),
    ("vault-migrate", "dsr-db", 5432, False),
    # The streams Job (components/nats-streams) reaches NATS and nothing else.
    ("nats-streams", "nats", 4222, True),
    ("nats-streams", "vault-db", 5432, False),
    ("nats-streams", "openbao", 8200, False),
    ("nats-streams", "vault", 50052, False),
    # Metrics (components/observability): Prometheus scrapes the metrics port and nothing else; nobody else scrapes.
    ("prometheus", "vault", 9464, True),
    ("prometheus", "gateway", 9464, True),
    ("prometheus", "dsr", 9464, True),
    ("prometheus", "dsr", 50053, False),
    ("prometheus", "vault", 50052, False),
    ("stranger", "vault", 9464, False),
    ("crm-app", "gateway", 9464, False),
    ("steward-stranger", "vault", 9464, False),
]


@pytest.mark.parametrize(("src", "dst", "port", "allowed"), FLOWS, ids=[f"{s}->{d}:{p}" for s, d, p, _ in FLOWS])
def test_network_policies_allow_exactly_the_designed_flows(src: str, dst: str, port: int, allowed: bool) -> None:
    net, pods = prod_network()
    assert net.allowed(pods[src], pods[dst], port) is allowed


# Each side on its own, so loosening one policy is caught even where the other side still blocks.
ADMITS = [
    ("dsr", "vault", 50052, True),
    ("dsr", "vault", 8081, False),
    ("vault", "dsr", 50053, False),
    ("gateway", "dsr", 50053, True),
    ("steward-stranger", "dsr", 50053, False),
    ("dsr", "openbao", 8200, True),
    ("dsr", "dsr-db", 5432, True),
    ("vault", "dsr-db", 5432, False),
    ("steward-stranger", "vault", 50052, False),
    ("gateway", "vault", 50052, True),
    ("crm-app", "gateway", 50051, True),
    ("steward-stranger", "gateway", 50051, False),
    ("gateway", "openbao", 8200, False),
    ("vault", "openbao", 8200, True),
    ("vault", "gateway-db", 5432, False),
]
SENDS = [
    ("gateway", "dsr", 50053, True),  # every upstream (tier label) is reachable on its grpc port
    ("gateway", "dsr", 50052, False),
    ("dsr", "vault", 50052, True),
    ("dsr", "vault", 8081, False),
    ("dsr", "gateway", 50051, False),
    ("vault", "dsr", 50053, False),
    ("dsr", "openbao", 8200, True),
    ("dsr", "dsr-db", 5432, True),
    ("dsr", "vault-db", 5432, False),
    ("gateway", "openbao", 8200, False),
]


@pytest.mark.parametrize(("src", "dst", "port", "allowed"), ADMITS, ids=[f"{s}->{d}:{p}" for s, d, p, _ in ADMITS])
def test_ingress_policies_admit_exactly_the_designed_callers(src: str, dst: str, port: int, allowed: bool) -> None:
    net, pods = prod_network()
    assert net.admits(pods[src], pods[dst], port) is allowed


@pytest.mark.parametrize(("src", "dst", "port", "allowed"), SENDS, ids=[f"{s}->{d}:{p}" for s, d, p, _ in SENDS])
def test_egress_policies_send_exactly_where_designed(src: str, dst: str, port: int, allowed: bool) -> None:
    net, pods = prod_network()
    assert net.sends(pods[src], pods[dst], port) is allowed


@pytest.mark.parametrize(
    "src",
    [
        "gateway",
        "vault",
        "dsr",
        "nats",
        "openbao",
        "vault-db",
        "dsr-db",
        "vault-migrate",
        "gateway-migrate",
        "dsr-migrate",
    ],
)
def test_every_pod_resolves_names(src: str) -> None:
    net, pods = prod_network()
    assert net.allowed(pods[src], pods["dns"], 53, "UDP")
    assert net.allowed(pods[src], pods["dns"], 53, "TCP")


def test_upstream_policies_use_the_grpc_port_names_the_pods_declare() -> None:
    objects = tree("base")
    pods: Mapping[str, Pod] = {app_name(d): pod_of(d) for d in of_kind(objects, "Deployment")}
    for name, pod in pods.items():
        assert "grpc" in pod.ports and "health" in pod.ports, name
