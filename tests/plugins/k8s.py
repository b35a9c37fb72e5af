"""Helpers for the deploy tests: load deploy/k8s, render kustomizations, evaluate NetworkPolicies.

:func:`render` is a deliberately small kustomize: ``resources``, ``components``, ``namespace``,
``images`` and strategic-merge ``patches`` (the only features the manifests use). Anything else in a
kustomization makes it raise, so a new kustomize feature cannot slip past the checks unrendered.
When ``kubectl`` or ``kustomize`` is installed, the tests also compare this rendering with theirs.

:class:`Network` answers "may pod A open a connection to pod B on port P" the way the NetworkPolicy
API defines it (a pod is isolated for a direction once any policy selecting it lists that direction;
traffic must then be allowed by the source's egress *and* the destination's ingress).
"""

from __future__ import annotations

import copy
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The kustomizations under K8S: the application (base and its overlays) and the dependencies it runs on.
APP_TREES = ("base", "overlays/dev", "overlays/prod")
ALL_TREES = (*APP_TREES, "postgres", "nats", "openbao")

Obj = dict[str, Any]

CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterIssuer"})
KUSTOMIZATION_KEYS = frozenset({"apiVersion", "kind", "namespace", "resources", "components", "patches", "images"})
# Strategic-merge keys of the lists the manifests patch (everything else is replaced wholesale).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}


class RenderError(Exception):
    """A kustomization refers to something missing or uses a feature the renderer does not know."""


