#!/usr/bin/env bash
# The BLE tests over real BlueZ (issue 20's slow tier): boots this machine's Debian kernel in a
# virtme-ng VM (the host's filesystem, read-only, with writable overlays), loads hci_vhci, starts
# D-Bus and bluetoothd, and runs the BLE tests with FEDTINY_BLE_STACK=bluez: bleak's own BlueZ
# backend, the virtual air's host-facing controller on /dev/vhci.
#   bash scripts/ble_bluez_tier.sh [--install] [--kvm] [--link] [extra pytest arguments]
# --install: apt-get linux-image-amd64 bluez dbus qemu-system-x86 busybox-static, pip virtme-ng
# --kvm: use KVM (much faster where nested virtualisation works; it hangs on some CI hosts)
# --link: only tests/test_ble_link.py (about 5 minutes under TCG; CI runs this), not the
#         federations of tests/test_ble_federated.py (8-10 minutes each under TCG)
# Exit status 77 (and one line saying what is missing) when the tier cannot run here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
KVM=--disable-kvm
INSTALL=0
FILES="tests/test_ble_link.py,tests/test_ble_federated.py"
while [ $# -gt 0 ]; do
    case "$1" in
        --install) INSTALL=1; shift ;;
        --kvm) KVM=""; shift ;;
        --link) FILES="tests/test_ble_link.py"; shift ;;
        *) break ;;
    esac
done
if [ "$INSTALL" = 1 ]; then
    pkgs=(linux-image-amd64 bluez dbus qemu-system-x86 busybox-static)
    missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        echo "bluez tier: installing ${missing[*]} (apt)"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    "$PY" -m pip install -q virtme-ng
fi
kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1 || true)
need=()
[ -n "$kernel" ] || need+=("a kernel image in /boot (linux-image-amd64)")
command -v vng >/dev/null || need+=("virtme-ng (pip install virtme-ng)")
command -v qemu-system-x86_64 >/dev/null || need+=("qemu-system-x86_64 (qemu-system-x86)")
[ -x /usr/libexec/bluetooth/bluetoothd ] || need+=("bluetoothd (bluez)")
command -v dbus-daemon >/dev/null || need+=("dbus-daemon (dbus)")
if [ ${#need[@]} -gt 0 ]; then
    echo "bluez tier: cannot run here: missing $(IFS=', '; echo "${need[*]}") (bash scripts/ble_bluez_tier.sh --install)"
    exit 77
fi
out=$(mktemp -d /tmp/fedtiny-bluez.XXXXXX)
echo "bluez tier: booting $kernel in a virtme-ng VM (${KVM:-kvm}); log in $out"
# the guest sees this checkout read-only: byte code, caches and results go to /tmp (an overlay)
status=0
args=""  # the pytest arguments survive the guest's command line (e.g. -k "a or b"); none: none (not '')
if [ $# -gt 0 ]; then args=$(printf ' %q' "$@"); fi
vng $KVM -r "$kernel" --memory 4G --cpus 2 --rwdir "$out" \
    --exec "bash $(pwd)/scripts/ble_bluez_guest.sh $(command -v "$PY") $out $FILES$args" || status=$?
cat "$out/pytest.log" 2>/dev/null | tail -n 30
exit $status
