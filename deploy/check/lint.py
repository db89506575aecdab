#!/usr/bin/env python3
"""Static checks of the packaging files under deploy/ (run by deploy/check.sh).

    lint.py yaml FILE...        every document parses (safe_load_all), no duplicate keys
    lint.py json FILE...        parses
    lint.py metrics ROOT        dashboard + alert PromQL: metric names, types and
                                labels against src/metrics.rs and the recording sites
    lint.py promql-rules ROOT OUT
                                writes the dashboard's queries as recording rules,
                                for `promtool check rules`
    lint.py compose ROOT        docker-compose.yml consistency (HAProxy, Prometheus,
                                Grafana, topics, shutdown timing)
    lint.py k8s ROOT            Kubernetes manifests' consistency
    lint.py env-sets ROOT OUT   writes the (config file, environment) pairs the
                                image, compose and Kubernetes run the proxy with,
                                for `--check-config`

Exit status 0: passed; 1: a check failed (each failure printed as "FAIL: ...").
"""

import json
import os
import re
import sys

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
    sys.exit(0)


# ---------------------------------------------------------------------------
# YAML with duplicate-key detection

class UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    keys = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        keys.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_all(path):
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=UniqueKeyLoader) if d is not None]


def load_yaml(path):
    docs = load_yaml_all(path)
    if len(docs) != 1:
        raise ValueError(f"{path}: expected one YAML document, found {len(docs)}")
    return docs[0]


def cmd_yaml(files):
    for p in files:
        try:
            with open(p) as f:
                list(yaml.safe_load_all(f))
            docs = load_yaml_all(p)
            ok(f"{p}: {len(docs)} YAML document(s)")
        except Exception as e:  # noqa: BLE001
            fail(f"{p}: {e}")
    done()


def cmd_json(files):
    for p in files:
        try:
            with open(p) as f:
                json.load(f)
            ok(f"{p}: JSON")
        except Exception as e:  # noqa: BLE001
            fail(f"{p}: {e}")
    done()


# ---------------------------------------------------------------------------
# Metrics: names from src/metrics.rs, types and labels from the recording sites

def parse_metrics_rs(root):
    text = open(os.path.join(root, "src/metrics.rs")).read()
    consts = dict(re.findall(r'pub const ([A-Z0-9_]+): &str = "([a-z0-9_:]+)";', text))
    if not consts:
        raise SystemExit("no `pub const NAME: &str = \"...\"` found in src/metrics.rs")
    return consts


def _macro_calls(text, macro):
    """Yields the argument text of every `macro!(...)` in text."""
    needle = macro + "!("
    i = 0
    while True:
        i = text.find(needle, i)
        if i < 0:
            return
        j = i + len(needle)
        depth, k, in_str = 1, j, False
        while k < len(text) and depth:
            c = text[k]
            if in_str:
                if c == "\\":
                    k += 1
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            k += 1
        yield text[j:k - 1]
        i = k


def _split_top(s, sep=","):
    parts, depth, cur, in_str, esc = [], 0, "", False, False
    for c in s:
        if in_str:
            cur += c
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
            continue
        if c == '"':
            in_str = True
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += c
    if cur.strip():
        parts.append(cur.strip())
    return parts


def recorded_metrics(root, consts):
    """{name: {"type": counter|gauge|histogram, "labels": {label: set(values) or None (open)}}}"""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(root, "src")):
        for fn in files:
            if not fn.endswith(".rs"):
                continue
            text = open(os.path.join(dirpath, fn)).read()
            for kind in ("counter", "gauge", "histogram"):
                for args in _macro_calls(text, "metrics::" + kind):
                    parts = _split_top(args)
                    if not parts:
                        continue
                    m = re.fullmatch(r"(?:crate::metrics::|m::|metrics::)?([A-Z0-9_]+)", parts[0])
                    if not m or m.group(1) not in consts:
                        continue
                    name = consts[m.group(1)]
                    entry = out.setdefault(name, {"type": kind, "labels": {}})
                    if entry["type"] != kind:
                        fail(f"{name} recorded both as {entry['type']} and {kind}")
                    for p in parts[1:]:
                        lm = re.fullmatch(r'"([a-z_]+)"\s*=>\s*(.+)', p, re.S)
                        if not lm:
                            continue
                        label, value = lm.group(1), lm.group(2).strip()
                        vm = re.fullmatch(r'"([^"]*)"', value)
                        values = entry["labels"].setdefault(label, set())
                        if values is None:
                            continue
                        if vm:
                            values.add(vm.group(1))
                        else:
                            entry["labels"][label] = None  # computed at run time
    return out


