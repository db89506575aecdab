//! The monitoring shipped in deploy/ asks only for metrics the proxy exports:
//! every metric name in the Prometheus alert rules
//! (`deploy/prometheus/*alerts*.yml`) and the Grafana dashboards
//! (`deploy/grafana/dashboards/*.json`) appears in a real `/metrics` scrape,
//! with the label values the queries select on and the labels they group by,
//! counters (and histogram series) read through `rate()` / `increase()` and
//! gauges not.
//!
//! Two proxies on the embedded broker (the metrics recorder is process-wide,
//! so one scrape shows both): one with authentication (a password file and an
//! HTTP hook served by this test), ACLs, a topic limit and dead-lettering
//! carries ordinary traffic and a command; the other has its broker taken
//! down with a one-record producer queue and a short delivery timeout, so the
//! failure metrics the alerts watch (delivery failures, dropped QoS 0
//! records, a full queue, backpressure, dropped journal records, client
//! errors) are really recorded, not just declared.
//!
//! `promtool` (deploy/check.sh) parses the same queries; this test's PromQL
//! reader only finds the selectors' names, matchers and grouping labels.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mqtt_kafka_proxy::{Config, Proxy};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(60);

/// Series Prometheus adds itself (not the proxy's), and the labels its
/// scrape config attaches to every series (deploy/prometheus/prometheus.yml).
const PROMETHEUS_SERIES: &[&str] = &["up"];
const TARGET_LABELS: &[&str] = &["instance", "job", "replica"];

// ---------------------------------------------------------------------------
// What the alerts and dashboards ask for.

/// One PromQL query from a deploy file.
#[derive(Debug)]
struct Query {
    /// File and rule or panel, for messages.
    place: String,
    expr: String,
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| keep(p.file_name().unwrap().to_str().unwrap()))
        .collect();
    files.sort();
    files
}

/// Every `expr:` of a Prometheus rule file. No YAML crate is a dependency of
/// this package, so this reads the one key it needs: plain, quoted and block
/// (`|`, `>`) scalars, continuation lines included. It counts the rules too
/// (`- alert:` / `- record:`) and fails if any rule's expression was not read;
/// promtool checks the file's full YAML and rule structure.
fn rule_exprs(path: &Path) -> Vec<Query> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut rule = String::from("?");
    let mut rules = 0;
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start().trim_start_matches("- ");
        if let Some(name) = t
            .strip_prefix("alert:")
            .or_else(|| t.strip_prefix("record:"))
        {
            rules += 1;
            rule = name.trim().to_owned();
            continue;
        }
        let Some(value) = t.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        // Lines indented deeper than the key continue its value.
        let more = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .map(|l| l.trim())
            .filter(|l| !l.is_empty());
        let expr = if value.starts_with('|') || value.starts_with('>') {
            more.collect::<Vec<_>>().join("\n")
        } else if let Some(q) = value.strip_prefix('"') {
            let q = q
                .strip_suffix('"')
                .unwrap_or_else(|| panic!("{}: multi-line quoted expr", path.display()));
            q.replace("\\\"", "\"").replace("\\\\", "\\")
        } else if let Some(q) = value.strip_prefix('\'') {
            let q = q
                .strip_suffix('\'')
                .unwrap_or_else(|| panic!("{}: multi-line quoted expr", path.display()));
            q.replace("''", "'")
        } else {
            let first = value.split(" #").next().unwrap_or_default();
            std::iter::once(first)
                .chain(more)
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push(Query {
            place: format!("{} {rule}", path.file_name().unwrap().to_string_lossy()),
            expr,
        });
    }
    assert_eq!(
        out.len(),
        rules,
        "{}: every rule has one expr",
        path.display()
    );
    out
}

