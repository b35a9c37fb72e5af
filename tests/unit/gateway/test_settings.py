"""Gateway settings come from STEWARD_GATEWAY__* variables; bad or missing ones are named, secrets never shown."""

from __future__ import annotations

import pytest

from services.chassis.settings import SettingsError, load_settings
from services.gateway.settings import GatewaySettings


def test_settings_load_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEWARD_GATEWAY__API_KEY_PEPPER", "a-very-secret-pepper-value")
    monkeypatch.setenv("STEWARD_GATEWAY__REGISTRY_KEY", "a-very-secret-registry-key")
    monkeypatch.setenv("STEWARD_GATEWAY__UPSTREAMS__VAULT__ADDRESS", "vault:7443")
    monkeypatch.setenv("STEWARD_GATEWAY__DEADLINE_CAPS_S", '{"steward.vault.v1.VaultService": 5}')
    settings = load_settings(GatewaySettings)
    assert settings.upstreams["vault"].address == "vault:7443"
    assert settings.deadline_caps_s == {"steward.vault.v1.VaultService": 5.0}
    assert "a-very-secret" not in repr(settings)


def test_missing_or_weak_secrets_name_the_variable_and_hide_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEWARD_GATEWAY__API_KEY_PEPPER", raising=False)
    monkeypatch.setenv("STEWARD_GATEWAY__REGISTRY_KEY", "short-secret")
    with pytest.raises(SettingsError) as caught:
        load_settings(GatewaySettings)
    message = str(caught.value)
    assert "STEWARD_GATEWAY__API_KEY_PEPPER" in message and "STEWARD_GATEWAY__REGISTRY_KEY" in message
    assert "short-secret" not in message


def test_cache_ttl_above_the_revocation_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="API_KEY_CACHE_TTL_S"):
        load_settings(GatewaySettings, api_key_pepper="p" * 16, registry_key="r" * 16, api_key_cache_ttl_s=1.5)