PROM_BUILTIN = {"up": {"type": "gauge", "labels": {}}}
TARGET_LABELS = {"instance", "job", "replica"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on",
                "ignoring", "group_left", "group_right"}


def promql_selectors(expr):
    """[(metric, {label: (op, value)}, in_rate_fn)] for every selector in a PromQL expression."""
    s = expr
    # Grafana variables and macros.
    s = s.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m")
    s = re.sub(r"\$\{?(\w+)\}?", r"\1", s)
    out = []
    pattern = re.compile(
        r'(?<![\w:."])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\[[^\]]*\])?')
    # Remove grouping clauses, durations after offset, and numbers.
    s2 = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s2 = re.sub(r"\boffset\s+\w+", " ", s2)
    s2 = re.sub(r'"(?:[^"\\]|\\.)*"|(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?',
                lambda m: m.group(0) if m.group(0).startswith('"') else " ", s2)
    pos = 0
    while True:
        m = pattern.search(s2, pos)
        if not m:
            break
        pos = m.end() if m.end() > m.start() else m.start() + 1
        name, matchers = m.group(1), m.group(2)
        rest = s2[m.end():]
        if name in PROMQL_WORDS:
            continue
        if not matchers and rest.lstrip().startswith("("):
            continue  # a function call
        labels = {}
        if matchers:
            for lm in re.finditer(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', matchers):
                labels[lm.group(1)] = (lm.group(2), lm.group(3))
        before = s2[:m.start()].rstrip()
        in_rate = bool(re.search(r"\b(rate|irate|increase|delta|idelta|deriv)\s*\($", before))
        out.append((name, labels, in_rate))
    return out


def grouping_labels(expr):
    labels = set()
    for m in re.finditer(r"\b(by|without)\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
    return labels


def legend_labels(legend):
    return set(re.findall(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", legend or ""))


def check_expr(where, expr, recorded, used, extra_labels=()):
    sels = promql_selectors(expr)
    if not sels:
        fail(f"{where}: no metric selector found in {expr!r}")
        return
    allowed = set(TARGET_LABELS) | set(extra_labels)
    for name, matchers, in_rate in sels:
        base, suffix = name, ""
        for suf in ("_bucket", "_sum", "_count"):
            if name.endswith(suf) and name[: -len(suf)] in recorded:
                base, suffix = name[: -len(suf)], suf
        info = recorded.get(base) or PROM_BUILTIN.get(base)
        if info is None:
            fail(f"{where}: metric {name!r} is not in src/metrics.rs (or never recorded)")
            continue
        used.add(base)
        kind = info["type"]
        if suffix and kind != "histogram":
            fail(f"{where}: {name!r}: {base} is a {kind}, not a histogram")
        if kind == "histogram" and not suffix:
            fail(f"{where}: {name!r} is a histogram; use {base}_bucket/_sum/_count")
        if in_rate and kind == "gauge":
            fail(f"{where}: rate()/increase() over gauge {name!r}")
        if kind == "counter" and not in_rate:
            fail(f"{where}: counter {name!r} used without rate()/increase()")
        labels = dict(info["labels"])
        if suffix == "_bucket":
            labels["le"] = None
        allowed |= set(labels)
        for label, (op, value) in matchers.items():
            if label in TARGET_LABELS:
                continue
            if label not in labels:
                fail(f"{where}: {name!r} has no label {label!r} (labels: {sorted(labels) or 'none'})")
                continue
            values = labels[label]
            if values is not None and op in ("=", "!=") and value not in values:
                fail(f"{where}: {name!r}{{{label}{op}{value!r}}}: value never recorded "
                     f"(recorded: {sorted(values)})")
    for label in grouping_labels(expr):
        if label not in allowed:
            fail(f"{where}: grouping by {label!r}, which none of its metrics has")
    return allowed


def dashboard_queries(dash):
    """[(where, expr, legend)] for every target of every panel, rows included."""
    out = []

    def walk(panels):
        for p in panels:
            if p.get("type") == "row":
                walk(p.get("panels", []))
                continue
            for t in p.get("targets", []):
                out.append((f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}",
                            t.get("expr", ""), t.get("legendFormat", "")))
    walk(dash.get("panels", []))
    return out


def check_dashboard_structure(dash, path):
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        if key not in dash:
            fail(f"{path}: no {key!r}")
    if not isinstance(dash.get("schemaVersion"), int) or dash.get("schemaVersion", 0) < 36:
        fail(f"{path}: schemaVersion {dash.get('schemaVersion')!r} (expected >= 36)")
    ids, grid = set(), []
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}

    def walk(panels):
        for p in panels:
            pid = p.get("id")
            if pid in ids:
                fail(f"{path}: duplicate panel id {pid}")
            ids.add(pid)
            g = p.get("gridPos", {})
            if not all(isinstance(g.get(k), int) for k in "hwxy"):
                fail(f"{path}: panel {pid} has no complete gridPos")
            elif g["x"] + g["w"] > 24:
                fail(f"{path}: panel {pid} is wider than the 24-column grid")
            else:
                grid.append((pid, g))
            if p.get("type") != "row":
                ds = p.get("datasource", {})
                if ds.get("uid") not in ("${datasource}", "$datasource", "prometheus"):
                    fail(f"{path}: panel {pid} datasource {ds!r} is neither ${{datasource}} nor the provisioned uid")
                if not p.get("targets"):
                    fail(f"{path}: panel {pid} {p.get('title')!r} has no queries")
                for t in p.get("targets", []):
                    for var in re.findall(r"\$(?!__)\{?(\w+)", t.get("expr", "")):
                        if var not in variables:
                            fail(f"{path}: panel {pid} uses undefined variable ${var}")
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    # Overlapping panels render on top of each other.
    for i, (a, ga) in enumerate(grid):
        for b, gb in grid[i + 1:]:
            if (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                    and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]):
                fail(f"{path}: panels {a} and {b} overlap")
    return len(ids)


def cmd_metrics(root):
    consts = parse_metrics_rs(root)
    recorded = recorded_metrics(root, consts)
    names = set(consts.values())
    never = sorted(names - set(recorded))
    if never:
        print(f"note: defined in src/metrics.rs but no recording site found: {never}")
    ok(f"src/metrics.rs: {len(names)} metric names, {len(recorded)} with recording sites")

    used_dash, used_alerts = set(), set()
    dpath = os.path.join(root, "deploy/grafana/dashboards/mqtt-kafka-proxy.json")
    dash = json.load(open(dpath))
    n = check_dashboard_structure(dash, "dashboard")
    queries = dashboard_queries(dash)
    for where, expr, legend in queries:
        allowed = check_expr(f"dashboard {where}", expr, recorded, used_dash)
        if allowed is not None:
            for label in legend_labels(legend):
                if label not in allowed:
                    fail(f"dashboard {where}: legend uses {{{{{label}}}}}, not a label of the result")
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"label_values\(\s*([\w:]+)\s*,\s*(\w+)\s*\)", q or "")
        if m:
            check_expr(f"dashboard variable {v.get('name')}", m.group(1), recorded, used_dash)
    ok(f"dashboard: {n} panels, {len(queries)} queries checked")

    apath = os.path.join(root, "deploy/prometheus/alerts.yml")
    rules = load_yaml(apath)
    count = 0
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            where = f"alerts.yml {name}"
            allowed = check_expr(where, r.get("expr", ""), recorded, used_alerts)
            count += 1
            if r.get("alert"):
                if "severity" not in r.get("labels", {}):
                    fail(f"{where}: no severity label")
                if not r.get("annotations", {}).get("summary"):
                    fail(f"{where}: no summary annotation")
                for text in r.get("annotations", {}).values():
                    for label in re.findall(r"\$labels\.(\w+)", text):
                        if allowed is not None and label not in allowed:
                            fail(f"{where}: annotation uses $labels.{label}, not a label of the result")
    ok(f"alerts.yml: {count} rules checked")

    required = {
        "mqtt_connections", "mqtt_connections_opened_total", "mqtt_connections_closed_total",
        "mqtt_publish_received_total", "mqtt_publish_routed_total", "kafka_produce_seconds",
        "kafka_delivery_failed_total", "kafka_records_in_flight", "kafka_backpressure_seconds",
        "mqtt_bytes_received_total", "mqtt_bytes_sent_total", "auth_decisions_total",
        "acl_denied_total", "limits_exceeded_total", "commands_total", "kafka_queue_messages",
        "kafka_broker_rtt_seconds", "kafka_consumer_lag", "proxy_ready",
    }
    missing = sorted(required - used_dash)
    if missing:
        fail(f"dashboard lacks panels for: {missing}")
    not_shown = sorted(names - used_dash)
    print(f"note: metrics not on the dashboard: {not_shown or 'none'}")
    done()


