#!/usr/bin/env bash
# A Flower *deployment* on this machine, with boards: one SuperLink, one SuperNode per device
# (each with its partition-id in its node config), the first B of them training on emulated
# boards through their bridges (`board-url` in the node config), and `flwr run` of fedtiny's
# ServerApp/ClientApp on it. Unlike the simulation, every ClientApp message runs in a fresh
# process, as in a lab deployment; the bridges keep the boards' links open across them.
# With real boards, start `fedtiny board serve /dev/ttyACM0` per board instead of the emulated
# fleet and give each bridge's URL to its SuperNode.
#
# Usage: bash scripts/deploy.sh [--boards B] [overrides...]
#   default: --boards 2 experiment=digits_quick rounds=3 codec.bits=8
# Results: outputs/flwr-deploy/<time>/ (metrics.csv, summary.json, plots); logs in the printed
# work directory. Everything started here is stopped on exit, also on Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BOARDS=2
if [ "${1:-}" = "--boards" ]; then BOARDS=$2; shift 2; fi
OVERRIDES=("$@")
[ ${#OVERRIDES[@]} -gt 0 ] || OVERRIDES=(experiment=digits_quick rounds=3 codec.bits=8)
TIMEOUT=${FEDTINY_DEPLOY_TIMEOUT:-1200}
OUT=${FEDTINY_DEPLOY_OUT:-$PWD/outputs/flwr-deploy}

# the number of devices and free local ports, from the same config the run will use
read -r DEVICES PORTS < <("$PY" - "${OVERRIDES[@]}" <<'EOF'
import socket, sys
from fedtiny.config import ConfigError, compose, num_devices
try:
    n = num_devices(compose(sys.argv[1:]))
except ConfigError as err:
    sys.exit(f"deploy: config error: {err}")
socks = [socket.socket() for _ in range(n + 1)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(n, ",".join(str(s.getsockname()[1]) for s in socks))
EOF
) || true
[ -n "${DEVICES:-}" ] || exit 2  # the config error is printed above
IFS=, read -r -a PORT <<< "$PORTS"
if [ "$BOARDS" -lt 1 ] || [ "$BOARDS" -gt "$DEVICES" ]; then
    echo "deploy: --boards must be in [1, $DEVICES], got $BOARDS" >&2; exit 2
fi
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
WORK=$(mktemp -d -t fedtiny-deploy-XXXXXX)
export FLWR_HOME=$WORK/flwr-home
mkdir -p "$FLWR_HOME" "$OUT"
PIDS=()

tree() {  # the given pids and all their descendants
    local p
    for p in "$@"; do
        echo "$p"
        tree $(pgrep -P "$p" 2>/dev/null)
    done
}

stop_all() {
    local rc=$?
    trap - EXIT INT TERM
    # every process started here and everything below it, read before anything is stopped: a
    # SuperExec that leaves on its own would otherwise orphan the ServerApp it started
    local all=($(tree "${PIDS[@]}"))
    for p in "${all[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 30); do
        local alive=0
        for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.5
    done
    for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    # and what started since, found by the --parent-pid Flower gives its app processes
    local todo=("${all[@]}")
    while [ ${#todo[@]} -gt 0 ]; do
        local next=()
        for p in "${todo[@]}"; do
            for c in $(pgrep -f -- "--parent-pid $p\$" 2>/dev/null); do next+=("$c"); kill -KILL "$c" 2>/dev/null || true; done
        done
        todo=("${next[@]}")
    done
    echo "deploy: stopped (logs in $WORK)"
    exit $rc
}
trap stop_all EXIT
trap 'exit 130' INT TERM

echo "deploy: $DEVICES SuperNodes, partitions 0..$((BOARDS - 1)) on emulated boards; work dir $WORK"

fedtiny emulate --boards "$BOARDS" "${OVERRIDES[@]}" > "$WORK/emulate.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 240); do
    grep -q '^ready:' "$WORK/emulate.log" && break
    kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$WORK/emulate.log" >&2; exit 1; }
    sleep 0.5
done
grep -q '^ready:' "$WORK/emulate.log" || { echo "deploy: boards not ready after 120 s" >&2; exit 1; }
grep '^partition' "$WORK/emulate.log"

LINK=127.0.0.1:${PORT[0]}
flower-superlink --insecure --port "${PORT[0]}" --disable-runtime-dependency-installation \
    > "$WORK/superlink.log" 2>&1 &
PIDS+=($!)
cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "fedtiny-deploy"

[superlink.fedtiny-deploy]
address = "$LINK"
insecure = true
EOF

for i in $(seq 0 $((DEVICES - 1))); do
    node="partition-id=$i"
    url=$(sed -n "s/^partition $i: \([^ ]*\).*/\1/p" "$WORK/emulate.log")
    [ -n "$url" ] && node="$node board-url='$url'"
    flower-supernode --insecure --superlink "$LINK" --port "${PORT[$((i + 1))]}" --node-config "$node" \
        > "$WORK/supernode-$i.log" 2>&1 &
    PIDS+=($!)
done

# `flwr run` returns once the run is submitted; follow it until it finishes
RUN_CFG="overrides=\"${OVERRIDES[*]}\" output-dir=\"$OUT\""
for _ in $(seq 1 60); do
    flwr run . fedtiny-deploy --run-config "$RUN_CFG" --format json > "$WORK/run.json" 2>&1 || true
    grep -q '"success": true' "$WORK/run.json" && break
    sleep 1  # the SuperLink is still starting
done
RUN_ID=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["run-id"])' "$WORK/run.json") || {
    cat "$WORK/run.json" >&2; exit 1; }
echo "deploy: run $RUN_ID submitted"
START=$(date +%s)
while true; do
    STATUS=$(flwr ls fedtiny-deploy --run-id "$RUN_ID" --format json 2>/dev/null | "$PY" -c \
        'import json,sys; r=json.load(sys.stdin)["runs"][0]; print(r["status"])' 2>/dev/null || echo unknown)
    case "$STATUS" in finished*) break ;; esac
    if [ $(( $(date +%s) - START )) -gt "$TIMEOUT" ]; then
        echo "deploy: run $RUN_ID not finished after $TIMEOUT s (status $STATUS)" >&2; exit 1
    fi
    sleep 5
done
echo "deploy: run $RUN_ID $STATUS in $(( $(date +%s) - START )) s"
flwr log "$RUN_ID" fedtiny-deploy --show > "$WORK/serverapp.log" 2>&1 || true
RESULT=$(ls -td "$OUT"/*/ | head -n 1)
echo "deploy: results in $RESULT"
cut -d, -f1,2,4,11,12,18,19 "$RESULT/metrics.csv" | column -t -s,
case "$STATUS" in finished:completed) ;; *) exit 1 ;; esac
