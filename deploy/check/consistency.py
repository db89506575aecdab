#!/usr/bin/env python3
"""Cross-file checks of the packaging that no linter does (run by deploy/check.sh).
Each file on its own is checked by a real tool there (hadolint, yamllint,
check-jsonschema, kubernetes-validate, promtool, haproxy -c, shellcheck); this
script checks that the files agree with each other and with config.toml:

    consistency.py compose ROOT       Dockerfile <-> build context; docker-compose.yml <->
                                      haproxy.cfg, prometheus.yml, Grafana provisioning,
                                      create-topics.sh, config.toml
    consistency.py k8s ROOT           deploy/k8s/ <-> config.toml, the Dockerfile's USER
    consistency.py env-sets ROOT OUT  writes the (config file, environment) pairs the
                                      image, each compose replica and the Deployment run
                                      the proxy with; prints NAME<TAB>CONFIG<TAB>ENV_FILE
    consistency.py dashboard-rules ROOT OUT
                                      writes the dashboard's queries as recording rules,
                                      so `promtool check rules` parses every one

Exit status 0: passed; 1: a check failed (each printed as "FAIL: ...").
"""

import json
import os
import re
import shlex
import sys
import tomllib

import yaml

FAILS = []


def fail(msg):
    FAILS.append(msg)
    print(f"FAIL: {msg}")


def ok(msg):
    print(f"ok: {msg}")


def done():
    if FAILS:
        print(f"{len(FAILS)} failure(s)")
        sys.exit(1)


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_toml_text(text):
    return tomllib.loads(text)


def load_toml(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def port_of(bind):
    return int(str(bind).rsplit(":", 1)[1])


def env_ms(env, cfg, section, name, default=0):
    """A `_ms` setting as the proxy sees it: environment override, else the config file."""
    v = env.get(f"MQTT_KAFKA_PROXY__{section.upper()}__{name.upper()}")
    return int(v) if v is not None else int(cfg.get(section, {}).get(name, default))


def duration_s(v):
    """A Compose duration ("45s", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(v)))


def config_topics(cfg):
    """Kafka topics a config uses, as Config::kafka_topics: {topic: compacted?}."""
    topics = {r["kafka_topic"]: False for r in cfg.get("routes", [])}
    if cfg.get("unmatched", {}).get("dead_letter_topic"):
        topics[cfg["unmatched"]["dead_letter_topic"]] = False
    c = cfg.get("commands", {})
    if c.get("enabled", True):
        topics[c.get("topic", "iot.commands")] = False
        topics[c.get("receipts_topic", "iot.command-receipts")] = False
        if c.get("retained_topic", "iot.retained-commands"):
            topics[c.get("retained_topic", "iot.retained-commands")] = True
    lc = cfg.get("lifecycle", {})
    if lc.get("topic", "iot.lifecycle"):
        topics[lc.get("topic", "iot.lifecycle")] = False
    topics[lc.get("sessions_topic", "iot.sessions")] = True
    return topics


def dockerfile_lines(root):
    """The Dockerfile's instructions, comments dropped and continuations joined."""
    text = open(os.path.join(root, "Dockerfile")).read()
    joined = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", text))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def check_dockerfile(root):
    """COPY sources exist in the build context (and .dockerignore keeps them);
    the ENTRYPOINT's --config file is one the image copies in."""
    ignored = []
    if os.path.exists(os.path.join(root, ".dockerignore")):
        ignored = [l.strip().strip("/") for l in open(os.path.join(root, ".dockerignore"))
                   if l.strip() and not l.startswith("#")]
    copied, entry = set(), []
    for line in dockerfile_lines(root):
        instr, _, rest = line.partition(" ")
        if instr.upper() == "COPY" and "--from=" not in rest:
            *sources, dest = shlex.split(rest)
            for src in sources:
                if not os.path.exists(os.path.join(root, src)):
                    fail(f"Dockerfile: COPY {src}: not in the build context")
                if any(src.rstrip("/") == i or src.startswith(i + "/") for i in ignored):
                    fail(f"Dockerfile: COPY {src}: excluded by .dockerignore")
            copied.add(dest)
        elif instr.upper() == "ENTRYPOINT":
            entry = json.loads(rest)
    config = entry[entry.index("--config") + 1] if "--config" in entry else None
    if config and config not in copied:
        fail(f"Dockerfile: ENTRYPOINT --config {config} is not a file the image copies in")
    ok(f"Dockerfile: COPY sources in the build context; ENTRYPOINT --config {config}")


def dockerfile_runtime(root):
    """ENV (dict) and USER of the Dockerfile's last stage."""
    env, user = {}, ""
    for line in dockerfile_lines(root):
        instr, _, rest = line.strip().partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            env, user = {}, ""
        elif instr == "ENV":
            env.update(w.split("=", 1) for w in shlex.split(rest))
        elif instr == "USER":
            user = rest.strip()
    return env, user


# ---------------------------------------------------------------------------
# docker-compose.yml and what it mounts

def proxy_services(compose):
    return {n: s for n, s in compose.get("services", {}).items()
            if "build" in s or str(s.get("image", "")).startswith("mqtt-kafka-proxy")}


def compose_env(svc, base):
    env = dict(base)
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(e.split("=", 1) for e in raw)
    env.update({k: str(v) for k, v in raw.items()})
    return env


def haproxy_backends(path):
    """{backend: [(server name, host:port, line + default-server options)]}."""
    backends, section, defaults = {}, None, ""
    for raw in open(path):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] in ("global", "defaults", "frontend", "backend", "listen", "resolvers"):
            section = words[0]
            if section == "backend":
                current = backends.setdefault(words[1], [])
        elif section == "defaults" and words[0] == "default-server":
            defaults += " " + " ".join(words)
        elif section == "backend" and words[0] == "server":
            current.append((words[1], words[2], " ".join(words)))
    return {b: [(n, a, line + defaults) for n, a, line in s] for b, s in backends.items()}


