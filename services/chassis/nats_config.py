"""NATS server configuration and user keys generated from the one permission table.

For ``steward run``: :func:`ensure_embedded_nats` keeps one nkey per user of
:data:`~services.chassis.nats_permissions.NATS_USERS` under ``<folder>/auth/<user>.nk`` (the seed,
0600; reused across starts) and writes ``<folder>/nats-server.conf``: listen address, JetStream store,
TLS with the dev CA's server certificate, and ``authorization.users`` with each user's public nkey and
its permissions. No ``no_auth_user``: an anonymous client is refused.

For Kubernetes: :func:`helm_authorization` is the ``config.merge.authorization`` block of
deploy/k8s/nats/values.yaml (a test keeps the file equal to it); the public keys are read by
nats-server from environment variables that come from a Secret. ``python -m
services.chassis.nats_config keys <folder>`` creates the seeds and public keys to put in the Secrets
(deploy/k8s/README.md).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nkeys

from services.chassis.nats_permissions import NATS_USERS, OPS, NatsUser, permissions

__all__ = [
    "EmbeddedNats",
    "ServerTls",
    "embedded_seed_file",
    "ensure_embedded_nats",
    "ensure_user_seeds",
    "helm_authorization",
    "nkey_env_name",
    "public_key",
    "render_server_config",
]

_SEED_MODE = 0o600


@dataclass(frozen=True)
class ServerTls:
    """nats-server's certificate, key and the CA it trusts; ``verify`` would demand client certificates."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    verify: bool = False


@dataclass(frozen=True)
class EmbeddedNats:
    """What :func:`ensure_embedded_nats` produced: the server config and every user's seed file."""

    config_file: Path
    seed_files: Mapping[str, Path]
    ca_file: Path

    def service_environment(self, service: str) -> dict[str, str]:
        """``STEWARD_<SERVICE>__NATS__*`` for one service: its own seed and the CA of the server certificate."""
        prefix = f"STEWARD_{service.upper()}__NATS__"
        return {f"{prefix}NKEY_SEED_FILE": str(self.seed_files[service]), f"{prefix}TLS_CA_FILE": str(self.ca_file)}


def public_key(seed: bytes) -> str:
    """The user's public nkey (``U...``) of a seed (``SU...``)."""
    pair = nkeys.from_seed(bytearray(seed.strip()))
    try:
        return str(pair.public_key.decode())
    finally:
        pair.wipe()


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    partial = path.with_suffix(".tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _SEED_MODE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    partial.replace(path)


def ensure_user_seeds(folder: Path, users: Sequence[NatsUser] = NATS_USERS) -> dict[str, Path]:
    """One nkey seed per user in ``folder/<user>.nk`` (0600): existing valid seeds are kept, others created."""
    files: dict[str, Path] = {}
    for user in users:
        path = folder / f"{user.name}.nk"
        try:
            public_key(path.read_bytes())
            path.chmod(_SEED_MODE)
        except (OSError, nkeys.NkeysError, ValueError):
            _write_private(path, nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
        files[user.name] = path
    return files


def render_server_config(
    *,
    host: str,
    port: int,
    server_name: str,
    store_dir: Path,
    public_keys: Mapping[str, str],
    tls: ServerTls,
    users: Sequence[NatsUser] = NATS_USERS,
) -> str:
    """A nats-server configuration (JSON is valid NATS config syntax, and escapes paths correctly)."""
    table = permissions(tuple(users))
    config = {
        "server_name": server_name,
        "listen": f"{host}:{port}",
        "jetstream": {"store_dir": str(store_dir)},
        "tls": {
            "cert_file": str(tls.cert_file),
            "key_file": str(tls.key_file),
            "ca_file": str(tls.ca_file),
            "verify": tls.verify,
            "timeout": 2,
        },
        "authorization": {
            "users": [{"nkey": public_keys[user.name], "permissions": table[user.name]} for user in users]
        },
    }
    return json.dumps(config, indent=2) + "\n"


def embedded_seed_file(folder: Path, user: str) -> Path:
    """Where :func:`ensure_embedded_nats` keeps ``user``'s seed (``steward doctor`` reads the ops one)."""
    return folder / "auth" / f"{user}.nk"


def ensure_embedded_nats(
    folder: Path, *, host: str, port: int, store_dir: Path, tls: ServerTls, server_name: str = "steward-local"
) -> EmbeddedNats:
    """Seeds under ``folder/auth`` and ``folder/nats-server.conf`` for this start (the port may differ each time)."""
    seeds = ensure_user_seeds(embedded_seed_file(folder, OPS).parent)
    keys = {name: public_key(path.read_bytes()) for name, path in seeds.items()}
    config_file = folder / "nats-server.conf"
    text = render_server_config(
        host=host, port=port, server_name=server_name, store_dir=store_dir, public_keys=keys, tls=tls
    )
    _write_private(config_file, text.encode())
    return EmbeddedNats(config_file=config_file, seed_files=seeds, ca_file=tls.ca_file)


def nkey_env_name(user: str) -> str:
    """The nats-server container's environment variable holding ``user``'s public nkey (Kubernetes)."""
    return f"NKEY_{user.upper()}"


def helm_authorization(users: Sequence[NatsUser] = NATS_USERS) -> dict[str, object]:
    """``config.merge.authorization`` for the NATS Helm chart: ``<< $VAR >>`` is written unquoted by the chart,
    so nats-server resolves each public key from its environment (filled from a Secret)."""
    table = permissions(tuple(users))
    return {
        "users": [{"nkey": f"<< ${nkey_env_name(user.name)} >>", "permissions": table[user.name]} for user in users]
    }


def main(argv: Sequence[str]) -> int:
    """``keys <folder>``: write ``<user>.nk`` (seed, 0600) and ``<user>.pub`` for every user of the table."""
    if len(argv) != 2 or argv[0] != "keys":
        print("usage: python -m services.chassis.nats_config keys <folder>", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    for name, path in ensure_user_seeds(folder).items():
        (folder / f"{name}.pub").write_text(public_key(path.read_bytes()) + "\n")
        print(f"{name}: seed {path}, public key {folder / (name + '.pub')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
