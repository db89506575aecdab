#!/usr/bin/env bash
# Checks the packaging under deploy/ and the Dockerfile with the real linters,
# without a Docker engine or a cluster (tests/run.sh runs it):
#
#   bash deploy/check.sh
#
#   - Dockerfile: hadolint;
#   - every YAML file: yamllint (deploy/yamllint.yml); every JSON file parses;
#   - docker-compose.yml: check-jsonschema against the compose-spec schema;
#   - Kubernetes: `kubectl kustomize deploy/k8s`, its output validated by
#     kubernetes-validate --strict against the Kubernetes 1.30 and 1.37 schemas
#     (the ServiceMonitor is a CRD: no schema, reported as a warning);
#   - Prometheus: promtool check config / check rules / test rules
#     (alerts.test.yml), and every dashboard query parsed by promtool;
#   - haproxy -c on deploy/haproxy/haproxy.cfg;
#   - shell scripts: sh -n / bash -n and shellcheck;
#   - what no tool checks: the files agree with each other and with config.toml
#     (deploy/check/consistency.py: ports, replicas, PROXY v2, health checks,
#     scrape targets, mounts, topics, shutdown budgets, the image's user);
#   - the proxy's --check-config under the exact environment the image, each
#     compose replica and the Kubernetes Deployment give it (debug build).
#
# That every metric the alerts and the dashboard use is exported by the proxy
# is a Rust test: tests/deploy_metrics.rs.
#
# Tools install themselves: Python tools (deploy/check/requirements.txt) into
# a virtualenv under target/deploy-check/; haproxy and shellcheck with apt-get
# when missing; promtool extracted from Debian's prometheus package (no
# Prometheus server is installed). A tool that cannot be had is a failure.
# Exit status: 0 when every check passed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$ROOT/target/deploy-check
VENV=$WORK/venv
cd "$ROOT" || exit 1
mkdir -p "$WORK"

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
apt_updated=0
apt_update() {
    [ $apt_updated = 1 ] || $sudo apt-get update -qq
    apt_updated=1
}

# ---------------------------------------------------------------------------
# Tools.
echo "=== tools"
missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || { echo "apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

PROMTOOL=$(command -v promtool || echo "$WORK/prometheus/usr/bin/promtool")
if [ ! -x "$PROMTOOL" ]; then
    # promtool alone, out of Debian's prometheus package: installing the
    # package would also install (and on systemd start) a Prometheus server.
    rm -rf "$WORK/prometheus" && mkdir -p "$WORK/prometheus"
    (cd "$WORK/prometheus" && { apt-get download -q prometheus || { apt_update && apt-get download -q prometheus; }; } \
        && dpkg-deb -x prometheus_*.deb .) || { echo "could not get Debian's prometheus package" >&2; exit 1; }
fi

REQS=deploy/check/requirements.txt
if ! cmp -s "$REQS" "$VENV/requirements.txt"; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQS" \
        || { echo "pip install -r $REQS failed" >&2; rm -rf "$VENV"; exit 1; }
    cp "$REQS" "$VENV/requirements.txt"
fi
PY=$VENV/bin/python
command -v kubectl >/dev/null 2>&1 || { echo "kubectl (for kustomize) is not on this machine" >&2; exit 1; }

echo "hadolint:            $("$VENV/bin/hadolint" --version)"
echo "yamllint:            $("$VENV/bin/yamllint" --version)"
echo "check-jsonschema:    $("$VENV/bin/check-jsonschema" --version)"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version)"
echo "kubectl:             $(kubectl version --client 2>/dev/null | head -n1)"
echo "promtool:            $("$PROMTOOL" --version 2>&1 | head -n1)"
echo "haproxy:             $(haproxy -v | head -n1)"
echo "shellcheck:          $(shellcheck --version | sed -n 's/^version: //p')"

# ---------------------------------------------------------------------------
# Checks: each prints its own output; PASS/FAIL per check, summary at the end.
PASSED=()
FAILED=()
run() {
    local name=$1
    shift
    echo
    echo "=== $name"
    if "$@"; then PASSED+=("$name"); else FAILED+=("$name"); echo "--- FAIL: $name"; fi
}

mapfile -t JSON_FILES < <(find deploy -type f -name '*.json' | sort)
mapfile -t SH_FILES < <(find deploy -type f -name '*.sh' | sort)

run "hadolint Dockerfile" "$VENV/bin/hadolint" Dockerfile

run "yamllint deploy/" "$VENV/bin/yamllint" -c deploy/yamllint.yml deploy

