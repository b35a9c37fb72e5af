"""deploy/k8s/openbao against a real OpenBao: the policies, the Kubernetes auth roles and the proxy sidecars.

The vault's own :class:`~services.chassis.transit.TransitClient` (and dsr's evidence signer on one) runs every
operation it performs in production with a token holding exactly the shipped policies, and everything the
policies must refuse (exportable keys, backups, turning upserts back on, another key prefix, another service's
keys) is tried and refused. The proxy tests run ``bao proxy`` with the shipped configuration of each service
(only the login method and the addresses swapped for a local dev server) and its placeholder token.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests

from services.chassis.errors import Unavailable
from services.chassis.signatures import signature_verifies
from services.chassis.transit import KeyUnavailable, TransitClient
from services.devstack.devca import ensure_dev_pki
from services.dsr.evidence import EvidenceSigner
from tests.plugins.infra import OpenBaoDev, free_port, wait_for_port, which
from tests.plugins.k8s import K8S, load_docs

VAULT_POLICIES = ("steward-vault-crypto", "steward-vault-keys", "steward-vault-audit-signing")
DSR_POLICIES = ("steward-dsr-evidence-signing",)
NOTIFY_POLICIES = ("steward-notify-transit",)
# Kubernetes auth role (steward-<name>) -> its policies; the vault's two roles split data path and key admin.
ROLE_POLICIES = {
    "vault": ("steward-vault-crypto", "steward-vault-audit-signing"),
    "vault-keys": ("steward-vault-keys",),
    "dsr": DSR_POLICIES,
    "notify": NOTIFY_POLICIES,
}
ROLE_ACCOUNTS = {"vault": "vault", "vault-keys": "vault", "dsr": "dsr", "notify": "notify"}
# openbao-snapshot (the raft snapshot CronJob's) is tested in test_openbao_backup_restore.py.
POLICIES = (*VAULT_POLICIES, *DSR_POLICIES, *NOTIFY_POLICIES, "steward-oncall-read", "openbao-snapshot")
# As services/dsr/main.py builds its client: a tenant-key prefix no tenant key has, the evidence key by name.
DSR_KEY_PREFIX = "steward-dsr-no-tenant-keys-"
DSR_SIGNING_KEY = "steward-dsr-evidence"
AAD = b"v1|tenant|key"


def _root(openbao: OpenBaoDev) -> hvac.Client:
    return hvac.Client(url=openbao.url, token=openbao.token)


@pytest.fixture
def policies(openbao: OpenBaoDev) -> OpenBaoDev:
    root = _root(openbao)
    for name in POLICIES:
        root.sys.create_or_update_policy(name, (K8S / "openbao" / f"{name}.hcl").read_text())
    return openbao


def _token(openbao: OpenBaoDev, *policy_names: str, default_policy: bool = False) -> str:
    # Without OpenBao's "default" policy, so only the shipped policies decide (the role keeps it: the
    # proxy needs its renew-self).
    reply = _root(openbao).auth.token.create(
        policies=list(policy_names), ttl="10m", no_default_policy=not default_policy
    )
    return str(reply["auth"]["client_token"])


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def _vault_client(openbao: OpenBaoDev, url: str | None = None, token: str | None = None) -> TransitClient:
    return TransitClient(url or openbao.url, token or _token(openbao, *VAULT_POLICIES))


def _dsr_signer(openbao: OpenBaoDev, url: str | None = None, token: str | None = None) -> EvidenceSigner:
    transit = TransitClient(
        url or openbao.url,
        token or _token(openbao, *DSR_POLICIES),
        key_prefix=DSR_KEY_PREFIX,
        signing_key=DSR_SIGNING_KEY,
    )
    return EvidenceSigner(transit)


def _notify_transit(openbao: OpenBaoDev, token: str | None = None) -> TransitClient:
    # As services/notify/main.py builds it: key "steward-" + "notify", a signing-key name it never uses.
    return TransitClient(
        openbao.url,
        token or _token(openbao, *NOTIFY_POLICIES),
        key_prefix="steward-",
        signing_key="notify-signs-nothing",
    )


def test_vault_policies_allow_everything_the_vault_does(policies: OpenBaoDev) -> None:
    transit = _vault_client(policies)
    tenant = _tenant()
    transit.create_tenant_key(tenant)  # also sets disable_upsert on the mount
    transit.create_tenant_key(tenant)  # idempotent retry of CreateTenant
    assert transit.key_info(tenant).latest_version == 1
    (wrapped,) = transit.wrap(tenant, [(b"k" * 32, AAD)])
    assert transit.unwrap(tenant, [(wrapped, AAD)]) == [b"k" * 32]
    assert transit.rotate(tenant) == 2
    (rewrapped,) = transit.rewrap(tenant, [(wrapped, AAD)])
    assert rewrapped.startswith("vault:v2:")
    transit.set_min_decryption_version(tenant, 2)
    assert transit.key_info(tenant).min_decryption_version == 2
    transit.delete_tenant_key(tenant)  # ShredTenant: allow deletion, then delete
    with pytest.raises(KeyUnavailable):
        transit.key_info(tenant)
    transit.create_signing_key()  # vault start-up; idempotent
    (signature,) = transit.sign([b"checkpoint"])  # audit checkpoints
    public_key = transit.signing_public_key(signature.key_version)
    assert public_key is not None and signature_verifies(public_key, b"checkpoint", signature.value)


SIGNING_KEY = "transit/keys/steward-audit-signing"
NEVER_SIGNING = [
    ("delete the signing key", "delete", SIGNING_KEY, None),
    ("allow its deletion", "post", f"{SIGNING_KEY}/config", {"deletion_allowed": True}),
    ("make it exportable", "post", f"{SIGNING_KEY}/config", {"exportable": True}),
    ("recreate it exportable", "post", SIGNING_KEY, {"type": "ed25519", "exportable": True}),
    ("export it", "get", "transit/export/signing-key/steward-audit-signing", None),
    ("back it up", "get", "transit/backup/steward-audit-signing", None),
    ("rotate it", "post", f"{SIGNING_KEY}/rotate", None),
]


def test_dsr_policy_allows_everything_dsr_does(policies: OpenBaoDev) -> None:
    signer = _dsr_signer(policies)
    signer.ensure_key()  # dsr start-up
    signer.ensure_key()  # every later start-up: the key exists
    assert signer.key_name == DSR_SIGNING_KEY
    (signature,) = signer.sign(["ab" * 32])
    public_key = signer.public_key(signature.key_version)
    assert public_key is not None and signature_verifies(public_key, ("ab" * 32).encode("ascii"), signature.value)


EVIDENCE_KEY = f"transit/keys/{DSR_SIGNING_KEY}"
NEVER_DSR = [
    ("delete the evidence key", "delete", EVIDENCE_KEY, None),
    ("allow its deletion", "post", f"{EVIDENCE_KEY}/config", {"deletion_allowed": True}),
    ("make it exportable", "post", f"{EVIDENCE_KEY}/config", {"exportable": True}),
    ("recreate it exportable", "post", EVIDENCE_KEY, {"type": "ed25519", "exportable": True}),
    ("other key type", "post", EVIDENCE_KEY, {"type": "aes256-gcm96"}),
    ("export it", "get", f"transit/export/signing-key/{DSR_SIGNING_KEY}", None),
    ("back it up", "get", f"transit/backup/{DSR_SIGNING_KEY}", None),
    ("rotate it", "post", f"{EVIDENCE_KEY}/rotate", None),
    ("create a tenant key", "post", "transit/keys/steward-tenant-{t}", {"type": "aes256-gcm96"}),
    ("read a tenant key", "get", "transit/keys/steward-tenant-{t}", None),
    ("wrap with a tenant key", "post", "transit/encrypt/steward-tenant-{t}", {"plaintext": "AAAA"}),
    ("sign with the vault's audit key", "post", "transit/sign/steward-audit-signing", {"input": "AAAA"}),
    ("create another key", "post", "transit/keys/other-{t}", {"type": "ed25519"}),
    ("list keys", "list", "transit/keys", None),
    ("change the mount", "post", "transit/config/keys", {"disable_upsert": False}),
]


@pytest.mark.parametrize(("label", "method", "path", "body"), NEVER_DSR, ids=[n[0] for n in NEVER_DSR])
def test_dsr_policy_grants_its_evidence_key_and_nothing_else(
    policies: OpenBaoDev, label: str, method: str, path: str, body: dict[str, object] | None
) -> None:
    tenant = _tenant()
    _vault_client(policies).create_tenant_key(tenant)
    _vault_client(policies).create_signing_key()
    token = _token(policies, *DSR_POLICIES)
    _dsr_signer(policies, token=token).ensure_key()
    reply = requests.request(
        method.upper(),
        f"{policies.url}/v1/{path.format(t=tenant)}",
        json=body,
        headers={"X-Vault-Token": token},
        timeout=10,
    )
    assert reply.status_code == 403, (label, reply.status_code)


@pytest.mark.parametrize(("label", "method", "path", "body"), NEVER_SIGNING, ids=[n[0] for n in NEVER_SIGNING])
def test_vault_policies_never_let_the_audit_signing_key_go(
    policies: OpenBaoDev, label: str, method: str, path: str, body: dict[str, object] | None
) -> None:
    token = _token(policies, *VAULT_POLICIES)
    _vault_client(policies, token=token).create_signing_key()
    reply = requests.request(
        method, f"{policies.url}/v1/{path}", json=body, headers={"X-Vault-Token": token}, timeout=10
    )
    assert reply.status_code == 403, (label, reply.status_code)


NEVER = [
    ("exportable key", "post", "transit/keys/steward-tenant-{t}x", {"type": "aes256-gcm96", "exportable": True}),
    ("backup-able key", "post", "transit/keys/steward-tenant-{t}y", {"allow_plaintext_backup": True}),
    ("derived key", "post", "transit/keys/steward-tenant-{t}z", {"type": "aes256-gcm96", "derived": True}),
    ("other key type", "post", "transit/keys/steward-tenant-{t}r", {"type": "rsa-4096"}),
    ("other key prefix", "post", "transit/keys/other-{t}", {"type": "aes256-gcm96"}),
    ("make exportable", "post", "transit/keys/steward-tenant-{t}/config", {"exportable": True}),
    ("allow plaintext backup", "post", "transit/keys/steward-tenant-{t}/config", {"allow_plaintext_backup": True}),
    ("trim versions", "post", "transit/keys/steward-tenant-{t}/trim", {"min_available_version": 1}),
    ("upserts back on", "post", "transit/config/keys", {"disable_upsert": False}),
    ("export", "get", "transit/export/encryption-key/steward-tenant-{t}", None),
    ("backup", "get", "transit/backup/steward-tenant-{t}", None),
    ("other mount", "post", "sys/mounts/transit2", {"type": "transit"}),
]


@pytest.mark.parametrize(("label", "method", "path", "body"), NEVER, ids=[n[0] for n in NEVER])
def test_vault_policies_never_let_key_material_out(
    policies: OpenBaoDev, label: str, method: str, path: str, body: dict[str, object] | None
) -> None:
    token = _token(policies, "steward-vault-crypto", "steward-vault-keys")
    tenant = _tenant()
    _vault_client(policies, token=token).create_tenant_key(tenant)
    reply = requests.request(
        method, f"{policies.url}/v1/{path.format(t=tenant)}", json=body, headers={"X-Vault-Token": token}, timeout=10
    )
    assert reply.status_code == 403, (label, reply.status_code)


def test_crypto_policy_alone_wraps_but_manages_no_key(policies: OpenBaoDev) -> None:
    tenant = _tenant()
    _vault_client(policies).create_tenant_key(tenant)
    crypto = _vault_client(policies, token=_token(policies, "steward-vault-crypto"))
    (wrapped,) = crypto.wrap(tenant, [(b"k" * 32, AAD)])
    assert crypto.unwrap(tenant, [(wrapped, AAD)]) == [b"k" * 32]
    for attempt in (
        lambda: crypto.rotate(tenant),
        lambda: crypto.key_info(tenant),
        lambda: crypto.create_tenant_key(_tenant()),
    ):
        with pytest.raises(Unavailable):  # 403 is an outage to the vault: UNAVAILABLE, never a key change
            attempt()


def test_oncall_policy_reads_versions_and_nothing_else(policies: OpenBaoDev) -> None:
    tenant = _tenant()
    _vault_client(policies).create_tenant_key(tenant)
    oncall = _vault_client(policies, token=_token(policies, "steward-oncall-read"))
    info = oncall.key_info(tenant)
    assert (info.latest_version, info.exportable, info.allow_plaintext_backup) == (1, False, False)
    with pytest.raises(Unavailable):
        oncall.wrap(tenant, [(b"k" * 32, AAD)])
    with pytest.raises(Unavailable):
        oncall.rotate(tenant)


@pytest.mark.parametrize("service", ROLE_POLICIES)
def test_kubernetes_auth_role_file_is_accepted(openbao: OpenBaoDev, tmp_path: Path, service: str) -> None:
    """The role JSON is written exactly as README.md says (``bao write ... @file``), on its own mount."""
    mount = f"kubernetes-{uuid.uuid4().hex[:8]}"
    ca = ensure_dev_pki(tmp_path / "tls", [])[0].ca_file  # any CA certificate will do here
    env = {"BAO_ADDR": openbao.url, "BAO_TOKEN": openbao.token, "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    bao = which("bao")

    def run(*args: str) -> str:
        return subprocess.run([bao, *args], env=env, check=True, capture_output=True, text=True, timeout=30).stdout

    run("auth", "enable", f"-path={mount}", "kubernetes")
    # Outside a pod there is no local CA/JWT, so this one call differs from the README's in-cluster one.
    run("write", f"auth/{mount}/config", "kubernetes_host=https://kubernetes.default.svc",
        "disable_local_ca_jwt=true", f"kubernetes_ca_cert=@{ca}")  # fmt: skip
    role_name = f"steward-{service}"
    run("write", f"auth/{mount}/role/{role_name}", f"@{K8S / 'openbao' / f'{role_name}-role.json'}")
    role = _root(openbao).read(f"auth/{mount}/role/{role_name}")["data"]
    assert role["bound_service_account_names"] == [ROLE_ACCOUNTS[service]]
    assert role["bound_service_account_namespaces"] == ["steward"]
    assert role["audience"] == "openbao"
    assert sorted(role["token_policies"]) == sorted(ROLE_POLICIES[service])


def test_every_shipped_policy_is_tested_here() -> None:
    assert {p.stem for p in (K8S / "openbao").glob("*.hcl")} == set(POLICIES)


@pytest.fixture
def proxy(policies: OpenBaoDev, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """``bao proxy`` with a service's shipped config (indirect param, default the vault's); a token file with
    its role's policies stands in for the Kubernetes login."""
    service = getattr(request, "param", "vault")
    folder, key, listen = (service, "proxy.hcl", "8100")
    if service == "vault-keys":  # the vault's second sidecar: its own file in the same ConfigMap
        folder, key, listen = ("vault", "proxy-keys.hcl", "8101")
    (cm,) = load_docs(K8S / "base" / folder / "openbao-proxy-config.yaml")
    config = cm["data"][key]
    token_file = tmp_path / "token"
    token_file.write_text(_token(policies, *ROLE_POLICIES[service], default_policy=True))
    port = free_port()
    config, n_addr = re.subn(r'address = "https://[^"]+"', f'address = "{policies.url}"', config)
    config, n_ca = re.subn(r'\n\s*ca_cert = "[^"]+"', "", config)
    config, n_method = re.subn(
        r'method "kubernetes" \{.*?\n  \}\n',
        f'method "token_file" {{\n    config = {{\n      token_file_path = "{token_file}"\n    }}\n  }}\n',
        config,
        flags=re.S,
    )
    config, n_listen = re.subn(rf'"127\.0\.0\.1:{listen}"', f'"127.0.0.1:{port}"', config)
    assert (n_addr, n_ca, n_method, n_listen) == (1, 1, 1, 1), "the shipped proxy config changed shape"
    (tmp_path / "proxy.hcl").write_text(config)
    log = (tmp_path / "proxy.log").open("wb")
    proc = subprocess.Popen([which("bao"), "proxy", f"-config={tmp_path / 'proxy.hcl'}"], stdout=log, stderr=log)
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_proxy_replaces_the_placeholder_token(policies: OpenBaoDev, proxy: str) -> None:
    (cm,) = load_docs(K8S / "base" / "vault" / "configmap.yaml")
    placeholder = cm["data"]["STEWARD_VAULT__TRANSIT__TOKEN"]
    direct = _vault_client(policies, token=placeholder)
    with pytest.raises(Unavailable):  # the placeholder is worth nothing on its own
        direct.create_tenant_key(_tenant())
    through_proxy = _vault_client(policies, url=proxy, token=placeholder)
    tenant = _tenant()
    _vault_client(policies).create_tenant_key(tenant)  # the key-administration proxy's job (next test)
    (wrapped,) = through_proxy.wrap(tenant, [(b"k" * 32, AAD)])
    assert through_proxy.unwrap(tenant, [(wrapped, AAD)]) == [b"k" * 32]
    assert through_proxy.healthy()
    with pytest.raises(Unavailable):  # the data-path role administers no key
        through_proxy.delete_tenant_key(tenant)


