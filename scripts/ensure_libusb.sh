#!/usr/bin/env bash
# open3d links against libusb-1.0; install it when missing and we are root, else say how.
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing libusb-1.0-0 (needed by open3d) with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null
else
  echo "WARNING: libusb-1.0-0 is missing and open3d needs it. Run as root:" >&2
  echo "    sudo apt-get install -y libusb-1.0-0" >&2
fi
