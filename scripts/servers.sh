#!/usr/bin/env bash
# Starts the object-store servers the storage tests use, on free loopback ports, creates the
# test bucket and container, and prints the environment to export. Meant to be sourced by
# scripts/test.sh, which stops the servers on exit.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${SITE_RECOVERY_TOOLS:-$repo/.tools}
logs=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

s3_port=$(free_port)
moto_server -H 127.0.0.1 -p "$s3_port" >"$logs/moto.log" 2>&1 &
SERVER_PIDS="$!"
azure_port=$(free_port)
# Started with node directly (not npx) so that the recorded pid is the server's.
node "$tools/npm/node_modules/azurite/dist/src/blob/main.js" --blobHost 127.0.0.1 --blobPort "$azure_port" \
  --inMemoryPersistence --disableTelemetry --skipApiVersionCheck --silent >"$logs/azurite.log" 2>&1 &
SERVER_PIDS="$SERVER_PIDS $!"
export SERVER_PIDS

python3 - "$s3_port" "$azure_port" <<'PY'
import sys, time
import boto3
from azure.storage.blob import BlobServiceClient
s3_port, azure_port = sys.argv[1], sys.argv[2]
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
deadline = time.time() + 60
while True:
    try:
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", aws_access_key_id="test",
                     aws_secret_access_key="test", region_name="us-east-1").create_bucket(Bucket="sr-test")
        BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{azure_port}/devstoreaccount1;").create_container("sr-test")
        break
    except Exception as e:
        if time.time() > deadline:
            sys.exit(f"object-store servers did not come up: {e}")
        time.sleep(0.5)
PY
export SITE_RECOVERY_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
export SITE_RECOVERY_TEST_AZURE_ENDPOINT="http://127.0.0.1:$azure_port/devstoreaccount1"
echo "S3 (moto) at $SITE_RECOVERY_TEST_S3_ENDPOINT, Azurite at $SITE_RECOVERY_TEST_AZURE_ENDPOINT" >&2
