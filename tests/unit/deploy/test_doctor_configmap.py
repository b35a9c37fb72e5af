"""``configmap/steward-doctor`` (deploy/k8s/base/common) says what ``steward doctor --kube`` reads, and agrees with
the manifests it describes: the services' NATS address and declared stream replicas, and the OpenBao nodes."""

from __future__ import annotations

import fnmatch
import re

import pytest

from services.devstack.doctor import DOCTOR_CONFIGMAP, endpoints_from_configmap
from tests.plugins.k8s import APP_TREES, K8S, Obj, load_docs, render

SERVICES = ("gateway", "vault", "dsr", "notify")


def _config_maps(tree: str) -> dict[str, dict[str, str]]:
    objects: list[Obj] = render(K8S / tree)
    return {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}


@pytest.mark.parametrize("tree", APP_TREES)
def test_every_key_is_one_doctor_reads(tree: str) -> None:
    data = _config_maps(tree)[DOCTOR_CONFIGMAP]
    assert set(endpoints_from_configmap(data)) == set(data), "a key doctor ignores (misspelt?) or cannot parse"


@pytest.mark.parametrize("tree", APP_TREES)
def test_nats_address_and_replicas_are_the_services_own(tree: str) -> None:
    maps = _config_maps(tree)
    doctor = endpoints_from_configmap(maps[DOCTOR_CONFIGMAP])
    for service in SERVICES:
        env = maps[f"{service}-config"]
        prefix = f"STEWARD_{service.upper()}__NATS__"
        assert env[f"{prefix}URL"] == doctor["nats_url"], service
        assert int(env.get(f"{prefix}STREAM_REPLICAS", "1")) == doctor["min_replicas"], service


def test_every_openbao_node_is_checked_under_a_name_its_certificate_holds() -> None:
    doctor = endpoints_from_configmap(_config_maps("base")[DOCTOR_CONFIGMAP])
    values = (K8S / "openbao" / "values.yaml").read_text()
    nodes = set(re.findall(r'leader_api_addr\s*=\s*"https://([a-z0-9-]+)\.', values))
    urls = doctor["openbao_urls"]
    assert isinstance(urls, tuple)
    assert {url.split("//", 1)[1].split(".", 1)[0] for url in urls} == nodes
    (certificate,) = [d for d in load_docs(K8S / "openbao" / "tls.yaml") if d["metadata"]["name"] == "openbao-server"]
    for url in urls:
        host = url.split("//", 1)[1].rsplit(":", 1)[0]
        # A certificate wildcard covers exactly one label, like fnmatch's "*" when the label has no dot.
        assert any(
            fnmatch.fnmatch(host, name) and host.count(".") == name.count(".")
            for name in certificate["spec"]["dnsNames"]
        ), host