def cmd_promql_rules(root, out):
    """The dashboard's queries as recording rules, so promtool parses every one."""
    dash = json.load(open(os.path.join(root, "deploy/grafana/dashboards/mqtt-kafka-proxy.json")))
    rules = []
    for i, (where, expr, _) in enumerate(dashboard_queries(dash)):
        e = (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
             .replace("$__interval", "1m"))
        e = re.sub(r"\$\{?(\w+)\}?", ".*", e)
        rules.append({"record": f"dashboard:query_{i}", "expr": e})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)
    print(f"wrote {len(rules)} dashboard queries to {out}")


# ---------------------------------------------------------------------------
# Config helpers

def load_toml(path):
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore
    with open(path, "rb") as f:
        return tomllib.load(f)


def config_topics(cfg):
    """Kafka topics a config uses (as Config::kafka_topics): {topic: compacted?}"""
    topics = {}
    for r in cfg.get("routes", []):
        topics[r["kafka_topic"]] = False
    un = cfg.get("unmatched", {})
    if un.get("dead_letter_topic"):
        topics[un["dead_letter_topic"]] = False
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


def env_ms(env, key, cfg, section, name):
    v = env.get(f"MQTT_KAFKA_PROXY__{section.upper()}__{name.upper()}")
    if v is not None:
        return int(v)
    return int(cfg.get(section, {}).get(name, 0))


