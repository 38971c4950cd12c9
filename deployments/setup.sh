#!/usr/bin/env bash
# Idempotent set-up of the MACE Prefect objects on the server PREFECT_API_URL points at:
# work pools (cpu, gpu [+ gpu-docker, gpu-k8s]), the "gpu" global concurrency limit (GPU slots),
# the zombie-run automation, and every deployment of prefect.yaml.
#   PREFECT_API_URL=http://127.0.0.1:4200/api PREFECT_API_AUTH_STRING=... deployments/setup.sh --gpu-slots 2
# Extra flags go to `mace ops deploy` (--docker, --kubernetes, -n flow/deployment).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
cd "$REPO"
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m mace_cli.ops deploy "$@"
