"""Every rendered object is valid for the Kubernetes API, and every Helm values file for its chart.

Built-in kinds are checked with ``kubernetes-validate`` in strict mode (unknown fields rejected) against the oldest
Kubernetes the manifests support (deploy/k8s/README.md) and the newest the package knows. Custom kinds
(cert-manager, CloudNativePG) are checked against the CRDs vendored in deploy/vendor/crds, made strict the way
the API server treats structural schemas: unknown fields are an error unless the schema preserves them.
Helm values: OpenBao's chart ships a values schema (validated as Helm does, and every key must be one it
declares); NATS's does not, so every key must be one of the chart's defaults.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.plugins.k8s import ALL_TREES, K8S, Obj, key, load_docs, render

VENDOR = K8S.parent / "vendor"
MIN_KUBERNETES = "1.29.0"  # deploy/k8s/README.md "Requirements"
KUBERNETES_VERSIONS = (MIN_KUBERNETES, kubernetes_validate.latest_version() + ".0")


def strict(schema: Any) -> Any:
    """An OpenAPI v3 (CRD) schema as JSON Schema that rejects unknown fields, as the API server prunes/refuses."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, for every served version of the vendored CRDs."""
    schemas = {}
    for path in sorted((VENDOR / "crds").glob("*.yaml")):
        for crd in load_docs(path):
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return schemas


def objects() -> Iterator[tuple[str, Obj]]:
    """Every object of every kustomization, as rendered (what kubectl would send to the API server)."""
    for tree in ALL_TREES:
        for obj in render(K8S / tree):
            yield tree, obj


OBJECTS = list(objects())


@pytest.mark.parametrize(("tree", "obj"), OBJECTS, ids=[f"{t}:{o['kind']}/{o['metadata']['name']}" for t, o in OBJECTS])
def test_every_rendered_object_matches_its_schema(tree: str, obj: Obj) -> None:
    custom = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if custom is not None:
        jsonschema.Draft7Validator(custom).validate(obj)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_schemas_reject_unknown_and_misplaced_fields() -> None:
    """The checks above can fail: a typo in a built-in or a custom object is refused."""
    ((_, deployment),) = [
        (t, o) for t, o in OBJECTS if t == "overlays/prod" and key(o)[0::2] == ("Deployment", "vault")
    ]
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["comand"] = ["sleep"]
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(broken, MIN_KUBERNETES, strict=True)
    ((_, cluster),) = [(t, o) for t, o in OBJECTS if o["kind"] == "Cluster" and o["metadata"]["name"] == "vault-db"]
    broken = copy.deepcopy(cluster)
    broken["spec"]["minSyncReplica"] = 1
    with pytest.raises(jsonschema.ValidationError, match="minSyncReplica"):
        jsonschema.Draft7Validator(crd_schemas()[("postgresql.cnpg.io/v1", "Cluster")]).validate(broken)


def test_custom_kinds_in_use_all_have_a_vendored_crd() -> None:
    builtin_groups = {"v1", "apps/v1", "batch/v1", "networking.k8s.io/v1", "policy/v1", "autoscaling/v2"}
    custom = {(o["apiVersion"], o["kind"]) for _, o in OBJECTS if o["apiVersion"] not in builtin_groups}
    assert custom and custom <= set(crd_schemas()), sorted(custom - set(crd_schemas()))


# ------------------------------------------------------------------------------------------------ Helm values


def _paths(values: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(values, dict):
        for name, sub in values.items():
            yield (*prefix, str(name))
            yield from _paths(sub, (*prefix, str(name)))


def _undeclared_in_schema(schema: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Is ``path`` a key the schema does not declare (below a node that lists its properties)?"""
    node = schema
    for part in path:
        properties = node.get("properties")
        if properties is None:
            return False  # a free-form object (e.g. extraEnvironmentVars): any key is the chart's to take
        if part not in properties:
            return True
        node = properties[part]
    return False


def test_openbao_values_match_the_charts_schema() -> None:
    schema = json.loads((VENDOR / "charts" / "openbao-0.29.2" / "values.schema.json").read_text())
    (values,) = load_docs(K8S / "openbao" / "values.yaml")
    jsonschema.Draft7Validator(schema).validate(values)
    assert [p for p in _paths(values) if _undeclared_in_schema(schema, p)] == []
    assert _undeclared_in_schema(schema, ("server", "ha", "raft", "enabeld"))  # the check can fail


# Keys of the NATS chart whose value is free-form (merged into the generated config or patched into objects).
NATS_FREE_FORM = {"merge", "patch"}


def _unknown_in_defaults(defaults: Any, path: tuple[str, ...]) -> bool:
    node = defaults
    for part in path:
        if part in NATS_FREE_FORM:
            return False
        if not isinstance(node, dict):
            return True
        if part not in node:
            return node != {}  # an empty map in the defaults takes any key
        node = node[part]
    return False


def test_nats_values_use_only_the_charts_keys() -> None:
    defaults = yaml.safe_load((VENDOR / "charts" / "nats-2.14.2" / "values.yaml").read_text())
    (values,) = load_docs(K8S / "nats" / "values.yaml")
    assert [p for p in _paths(values) if _unknown_in_defaults(defaults, p)] == []
    assert _unknown_in_defaults(defaults, ("config", "jetstream", "fileStorage"))  # the check can fail


def test_every_values_file_is_checked() -> None:
    checked = {K8S / "openbao" / "values.yaml", K8S / "nats" / "values.yaml"}
    assert set(K8S.rglob("values.yaml")) == checked