def cmd_compose(root):
    check_dockerfile(root)
    d = os.path.join(root, "deploy")
    compose = load_yaml(os.path.join(d, "docker-compose.yml"))
    services = compose.get("services", {})
    volumes = set(compose.get("volumes") or {})
    img_env, _ = dockerfile_runtime(root)
    shipped = load_toml(os.path.join(root, "config.toml"))

    for name, svc in services.items():
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                fail(f"compose {name}: depends_on unknown service {dep!r}")
        for v in svc.get("volumes") or []:
            src = v.split(":")[0]
            if src.startswith("."):
                if not os.path.exists(os.path.join(d, src)):
                    fail(f"compose {name}: bind mount source {src} does not exist")
            elif src not in volumes:
                fail(f"compose {name}: named volume {src!r} not declared")
        if "build" in svc:
            b = svc["build"]
            df = os.path.join(d, b.get("context", "."), b.get("dockerfile", "Dockerfile"))
            if not os.path.exists(df):
                fail(f"compose {name}: build Dockerfile {df} missing")
    ok(f"compose: {len(services)} services; depends_on, volumes and build paths resolve")

    proxies = proxy_services(compose)
    if len(proxies) < 3:
        fail(f"compose: expected 3 proxy replicas, found {sorted(proxies)}")
    replica_ids = set()
    for name, svc in proxies.items():
        env = compose_env(svc, img_env)
        for listener in ("TCP", "TLS", "WS", "WSS"):
            if env.get(f"MQTT_KAFKA_PROXY__LISTENERS__{listener}__PROXY_PROTOCOL") != "true":
                fail(f"compose {name}: listeners.{listener.lower()}.proxy_protocol is not true "
                     "(HAProxy sends PROXY v2)")
        if env.get("MQTT_KAFKA_PROXY__KAFKA__BOOTSTRAP_SERVERS", "").split(":")[0] not in services:
            fail(f"compose {name}: kafka.bootstrap_servers does not name a compose service")
        rid = env.get("MQTT_KAFKA_PROXY__COMMANDS__REPLICA_ID")
        if not rid or rid in replica_ids:
            fail(f"compose {name}: commands.replica_id missing or not unique ({rid!r})")
        replica_ids.add(rid)
        grace = env_ms(env, shipped, "shutdown", "readiness_grace_ms")
        drain = env_ms(env, shipped, "shutdown", "drain_timeout_ms")
        spread = env_ms(env, shipped, "shutdown", "disconnect_spread_ms")
        stop = duration_s(svc.get("stop_grace_period", "10s"))
        if stop * 1000 <= grace + drain:
            fail(f"compose {name}: stop_grace_period {stop}s <= readiness_grace_ms + drain_timeout_ms")
        if spread >= drain:
            fail(f"compose {name}: disconnect_spread_ms {spread} >= drain_timeout_ms {drain}")
        cert = env.get("MQTT_KAFKA_PROXY__LISTENERS__TLS__CERT_PATH", "")
        mounts = [v.split(":")[1] for v in svc.get("volumes") or []]
        if not any(cert.startswith(m.rstrip("/") + "/") for m in mounts):
            fail(f"compose {name}: TLS cert {cert} is not under a mounted volume {mounts}")
    ok(f"compose: {len(proxies)} proxy replicas; PROXY protocol, replica ids, shutdown timing, certs")

    # HAProxy balances every listener port over every replica, PROXY v2, /readyz on :9090.
    backends = haproxy_backends(os.path.join(d, "haproxy/haproxy.cfg"))
    hap_text = open(os.path.join(d, "haproxy/haproxy.cfg")).read()
    ports = {str(port_of(shipped["listeners"][ln]["bind"])) for ln in ("tcp", "tls", "ws", "wss")}
    ops_port = str(port_of(shipped["ops"]["bind"]))
    seen = set()
    for bname, servers in backends.items():
        hosts = set()
        for sname, addr, line in servers:
            host, _, port = addr.rpartition(":")
            hosts.add(host)
            seen.add(port)
            if "send-proxy-v2" not in line:
                fail(f"haproxy backend {bname}: server {sname} without send-proxy-v2")
            if " check" not in line or f"port {ops_port}" not in line:
                fail(f"haproxy backend {bname}: server {sname} not health-checked on port {ops_port}")
        if servers and hosts != set(proxies):
            fail(f"haproxy backend {bname}: servers {sorted(hosts)} != replicas {sorted(proxies)}")
    if "/readyz" not in hap_text:
        fail("haproxy: health checks do not GET /readyz")
    if seen != ports:
        fail(f"haproxy: backends cover ports {sorted(seen)}, config.toml listens on {sorted(ports)}")
    published = {str(p).split(":")[-1] for p in services.get("haproxy", {}).get("ports", [])}
    if not ports <= published:
        fail(f"compose haproxy: publishes {sorted(published)}, missing {sorted(ports - published)}")
    ok("haproxy.cfg: every listener port over every replica, PROXY v2, /readyz checks")

    # Prometheus scrapes every replica's ops port; its rule files are mounted.
    prom = load_yaml(os.path.join(d, "prometheus/prometheus.yml"))
    targets = {t for sc in prom.get("scrape_configs", []) if sc.get("job_name") == "mqtt-kafka-proxy"
               for st in sc.get("static_configs", []) for t in st.get("targets", [])}
    want = {f"{p}:{ops_port}" for p in proxies}
    if targets != want:
        fail(f"prometheus.yml job mqtt-kafka-proxy targets {sorted(targets)} != {sorted(want)}")
    pmounts = {v.split(":")[1] for v in services.get("prometheus", {}).get("volumes", [])}
    for rf in prom.get("rule_files", []):
        if rf not in pmounts:
            fail(f"prometheus.yml rule file {rf} is not mounted into the prometheus service")
    ok("prometheus.yml: scrapes every replica; rule files mounted")

    # Grafana: provisioning points at the mounted dashboards and a compose service.
    g = services.get("grafana", {})
    gm = dict(v.split(":")[:2] for v in g.get("volumes", []))
    dash_dir = gm.get("./grafana/dashboards")
    if gm.get("./grafana/provisioning") != "/etc/grafana/provisioning":
        fail("grafana: ./grafana/provisioning is not mounted at /etc/grafana/provisioning")
    prov = load_yaml(os.path.join(d, "grafana/provisioning/dashboards/mqtt-kafka-proxy.yml"))
    for p in prov.get("providers", []):
        if p.get("options", {}).get("path") != dash_dir:
            fail(f"grafana dashboard provider path {p.get('options', {}).get('path')} != mount {dash_dir}")
    ds = load_yaml(os.path.join(d, "grafana/provisioning/datasources/prometheus.yml"))
    uids = {s.get("uid") for s in ds.get("datasources", [])}
    for s in ds.get("datasources", []):
        if re.sub(r"^https?://", "", s.get("url", "")).split(":")[0] not in services:
            fail(f"grafana datasource url {s.get('url')} does not name a compose service")
    home = g.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and not (dash_dir and home.startswith(dash_dir + "/") and os.path.exists(
            os.path.join(d, "grafana/dashboards", os.path.basename(home)))):
        fail(f"grafana home dashboard {home} is not a mounted dashboard file")
    dash = json.load(open(os.path.join(d, "grafana/dashboards/mqtt-kafka-proxy.json")))
    for p in (p for p in panels(dash) if p.get("type") != "row"):
        uid = p.get("datasource", {}).get("uid")
        if uid not in uids and uid not in ("${datasource}", "$datasource"):
            fail(f"dashboard panel {p.get('id')}: datasource uid {uid!r} is neither "
                 f"${{datasource}} nor a provisioned one {sorted(uids)}")
    ok("grafana: provisioning paths, datasource host and uids resolve")

    # topic-init creates every topic the shipped config uses, compacted where needed.
    script = open(os.path.join(d, "compose/create-topics.sh")).read()
    created = {m.group(1): "cleanup.policy=compact" in m.group(2)
               for m in re.finditer(r"^create\s+(\S+)(.*)$", script, re.M)}
    for topic, compact in config_topics(shipped).items():
        if topic not in created:
            fail(f"create-topics.sh does not create {topic} (used by config.toml)")
        elif compact and not created[topic]:
            fail(f"create-topics.sh: {topic} should be compacted")
    ok(f"create-topics.sh: creates {sorted(created)}")


