"""Start-up configuration: missing or invalid settings stop start-up with a message naming the variable."""

from __future__ import annotations

import os

import pytest

from services.chassis.settings import SettingsError, load_settings
from services.vault.main import VaultSettings


def test_missing_required_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("STEWARD_VAULT__"):
            monkeypatch.delenv(key)
    with pytest.raises(SettingsError) as caught:
        load_settings(VaultSettings)
    assert "STEWARD_VAULT__TRANSIT" in str(caught.value)


def test_invalid_number_names_the_variable_and_hides_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__TOKEN", "s.token-value")
    monkeypatch.setenv("STEWARD_VAULT__GRPC__PORT", "not-a-port-secretish")
    with pytest.raises(SettingsError) as caught:
        load_settings(VaultSettings)
    message = str(caught.value)
    assert "STEWARD_VAULT__GRPC__PORT" in message
    assert "secretish" not in message


def test_nested_env_vars_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__TOKEN", "s.token-value")
    monkeypatch.setenv("STEWARD_VAULT__GRPC__MAX_CONCURRENT_RPCS", "77")
    settings = load_settings(VaultSettings)
    assert settings.grpc.max_concurrent_rpcs == 77
    assert "s.token-value" not in repr(settings)  # SecretStr never prints
