# steward-vault-crypto: the data path of the Steward vault service.
#
# Wrap and unwrap data keys (DEKs) under a tenant's Transit key. Every record read or write
# that misses the vault's DEK cache ends up here. Nothing else: no key creation (so encrypting
# under a shredded tenant's name can never re-create its key), no export, no backup, no rewrap
# endpoint (the vault rewraps with decrypt + encrypt so each DEK keeps its associated data).
path "transit/encrypt/steward-tenant-*" {
  capabilities = ["update"]
}

path "transit/decrypt/steward-tenant-*" {
  capabilities = ["update"]
}
