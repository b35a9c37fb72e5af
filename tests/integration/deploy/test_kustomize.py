"""deploy/k8s rendered by the real kustomize (``kustomize build`` or ``kubectl kustomize``) must match the
rendering the unit tests check (tests/plugins/k8s.py); nothing is ever downloaded. Without either tool the test
is skipped on a workstation and fails under ``CI=true``."""

from __future__ import annotations

import pytest

from tests.plugins.k8s import (
    ALL_TREES,
    K8S,
    key,
    kustomize_binary,
    normalized,
    render,
    render_with_binary,
    require_tool,
)


@pytest.mark.parametrize("name", ALL_TREES)
def test_the_real_kustomize_renders_the_same_objects(name: str) -> None:
    command = kustomize_binary()
    require_tool(command, "kubectl (or kustomize)")
    assert command is not None
    ours = {key(o): o for o in render(K8S / name)}
    theirs = {key(o): o for o in render_with_binary(command, K8S / name)}
    assert sorted(ours) == sorted(theirs)
    for k, obj in ours.items():
        assert normalized(obj) == normalized(theirs[k]), f"{k} differs between tests/plugins/k8s.py and {command[0]}"