def parse_duration_s(v):
    if isinstance(v, (int, float)):
        return float(v)
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(v)):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total


def dockerfile_env(root):
    """ENV of the Dockerfile's last stage (simple parser; deploy/check/replay_dockerfile.py has the full one)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import replay_dockerfile  # noqa: E402
    stages = replay_dockerfile.parse(os.path.join(root, "Dockerfile"))
    return replay_dockerfile.stage_env(stages[-1]), stages


# ---------------------------------------------------------------------------
# docker-compose.yml

def proxy_services(compose):
    out = {}
    for name, svc in compose.get("services", {}).items():
        build = svc.get("build")
        if build is not None or str(svc.get("image", "")).startswith("mqtt-kafka-proxy"):
            out[name] = svc
    return out


def compose_env(svc):
    env = svc.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return env


def parse_haproxy(path):
    backends, section, name = {}, None, None
    defaults = ""
    for raw in open(path):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] in ("global", "defaults", "frontend", "backend", "listen", "resolvers"):
            section, name = words[0], (words[1] if len(words) > 1 else "")
            if section == "backend":
                backends[name] = {"servers": [], "lines": []}
            continue
        if section == "defaults" and words[0] == "default-server":
            defaults += " " + line
        if section == "backend":
            backends[name]["lines"].append(line)
            if words[0] == "server":
                backends[name]["servers"].append((words[1], words[2], line))
    return backends, defaults


def cmd_compose(root):
    d = os.path.join(root, "deploy")
    path = os.path.join(d, "docker-compose.yml")
    compose = load_yaml(path)
    services = compose.get("services", {})
    volumes = set((compose.get("volumes") or {}).keys())
    img_env, _ = dockerfile_env(root)
    shipped = load_toml(os.path.join(root, "config.toml"))

    for name, svc in services.items():
        for dep in (svc.get("depends_on") or []):
            if dep not in services:
                fail(f"compose {name}: depends_on unknown service {dep!r}")
        for v in svc.get("volumes", []) or []:
            src = v.split(":")[0]
            if src.startswith("."):
                if not os.path.exists(os.path.join(d, src)):
                    fail(f"compose {name}: bind mount source {src} does not exist")
            elif src not in volumes:
                fail(f"compose {name}: named volume {src!r} not declared")
        for k, val in compose_env(svc).items():
            if isinstance(val, bool):
                fail(f"compose {name}: environment {k} is a YAML boolean; quote it (Compose rejects booleans)")
        if "build" in svc:
            ctx = os.path.normpath(os.path.join(d, svc["build"].get("context", ".")))
            df = os.path.join(ctx, svc["build"].get("dockerfile", "Dockerfile"))
            if not os.path.exists(df):
                fail(f"compose {name}: build Dockerfile {df} missing")
    ok(f"compose: {len(services)} services; depends_on, volumes and mounts resolve")

    proxies = proxy_services(compose)
    if len(proxies) < 3:
        fail(f"compose: expected 3 proxy replicas, found {sorted(proxies)}")
    replica_ids = set()
    for name, svc in proxies.items():
        env = dict(img_env)
        env.update({k: str(v) for k, v in compose_env(svc).items()})
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
        grace = env_ms(env, "", shipped, "shutdown", "readiness_grace_ms")
        drain = env_ms(env, "", shipped, "shutdown", "drain_timeout_ms")
        spread = env_ms(env, "", shipped, "shutdown", "disconnect_spread_ms")
        stop = parse_duration_s(svc.get("stop_grace_period", "10s"))
        if stop * 1000 <= grace + drain:
            fail(f"compose {name}: stop_grace_period {stop}s <= readiness_grace_ms + drain_timeout_ms "
                 f"({(grace + drain) / 1000}s)")
        if spread >= drain:
            fail(f"compose {name}: disconnect_spread_ms {spread} >= drain_timeout_ms {drain}")
        cert = env.get("MQTT_KAFKA_PROXY__LISTENERS__TLS__CERT_PATH", "")
        mounts = [v.split(":")[1] for v in svc.get("volumes", []) or []]
        if not any(cert.startswith(m.rstrip("/") + "/") for m in mounts):
            fail(f"compose {name}: TLS cert {cert} is not under a mounted volume {mounts}")
    ok(f"compose: {len(proxies)} proxy replicas; PROXY protocol, replica ids, shutdown timing, certs")

    # HAProxy: a backend per listener port, every replica in each, PROXY v2, /readyz checks.
    backends, defaults = parse_haproxy(os.path.join(d, "haproxy/haproxy.cfg"))
    ports = {"1883", "8883", "8083", "8084"}
    seen_ports = set()
    for bname, b in backends.items():
        text = " ".join(b["lines"]) + defaults
        for sname, addr, line in b["servers"]:
            host, _, port = addr.rpartition(":")
            if host not in proxies:
                fail(f"haproxy backend {bname}: server {addr} is not a proxy replica")
            seen_ports.add(port)
            full = line + defaults
            if "send-proxy-v2" not in full:
                fail(f"haproxy backend {bname}: server {sname} without send-proxy-v2")
            if " check" not in " " + full or "port 9090" not in full:
                fail(f"haproxy backend {bname}: server {sname} not health-checked on port 9090")
        hosts = {addr.rpartition(":")[0] for _, addr, _ in b["servers"]}
        if b["servers"] and hosts != set(proxies):
            fail(f"haproxy backend {bname}: servers {sorted(hosts)} != replicas {sorted(proxies)}")
        if b["servers"] and "/readyz" not in text:
            fail(f"haproxy backend {bname}: health check does not GET /readyz")
    if seen_ports != ports:
        fail(f"haproxy: backends cover ports {sorted(seen_ports)}, expected {sorted(ports)}")
    hap = services.get("haproxy", {})
    published = {str(p).split(":")[-1] for p in hap.get("ports", [])}
    if not ports <= published:
        fail(f"compose haproxy: publishes {sorted(published)}, missing {sorted(ports - published)}")
    ok("haproxy.cfg: every listener port balanced over every replica, PROXY v2, /readyz checks on :9090")

    # Prometheus scrapes every replica's ops port.
    prom = load_yaml(os.path.join(d, "prometheus/prometheus.yml"))
    targets = set()
    for sc in prom.get("scrape_configs", []):
        if sc.get("job_name") == "mqtt-kafka-proxy":
            for st in sc.get("static_configs", []):
                targets.update(st.get("targets", []))
    want = {f"{p}:9090" for p in proxies}
    if targets != want:
        fail(f"prometheus.yml job mqtt-kafka-proxy targets {sorted(targets)} != {sorted(want)}")
    pmounts = {v.split(":")[1] for v in services.get("prometheus", {}).get("volumes", [])}
    for rf in prom.get("rule_files", []):
        if rf not in pmounts:
            fail(f"prometheus.yml rule file {rf} is not mounted into the prometheus service")
    ok("prometheus.yml: scrapes every replica; rule files mounted")

    # Grafana: provisioning points at the mounted dashboards and the prometheus service.
    g = services.get("grafana", {})
    gm = {v.split(":")[0]: v.split(":")[1] for v in g.get("volumes", [])}
    dash_dir = gm.get("./grafana/dashboards")
    prov = load_yaml(os.path.join(d, "grafana/provisioning/dashboards/mqtt-kafka-proxy.yml"))
    for p in prov.get("providers", []):
        if p.get("options", {}).get("path") != dash_dir:
            fail(f"grafana dashboard provider path {p.get('options', {}).get('path')} != mount {dash_dir}")
    if gm.get("./grafana/provisioning") != "/etc/grafana/provisioning":
        fail("grafana: ./grafana/provisioning is not mounted at /etc/grafana/provisioning")
    ds = load_yaml(os.path.join(d, "grafana/provisioning/datasources/prometheus.yml"))
    for s in ds.get("datasources", []):
        host = re.sub(r"^https?://", "", s.get("url", "")).split(":")[0]
        if host not in services:
            fail(f"grafana datasource url {s.get('url')} does not name a compose service")
    home = g.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and not (dash_dir and home.startswith(dash_dir + "/")
                     and os.path.exists(os.path.join(d, "grafana/dashboards", os.path.basename(home)))):
        fail(f"grafana home dashboard {home} is not a mounted dashboard file")
    ok("grafana: provisioning paths and datasource resolve")

    # Topics: topic-init creates every topic the shipped config uses, compacted where needed.
    script = open(os.path.join(d, "compose/create-topics.sh")).read()
    created = {}
    for m in re.finditer(r"^create\s+(\S+)(.*)$", script, re.M):
        created[m.group(1)] = "cleanup.policy=compact" in m.group(2)
    for topic, compact in config_topics(shipped).items():
        if topic not in created:
            fail(f"create-topics.sh does not create {topic} (used by config.toml)")
        elif compact and not created[topic]:
            fail(f"create-topics.sh: {topic} should be compacted")
    ok(f"create-topics.sh: creates {sorted(created)}")
    done()


# ---------------------------------------------------------------------------
# Kubernetes

def k8s_docs(root):
    d = os.path.join(root, "deploy/k8s")
    docs = []
    for fn in sorted(os.listdir(d)):
        if fn.endswith((".yaml", ".yml")) and fn != "kustomization.yaml":
            for doc in load_yaml_all(os.path.join(d, fn)):
                docs.append((fn, doc))
    return docs


def k8s_parts(root):
    docs = k8s_docs(root)
    by_kind = {}
    for fn, doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    dep = by_kind["Deployment"][0]
    cm = by_kind["ConfigMap"][0]
    return docs, by_kind, dep, cm


def k8s_env(container):
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "valueFrom" in e:
            env[e["name"]] = "k8s-valuefrom-placeholder"
    return env


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def cmd_k8s(root):
    import tempfile
    docs, by_kind, dep, cm = k8s_parts(root)
    for fn, doc in docs:
        for key in ("apiVersion", "kind", "metadata"):
            if key not in doc:
                fail(f"{fn}: document without {key}")
    names = set()
    for fn, doc in docs:
        k = (doc.get("kind"), doc["metadata"].get("name"))
        if k in names:
            fail(f"{fn}: duplicate {k}")
        names.add(k)

    spec = dep["spec"]
    pod = spec["template"]
    pod_labels = pod["metadata"]["labels"]
    if not matches(spec["selector"]["matchLabels"], pod_labels):
        fail("deployment: selector does not match the pod template labels")
    if spec.get("replicas", 1) < 3:
        fail("deployment: fewer than 3 replicas")
    c = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    env = k8s_env(c)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(cm["data"]["config.toml"])
        cfg_path = f.name
    cfg = load_toml(cfg_path)
    os.unlink(cfg_path)

    # Ports: config binds == container ports.
    want = {"tcp": "mqtt", "tls": "mqtts", "ws": "mqtt-ws", "wss": "mqtt-wss"}
    shipped = load_toml(os.path.join(root, "config.toml"))
    for listener, pname in want.items():
        bind = env.get(f"MQTT_KAFKA_PROXY__LISTENERS__{listener.upper()}__BIND") or \
            cfg.get("listeners", {}).get(listener, {}).get("bind") or shipped["listeners"][listener]["bind"]
        if ports.get(pname) != int(bind.rsplit(":", 1)[1]):
            fail(f"deployment: container port {pname} {ports.get(pname)} != listeners.{listener}.bind {bind}")
    ops_bind = cfg.get("ops", {}).get("bind") or shipped["ops"]["bind"]
    if ports.get("ops") != int(ops_bind.rsplit(":", 1)[1]):
        fail(f"deployment: container port ops != ops.bind {ops_bind}")

    # Probes.
    rp, lp = c.get("readinessProbe", {}), c.get("livenessProbe", {})
    if rp.get("httpGet", {}).get("path") != "/readyz" or rp.get("httpGet", {}).get("port") not in ("ops", 9090):
        fail("deployment: readinessProbe is not GET /readyz on the ops port")
    if lp.get("httpGet", {}).get("path") != "/healthz" or lp.get("httpGet", {}).get("port") not in ("ops", 9090):
        fail("deployment: livenessProbe is not GET /healthz on the ops port")

    # Shutdown timing.
    grace = env_ms(env, "", cfg, "shutdown", "readiness_grace_ms")
    drain = env_ms(env, "", cfg, "shutdown", "drain_timeout_ms") or shipped["shutdown"]["drain_timeout_ms"]
    spread = env_ms(env, "", cfg, "shutdown", "disconnect_spread_ms")
    pre = 0
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if cmd[:1] == ["sleep"]:
        pre = int(cmd[1])
    else:
        fail("deployment: no preStop sleep (endpoints may still route to a terminating pod)")
    tgps = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if tgps * 1000 <= pre * 1000 + grace + drain:
        fail(f"deployment: terminationGracePeriodSeconds {tgps} <= preStop {pre}s + readiness grace "
             f"{grace}ms + drain {drain}ms")
    if spread >= drain:
        fail(f"deployment: disconnect_spread_ms {spread} >= drain_timeout_ms {drain}")
    ok(f"deployment: probes, ports, shutdown budget {pre}s + {grace}ms + {drain}ms < {tgps}s")

    # Security context and the image's user.
    psc, csc = pod["spec"].get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        fail("deployment: runAsNonRoot not set")
    if not csc.get("readOnlyRootFilesystem"):
        fail("deployment: readOnlyRootFilesystem not set")
    _, stages = dockerfile_env(root)
    user = stages[-1].get("user", "")
    if str(psc.get("runAsUser")) != user.split(":")[0]:
        fail(f"deployment: runAsUser {psc.get('runAsUser')} != Dockerfile USER {user}")

    # Volumes: every mount has a volume; every file the config reads is under a mount.
    vols = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    for path, vname in mounts.items():
        if vname not in vols:
            fail(f"deployment: volumeMount {path} uses undefined volume {vname}")
    tls = cfg.get("listeners", {}).get("tls", {})
    files = [env.get("MQTT_KAFKA_PROXY__LISTENERS__TLS__CERT_PATH") or tls.get("cert_path"),
             env.get("MQTT_KAFKA_PROXY__LISTENERS__TLS__KEY_PATH") or tls.get("key_path"),
             cfg.get("auth", {}).get("password", {}).get("file"),
             "/etc/mqtt-kafka-proxy/config.toml"]
    for k, v in env.items():
        if k.endswith("_FILE"):
            files.append(v)
    for fpath in filter(None, files):
        if not any(fpath.startswith(m.rstrip("/") + "/") for m in mounts):
            fail(f"deployment: {fpath} (read by the proxy) is not under any volumeMount")
    cmv = [v for v in vols.values() if "configMap" in v]
    if not cmv or cmv[0]["configMap"]["name"] != cm["metadata"]["name"]:
        fail("deployment: the config volume does not use the ConfigMap")
    ok("deployment: security context matches the image user; every file the config reads is mounted")

    # Services and PDB select the pods; named target ports exist.
    for svc in by_kind.get("Service", []):
        sel = svc["spec"].get("selector", {})
        if not matches(sel, pod_labels):
            fail(f"service {svc['metadata']['name']}: selector {sel} does not match the pods")
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort", p.get("port"))
            if isinstance(tp, str) and tp not in ports:
                fail(f"service {svc['metadata']['name']}: targetPort {tp} is not a container port")
    lb = [s for s in by_kind.get("Service", []) if s["spec"].get("type") == "LoadBalancer"]
    if lb:
        ann = lb[0]["metadata"].get("annotations", {})
        if ann.get("service.beta.kubernetes.io/aws-load-balancer-proxy-protocol") != "*":
            fail("service: the NLB example does not enable PROXY protocol v2")
        if ann.get("service.beta.kubernetes.io/aws-load-balancer-healthcheck-path") != "/readyz":
            fail("service: the NLB health check is not /readyz")
        for listener in ("tcp", "tls", "ws", "wss"):
            pp = env.get(f"MQTT_KAFKA_PROXY__LISTENERS__{listener.upper()}__PROXY_PROTOCOL")
            pp = pp == "true" if pp is not None else cfg.get("listeners", {}).get(listener, {}).get("proxy_protocol", False)
            if not pp:
                fail(f"k8s: listeners.{listener}.proxy_protocol is off behind a PROXY-v2 NLB")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not matches(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            fail("pdb: selector does not match the pods")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        targets = [s for s in by_kind.get("Service", []) if matches(sel, s["metadata"].get("labels", {}))]
        if not targets:
            fail("servicemonitor: selects no Service")
        for ep in sm["spec"].get("endpoints", []):
            for s in targets:
                if ep.get("port") not in [p.get("name") for p in s["spec"]["ports"]]:
                    fail(f"servicemonitor: port {ep.get('port')} not on service {s['metadata']['name']}")
    ok("services, PDB and ServiceMonitor select the pods and existing ports")

    kpath = os.path.join(root, "deploy/k8s/kustomization.yaml")
    if os.path.exists(kpath):
        listed = set(load_yaml(kpath).get("resources", []))
        present = {fn for fn, _ in docs}
        if listed != present:
            fail(f"kustomization.yaml resources {sorted(listed)} != manifests {sorted(present)}")
    done()


# ---------------------------------------------------------------------------
# (config, env) pairs for --check-config

def cmd_env_sets(root, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    img_env, _ = dockerfile_env(root)
    sets = []

    def add(name, config, env):
        p = os.path.join(out_dir, f"{name}.env")
        with open(p, "w") as f:
            for k, v in sorted(env.items()):
                f.write(f"{k}={v}\n")
        sets.append({"name": name, "config": config, "env_file": p})

    add("image", "config.toml", img_env)
    compose = load_yaml(os.path.join(root, "deploy/docker-compose.yml"))
    for name, svc in proxy_services(compose).items():
        env = dict(img_env)
        env.update({k: str(v) for k, v in compose_env(svc).items()})
        add(f"compose-{name}", "config.toml", env)
    _, _, dep, cm = k8s_parts(root)
    cfg = os.path.join(out_dir, "k8s-config.toml")
    with open(cfg, "w") as f:
        f.write(cm["data"]["config.toml"])
    env = dict(img_env)
    env.update(k8s_env(dep["spec"]["template"]["spec"]["containers"][0]))
    add("k8s-deployment", cfg, env)
    with open(os.path.join(out_dir, "sets.json"), "w") as f:
        json.dump(sets, f, indent=1)
    for s in sets:
        print(f"{s['name']}\t{s['config']}\t{s['env_file']}")


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "yaml":
        cmd_yaml(args)
    elif cmd == "json":
        cmd_json(args)
    elif cmd == "metrics":
        cmd_metrics(args[0])
    elif cmd == "promql-rules":
        cmd_promql_rules(args[0], args[1])
    elif cmd == "compose":
        cmd_compose(args[0])
    elif cmd == "k8s":
        cmd_k8s(args[0])
    elif cmd == "env-sets":
        cmd_env_sets(args[0], args[1])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
