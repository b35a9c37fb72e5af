# steward-vault-keys: tenant key lifecycle, as the Steward vault service runs it.
#
# CreateTenant creates the key (POST keys/<name>), GetTenant and RewrapTenantKeys read its
# versions (GET), RotateTenantKey rotates it (POST keys/<name>/rotate), RewrapTenantKeys retires
# old versions and ShredTenant allows deletion (POST keys/<name>/config), then ShredTenant deletes
# it (DELETE). One glob rule covers the key and its sub-paths, because OpenBao's "+" wildcard only
# matches a whole path segment ("steward-tenant-+" would match nothing).
#
# The parameters are pinned: this policy can only create aes256-gcm96 keys that are neither
# exportable nor backup-able, and can never turn either on later (the two ways key material
# could leave OpenBao). Sub-paths that need other parameters (trim, import) are refused for the
# same reason. Export and backup live under other paths and are not granted at all.
#
# Kept apart from steward-vault-crypto so the two can go to different identities once key
# management runs outside the request path; today the vault process does both, so its
# Kubernetes auth role carries both policies (see ../README.md, "OpenBao").
path "transit/keys/steward-tenant-*" {
  capabilities = ["create", "read", "update", "delete"]
  allowed_parameters = {
    "type"                   = ["aes256-gcm96"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
    "min_decryption_version" = []
    "deletion_allowed"       = []
  }
}

# The vault turns upserts off on the mount before it creates its first key, so encrypting under a
# missing (e.g. shredded) key fails instead of silently creating a fresh one. It may only set it.
path "transit/config/keys" {
  capabilities = ["update"]
  allowed_parameters = {
    "disable_upsert" = [true]
  }
}
