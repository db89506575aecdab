#!/usr/bin/env bash
# Checks the packaging without a Docker engine or a cluster:
#
#   bash deploy/check.sh [--no-build] [--no-smoke]
#
#   - every YAML file parses (and has no duplicate keys), every JSON file parses;
#   - the Grafana dashboard and the Prometheus alerts use only metric names,
#     types and labels that src/ records (src/metrics.rs + the recording sites);
#   - promtool: prometheus.yml, alerts.yml, the alerts' unit tests and every
#     dashboard query parse / pass (promtool from PATH, or extracted from
#     Debian's prometheus package with `apt-get download`; skipped otherwise);
#   - haproxy -c on deploy/haproxy/haproxy.cfg (haproxy installed with apt-get
#     if missing; skipped if that fails);
#   - docker-compose.yml, haproxy.cfg, prometheus.yml, Grafana provisioning and
#     create-topics.sh agree with each other and with config.toml;
#   - Kubernetes manifests: schemas (kubernetes-validate, from PyPI, in a
#     virtualenv under target/), `kubectl kustomize`, and their consistency
#     (selectors, ports, probes, shutdown budget, mounted secrets);
#   - shell scripts: bash -n / sh -n, and shellcheck when available;
#   - the Dockerfile replayed outside Docker (deploy/check/replay_dockerfile.py):
#     its builder steps (the stub-source dependency build, then the real
#     build, `cargo build --release --locked -p mqtt-kafka-proxy`) into
#     target/deploy-check/docker, the runtime stage's files staged into a
#     rootfs, ENTRYPOINT/--config paths and the binary's shared libraries
#     checked; --no-build skips the compiling RUN steps (an earlier replay's
#     binary is reused if there is one);
#   - the binary's --check-config under the exact environment the image,
#     each compose replica and the Kubernetes Deployment give it;
#   - a smoke run of the staged binary as the container would run it
#     (deploy/check/smoke.py; --no-smoke skips it).
#
# Exit status: 0 when nothing failed (skipped checks are listed), 1 otherwise.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$ROOT/target/deploy-check
BUILD=1
SMOKE=1
for arg in "$@"; do
    case $arg in
        --no-build) BUILD=0 ;;
        --no-smoke) SMOKE=0 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done
mkdir -p "$WORK"
cd "$ROOT" || exit 1

PASSED=()
FAILED=()
SKIPPED=()
pass() { PASSED+=("$1"); echo "--- PASS: $1"; }
failed() { FAILED+=("$1"); echo "--- FAIL: $1"; }
skip() { SKIPPED+=("$1: $2"); echo "--- SKIP: $1: $2"; }
# run NAME CMD...: PASS on 0, SKIP on 77, FAIL otherwise.
run() {
    local name=$1
    shift
    echo
    echo "=== $name"
    "$@"
    local rc=$?
    case $rc in
        0) pass "$name" ;;
        77) skip "$name" "tool unavailable (see above)" ;;
        *) failed "$name" ;;
    esac
    return 0
}
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"; else return 1; fi
}

# ---------------------------------------------------------------------------
# Python with PyYAML (and kubernetes-validate) in a cached virtualenv.
PY=python3
VENV=$WORK/venv
echo "=== tools"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" >/dev/null 2>&1 || rm -rf "$VENV"
fi
if [ -x "$VENV/bin/python" ]; then
    if ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
        "$VENV/bin/pip" install --quiet pyyaml >/dev/null 2>&1 || true
    fi
    if ! "$VENV/bin/python" -c 'import tomllib' 2>/dev/null && ! "$VENV/bin/python" -c 'import tomli' 2>/dev/null; then
        "$VENV/bin/pip" install --quiet tomli >/dev/null 2>&1 || true
    fi
    if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
        "$VENV/bin/pip" install --quiet kubernetes-validate >/dev/null 2>&1 || true
    fi
    if "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
        PY=$VENV/bin/python
    fi
fi
if ! "$PY" -c 'import yaml' 2>/dev/null; then
    python3 -m pip install --quiet --user pyyaml >/dev/null 2>&1 || true
    PY=python3
fi
if ! "$PY" -c 'import yaml' 2>/dev/null; then
    echo "PyYAML is not available and could not be installed; cannot check anything" >&2
    exit 1
fi
echo "python: $PY"

HAPROXY=$(command -v haproxy || true)
if [ -z "$HAPROXY" ]; then
    echo "installing haproxy with apt-get (for haproxy -c)"
    as_root apt-get install -y --no-install-recommends haproxy >/dev/null 2>&1 \
        || { as_root apt-get update >/dev/null 2>&1 && as_root apt-get install -y --no-install-recommends haproxy >/dev/null 2>&1; } \
        || true
    HAPROXY=$(command -v haproxy || true)
fi

PROMTOOL=$(command -v promtool || true)
if [ -z "$PROMTOOL" ] && [ -x "$WORK/tools/usr/bin/promtool" ]; then
    PROMTOOL=$WORK/tools/usr/bin/promtool