/// Every query of a Grafana dashboard: each `expr` (panel targets, rows
/// included) and each `label_values(metric, label)` variable.
fn dashboard_exprs(path: &Path) -> Vec<Query> {
    fn walk(v: &serde_json::Value, place: &str, out: &mut Vec<Query>) {
        match v {
            serde_json::Value::Object(o) => {
                let place = match o.get("title").and_then(|t| t.as_str()) {
                    Some(title) => format!("{place} / {title}"),
                    None => place.to_owned(),
                };
                if let Some(expr) = o.get("expr").and_then(|e| e.as_str()) {
                    out.push(Query {
                        place: place.clone(),
                        expr: expr.to_owned(),
                    });
                }
                let query = o.get("query").and_then(|q| q.get("query").or(Some(q)));
                if let Some(q) = query.and_then(|q| q.as_str()) {
                    if let Some(args) = q.trim().strip_prefix("label_values(") {
                        // Grafana's function, not PromQL: its first argument is a selector.
                        let selector = args.rsplit_once(',').map_or(args, |(s, _)| s);
                        out.push(Query {
                            place: format!("{place} (variable)"),
                            expr: selector.to_owned(),
                        });
                    }
                }
                for child in o.values() {
                    walk(child, &place, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, place, out)),
            _ => {}
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    walk(
        &json,
        &path.file_name().unwrap().to_string_lossy(),
        &mut out,
    );
    out
}

fn deploy_queries() -> Vec<Query> {
    let d = deploy_dir();
    let alert_files = files_in(&d.join("prometheus"), |n| {
        n.contains("alerts")
            && (n.ends_with(".yml") || n.ends_with(".yaml"))
            && !n.contains(".test.")
    });
    let dashboards = files_in(&d.join("grafana/dashboards"), |n| n.ends_with(".json"));
    assert!(!alert_files.is_empty() && !dashboards.is_empty());
    let mut queries: Vec<Query> = alert_files.iter().flat_map(|p| rule_exprs(p)).collect();
    queries.extend(dashboards.iter().flat_map(|p| dashboard_exprs(p)));
    queries
}

/// A metric selector in a query: `name{label="value", ...}`; only the
/// equality matchers are kept (the others may rightly match nothing).
#[derive(Debug, PartialEq)]
struct Selector {
    name: String,
    equal: Vec<(String, String)>,
    /// Directly inside `rate(`, `irate(` or `increase(`.
    in_rate: bool,
}

/// What a query uses: its selectors and the labels it groups by
/// (`by (...)`, `without (...)`, `on (...)`, `ignoring (...)`, `group_*`).
#[derive(Debug, Default, PartialEq)]
struct Uses {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    // Aggregations, which may stand before `by (...)` rather than `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// A PromQL reader that finds selectors: an identifier not followed by `(`
/// (a function), not a keyword, outside strings, `{...}` matchers and
/// `[...]` ranges. Grafana's `$variables` are skipped.
fn promql_uses(expr: &str) -> Uses {
    let s: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut uses = Uses::default();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i);
        } else if c == '[' {
            while i < s.len() && s[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // Matchers without a name before them: {__name__="x"} is not used here.
            let (_, end) = matchers(&s, i);
            i = end;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            i += 1;
            while i < s.len() && (ident(s[i]) || s[i] == '.' || s[i] == '{' || s[i] == '}') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < s.len() && ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let mut j = i;
            while j < s.len() && s[j].is_whitespace() {
                j += 1;
            }
            let next = s.get(j).copied();
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    let end = s[j..]
                        .iter()
                        .position(|&c| c == ')')
                        .map_or(s.len(), |p| j + p);
                    let list: String = s[j + 1..end].iter().collect();
                    uses.grouping.extend(
                        list.split(',')
                            .map(|l| l.trim().to_owned())
                            .filter(|l| !l.is_empty()),
                    );
                    i = end + 1;
                }
            } else if next == Some('(') || PROMQL_KEYWORDS.contains(&word.as_str()) {
                // A function call or a keyword.
            } else {
                let before: String = s[..start].iter().collect();
                let before = before.trim_end();
                let in_rate = ["rate(", "irate(", "increase("].iter().any(|f| {
                    before.strip_suffix(f).is_some_and(|rest| {
                        !rest.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    })
                });
                let mut sel = Selector {
                    name: word,
                    equal: Vec::new(),
                    in_rate,
                };
                if next == Some('{') {
                    let (m, end) = matchers(&s, j);
                    sel.equal = m;
                    i = end;
                }
                uses.selectors.push(sel);
            }
        } else {
            i += 1;
        }
    }
    uses
}

