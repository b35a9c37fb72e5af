"""deploy/k8s/nats/values.yaml carries exactly the permission table of services/chassis/nats_permissions.py.

The Helm values cannot import Python, so the authorization block is a generated copy; this test is what
keeps the copy from drifting (it prints the block to paste when it does). The Deployments mount each
service's own seed and the NATS CA under the paths their settings name.
"""

from __future__ import annotations

import yaml

from services.chassis.nats_config import helm_authorization, nkey_env_name
from services.chassis.nats_permissions import NATS_USERS
from tests.plugins.k8s import K8S, load_docs, pod_spec, render


def test_values_authorization_is_the_python_permission_table() -> None:
    (values,) = load_docs(K8S / "nats" / "values.yaml")
    expected = helm_authorization()
    assert values["config"]["merge"]["authorization"] == expected, "paste this into values.yaml:\n" + yaml.safe_dump(
        {"authorization": expected}, sort_keys=False, width=200
    )
    assert "no_auth_user" not in values["config"]["merge"], "no anonymous NATS access"
    env = values["container"]["env"]
    for user in NATS_USERS:
        ref = env[nkey_env_name(user.name)]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "nats-users", "key": user.name}
    assert values["config"]["nats"]["tls"] == {"enabled": True, "secretName": "nats-server-tls"}


def test_each_service_mounts_its_own_nats_seed_and_the_nats_ca() -> None:
    objects = render(K8S / "base")
    maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["nats-nkey"]["secret"]["secretName"] == f"{name}-nats-nkey"
        assert volumes["nats-ca"]["configMap"]["name"] == "nats-ca"
        (container,) = spec["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        settings = maps[f"{name}-config"]
        prefix = f"STEWARD_{name.upper()}__NATS__"
        assert settings[f"{prefix}NKEY_SEED_FILE"] == f"{mounts['nats-nkey']}/seed"
        assert settings[f"{prefix}TLS_CA_FILE"] == f"{mounts['nats-ca']}/ca.crt"