fi
if [ -z "$PROMTOOL" ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    # promtool alone, from Debian's prometheus package, without installing it.
    echo "fetching promtool from Debian's prometheus package (apt-get download)"
    mkdir -p "$WORK/tools/deb"
    (cd "$WORK/tools/deb" && apt-get download prometheus >/dev/null 2>&1 \
        && dpkg-deb -x prometheus_*.deb "$WORK/tools") || true
    [ -x "$WORK/tools/usr/bin/promtool" ] && PROMTOOL=$WORK/tools/usr/bin/promtool
fi

SHELLCHECK=$(command -v shellcheck || true)
if [ -z "$SHELLCHECK" ]; then
    as_root apt-get install -y --no-install-recommends shellcheck >/dev/null 2>&1 || true
    SHELLCHECK=$(command -v shellcheck || true)
fi
echo "haproxy: ${HAPROXY:-none}  promtool: ${PROMTOOL:-none}  shellcheck: ${SHELLCHECK:-none}  kubectl: $(command -v kubectl || echo none)"

mapfile -t YAML_FILES < <(find deploy -type f \( -name '*.yml' -o -name '*.yaml' \) | sort)
mapfile -t JSON_FILES < <(find deploy -type f -name '*.json' | sort)
mapfile -t SH_FILES < <(find deploy -type f -name '*.sh' | sort)

# ---------------------------------------------------------------------------
run "YAML parses (${#YAML_FILES[@]} files, duplicate keys rejected)" "$PY" deploy/check/lint.py yaml "${YAML_FILES[@]}"

check_json() {
    local f rc=0
    for f in "${JSON_FILES[@]}"; do
        if "$PY" -m json.tool "$f" >/dev/null; then echo "ok: $f"; else echo "FAIL: $f"; rc=1; fi
    done
    return $rc
}
run "JSON parses (${#JSON_FILES[@]} files)" check_json

run "dashboard + alerts: metric names, types, labels vs src/" "$PY" deploy/check/lint.py metrics "$ROOT"

check_promtool() {
    [ -n "$PROMTOOL" ] || { echo "promtool not available"; return 77; }
    local tmp=$WORK/promtool
    rm -rf "$tmp" && mkdir -p "$tmp"
    # prometheus.yml names the rule file by its path in the container.
    sed 's#/etc/prometheus/alerts.yml#alerts.yml#' deploy/prometheus/prometheus.yml >"$tmp/prometheus.yml"
    cp deploy/prometheus/alerts.yml "$tmp/alerts.yml"
    "$PROMTOOL" check config "$tmp/prometheus.yml" || return 1
    "$PROMTOOL" check rules deploy/prometheus/alerts.yml || return 1
    (cd deploy/prometheus && "$PROMTOOL" test rules alerts.test.yml) || return 1
    "$PY" deploy/check/lint.py promql-rules "$ROOT" "$tmp/dashboard-queries.yml" || return 1
    "$PROMTOOL" check rules "$tmp/dashboard-queries.yml" || return 1
}
run "promtool: prometheus.yml, alerts.yml, alert unit tests, dashboard PromQL" check_promtool

check_haproxy() {
    [ -n "$HAPROXY" ] || { echo "haproxy not available"; return 77; }
    local out rc
    out=$("$HAPROXY" -c -f deploy/haproxy/haproxy.cfg 2>&1)
    rc=$?
    echo "$out" | grep -v "could not resolve address" | sed 's/^/  /'
    [ $rc -eq 0 ] || return 1
    # Unresolvable compose service names are expected here (init-addr none);
    # any other warning is a failure.
    if echo "$out" | grep -E '\[(WARNING|ALERT)\]' | grep -vq "could not resolve address"; then
        echo "haproxy -c printed warnings other than unresolved service names"
        return 1
    fi
    echo "ok: $("$HAPROXY" -v | head -n1)"
}
run "haproxy -c deploy/haproxy/haproxy.cfg" check_haproxy

run "compose stack consistency (HAProxy, Prometheus, Grafana, topics, timing)" "$PY" deploy/check/lint.py compose "$ROOT"

run "Kubernetes manifests consistency" "$PY" deploy/check/lint.py k8s "$ROOT"

check_k8s_schema() {
    [ -x "$VENV/bin/kubernetes-validate" ] || { echo "kubernetes-validate not installable"; return 77; }
    local f files=()
    for f in deploy/k8s/*.yaml; do
        case $f in
            */kustomization.yaml|*/servicemonitor.yaml) ;;  # no schema for CRDs / kustomize
            *) files+=("$f") ;;
        esac
    done
    "$VENV/bin/kubernetes-validate" --strict -k 1.30.0 "${files[@]}"
}
run "Kubernetes schemas (kubernetes-validate --strict, 1.30)" check_k8s_schema

