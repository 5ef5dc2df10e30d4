#!/usr/bin/env bash
# Set up and run the default experiment. Until the federated experiment lands (issue 3), the
# default is on-device fine-tuning of an int8 model's head on sklearn digits with the C trainer.
# Usage: bash scripts/run.sh [--epochs N] [--seed S] [--lr LR] [--batch-size B]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
"$PY" -m fedtiny.trainer.demo "$@"
