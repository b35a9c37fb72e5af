"""What lives under the stack's home folder (``.steward/`` by default), in one place.

```
.steward/
  run.lock              held by the running `steward run` (one launcher per home)
  run.json              what the running stack listens on (read by `steward doctor`)
  nats/                 JetStream store
  openbao/openbao.hcl   server config, rewritten on every start (ports may change)
  openbao/raft/         integrated storage: every Transit key lives here
  openbao/init.json     unseal key + root token (0600, dev-only key custody)
  secrets.json          generated service secrets, e.g. the gateway's API-key pepper (0600, dev-only)
  tls/                  dev CA and per-service certificates (keys 0600)
  idp/                  dev-only operator IdP: signing key (0600), jwks.json, operator.jwt (0600)
  demo.json             the demo tenant and its API key secret (0600), written by the first start
  data/<service>.db     each service's SQLite database(s)
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_HOME", "StewardHome", "write_file_atomically"]

DEFAULT_HOME = Path(".steward")
"""Where the local stack lives unless ``--home`` or ``STEWARD_RUN__HOME`` says otherwise."""


@dataclass(frozen=True)
class StewardHome:
    """Paths of everything ``steward run`` keeps; ``root`` should be absolute."""

    root: Path

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the running launcher."""
        return self.root / "run.lock"

    @property
    def state_file(self) -> Path:
        """Addresses of the running stack, written once it is up."""
        return self.root / "run.json"

    @property
    def secrets_file(self) -> Path:
        """Generated service secrets (dev-only custody)."""
        return self.root / "secrets.json"

    @property
    def nats_dir(self) -> Path:
        """nats-server's JetStream store directory."""
        return self.root / "nats"

    @property
    def openbao_dir(self) -> Path:
        """OpenBao's config, raft data and init material."""
        return self.root / "openbao"

    @property
    def openbao_config(self) -> Path:
        """The HCL file ``bao server -config`` reads."""
        return self.openbao_dir / "openbao.hcl"

    @property
    def openbao_raft_dir(self) -> Path:
        """Integrated (raft) storage: losing it loses every Transit key."""
        return self.openbao_dir / "raft"

    @property
    def openbao_init_file(self) -> Path:
        """Unseal key and root token written by the first start."""
        return self.openbao_dir / "init.json"

    @property
    def tls_dir(self) -> Path:
        """Dev CA and service certificates."""
        return self.root / "tls"

    @property
    def login_file(self) -> Path:
        """The operator token ``steward login`` obtained (0600)."""
        return self.root / "login.json"

    @property
    def idp_dir(self) -> Path:
        """The dev-only identity provider: its signing key, JWKS and the current operator token."""
        return self.root / "idp"

    @property
    def demo_file(self) -> Path:
        """The demo tenant id and its API key (with the secret), kept so later starts print them again."""
        return self.root / "demo.json"

    @property
    def data_dir(self) -> Path:
        """SQLite databases, one per service."""
        return self.root / "data"

    def database_file(self, file_name: str) -> Path:
        """A SQLite file under ``data/`` (``vault.db``, ``vault-tombstones.db``...)."""
        return self.data_dir / file_name

    def prepare(self) -> None:
        """Create the folders, private to the current user (they hold keys and customer data).

        An existing home folder keeps its permissions (``--home`` might point somewhere shared); the
        folders inside it are ours and are always made owner-only.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        folders = (self.nats_dir, self.openbao_dir, self.openbao_raft_dir, self.tls_dir, self.idp_dir, self.data_dir)
        for folder in folders:
            folder.mkdir(exist_ok=True)
            folder.chmod(0o700)


def write_file_atomically(path: Path, content: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``content`` in one step; the file has ``mode`` (default owner-only) from its first byte.

    Readers never see half a file, and a crash leaves either the old or the new content.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.chmod(temporary, mode)  # os.open applies the umask; the mode asked for is the mode we want
    os.replace(temporary, path)
