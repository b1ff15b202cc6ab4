#!/usr/bin/env bash
# Once per cluster, with VAULT_ADDR and an admin VAULT_TOKEN set (works the
# same with OpenBao's `bao`: BAO=bao vault/setup.sh). Lets pods running as
# ServiceAccount clavis in namespace clavis-vault read secret/clavis/*.
set -euo pipefail
VAULT=${BAO:-vault}
NAMESPACE=${NAMESPACE:-clavis-vault}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Kubernetes auth. Vault asks the API server whether a JWT is valid
# (TokenReview): run in the cluster, Vault uses its own service account,
# which needs the system:auth-delegator ClusterRole (auth-delegator.yaml).
"$VAULT" auth enable kubernetes 2>/dev/null || true
"$VAULT" write auth/kubernetes/config \
    kubernetes_host="https://kubernetes.default.svc:443"

"$VAULT" policy write clavis "$HERE/clavis-policy.hcl"

# The role: this service account in this namespace, tokens for the
# `vault` audience only (components/clavis-vault/sidecar.yaml projects
# them), a short token TTL (clavis logs in again at 80 % of it).
"$VAULT" write auth/kubernetes/role/clavis \
    bound_service_account_names=clavis \
    bound_service_account_namespaces="$NAMESPACE" \
    audience=vault \
    token_policies=clavis \
    token_ttl=1h \
    token_max_ttl=4h

# The keys themselves (KV v2 at secret/, as `vault server -dev` has it).
# `vault kv put` reads values from stdin with `-`, keeping them out of
# the shell history and ps.
#   printf %s "$OPENAI_API_KEY" | vault kv put secret/clavis/openai api_key=-
#   openssl rand -hex 32 | tr -d '\n' | vault kv put secret/clavis/admin token=-