/// Index just past the string literal starting at `i`.
fn skip_string(s: &[char], i: usize) -> usize {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() && s[j] != quote {
        if s[j] == '\\' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// The `label="value"` matchers of the `{...}` starting at `i`, and the index past it.
fn matchers(s: &[char], i: usize) -> (Vec<(String, String)>, usize) {
    let mut out = Vec::new();
    let mut j = i + 1;
    loop {
        while j < s.len() && (s[j].is_whitespace() || s[j] == ',') {
            j += 1;
        }
        if j >= s.len() || s[j] == '}' {
            return (out, j + 1);
        }
        let start = j;
        while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == '_') {
            j += 1;
        }
        let label: String = s[start..j].iter().collect();
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        let op_start = j;
        while j < s.len() && "=!~".contains(s[j]) {
            j += 1;
        }
        let op: String = s[op_start..j].iter().collect();
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        if j >= s.len() || !"\"'`".contains(s[j]) {
            panic!(
                "matcher without a quoted value in {:?}",
                s.iter().collect::<String>()
            );
        }
        let end = skip_string(s, j);
        let value: String = s[j + 1..end - 1].iter().collect();
        if op == "=" {
            out.push((label, value));
        }
        j = end;
    }
}

// ---------------------------------------------------------------------------
// What the proxy exports.

/// A scrape: series name -> the label sets it has.
type Scrape = BTreeMap<String, Vec<BTreeMap<String, String>>>;

/// The `# TYPE name kind` lines of a scrape: metric name -> kind.
fn parse_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// The kind of series `name`: its own `# TYPE`, or `counter` for the
/// `_bucket` / `_sum` / `_count` series of a histogram or summary.
fn kind_of<'a>(types: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    if let Some(kind) = types.get(name) {
        return Some(kind);
    }
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))?;
    matches!(
        types.get(base).map(String::as_str),
        Some("histogram" | "summary")
    )
    .then_some("counter")
}

fn parse_scrape(text: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let mut labels = BTreeMap::new();
        if line[name_end..].starts_with('{') {
            let s: Vec<char> = line[name_end..].chars().collect();
            let mut j = 1;
            while j < s.len() && s[j] != '}' {
                let eq = j + s[j..].iter().position(|&c| c == '=').unwrap();
                let label: String = s[j..eq].iter().collect();
                let end = skip_string(&s, eq + 1);
                let value: String = s[eq + 2..end - 1].iter().collect();
                labels.insert(label.trim_start_matches(',').to_owned(), value);
                j = end;
                if j < s.len() && s[j] == ',' {
                    j += 1;
                }
            }
        }
        out.entry(line[..name_end].to_owned())
            .or_default()
            .push(labels);
    }
    out
}

async fn scrape(ops: std::net::SocketAddr) -> (Scrape, BTreeMap<String, String>) {
    let body = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .expect("GET /metrics")
        .error_for_status()
        .expect("/metrics answers 200")
        .text()
        .await
        .unwrap();
    (parse_scrape(&body), parse_types(&body))
}

/// What `queries` need from `scrape` and it lacks, one line each.
fn missing(queries: &[Query], (scrape, types): &(Scrape, BTreeMap<String, String>)) -> Vec<String> {
    let mut out = BTreeSet::new();
    for q in queries {
        let uses = promql_uses(&q.expr);
        if uses.selectors.is_empty() {
            out.insert(format!("{}: no metric found in {:?}", q.place, q.expr));
        }
        let mut labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for sel in &uses.selectors {
            if PROMETHEUS_SERIES.contains(&sel.name.as_str()) {
                continue;
            }
            let Some(series) = scrape.get(&sel.name) else {
                out.insert(format!("{}: {} is not exported", q.place, sel.name));
                continue;
            };
            labels.extend(series.iter().flat_map(|s| s.keys().map(String::as_str)));
            match (kind_of(types, &sel.name), sel.in_rate) {
                (Some("counter"), false) => out.insert(format!(
                    "{}: counter {} read without rate() / increase()",
                    q.place, sel.name
                )),
                (Some("gauge"), true) => out.insert(format!(
                    "{}: rate() / increase() of gauge {}",
                    q.place, sel.name
                )),
                (Some(_), _) => false,
                (None, _) => out.insert(format!("{}: {} has no # TYPE", q.place, sel.name)),
            };
            for (label, value) in &sel.equal {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                if !series.iter().any(|s| s.get(label) == Some(value)) {
                    out.insert(format!(
                        "{}: no {}{{{label}=\"{value}\"}} series",
                        q.place, sel.name
                    ));
                }
            }
        }
        for g in &uses.grouping {
            if !labels.contains(g.as_str()) {
                out.insert(format!(
                    "{}: groups by {g}, a label none of its metrics has",
                    q.place
                ));
            }
        }
    }
    out.into_iter().collect()
}