# ---------------------------------------------------------------------------
# Kubernetes

def k8s_parts(root):
    d = os.path.join(root, "deploy/k8s")
    listed = load_yaml(os.path.join(d, "kustomization.yaml")).get("resources", [])
    by_kind = {}
    for fn in listed:
        with open(os.path.join(d, fn)) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind, by_kind["Deployment"][0], by_kind["ConfigMap"][0]


def k8s_env(container):
    return {e["name"]: str(e["value"]) if "value" in e else "k8s-valueFrom-placeholder"
            for e in container.get("env", [])}


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def cmd_k8s(root):
    by_kind, dep, cm = k8s_parts(root)
    d = os.path.join(root, "deploy/k8s")
    present = {fn for fn in os.listdir(d) if fn.endswith((".yaml", ".yml")) and fn != "kustomization.yaml"}
    listed = set(load_yaml(os.path.join(d, "kustomization.yaml")).get("resources", []))
    if listed != present:
        fail(f"kustomization.yaml resources {sorted(listed)} != manifests {sorted(present)}")

    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    if not selects(dep["spec"]["selector"]["matchLabels"], pod_labels):
        fail("deployment: selector does not match the pod template labels")
    c = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    env = k8s_env(c)
    cfg = load_toml_text(cm["data"]["config.toml"])
    shipped = load_toml(os.path.join(root, "config.toml"))

    # Container ports == the binds the proxy gets (env, else ConfigMap, else the shipped default).
    for listener, pname in {"tcp": "mqtt", "tls": "mqtts", "ws": "mqtt-ws", "wss": "mqtt-wss"}.items():
        bind = (env.get(f"MQTT_KAFKA_PROXY__LISTENERS__{listener.upper()}__BIND")
                or cfg.get("listeners", {}).get(listener, {}).get("bind")
                or shipped["listeners"][listener]["bind"])
        if ports.get(pname) != port_of(bind):
            fail(f"deployment: container port {pname} {ports.get(pname)} != listeners.{listener}.bind {bind}")
    ops_bind = cfg.get("ops", {}).get("bind") or shipped["ops"]["bind"]
    if ports.get("ops") != port_of(ops_bind):
        fail(f"deployment: container port ops != ops.bind {ops_bind}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("ops", ports.get("ops")):
            fail(f"deployment: {probe} is not GET {path} on the ops port")

    # Shutdown budget: preStop + readiness grace + drain < terminationGracePeriodSeconds.
    grace = env_ms(env, cfg, "shutdown", "readiness_grace_ms")
    drain = env_ms(env, cfg, "shutdown", "drain_timeout_ms", shipped["shutdown"]["drain_timeout_ms"])
    spread = env_ms(env, cfg, "shutdown", "disconnect_spread_ms")
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre = int(cmd[1]) if cmd[:1] == ["sleep"] else 0
    if not pre:
        fail("deployment: no preStop sleep (endpoints may still route to a terminating pod)")
    tgps = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if tgps * 1000 <= pre * 1000 + grace + drain:
        fail(f"deployment: terminationGracePeriodSeconds {tgps} <= preStop {pre}s + {grace}ms + {drain}ms")
    if spread >= drain:
        fail(f"deployment: disconnect_spread_ms {spread} >= drain_timeout_ms {drain}")
    ok(f"deployment: ports, probes, shutdown budget {pre}s + {grace}ms + {drain}ms < {tgps}s")

    # The image's user; every file the proxy reads is under a volume mount.
    psc, csc = pod["spec"].get("securityContext", {}), c.get("securityContext", {})
    _, user = dockerfile_runtime(root)
    if str(psc.get("runAsUser")) != user.split(":")[0]:
        fail(f"deployment: runAsUser {psc.get('runAsUser')} != Dockerfile USER {user}")
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")) or not csc.get("readOnlyRootFilesystem"):
        fail("deployment: runAsNonRoot / readOnlyRootFilesystem not set")
    vols = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    for path, vname in mounts.items():
        if vname not in vols:
            fail(f"deployment: volumeMount {path} uses undefined volume {vname}")
    tls = cfg.get("listeners", {}).get("tls", {})
    files = [env.get("MQTT_KAFKA_PROXY__LISTENERS__TLS__CERT_PATH") or tls.get("cert_path"),
             env.get("MQTT_KAFKA_PROXY__LISTENERS__TLS__KEY_PATH") or tls.get("key_path"),
             cfg.get("auth", {}).get("password", {}).get("file"),
             *[v for k, v in env.items() if k.endswith("_FILE")]]
    files.append(next((a for a in c.get("args", []) + c.get("command", []) if a.endswith(".toml")),
                      "/etc/mqtt-kafka-proxy/config.toml"))
    for fpath in filter(None, files):
        if not any(fpath.startswith(m.rstrip("/") + "/") for m in mounts):
            fail(f"deployment: {fpath} (read by the proxy) is not under any volumeMount")
    if not any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in vols.values()):
        fail("deployment: no volume uses the ConfigMap")
    ok(f"deployment: runAsUser {user} as in the Dockerfile; every file the proxy reads is mounted")

    # Services, PDB and ServiceMonitor select the pods and existing ports.
    services = by_kind.get("Service", [])
    for svc in services:
        if not selects(svc["spec"].get("selector", {}), pod_labels):
            fail(f"service {svc['metadata']['name']}: selector does not match the pods")
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort", p.get("port"))
            if isinstance(tp, str) and tp not in ports:
                fail(f"service {svc['metadata']['name']}: targetPort {tp} is not a container port")
    for lb in (s for s in services if s["spec"].get("type") == "LoadBalancer"):
        ann = lb["metadata"].get("annotations", {})
        if ann.get("service.beta.kubernetes.io/aws-load-balancer-proxy-protocol") != "*":
            fail("service: the NLB does not send PROXY protocol v2")
        if ann.get("service.beta.kubernetes.io/aws-load-balancer-healthcheck-path") != "/readyz":
            fail("service: the NLB health check is not /readyz")
        for listener in ("tcp", "tls", "ws", "wss"):
            pp = env.get(f"MQTT_KAFKA_PROXY__LISTENERS__{listener.upper()}__PROXY_PROTOCOL")
            on = pp == "true" if pp is not None else cfg.get("listeners", {}).get(listener, {}).get(
                "proxy_protocol", False)
            if not on:
                fail(f"k8s: listeners.{listener}.proxy_protocol is off behind a PROXY-v2 NLB")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not selects(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            fail("pdb: selector does not match the pods")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        targets = [s for s in services if selects(sel, s["metadata"].get("labels", {}))]
        if not targets:
            fail("servicemonitor: selects no Service")
        for ep in sm["spec"].get("endpoints", []):
            for s in targets:
                if ep.get("port") not in [p.get("name") for p in s["spec"]["ports"]]:
                    fail(f"servicemonitor: port {ep.get('port')} not on service {s['metadata']['name']}")
    ok("services, PDB and ServiceMonitor select the pods and existing ports")


# ---------------------------------------------------------------------------
# Inputs for --check-config and promtool

def cmd_env_sets(root, out):
    os.makedirs(out, exist_ok=True)
    img_env, _ = dockerfile_runtime(root)

    def add(name, config, env):
        path = os.path.join(out, f"{name}.env")
        with open(path, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in sorted(env.items()))
        print(f"{name}\t{config}\t{path}")

    add("image", os.path.join(root, "config.toml"), img_env)
    compose = load_yaml(os.path.join(root, "deploy/docker-compose.yml"))
    for name, svc in proxy_services(compose).items():
        add(f"compose-{name}", os.path.join(root, "config.toml"), compose_env(svc, img_env))
    _, dep, cm = k8s_parts(root)
    cfg = os.path.join(out, "k8s-config.toml")
    with open(cfg, "w") as f:
        f.write(cm["data"]["config.toml"])
    env = dict(img_env)
    env.update(k8s_env(dep["spec"]["template"]["spec"]["containers"][0]))
    add("k8s-deployment", cfg, env)


def panels(dash):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])


def cmd_dashboard_rules(root, out):
    dash = json.load(open(os.path.join(root, "deploy/grafana/dashboards/mqtt-kafka-proxy.json")))
    rules = []
    for p in panels(dash):
        for t in p.get("targets", []):
            e = (t.get("expr", "").replace("$__rate_interval", "5m").replace("$__range", "1h")
                 .replace("$__interval", "1m"))
            rules.append({"record": f"dashboard:query_{len(rules)}", "expr": re.sub(r"\$\{?(\w+)\}?", ".*", e)})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)
    print(f"wrote {len(rules)} dashboard queries to {out}")


def main():
    cmds = {"compose": (cmd_compose, 1), "k8s": (cmd_k8s, 1), "env-sets": (cmd_env_sets, 2),
            "dashboard-rules": (cmd_dashboard_rules, 2)}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds or len(sys.argv) != 2 + cmds[sys.argv[1]][1]:
        print(__doc__)
        sys.exit(2)
    fn, _ = cmds[sys.argv[1]]
    fn(*sys.argv[2:])
    done()


if __name__ == "__main__":
    main()
