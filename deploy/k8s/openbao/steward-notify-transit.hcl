# steward-notify-transit: notify seals what it keeps personal until a send is final (tenant contacts,
# template variables) under per-tenant data keys, and wraps those keys with one Transit key.
#
# The key is created at start-up if missing (POST keys/<name>, parameters pinned: aes256-gcm96, never
# exportable or backup-able) and read back to check those settings (GET); re-posting an existing key is
# an "update". No delete and no key config: no notify token can destroy or unlock the key. Wrapping and
# unwrapping are encrypt/decrypt on that key alone; no tenant key of the vault is reachable.
path "transit/keys/steward-notify" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "type"                   = ["aes256-gcm96"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}

path "transit/encrypt/steward-notify" {
  capabilities = ["update"]
}

path "transit/decrypt/steward-notify" {
  capabilities = ["update"]
}

# Before creating its key the client turns upserts off on the mount (as the vault does): it may only set it.
path "transit/config/keys" {
  capabilities = ["update"]
  allowed_parameters = {
    "disable_upsert" = [true]
  }
}