// ---------------------------------------------------------------------------
// The proxies and their traffic.

/// A proxy from the shipped config.toml with `overrides` (TOML) merged in:
/// ephemeral loopback ports, plain TCP only, the embedded broker.
async fn start_proxy(dir: &Path, overrides: &str) -> Proxy {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let mut config: toml::Table = std::fs::read_to_string(shipped).unwrap().parse().unwrap();
    let common = format!(
        r#"
[listeners.tcp]
bind = "127.0.0.1:0"
[listeners.tls]
enabled = false
bind = "127.0.0.1:0"
cert_path = "{d}/server.crt"
key_path = "{d}/server.key"
[listeners.ws]
enabled = false
bind = "127.0.0.1:0"
[listeners.wss]
enabled = false
bind = "127.0.0.1:0"
[kafka]
bootstrap_servers = "embedded"
[kafka.embedded]
listen = "127.0.0.1:0"
partitions = 1
[ops]
bind = "127.0.0.1:0"
kafka_check_interval_ms = 200
kafka_statistics_interval_ms = 100
[shutdown]
drain_timeout_ms = 5000
"#,
        d = dir.display()
    );
    merge(&mut config, common.parse().unwrap());
    merge(&mut config, overrides.parse().expect("overrides parse"));
    let config = Config::parse(&config.to_string()).expect("test config parses");
    Proxy::start(config).await.expect("proxy starts")
}

/// An HTTP auth hook (docs: src/auth/hook): 204 (allow) for everyone but the
/// user names `intruder` (denied) and `broken` (a 500: the hook failed).
/// One request per connection.
async fn auth_hook() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the body's content-length.
                let body_len = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break end + 4 + len;
                    }
                };
                while buf.len() < body_len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf);
                let answer = if body.contains(r#""username":"broken""#) {
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_owned()
                } else if body.contains(r#""username":"intruder""#) {
                    let json = r#"{"result":"deny","reason":"test"}"#;
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                        json.len()
                    )
                } else {
                    "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_owned()
                };
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A 3.1.1 client whose event loop runs in a task; events (or the error
/// that ended it) come through the channel.
struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
}

fn client(port: u16, id: &str, user: Option<&str>) -> Client {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some(u) = user {
        opts.set_credentials(u, "secret");
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let ev = eventloop.poll().await.map_err(|e| e.to_string());
            let end = ev.is_err();
            if tx.send(ev).is_err() || end {
                return;
            }
        }
    });
    Client { client, events }
}

impl Client {
    /// The next event `want` accepts; Err if the connection ended first.
    async fn next(&mut self, want: impl Fn(&Event) -> bool) -> Result<Event, String> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(e)) if want(&e) => return Ok(e),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Err("event loop ended".to_owned()),
                }
            }
        })
        .await
        .expect("an MQTT event within PATIENCE")
    }

    async fn connected(mut self) -> Client {
        self.next(|e| matches!(e, Event::Incoming(Packet::ConnAck(_))))
            .await
            .expect("CONNACK");
        self
    }

    async fn puback(&mut self) -> Result<Event, String> {
        self.next(|e| matches!(e, Event::Incoming(Packet::PubAck(_))))
            .await
    }
}

