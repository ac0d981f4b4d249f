#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the project.
# Unit, rig, operator and repository tests (cargo nextest; S3 and Azure tests against moto and
# Azurite started here), chart tests with the real helm (lint and
# render with CRDs on and off), and the Argo CD health-check tests with Lua.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
helm=$(bash scripts/install-tools.sh | tail -n 1)
export HELM="$helm"
# shellcheck source=scripts/servers.sh
source scripts/servers.sh
trap 'kill $SERVER_PIDS 2>/dev/null || true' EXIT

cargo nextest run --no-fail-fast --final-status-level fail

"$helm" lint charts/site-recovery
"$helm" lint charts/site-recovery --set crds.enabled=false
"$helm" template t charts/site-recovery >/dev/null
"$helm" template t charts/site-recovery --set crds.enabled=false >/dev/null
lua5.1 charts/site-recovery/argocd/health_test.lua
echo "all tests passed"
