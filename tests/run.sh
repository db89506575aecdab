#!/usr/bin/env bash
# The test command (README, "Two commands"): installs what the tests need on a
# fresh Debian machine, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# mosquitto_pub (Debian's mosquitto-clients) is a real third-party client the
# tests publish with.
if ! command -v mosquitto_pub >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto-clients
fi

cargo test --workspace --all-targets "$@"