@pytest.mark.parametrize("proxy", ["vault-keys"], indirect=True)
def test_key_admin_proxy_manages_keys_and_reads_no_data(policies: OpenBaoDev, proxy: str) -> None:
    (cm,) = load_docs(K8S / "base" / "vault" / "configmap.yaml")
    assert cm["data"]["STEWARD_VAULT__TRANSIT_ADMIN__URL"] == "http://127.0.0.1:8101"
    placeholder = cm["data"]["STEWARD_VAULT__TRANSIT_ADMIN__TOKEN"]
    admin = _vault_client(policies, url=proxy, token=placeholder)
    tenant = _tenant()
    admin.create_tenant_key(tenant)
    assert admin.rotate(tenant) == 2
    with pytest.raises(Unavailable):  # no data path through this identity
        admin.wrap(tenant, [(b"k" * 32, AAD)])
    admin.delete_tenant_key(tenant)
    with pytest.raises(KeyUnavailable):
        admin.key_info(tenant)


@pytest.mark.parametrize("proxy", ["dsr"], indirect=True)
def test_dsr_proxy_replaces_the_placeholder_token(policies: OpenBaoDev, proxy: str) -> None:
    (cm,) = load_docs(K8S / "base" / "dsr" / "configmap.yaml")
    placeholder = cm["data"]["STEWARD_DSR__TRANSIT__TOKEN"]
    assert cm["data"]["STEWARD_DSR__TRANSIT__SIGNING_KEY"] == DSR_SIGNING_KEY
    with pytest.raises(Unavailable):  # the placeholder is worth nothing on its own
        _dsr_signer(policies, token=placeholder).ensure_key()
    through_proxy = _dsr_signer(policies, url=proxy, token=placeholder)
    through_proxy.ensure_key()
    (signature,) = through_proxy.sign(["cd" * 32])
    public_key = through_proxy.public_key(signature.key_version)
    assert public_key is not None and signature_verifies(public_key, ("cd" * 32).encode("ascii"), signature.value)