check_kustomize() {
    command -v kubectl >/dev/null || { echo "kubectl not available"; return 77; }
    local n
    n=$(kubectl kustomize deploy/k8s | grep -c '^kind:') || return 1
    echo "ok: kubectl kustomize deploy/k8s renders $n resources"
}
run "kubectl kustomize deploy/k8s" check_kustomize

check_shell() {
    local f rc=0
    for f in "${SH_FILES[@]}"; do
        if head -n1 "$f" | grep -q 'bin/sh'; then sh -n "$f" || rc=1; else bash -n "$f" || rc=1; fi
    done
    if [ -n "$SHELLCHECK" ]; then
        "$SHELLCHECK" -S warning "${SH_FILES[@]}" || rc=1
        echo "shellcheck: ${#SH_FILES[@]} scripts"
    else
        echo "shellcheck not available: syntax only"
    fi
    return $rc
}
run "shell scripts (${#SH_FILES[@]})" check_shell

# ---------------------------------------------------------------------------
# The Dockerfile, replayed.
SUMMARY=$WORK/docker-summary.json
replay() {
    local args=("$ROOT" "$WORK/docker")
    [ $BUILD -eq 1 ] || args+=(--no-build)
    "$PY" deploy/check/replay_dockerfile.py "${args[@]}" | tee "$WORK/replay.log"
    local rc=${PIPESTATUS[0]}
    tail -n1 "$WORK/replay.log" >"$SUMMARY"
    return "$rc"
}
if [ $BUILD -eq 1 ]; then
    run "Dockerfile replay: builder stage (cargo build --release --locked), runtime files" replay
else
    run "Dockerfile replay (--no-build: compiling RUN steps skipped)" replay
fi

BIN=""
if [ -s "$SUMMARY" ] && "$PY" -c 'import json,sys; json.load(open(sys.argv[1]))' "$SUMMARY" 2>/dev/null; then
    BIN=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["binary"] or "")' "$SUMMARY")
fi
if [ -z "$BIN" ] && [ $BUILD -eq 0 ] && [ -x target/release/mqtt-kafka-proxy ]; then
    echo "no replayed image binary; using target/release/mqtt-kafka-proxy for --check-config"
    BIN=$ROOT/target/release/mqtt-kafka-proxy
fi

check_configs() {
    [ -n "$BIN" ] || { echo "no binary (run without --no-build)"; return 77; }
    "$PY" deploy/check/lint.py env-sets "$ROOT" "$WORK/env-sets" >"$WORK/env-sets.txt" || return 1
    local rc=0 name config envfile vars
    local image_config
    image_config=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"] or "")' "$SUMMARY" 2>/dev/null)
    [ -n "$image_config" ] && [ -f "$image_config" ] || image_config=$ROOT/config.toml
    while IFS=$'\t' read -r name config envfile; do
        [ "$config" = config.toml ] && config=$image_config
        mapfile -t vars <"$envfile"
        if env -i PATH="$PATH" HOME="${HOME:-/tmp}" "${vars[@]}" "$BIN" --check-config --config "$config" >/dev/null 2>"$WORK/check-config.err"; then
            echo "ok: $name: --check-config with ${#vars[@]} environment variables"
        else
            echo "FAIL: $name: $(cat "$WORK/check-config.err")"
            rc=1
        fi
    done <"$WORK/env-sets.txt"
    return $rc
}
run "--check-config under the image / compose / Kubernetes environments" check_configs

check_smoke() {
    [ $SMOKE -eq 1 ] || { echo "--no-smoke"; return 77; }
    [ -s "$SUMMARY" ] || return 77
    local has
    has=$("$PY" -c 'import json,sys; print(1 if json.load(open(sys.argv[1]))["binary"] else 0)' "$SUMMARY")
    [ "$has" = 1 ] || { echo "no replayed image binary (run without --no-build once)"; return 77; }
    "$PY" deploy/check/smoke.py "$SUMMARY" "$ROOT" "$WORK/smoke"
}
run "smoke run of the staged image binary (healthcheck, readiness, drain, PROXY v2, TLS)" check_smoke

# ---------------------------------------------------------------------------
echo
echo "================ summary"
for s in "${PASSED[@]}"; do echo "PASS  $s"; done
for s in "${SKIPPED[@]}"; do echo "SKIP  $s"; done
for s in "${FAILED[@]}"; do echo "FAIL  $s"; done
cat <<'EOF'
Not verified here (no Docker engine, no cluster, no network):
  - `docker build` itself: base images rust:1-bookworm / debian:bookworm-slim,
    apt-get in the image, useradd, file ownership and USER in the image
  - `docker compose up`: image pulls (apache/kafka, haproxy, prometheus,
    grafana, alpine), real Kafka, HAProxy's runtime DNS and health checks,
    Grafana actually rendering the dashboard
  - Kubernetes admission/scheduling, the AWS NLB annotations, ServiceMonitor
    (a CRD, no schema here)
EOF
echo "passed ${#PASSED[@]}, skipped ${#SKIPPED[@]}, failed ${#FAILED[@]}"
[ ${#FAILED[@]} -eq 0 ]
