# steward-vault-audit-signing: the Steward vault signs every tenant's audit chain head (a checkpoint)
# with one Ed25519 key, so whoever can write the vault's database still cannot rewrite audit history.
#
# The key is created at start-up if missing (POST keys/<name>, parameters pinned: ed25519, never
# exportable or backup-able) and read for its public keys (GET). There is no delete and no config
# rule: deletion can never be allowed, so no vault token can destroy the evidence of past checkpoints.
# The name is outside the tenant-key glob, so steward-vault-keys cannot touch it either.
path "transit/keys/steward-audit-signing" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "type"                   = ["ed25519"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}

path "transit/sign/steward-audit-signing" {
  capabilities = ["update"]
}
