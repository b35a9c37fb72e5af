"""Vault: tenants' customer records, envelope-encrypted under per-tenant Transit keys, with per-subject DEKs."""