def test_notify_policy_allows_everything_notify_does(policies: OpenBaoDev) -> None:
    transit = _notify_transit(policies)
    transit.create_tenant_key("notify")  # notify start-up (disable_upsert first, then the key)
    transit.create_tenant_key("notify")  # every later start-up
    (wrapped,) = transit.wrap("notify", [(b"k" * 32, AAD)])
    assert transit.unwrap("notify", [(wrapped, AAD)]) == [b"k" * 32]


NOTIFY_KEY = "transit/keys/steward-notify"
NEVER_NOTIFY = [
    ("delete its key", "delete", NOTIFY_KEY, None),
    ("allow its deletion", "post", f"{NOTIFY_KEY}/config", {"deletion_allowed": True}),
    ("make it exportable", "post", f"{NOTIFY_KEY}/config", {"exportable": True}),
    ("recreate it exportable", "post", NOTIFY_KEY, {"type": "aes256-gcm96", "exportable": True}),
    ("export it", "get", "transit/export/encryption-key/steward-notify", None),
    ("back it up", "get", "transit/backup/steward-notify", None),
    ("create a tenant key", "post", "transit/keys/steward-tenant-{t}", {"type": "aes256-gcm96"}),
    ("unwrap with a tenant key", "post", "transit/decrypt/steward-tenant-{t}", {"ciphertext": "vault:v1:AAAA"}),
    ("sign with the vault's audit key", "post", "transit/sign/steward-audit-signing", {"input": "AAAA"}),
    ("create another key", "post", "transit/keys/other-{t}", {"type": "aes256-gcm96"}),
    ("list keys", "list", "transit/keys", None),
    ("turn upserts back on", "post", "transit/config/keys", {"disable_upsert": False}),
]


@pytest.mark.parametrize(("label", "method", "path", "body"), NEVER_NOTIFY, ids=[n[0] for n in NEVER_NOTIFY])
def test_notify_policy_grants_its_wrapping_key_and_nothing_else(
    policies: OpenBaoDev, label: str, method: str, path: str, body: dict[str, object] | None
) -> None:
    tenant = _tenant()
    _vault_client(policies).create_tenant_key(tenant)
    _vault_client(policies).create_signing_key()
    token = _token(policies, *NOTIFY_POLICIES)
    _notify_transit(policies, token).create_tenant_key("notify")
    reply = requests.request(
        method.upper(),
        f"{policies.url}/v1/{path.format(t=tenant)}",
        json=body,
        headers={"X-Vault-Token": token},
        timeout=10,
    )
    assert reply.status_code == 403, (label, reply.status_code)