def yaml_files() -> list[Path]:
    """Every YAML file under deploy/k8s."""
    return sorted(p for p in K8S.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def load_docs(path: Path) -> list[Any]:
    """All YAML documents of a file (empty documents dropped)."""
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def kustomization_dirs() -> list[Path]:
    """Every folder with a kustomization.yaml."""
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def key(obj: Obj) -> tuple[str, str, str]:
    """(kind, namespace, name) of an object."""
    meta = obj.get("metadata", {})
    return obj["kind"], meta.get("namespace", ""), meta["name"]


# ------------------------------------------------------------------------------------------------ rendering


def _strategic_merge(base: Any, patch: Any, list_key: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for name, value in patch.items():
            if value is None:
                out.pop(name, None)
            elif name in out:
                out[name] = _strategic_merge(out[name], value, name)
            else:
                out[name] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and list_key in MERGE_KEYS:
        merge_key = MERGE_KEYS[list_key]
        out_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            match = next((i for i, old in enumerate(out_list) if old.get(merge_key) == item.get(merge_key)), None)
            if match is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[match] = _strategic_merge(out_list[match], item)
        return out_list
    return copy.deepcopy(patch)


def _apply_patches(objects: list[Obj], folder: Path, patches: Iterable[Any]) -> None:
    for entry in patches:
        if not isinstance(entry, dict) or set(entry) != {"path"}:
            raise RenderError(f"{folder}: only 'patches: - path: <file>' (strategic merge) is supported: {entry}")
        path = folder / entry["path"]
        if not path.is_file():
            raise RenderError(f"{folder}/kustomization.yaml: patch {entry['path']} does not exist")
        for doc in load_docs(path):
            matches = [
                i
                for i, obj in enumerate(objects)
                if obj["kind"] == doc["kind"] and obj["metadata"]["name"] == doc["metadata"]["name"]
            ]
            if len(matches) != 1:
                raise RenderError(f"{path}: patch for {doc['kind']}/{doc['metadata']['name']} matches {len(matches)}")
            objects[matches[0]] = _strategic_merge(objects[matches[0]], doc)


def _set_images(objects: list[Obj], images: Iterable[Mapping[str, str]]) -> None:
    for obj in objects:
        for container in pod_containers(obj):
            for image in images:
                if container.get("image") == image["name"]:
                    name = image.get("newName", image["name"])
                    if "digest" in image:
                        container["image"] = f"{name}@{image['digest']}"
                    else:
                        container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else name


def render(folder: Path) -> list[Obj]:
    """The objects ``kubectl kustomize folder`` produces (for the features the manifests use)."""
    path = folder / "kustomization.yaml"
    if not path.is_file():
        raise RenderError(f"{folder} has no kustomization.yaml")
    (kz,) = load_docs(path)
    unknown = set(kz) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{path}: unsupported fields {sorted(unknown)} (extend tests/plugins/k8s.py)")
    objects: list[Obj] = []
    for entry in kz.get("resources", []):
        target = folder / entry
        if target.is_dir():
            objects.extend(render(target))
        elif target.is_file():
            objects.extend(copy.deepcopy(doc) for doc in load_docs(target))
        else:
            raise RenderError(f"{path}: resource {entry} does not exist")
    for entry in kz.get("components", []):
        component = folder / entry
        (ckz,) = (
            load_docs(component / "kustomization.yaml") if (component / "kustomization.yaml").is_file() else (None,)
        )
        if ckz is None or ckz.get("kind") != "Component":
            raise RenderError(f"{path}: component {entry} is missing or not a kind: Component")
        unknown = set(ckz) - KUSTOMIZATION_KEYS
        if unknown:
            raise RenderError(f"{component}: unsupported fields {sorted(unknown)}")
        for res in ckz.get("resources", []):
            if not (component / res).is_file():
                raise RenderError(f"{component}/kustomization.yaml: resource {res} does not exist")
            objects.extend(load_docs(component / res))
        _apply_patches(objects, component, ckz.get("patches", []))
    _apply_patches(objects, folder, kz.get("patches", []))
    namespace = kz.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = namespace
    _set_images(objects, kz.get("images", []))
    return objects


def normalized(value: Any, list_key: str | None = None) -> Any:
    """``value`` with strategically merged lists sorted by their merge key (their order carries no meaning
    here, and kustomize puts patched-in items first while this renderer appends them)."""
    if isinstance(value, dict):
        return {k: normalized(v, k) for k, v in value.items()}
    if isinstance(value, list):
        items = [normalized(v) for v in value]
        if list_key in MERGE_KEYS:
            items.sort(key=lambda item: str(item.get(MERGE_KEYS[list_key])))
        return items
    return value


def kustomize_binary() -> list[str] | None:
    """The command that renders a kustomization, if one is installed (never downloaded)."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def require_tool(found: object, what: str) -> None:
    """Skip a test whose tool is missing on a workstation; under ``CI=true`` fail instead, so CI can never pass a
    check it did not run."""
    if found:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required in CI (CI=true) and is not installed")
    pytest.skip(f"{what} is not installed")


def render_with_binary(command: list[str], folder: Path) -> list[Obj]:
    """Render with the real kustomize."""
    out = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=120, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc is not None]


# ------------------------------------------------------------------------------------------------ pod helpers


def pod_spec(obj: Obj) -> dict[str, Any] | None:
    """The pod template spec of a workload, else None."""
    if obj.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def pod_containers(obj: Obj) -> Iterator[dict[str, Any]]:
    """Every container and init container of a workload."""
    spec = pod_spec(obj)
    if spec is None:
        return
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def is_sidecar(container: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """A native sidecar: an init container with restartPolicy Always."""
    return container in spec.get("initContainers", []) and container.get("restartPolicy") == "Always"


# ------------------------------------------------------------------------------------------------ network


@dataclass(frozen=True)
class Pod:
    """A pod as NetworkPolicies see it; ``ip`` set for endpoints outside the cluster."""

    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    ip: str = ""


def _selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return False
    for name, value in selector.get("matchLabels", {}).items():
        if labels.get(name) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        op = expr["operator"]
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and present and value in expr["values"]:
            return False
    return True


class Network:
    """NetworkPolicy evaluation over a set of policies, namespaces (with labels) and pods."""

    def __init__(self, policies: Iterable[Obj], namespace_labels: Mapping[str, Mapping[str, str]]) -> None:
        self.policies = list(policies)
        self.namespace_labels = {
            ns: {"kubernetes.io/metadata.name": ns, **labels} for ns, labels in namespace_labels.items()
        }

    def _ns_labels(self, namespace: str) -> Mapping[str, str]:
        return self.namespace_labels.get(namespace, {"kubernetes.io/metadata.name": namespace})

    def _selecting(self, pod: Pod, direction: str) -> list[Obj]:
        return [
            p
            for p in self.policies
            if pod.ip == ""
            and p["metadata"].get("namespace") == pod.namespace
            and direction in p["spec"].get("policyTypes", ["Ingress"])
            and _selector_matches(p["spec"]["podSelector"], pod.labels)
        ]

    def _peer_matches(self, peer: Mapping[str, Any], policy_ns: str, other: Pod) -> bool:
        if "ipBlock" in peer:
            if not other.ip:
                return False  # pod-to-pod traffic is matched by selectors in these manifests
            addr = ipaddress.ip_address(other.ip)
            block = peer["ipBlock"]
            if addr not in ipaddress.ip_network(block["cidr"]):
                return False
            return not any(addr in ipaddress.ip_network(ex) for ex in block.get("except", []))
        if other.ip:
            return False
        ns_sel = peer.get("namespaceSelector")
        pod_sel = peer.get("podSelector")
        if ns_sel is not None:
            if not _selector_matches(ns_sel, self._ns_labels(other.namespace)):
                return False
        elif other.namespace != policy_ns:
            return False
        return pod_sel is None or _selector_matches(pod_sel, other.labels)

    @staticmethod
    def _port_matches(ports: list[Mapping[str, Any]] | None, dest: Pod, port: int, protocol: str) -> bool:
        if not ports:
            return True
        for entry in ports:
            if entry.get("protocol", "TCP") != protocol:
                continue
            wanted = entry.get("port")
            if wanted is None:
                return True
            if isinstance(wanted, str):
                if dest.ports.get(wanted) == port:
                    return True
            elif wanted == port:
                return True
        return False

    def allowed(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        """May ``src`` open a connection to ``dst`` on ``port`` (its egress and the destination's ingress)?"""
        return self.sends(src, dst, port, protocol) and self.admits(src, dst, port, protocol)

    def sends(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        """Do ``src``'s egress policies let it send to ``dst`` on ``port``?"""
        egress = self._selecting(src, "Egress")
        return not egress or any(
            self._peer_matches(peer, p["metadata"]["namespace"], dst)
            and self._port_matches(rule.get("ports"), dst, port, protocol)
            for p in egress
            for rule in p["spec"].get("egress", [])
            for peer in (rule.get("to") or [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"namespaceSelector": {}}])
        )

    def admits(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        """Do ``dst``'s ingress policies admit ``src`` on ``port``?"""
        ingress = self._selecting(dst, "Ingress")
        return not ingress or any(
            self._peer_matches(peer, p["metadata"]["namespace"], src)
            and self._port_matches(rule.get("ports"), dst, port, protocol)
            for p in ingress
            for rule in p["spec"].get("ingress", [])
            for peer in (rule.get("from") or [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"namespaceSelector": {}}])
        )


def pod_of(deployment: Obj) -> Pod:
    """The pod a Deployment runs, with its named container ports."""
    template = deployment["spec"]["template"]
    ports = {
        p["name"]: p["containerPort"] for c in pod_containers(deployment) for p in c.get("ports", []) if "name" in p
    }
    return Pod(
        name=deployment["metadata"]["name"],
        namespace=deployment["metadata"]["namespace"],
        labels=template["metadata"]["labels"],
        ports=ports,
    )
