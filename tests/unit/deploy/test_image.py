"""The container image's definition: Dockerfile, .dockerignore and the runtime-only lock it installs.

The image cannot be built here (no container daemon); tests/integration/deploy/test_image.py performs its
builder stage and starts the services from the result. These tests pin what that cannot see: the runtime
stage's user, signal, entrypoint and labels; the uv version; that the builder calls the shared install script;
and that requirements-runtime.lock is exactly the production part of requirements.lock.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from services.cli.main import SERVE_SERVICES
from tests.plugins.image import DOCKERFILE, INSTALL_SCRIPT, ROOT, builder_stage, ignored, parse_dockerfile

FULL_LOCK = ROOT / "requirements.lock"
RUNTIME_LOCK = ROOT / "requirements-runtime.lock"
RUNTIME_COMPILE = "uv pip compile pyproject.toml --generate-hashes -c requirements.lock -o requirements-runtime.lock"
OCI_LABELS = ("title", "description", "version", "revision", "source", "licenses")


def runtime_stage() -> dict[str, list[str]]:
    stage = parse_dockerfile()[-1]
    out: dict[str, list[str]] = {}
    for instruction, args in stage.instructions:
        out.setdefault(instruction, []).append(args)
    out["FROM"] = [stage.base]
    return out


def test_the_runtime_stage_runs_steward_as_a_non_root_user() -> None:
    stage = runtime_stage()
    assert stage["USER"] == ["10001:10001"]
    assert stage["STOPSIGNAL"] == ["SIGTERM"]
    assert stage["ENTRYPOINT"] == ['["steward"]']
    # Nothing from the build context: only the virtualenv the builder made.
    assert [c.split() for c in stage["COPY"]] == [["--from=builder", "/opt/steward", "/opt/steward"]]
    assert all("install" not in run or "uninstall" in run for run in stage.get("RUN", [])), "no installs at run time"


def test_both_stages_use_the_same_slim_python_pinned_by_tag() -> None:
    bases = {stage.base for stage in parse_dockerfile()}
    (base,) = bases
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    assert f"FROM {base}@sha256:<digest>" in DOCKERFILE.read_text(), "the note on pinning the digest"


def test_oci_labels() -> None:
    labels = " ".join(runtime_stage()["LABEL"])
    for name in OCI_LABELS:
        assert f"org.opencontainers.image.{name}=" in labels, name


def test_the_builder_installs_with_the_shared_script_and_the_makefiles_uv() -> None:
    runs = builder_stage().all("RUN")
    steps = [run.split(INSTALL_SCRIPT, 1)[1].split()[0] for run in runs if INSTALL_SCRIPT in run]
    assert steps == ["deps", "project"]
    (uv_version,) = re.findall(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert f"ARG UV_VERSION={uv_version}" in DOCKERFILE.read_text()
    assert (ROOT / INSTALL_SCRIPT).stat().st_mode & 0o111, "install.sh must be executable"


@pytest.mark.parametrize(
    ("path", "in_context"),
    [
        ("services/vault/main.py", True),
        ("gen/steward/vault/v1/vault_pb2.py", True),
        ("requirements-runtime.lock", True),
        (INSTALL_SCRIPT, True),
        ("services/devstack/devca.py", False),
        ("services/devstack", False),
        ("services/vault/__pycache__/main.cpython-311.pyc", False),
        ("tests/plugins/infra.py", False),
        ("requirements.lock", False),
        (".steward/openbao/init.json", False),
        (".venv/bin/nats-server", False),
        ("deploy/k8s/overlays/prod/kustomization.yaml", False),
    ],
)
def test_the_build_context_is_an_allowlist(path: str, in_context: bool) -> None:
    assert ignored(path) is not in_context


def test_serve_knows_every_service_with_a_main() -> None:
    mains = {p.parent.name for p in (ROOT / "services").glob("*/main.py") if (p.parent / "migrations").is_dir()}
    assert set(SERVE_SERVICES) == mains


# ------------------------------------------------------------------------------------------------ locks


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def parse_lock(path: Path) -> dict[str, tuple[str, frozenset[str], frozenset[str]]]:
    """name -> (version, hashes, the packages it is "via") of a `uv pip compile --generate-hashes` file."""
    entries: dict[str, tuple[str, frozenset[str], frozenset[str]]] = {}
    current = ""
    version = ""
    hashes: set[str] = set()
    via: set[str] = set()
    in_via = False

    def flush() -> None:
        if current:
            entries[current] = (version, frozenset(hashes), frozenset(via))

    for line in path.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            flush()
            spec = line.split(" ", 1)[0]
            current, version = spec.split("==")
            current = current.lower()
            hashes, via, in_via = set(), set(), False
        elif "--hash=" in line:
            hashes.add(line.split("--hash=", 1)[1].split()[0])
        elif line.strip().startswith("# via"):
            rest = line.strip()[len("# via") :].strip()
            in_via = True
            if rest:
                via.add(rest)
        elif in_via and line.strip().startswith("#"):
            via.add(line.strip()[1:].strip())
    flush()
    return entries


def test_the_runtime_lock_header_says_how_it_is_made() -> None:
    assert RUNTIME_COMPILE in RUNTIME_LOCK.read_text().splitlines()[1]


def test_the_runtime_lock_is_the_production_part_of_the_full_lock() -> None:
    """Same versions and hashes as requirements.lock, and exactly the packages the runtime dependencies pull in
    there (following its "via" annotations), so the image runs what the tests ran."""
    full, runtime = parse_lock(FULL_LOCK), parse_lock(RUNTIME_LOCK)
    for name, (version, hashes, _via) in runtime.items():
        assert name in full, f"{name} is in requirements-runtime.lock but not in requirements.lock"
        assert full[name][:2] == (version, hashes), f"{name}: the locks disagree; regenerate {RUNTIME_LOCK.name}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(r) for r in project["dependencies"]}
    frontier = set(needed)
    while frontier:
        frontier = {n for n, (_v, _h, via) in full.items() if via & frontier and n not in needed}
        needed |= frontier
    assert set(runtime) == needed
    extras = {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    assert not (extras - {_name(r) for r in project["dependencies"]}) & set(runtime), "dev/devstack extras leaked"