/// Ordinary traffic on the authenticated proxy: connects (one refused, one
/// from the hook's cache), a routed QoS 1 PUBLISH, a dead-lettered one, an
/// ACL denial, an oversized topic, a command delivered to a subscriber, and
/// the password file changed (a reload).
async fn ordinary_traffic(proxy: &Proxy, passwd: &Path) {
    let port = proxy.tcp_addr().unwrap().port();

    let mut dev = client(port, "dev-1", Some("dev-1")).connected().await;
    dev.client
        .subscribe("devices/dev-1/commands/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    dev.next(|e| matches!(e, Event::Incoming(Packet::SubAck(_))))
        .await
        .unwrap();
    dev.client
        .publish("devices/dev-1/events/t", QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    dev.puback()
        .await
        .expect("routed QoS 1 PUBLISH acknowledged");
    dev.client
        .publish("nowhere/dev-1", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    dev.puback()
        .await
        .expect("dead-lettered PUBLISH acknowledged");

    // A command, as a back-end writes it, reaches the subscribed device.
    produce_command(proxy.kafka_bootstrap(), "dev-1").await;
    let cmd = dev
        .next(|e| matches!(e, Event::Incoming(Packet::Publish(_))))
        .await
        .expect("the command");
    let Event::Incoming(Packet::Publish(p)) = cmd else {
        unreachable!()
    };
    assert_eq!(p.topic, "devices/dev-1/commands/reboot");

    // The same client and credentials again (taking the session over):
    // the hook's answer comes from its cache.
    let again = client(port, "dev-1", Some("dev-1")).connected().await;
    drop((dev, again));

    // The hook fails for `broken` (500): an authentication error.
    let mut broken = client(port, "broken-1", Some("broken"));
    let failed = broken
        .next(|e| matches!(e, Event::Incoming(Packet::ConnAck(_))))
        .await;
    assert!(
        !matches!(&failed, Ok(Event::Incoming(Packet::ConnAck(a))) if a.code == rumqttc::ConnectReturnCode::Success),
        "broken must be refused: {failed:?}"
    );

    // Refused by the hook.
    let mut intruder = client(port, "intruder-1", Some("intruder"));
    let refused = intruder
        .next(|e| matches!(e, Event::Incoming(Packet::ConnAck(_))))
        .await;
    assert!(
        !matches!(&refused, Ok(Event::Incoming(Packet::ConnAck(a))) if a.code == rumqttc::ConnectReturnCode::Success),
        "intruder must be refused: {refused:?}"
    );

    // Denied by the ACL (3.1.1: the connection closes), and a topic over mqtt.max_topic_bytes.
    let mut acl = client(port, "dev-2", Some("dev-2")).connected().await;
    acl.client
        .publish("devices/dev-2/forbidden", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert!(
        acl.puback().await.is_err(),
        "ACL-denied PUBLISH closes 3.1.1"
    );
    let mut long = client(port, "dev-3", Some("dev-3")).connected().await;
    long.client
        .publish(
            format!("devices/dev-3/events/{}", "x".repeat(100)),
            QoS::AtLeastOnce,
            false,
            "x",
        )
        .await
        .unwrap();
    assert!(long.puback().await.is_err(), "over-long topic closes 3.1.1");

    // A changed password file is reloaded.
    std::fs::write(passwd, "# no users; rewritten by the test\n").unwrap();
}

async fn produce_command(bootstrap: &str, device: &str) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "command.name",
            value: Some("reboot"),
        })
        .insert(Header {
            key: "command.id",
            value: Some("c-1"),
        });
    producer
        .send(
            FutureRecord::to("iot.commands")
                .key(device)
                .payload("now")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("command produced");
}

/// Faults on the second proxy: a PUBLISH with no route (refused), a first
/// packet that is not CONNECT (protocol error), then its broker down while
/// a client publishes more than the one-record queue holds and another
/// connects (its journal records find the queue full).
async fn faulty_traffic(proxy: &Proxy) {
    let port = proxy.tcp_addr().unwrap().port();
    let mut unrouted = client(port, "f-0", None).connected().await;
    unrouted
        .client
        .publish("nowhere/f-0", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert!(
        unrouted.puback().await.is_err(),
        "no route: 3.1.1 connection closed"
    );

    let mut raw = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    raw.write_all(&[0xC0, 0x00]).await.unwrap(); // PINGREQ before CONNECT
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut rest)).await;

    let mut pubs = client(port, "f-1", None).connected().await;
    proxy
        .embedded_kafka()
        .expect("embedded broker")
        .broker_down(1)
        .unwrap();
    for i in 0..3 {
        pubs.client
            .publish(
                "devices/f-1/events/e",
                QoS::AtMostOnce,
                false,
                format!("q0-{i}"),
            )
            .await
            .unwrap();
    }
    pubs.client
        .publish("devices/f-1/events/e", QoS::AtLeastOnce, false, "q1")
        .await
        .unwrap();
    let _late = client(port, "f-2", None).connected().await;
    assert!(
        pubs.puback().await.is_err(),
        "a failed QoS 1 delivery closes 3.1.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboards_use_only_exported_metrics() {
    let queries = deploy_queries();
    assert!(
        queries.len() >= 30,
        "read {} queries from deploy/",
        queries.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, "# no users: every CONNECT goes on to the hook\n").unwrap();
    let hook = auth_hook().await;
    let main = start_proxy(
        dir.path(),
        &format!(
            r##"
[mqtt]
max_topic_bytes = 64
[unmatched]
action = "dead_letter"
[auth]
methods = ["password", "http"]
reload_interval_ms = 100
[auth.password]
file = "{passwd}"
[auth.http]
url = "http://{hook}/auth"
[[auth.acl]]
permission = "deny"
action = "publish"
topic = "devices/+/forbidden"
[[auth.acl]]
permission = "allow"
action = "all"
topic = "#"
"##,
            passwd = passwd.display()
        ),
    )
    .await;
    let fault_dir = tempfile::tempdir().unwrap();
    let faulty = start_proxy(
        fault_dir.path(),
        r#"
[kafka]
delivery_timeout_ms = 1000
queue_max_messages = 1
[kafka.producer]
"reconnect.backoff.max.ms" = "100"
"#,
    )
    .await;

    ordinary_traffic(&main, &passwd).await;
    faulty_traffic(&faulty).await;

    // Some series come from librdkafka's statistics or delivery reports a
    // little later: scrape until nothing is missing, then assert on the last.
    let ops = main.ops_addr().expect("ops listener");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = Vec::new();
    while tokio::time::Instant::now() < deadline {
        last = missing(&queries, &scrape(ops).await);
        if last.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last.is_empty(),
        "the alerts / dashboards disagree with what the proxy exports:\n{}",
        last.join("\n")
    );

    faulty.shutdown().await;
    main.shutdown().await;
}

#[test]
fn promql_reader_finds_selectors_matchers_and_grouping() {
    let u = promql_uses(
        r#"histogram_quantile(0.99, sum by (instance, le) (rate(kafka_produce_seconds_bucket{instance=~"$instance", x="a"}[$__rate_interval]))) > 1 or absent(proxy_ready)"#,
    );
    assert_eq!(
        u.selectors,
        vec![
            Selector {
                name: "kafka_produce_seconds_bucket".into(),
                equal: vec![("x".into(), "a".into())],
                in_rate: true,
            },
            Selector {
                name: "proxy_ready".into(),
                equal: vec![],
                in_rate: false,
            },
        ]
    );
    assert_eq!(u.grouping, vec!["instance", "le"]);
    let u = promql_uses("sum(rate(a_total[5m])) by (limit) / on (instance) group_left b offset 5m");
    let names: Vec<&str> = u.selectors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a_total", "b"]);
    assert_eq!(u.grouping, vec!["limit", "instance"]);
    let in_rate: Vec<bool> = u.selectors.iter().map(|s| s.in_rate).collect();
    assert_eq!(in_rate, [true, false]);
    let u = promql_uses("deriv(g[5m]) + max_over_time(h[5m])");
    assert!(u.selectors.iter().all(|s| !s.in_rate));
}

#[test]
fn scrape_parser_reads_names_and_labels() {
    let s =
        parse_scrape("# TYPE x counter\nx{a=\"1\",b=\"q\\\"z\"} 3\ny 1\nh_bucket{le=\"+Inf\"} 2\n");
    assert_eq!(s["x"][0]["a"], "1");
    assert_eq!(s["x"][0]["b"], "q\\\"z");
    assert!(s["y"][0].is_empty());
    assert_eq!(s["h_bucket"][0]["le"], "+Inf");
    let t = parse_types("# TYPE x counter\n# TYPE h histogram\n# TYPE g gauge\n");
    assert_eq!(kind_of(&t, "x"), Some("counter"));
    assert_eq!(kind_of(&t, "h_bucket"), Some("counter"));
    assert_eq!(kind_of(&t, "g"), Some("gauge"));
    assert_eq!(kind_of(&t, "g_sum"), None);
}
