"""Tenant details validation and sealing of representatives (no I/O)."""

from __future__ import annotations

import pytest

from services.chassis.errors import InvalidArgument
from services.gateway.tenants import RegistrySealer, Representative, TenantDetails, validate_details

REP = Representative(name=" Asha Rao ", email=" Asha@Acme.Example ", whatsapp_number="+91 98765 43210", role="owner")


def test_details_are_normalised() -> None:
    details = validate_details(TenantDetails(company_name=" Acme ", representatives=(REP,), language="hi-IN"))
    rep = details.representatives[0]
    assert details.company_name == "Acme"
    assert (rep.name, rep.email, rep.whatsapp_number) == ("Asha Rao", "asha@acme.example", "+919876543210")


@pytest.mark.parametrize(
    ("details", "field"),
    [
        (TenantDetails(company_name="", representatives=(REP,)), "company_name"),
        (TenantDetails(company_name="A", representatives=()), "representatives"),
        (TenantDetails(company_name="A", representatives=(REP,) * 11), "representatives"),
        (TenantDetails(company_name="A", representatives=(Representative("n", "secret-value"),)), "email"),
        (TenantDetails(company_name="A", representatives=(Representative("n", "a@b.co", "555"),)), "whatsapp"),
        (TenantDetails(company_name="A", representatives=(REP,), language="english!"), "language"),
        (TenantDetails(company_name="A", representatives=(REP,), size=9), "size"),
        (TenantDetails(company_name="A\x00", representatives=(REP,)), "company_name"),
        (
            TenantDetails(company_name="A", representatives=(Representative("n", "a@b.co"),), preferred_channel=2),
            "whatsapp_number",
        ),
    ],
)
def test_bad_details_name_the_field_and_never_echo_the_value(details: TenantDetails, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_details(details)
    assert field in caught.value.message
    assert "secret-value" not in caught.value.message and "555" not in caught.value.message


def test_sealed_representatives_open_only_for_their_tenant_and_key() -> None:
    sealer = RegistrySealer("k" * 32)
    sealed = sealer.seal("tnt_a", (REP,))
    assert b"Asha" not in sealed and b"acme" not in sealed.lower()
    assert sealer.open("tnt_a", sealed) == (REP,)
    with pytest.raises(ValueError, match="cannot be decrypted"):
        sealer.open("tnt_b", sealed)
    with pytest.raises(ValueError, match="cannot be decrypted"):
        RegistrySealer("x" * 32).open("tnt_a", sealed)
