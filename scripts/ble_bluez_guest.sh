#!/usr/bin/env bash
# Runs inside the virtme-ng VM of scripts/ble_bluez_tier.sh: BlueZ on a vhci controller, then the
# BLE tests through bleak's BlueZ backend. Arguments: python, output directory, the test files
# (comma-separated), pytest arguments.
set -euo pipefail
PY=$1; OUT=$2; IFS=, read -r -a FILES <<< "$3"; shift 3
cd "$(dirname "$0")/.."
modprobe hci_vhci
mkdir -p /run/dbus /var/lib/bluetooth
dbus-daemon --system --fork
# bluetoothd logs in debug (-d): $OUT/bluetoothd.log shows every connect, disconnect and ATT PDU;
# the tests' temporary directories (bridge, air and QEMU logs of each fleet) stay in $OUT/pytest
/usr/libexec/bluetooth/bluetoothd -n -d > "$OUT/bluetoothd.log" 2>&1 &
export FEDTINY_BLE_STACK=bluez PYTHONDONTWRITEBYTECODE=1 FLWR_TELEMETRY_ENABLED=0 HOME=/tmp/bluez-home
mkdir -p "$HOME"
echo "guest: $(uname -r), $("$PY" -c 'import bleak; print("bleak", bleak.__version__ if hasattr(bleak, "__version__") else "")'), $(/usr/libexec/bluetooth/bluetoothd --version 2>/dev/null | sed 's/^/bluetoothd /')"
"$PY" -m pytest -p no:cacheprovider -q "${FILES[@]}" --basetemp="$OUT/pytest" \
    "$@" 2>&1 | tee "$OUT/pytest.log"
exit "${PIPESTATUS[0]}"
