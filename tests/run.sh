#!/usr/bin/env bash
# The test command (README, "Two commands"): installs what the tests need on a
# fresh Debian machine, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/install-deps.sh

cargo test --workspace --all-targets "$@"

# Load-test smoke: 3,000 TLS devices through two SO_REUSEPORT replicas and a
# standalone broker for ~20 s of the fleet scenario (time compressed 600x).
# The rig exits non-zero if any acknowledged message is missing from Kafka
# or out of order. The full 100k-device run is in the README, not here.
cargo build --release --workspace
target/release/load-tests rig --scenario fleet --devices 3000 --replicas 2 --tls \
  --speed 600 --idle-s 3 --duration-s 20 --connect-rate 3000 --out target/load-smoke
