# steward-oncall-read: what an on-call engineer needs to check tenant keys during an incident
# (versions, min_decryption_version, deletion_allowed, exportable). Key material is never
# readable: the keys are created non-exportable and no export path is granted.
path "transit/keys" {
  capabilities = ["list"]
}

path "transit/keys/steward-tenant-*" {
  capabilities = ["read"]
}
