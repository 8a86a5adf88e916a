#!/usr/bin/env bash
# What the online task needs besides Python: Node/npm (to install the pinned jsPsych once; the exported
# study needs no Node) and, for the real-browser tests, Debian's chromium + chromium-driver (headless).
# Installs the missing ones with apt-get when we are root; otherwise prints the line to run and fails.
set -euo pipefail
PKGS=""
command -v npm >/dev/null || PKGS="$PKGS nodejs npm"
command -v chromium >/dev/null || PKGS="$PKGS chromium"
command -v chromedriver >/dev/null || PKGS="$PKGS chromium-driver"
[ -z "$PKGS" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "browser-deps: installing$PKGS (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq $PKGS >/dev/null
else
  echo "error: the online task needs$PKGS. On Debian/Ubuntu: sudo apt-get install$PKGS" >&2
  exit 1
fi
