"""Random secrets a service needs but nobody supplies locally (the gateway's API-key pepper and registry key).

Generated once per home and kept in ``.steward/secrets.json`` (0600), because they must stay the same
across restarts: a new pepper would invalidate every stored API-key hash, a new registry key would
make the tenant registry unreadable. Dev-only custody, like OpenBao's ``init.json``; production
injects them from its secret store.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.cli.home import write_file_atomically

__all__ = ["ensure_dev_secrets"]


def ensure_dev_secrets(path: Path, wanted: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
    """Return ``{service: {SETTING: value}}`` for every wanted setting, creating the missing ones.

    Existing values are never changed; the file is rewritten (atomically) only when something was added.
    """
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        stored = {}
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"{path} is unreadable ({type(exc).__name__}); restore it, or delete it to generate new "
            "secrets (API keys issued so far stop working)"
        ) from None
    changed = False
    result: dict[str, dict[str, str]] = {}
    for service, names in wanted.items():
        values = stored.setdefault(service, {})
        for name in names:
            if not isinstance(values.get(name), str):
                values[name] = secrets.token_urlsafe(32)
                changed = True
        result[service] = {name: values[name] for name in names}
    if changed:
        write_file_atomically(path, (json.dumps(stored, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
    return result
