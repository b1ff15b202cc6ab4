# What a clavis sidecar may read: its keys, nothing else. KV v2 at secret/:
# reads go to secret/data/<path>.
path "secret/data/clavis/*" {
  capabilities = ["read"]
}
