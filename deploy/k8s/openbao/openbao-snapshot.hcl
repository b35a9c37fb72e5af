# openbao-snapshot: what the raft snapshot CronJob (snapshot-cronjob.yaml) may do, and nothing else: read a
# snapshot of the integrated storage. A snapshot holds every Transit key, encrypted by OpenBao's barrier (it
# needs the unseal/recovery keys or the auto-unseal KMS to be of any use); treat it like the keys themselves.
# Restoring is deliberately not granted: it needs a root or sudo token (docs/runbooks/openbao-backup-restore.md).
path "sys/storage/raft/snapshot" {
  capabilities = ["read"]
}
