#!/usr/bin/env bash
# Set up, then run the default experiment: federated fine-tuning of a pretrained int8 IMU
# backbone on 12 simulated wrist devices (10 rounds of FedAvg). Extra arguments are Hydra
# overrides, e.g.  bash scripts/run.sh rounds=20 strategy=fedadam
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
export FLWR_TELEMETRY_ENABLED=0 RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0
"$PY" -m fedtiny "$@"
