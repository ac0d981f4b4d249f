#!/usr/bin/env bash
# The control plane at scale: the release operator and three agents against the test rig with
# N protected Deployments (one 8-byte claim each) and one Live vault. Prints one row per N.
#   bash bench/scale.sh [N,N,...]        default 100,1000
#   SCALE_INTERVAL=5m                    the points' frequency (default 5m)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
HELM=$(bash scripts/install-tools.sh | tail -n 1)
export HELM
exec cargo bench --bench scale -- "${1:-100,1000}"
