# steward-dsr-evidence-signing: dsr signs every evidence entry of a data subject request with one
# Ed25519 key, so whoever can write dsr's database still cannot forge or rewrite the evidence.
#
# The key is created at start-up if missing (POST keys/<name>, parameters pinned: ed25519, never
# exportable or backup-able) and read for its public keys (GET); Transit has no existence check on
# this path, so re-posting an existing key is an "update" and needs that capability too. There is
# no delete and no config rule: deletion can never be allowed, so no dsr token can destroy the key
# that proves past evidence. dsr gets no other Transit path (no tenant keys, no encrypt/decrypt).
path "transit/keys/steward-dsr-evidence" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "type"                   = ["ed25519"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}

path "transit/sign/steward-dsr-evidence" {
  capabilities = ["update"]
}