check_json() {
    local f rc=0
    for f in "${JSON_FILES[@]}"; do "$PY" -m json.tool "$f" >/dev/null || { echo "$f: not JSON"; rc=1; }; done
    echo "${#JSON_FILES[@]} JSON files parse"
    return $rc
}
run "JSON parses" check_json

run "docker-compose.yml against the compose-spec schema" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml

check_k8s() {
    kubectl kustomize deploy/k8s >"$WORK/k8s.yaml" || return 1
    local v
    for v in 1.30.0 1.37.0; do
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$WORK/k8s.yaml" || return 1
    done
    echo "kustomize renders $(grep -c '^kind:' "$WORK/k8s.yaml") resources; valid against Kubernetes 1.30 and 1.37"
}
run "Kubernetes: kubectl kustomize + kubernetes-validate --strict" check_k8s

check_prometheus() {
    local tmp=$WORK/promtool
    rm -rf "$tmp" && mkdir -p "$tmp"
    # prometheus.yml names the rule file by its path in the container.
    sed 's#/etc/prometheus/alerts.yml#alerts.yml#' deploy/prometheus/prometheus.yml >"$tmp/prometheus.yml"
    cp deploy/prometheus/alerts.yml "$tmp/alerts.yml"
    "$PROMTOOL" check config "$tmp/prometheus.yml" || return 1
    (cd deploy/prometheus && "$PROMTOOL" test rules alerts.test.yml) || return 1
    "$PY" deploy/check/consistency.py dashboard-rules "$ROOT" "$tmp/dashboard-queries.yml" || return 1
    "$PROMTOOL" check rules "$tmp/dashboard-queries.yml"
}
run "promtool: prometheus.yml + alerts.yml, alert unit tests, dashboard PromQL" check_prometheus

check_haproxy() {
    local out rc
    out=$(haproxy -c -f deploy/haproxy/haproxy.cfg 2>&1)
    rc=$?
    echo "$out"
    # The compose service names do not resolve here (init-addr none makes
    # that legal); any other warning is a failure.
    if echo "$out" | grep -E '\[(WARNING|ALERT)\]' | grep -v "could not resolve address"; then
        echo "haproxy -c printed warnings other than unresolved service names"
        return 1
    fi
    return $rc
}
run "haproxy -c deploy/haproxy/haproxy.cfg" check_haproxy

check_shell() {
    local f rc=0
    for f in "${SH_FILES[@]}" deploy/check.sh; do
        if head -n1 "$f" | grep -q 'bin/sh'; then sh -n "$f" || rc=1; else bash -n "$f" || rc=1; fi
    done
    shellcheck -S warning "${SH_FILES[@]}" || rc=1
    return $rc
}
run "shell scripts: syntax + shellcheck" check_shell

run "compose, HAProxy, Prometheus, Grafana, topics agree with config.toml" "$PY" deploy/check/consistency.py compose "$ROOT"
run "Kubernetes manifests agree with config.toml and the Dockerfile" "$PY" deploy/check/consistency.py k8s "$ROOT"

check_configs() {
    # Already built by `cargo test` in tests/run.sh; otherwise a debug build.
    cargo build -q -p mqtt-kafka-proxy --bin mqtt-kafka-proxy || return 1
    local bin=$ROOT/target/debug/mqtt-kafka-proxy rc=0 name config envfile vars
    "$PY" deploy/check/consistency.py env-sets "$ROOT" "$WORK/env-sets" >"$WORK/env-sets.txt" || return 1
    while IFS=$'\t' read -r name config envfile; do
        mapfile -t vars <"$envfile"
        if env -i PATH="$PATH" HOME="${HOME:-/tmp}" "${vars[@]}" "$bin" --check-config --config "$config" \
            >/dev/null 2>"$WORK/check-config.err"; then
            echo "ok: $name: --check-config with ${#vars[@]} environment variables"
        else
            echo "FAIL: $name: $(cat "$WORK/check-config.err")"
            rc=1
        fi
    done <"$WORK/env-sets.txt"
    return $rc
}
run "--check-config under the image / compose / Kubernetes environments" check_configs

# ---------------------------------------------------------------------------
echo
echo "================ deploy checks"
for s in "${PASSED[@]}"; do echo "PASS  $s"; done
for s in "${FAILED[@]}"; do echo "FAIL  $s"; done
cat <<'EOF'
Not checked here (no Docker engine, no cluster, no network): `docker build`
and the base images, `docker compose up` (image pulls, real Kafka, HAProxy's
runtime DNS, Grafana rendering), Kubernetes admission and scheduling, the AWS
NLB annotations' effect.
EOF
echo "deploy: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
[ ${#FAILED[@]} -eq 0 ]
