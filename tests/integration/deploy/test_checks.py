"""The linters CI runs on the deployment files, each with zero findings: hadolint (Dockerfile), yamllint (every
YAML file, config in .yamllint) and checkov (every kustomization that is applied, rendered; each skip carries its
reason in an annotation next to the object it exempts). The tools come from the dev extras; without one a
workstation skips, ``CI=true`` fails. Schema validation lives in tests/unit/deploy/test_schemas.py (no process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.plugins.image import DOCKERFILE, ROOT
from tests.plugins.k8s import ALL_TREES, K8S, render, require_tool

BIN = Path(sys.executable).parent
MIN_REASON = 40  # characters: a skip says why, not just "ok"
# What is applied to a cluster: the overlays (the base alone names its image "steward", for them to replace) and
# the dependencies' kustomizations.
APPLIED_TREES = [name for name in ALL_TREES if name != "base"]


def tool(name: str) -> str:
    path = BIN / name
    require_tool(path.exists(), name)
    return str(path)


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_would_fail_a_sloppy_dockerfile(tmp_path: Path) -> None:
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", str(sloppy))
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_yamllint_finds_nothing() -> None:
    result = run(tool("yamllint"), "--strict", "--format", "parsable", ".")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_yamllint_covers_the_manifests(tmp_path: Path) -> None:
    """The config in .yamllint applies to deploy/k8s (not ignored there): a long line fails."""
    probe = K8S / "base" / "yamllint-probe.yaml"
    probe.write_text("key: " + "x" * 130 + "\n")
    try:
        result = run(tool("yamllint"), "--strict", "--format", "parsable", str(probe.relative_to(ROOT)))
    finally:
        probe.unlink()
    assert result.returncode != 0 and "line-length" in result.stdout


def _checkov(folder: Path) -> dict[str, object]:
    result = run(
        tool("checkov"),
        "--directory",
        str(folder),
        "--framework",
        "kubernetes",
        "--skip-download",
        "--output",
        "json",
        cwd=folder,
    )
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    return report if isinstance(report, dict) else {"results": {}, "summary": {"failed": 0, "passed": 0}}


def test_checkov_passes_every_rendered_kustomization(tmp_path: Path) -> None:
    for name in APPLIED_TREES:
        (tmp_path / f"{name.replace('/', '-')}.yaml").write_text(yaml.safe_dump_all(render(K8S / name)))
    report = _checkov(tmp_path)
    failed = report["results"]["failed_checks"]  # type: ignore[index]
    assert failed == [], [(f["check_id"], f["resource"]) for f in failed]
    assert report["summary"]["passed"] > 100  # type: ignore[index]
    for skipped in report["results"]["skipped_checks"]:  # type: ignore[index]
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) >= MIN_REASON, f"{skipped['check_id']} on {skipped['resource']}: say why it is skipped"


def test_checkov_fails_a_weakened_pod(tmp_path: Path) -> None:
    (deployment,) = [
        o for o in render(K8S / "overlays" / "prod") if o["kind"] == "Deployment" and o["metadata"]["name"] == "gateway"
    ]
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    (tmp_path / "weakened.yaml").write_text(yaml.safe_dump(deployment))
    failed = {f["check_id"] for f in _checkov(tmp_path)["results"]["failed_checks"]}  # type: ignore[index]
    assert "CKV_K8S_20" in failed  # allowPrivilegeEscalation


@pytest.mark.parametrize("path", [ROOT / "Makefile", ROOT / ".ci" / "run"])
def test_ci_runs_the_deploy_checks(path: Path) -> None:
    assert "deploy-check" in path.read_text()
