//! Keeps the documentation true: README.md and docs/*.md are read as a
//! reader would follow them.
//!
//! - every relative link points at a file that exists, and every `#anchor`
//!   at a heading of the target page (GitHub's anchor rules), and every
//!   repository path named in a code span (`src/metrics.rs`) exists;
//! - every `--flag` of a `mqtt-kafka-proxy` or `load-tests` command line, in a
//!   fenced shell block or an inline code span, is listed by that binary's
//!   `--help` (subcommands included: `load-tests kafka up --help`);
//! - docs/configuration.md has a row for every key of the shipped
//!   `config.toml`, and no row for a key that does not exist.
//!
//! The proxy's help comes from the binary cargo built for this test; the
//! load-tests binary (another crate of the workspace) is the one beside it
//! when that is newer than load-tests' sources (as after
//! `cargo test --workspace`), else it is built with `cargo build -p load-tests`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/, in a stable order.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("readable docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ holds no .md page");
    pages.extend(docs);
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// One line of a page, with whether it sits inside a fenced code block and,
/// if so, that block's info string.
struct Line<'a> {
    number: usize,
    text: &'a str,
    fence: Option<&'a str>,
}

/// Splits a page into lines, marking fenced code blocks (``` or ~~~). The
/// fence lines themselves are reported as inside the block.
fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut fence: Option<(&str, &str)> = None; // (marker, info)
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => {
                let info = trimmed.trim_start_matches(m).trim();
                fence = Some((m, info));
                out.push(Line {
                    number: i + 1,
                    text: raw,
                    fence: Some(info),
                });
            }
            (Some((open, info)), Some(m))
                if m == open && trimmed.trim_start_matches(m).trim().is_empty() =>
            {
                out.push(Line {
                    number: i + 1,
                    text: raw,
                    fence: Some(info),
                });
                fence = None;
            }
            _ => out.push(Line {
                number: i + 1,
                text: raw,
                fence: fence.map(|(_, info)| info),
            }),
        }
    }
    out
}

/// GitHub's anchor for a heading: the rendered text lower-cased, every
/// character that is not a letter, digit, `-`, `_` or space dropped, spaces
/// turned into `-`.
fn slug(heading: &str) -> String {
    let text = strip_link_targets(heading);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// `[text](target)` → `text`, as the heading renders.
fn strip_link_targets(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("](") {
        let Some(close) = rest[i + 2..].find(')') else {
            break;
        };
        out.push_str(&rest[..i].replacen('[', "", 1));
        rest = &rest[i + 2 + close + 1..];
    }
    out.push_str(rest);
    out
}

/// The anchors of a page's headings, duplicates numbered as GitHub does
/// (`name`, `name-1`, `name-2`).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for line in lines(text).iter().filter(|l| l.fence.is_none()) {
        let hashes = line.text.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line.text[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line.text[hashes..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// A line with its inline code spans blanked out (so `[x](y)` inside
/// backticks is not a link), and the spans themselves.
fn split_code_spans(line: &str) -> (String, Vec<String>) {
    let mut prose = String::new();
    let mut spans = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find('`') {
        let ticks = rest[open..].chars().take_while(|&c| c == '`').count();
        let delimiter = "`".repeat(ticks);
        let body_start = open + ticks;
        let Some(len) = rest[body_start..].find(&delimiter) else {
            break;
        };
        prose.push_str(&rest[..open]);
        prose.push_str(&" ".repeat(ticks * 2 + len));
        spans.push(rest[body_start..body_start + len].trim().to_owned());
        rest = &rest[body_start + len + ticks..];
    }
    prose.push_str(rest);
    (prose, spans)
}

/// The targets of `[text](target)` and `[label]: target` links in prose.
fn link_targets(prose: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = prose;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let end = after.find([')', ' ']).unwrap_or(after.len());
        out.push(after[..end].to_owned());
        rest = &after[end..];
    }
    let t = prose.trim_start();
    if let Some(close) = t.strip_prefix('[').and_then(|r| r.find("]:")) {
        if let Some(target) = t[close + 3..].split_whitespace().next() {
            out.push(target.to_owned());
        }
    }
    out
}

/// Every broken relative link of `page`: a missing file, or an anchor that
/// is no heading of the target page.
fn broken_links(page: &Path, text: &str) -> Vec<String> {
    let mut broken = Vec::new();
    let dir = page.parent().expect("a page lives in a directory");
    for line in lines(text).iter().filter(|l| l.fence.is_none()) {
        let (prose, _) = split_code_spans(line.text);
        for target in link_targets(&prose) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.to_path_buf()
            } else {
                dir.join(path)
            };
            let at = format!("{}:{}: ({target})", rel(page), line.number);
            if !file.exists() {
                broken.push(format!("{at}: no file {}", rel(&file)));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if file.extension().is_some_and(|e| e == "md") {
                if !anchors(&read(&file)).contains(anchor) {
                    broken.push(format!("{at}: {} has no heading #{anchor}", rel(&file)));
                }
            } else if !anchor.starts_with('L') {
                // Source files only take GitHub's line anchors (#L10, #L10-L20).
                broken.push(format!("{at}: #{anchor} on a non-Markdown file"));
            }
        }
    }
    broken
}

#[test]
fn anchors_follow_github_rules() {
    let cases = [
        ("Two commands", "two-commands"),
        (
            "Delivery guarantees, and their limits",
            "delivery-guarantees-and-their-limits",
        ),
        (
            "Topics on a real cluster (`[kafka.topics]`)",
            "topics-on-a-real-cluster-kafkatopics",
        ),
        (
            "Kafka security: `[kafka.client]`",
            "kafka-security-kafkaclient",
        ),
        (
            "The fleet on a real Kafka cluster (`load-tests rig --kafka cluster`)",
            "the-fleet-on-a-real-kafka-cluster-load-tests-rig---kafka-cluster",
        ),
        (
            "`mqtt.ordering`: strict against pipelined",
            "mqttordering-strict-against-pipelined",
        ),
        (
            "Burst: the proxy and the simulator on the same two cores",
            "burst-the-proxy-and-the-simulator-on-the-same-two-cores",
        ),
        (
            "A [linked](x.md) heading_with_underscore",
            "a-linked-heading_with_underscore",
        ),
    ];
    for (heading, want) in cases {
        assert_eq!(slug(heading), want, "{heading}");
    }
    let page = "# A\n## Same\n```sh\n# not a heading\n```\n## Same\n";
    let got: Vec<String> = anchors(page).into_iter().collect();
    assert_eq!(got, ["a", "same", "same-1"]);
}

#[test]
fn the_link_checker_catches_what_it_must() {
    // The checker itself, on a page written to fail: it must not pass silently.
    let dir = tempfile::tempdir().expect("temp dir");
    let page = dir.path().join("page.md");
    let text = "# Title\n\n## Real section\n\n[ok](#real-section) [ok](page.md#title)\n\
                [gone](missing.md) [no heading](#no-such-section) `[code](not-a-link.md)`\n\
                ```sh\n[in a fence](also-not-a-link.md)\n```\n";
    std::fs::write(&page, text).expect("write page");
    let broken = broken_links(&page, text);
    assert_eq!(broken.len(), 2, "{broken:#?}");
    assert!(broken[0].contains("no file"), "{broken:#?}");
    assert!(
        broken[1].contains("no heading #no-such-section"),
        "{broken:#?}"
    );
    let named =
        "`src/lib.rs` `tests/no_such_suite.rs` `load-tests/reports/x-*.md` `target/anything`\n";
    let missing = missing_paths(&page, named);
    assert_eq!(missing.len(), 1, "{missing:#?}");
    assert!(
        missing[0].contains("tests/no_such_suite.rs"),
        "{missing:#?}"
    );
}

/// Where repository paths named in code spans (`tests/it/ingest.rs`) live;
/// `target/` and `certs/` hold files made at run time, so they are not checked.
const REPO_DIRS: [&str; 9] = [
    "src/",
    "tests/",
    "load-tests/src/",
    "load-tests/reports/",
    "kafka-cluster/",
    "fuzz/",
    "deploy/",
    ".ci/",
    "docs/",
];

/// Repository paths named in inline code spans that do not exist (a file
/// moved or renamed since the page was written). Globs and templates
/// (`*`, `{md,json}`) are not checked.
fn missing_paths(page: &Path, text: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for line in lines(text).iter().filter(|l| l.fence.is_none()) {
        let (_, spans) = split_code_spans(line.text);
        for span in spans {
            let named = REPO_DIRS.iter().any(|d| span.starts_with(d));
            let plain = !span.contains(|c: char| c.is_whitespace() || "*{}<>…$".contains(c));
            if named && plain && !repo().join(&span).exists() {
                missing.push(format!(
                    "{}:{}: `{span}` does not exist",
                    rel(page),
                    line.number
                ));
            }
        }
    }
    missing
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = read(&page);
        broken.extend(broken_links(&page, &text));
        broken.extend(missing_paths(&page, &text));
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

// ---- command lines -------------------------------------------------------

/// The binaries whose flags are checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Bin {
    Proxy,
    LoadTests,
}

/// load-tests subcommands that an inline span may start with, as in
/// `faults --ordering strict` or `ingest-bench --kafka cluster`.
const LOAD_TESTS_SUBCOMMANDS: [&str; 4] = ["ingest-bench", "command-bench", "rig", "faults"];

/// Splits shell text into words (quotes kept together, `#` comments
/// dropped) and into commands at `;`, `|`, `&&`, `||` and line ends.
fn shell_commands(text: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    let end_word = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => quote = Some(c),
            (None, '\\') if chars.peek() == Some(&'\n') => {
                chars.next();
                end_word(&mut word, &mut words);
            }
            (None, '#') if word.is_empty() => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            (None, ' ' | '\t') => end_word(&mut word, &mut words),
            (None, '\n' | ';' | '|' | '&') => {
                end_word(&mut word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            (None, c) => word.push(c),
        }
    }
    end_word(&mut word, &mut words);
    if !words.is_empty() {
        commands.push(words);
    }
    commands
}

/// Which of our binaries a command runs, and its arguments.
fn invocation(words: &[String]) -> Option<(Bin, Vec<String>)> {
    // Leading `VAR=value` assignments.
    let words: Vec<&String> = words
        .iter()
        .skip_while(|w| w.contains('=') && !w.starts_with('-'))
        .collect();
    let first = words.first()?;
    let name = first.rsplit('/').next().unwrap_or(first);
    let args = |from: usize| words[from..].iter().map(|w| w.to_string()).collect();
    match name {
        "mqtt-kafka-proxy" => Some((Bin::Proxy, args(1))),
        "load-tests" => Some((Bin::LoadTests, args(1))),
        "cargo" if words.get(1).is_some_and(|w| *w == "run") => {
            let sep = words.iter().position(|w| *w == "--").unwrap_or(words.len());
            let cargo_args = &words[2..sep];
            let package = cargo_args
                .windows(2)
                .find(|w| ["-p", "--package", "--bin"].contains(&w[0].as_str()))
                .map(|w| w[1].as_str());
            let bin = match package {
                None | Some("mqtt-kafka-proxy") => Bin::Proxy,
                Some("load-tests") => Bin::LoadTests,
                Some(_) => return None,
            };
            Some((
                bin,
                if sep < words.len() {
                    args(sep + 1)
                } else {
                    Vec::new()
                },
            ))
        }
        s if LOAD_TESTS_SUBCOMMANDS.contains(&s) => Some((Bin::LoadTests, args(0))),
        _ => None,
    }
}

/// Every `mqtt-kafka-proxy` / `load-tests` command in the pages: from
/// fenced shell blocks, and from inline code spans that start with one.
fn documented_commands() -> Vec<(String, Bin, Vec<String>)> {
    let mut found = Vec::new();
    for page in pages() {
        let text = read(&page);
        let all = lines(&text);
        let mut block = String::new();
        let mut block_start = 0;
        for line in &all {
            match line.fence {
                Some(info) if ["sh", "bash", "shell", "console"].contains(&info) => {
                    let t = line.text.trim_start();
                    if t.starts_with("```") || t.starts_with("~~~") {
                        if block.is_empty() {
                            block_start = line.number;
                            continue;
                        }
                        for words in shell_commands(&block) {
                            if let Some((bin, args)) = invocation(&words) {
                                let at = format!("{}:{block_start}", rel(&page));
                                found.push((at, bin, args));
                            }
                        }
                        block.clear();
                    } else {
                        block.push_str(line.text.trim_start_matches("$ "));
                        block.push('\n');
                    }
                }
                Some(_) => {}
                None => {
                    let (_, spans) = split_code_spans(line.text);
                    for span in spans {
                        for words in shell_commands(&span) {
                            if let Some((bin, args)) = invocation(&words) {
                                found.push((format!("{}:{}", rel(&page), line.number), bin, args));
                            }
                        }
                    }
                }
            }
        }
    }
    found
}

/// The newest modification time of the files under `dir`.
fn newest_mtime(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("readable entry").path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            path.metadata().and_then(|m| m.modified()).expect("mtime")
        };
        newest = newest.max(t);
    }
    newest
}

/// The load-tests binary. Its help text comes only from load-tests' own
/// sources, so the binary beside this test's proxy binary (what
/// `cargo test --workspace` builds) serves when it is newer than them;
/// otherwise cargo builds it (with this crate's dev-dependency features
/// not active, which may rebuild shared dependencies once).
fn load_tests_binary() -> PathBuf {
    let proxy = Path::new(env!("CARGO_BIN_EXE_mqtt-kafka-proxy"));
    let sibling = proxy.with_file_name("load-tests");
    let crate_dir = repo().join("load-tests");
    let sources = newest_mtime(&crate_dir.join("src"))
        .max(newest_mtime(&repo().join("kafka-cluster").join("src")))
        .max(
            crate_dir
                .join("Cargo.toml")
                .metadata()
                .and_then(|m| m.modified())
                .expect("load-tests/Cargo.toml"),
        );
    if sibling
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= sources)
    {
        return sibling;
    }
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = Command::new(cargo)
        .args(["build", "-q", "-p", "load-tests", "--bin", "load-tests"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(repo())
        .output()
        .expect("run cargo build -p load-tests");
    assert!(
        out.status.success(),
        "cargo build -p load-tests failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "load-tests")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported the load-tests executable")
}

/// `--help` of a binary's subcommand path, cached.
struct Helps {
    binaries: HashMap<Bin, PathBuf>,
    texts: HashMap<(Bin, Vec<String>), String>,
}

impl Helps {
    fn help(&mut self, bin: Bin, path: &[String]) -> &str {
        let binary = self
            .binaries
            .entry(bin)
            .or_insert_with(|| match bin {
                Bin::Proxy => PathBuf::from(env!("CARGO_BIN_EXE_mqtt-kafka-proxy")),
                Bin::LoadTests => load_tests_binary(),
            })
            .clone();
        self.texts.entry((bin, path.to_vec())).or_insert_with(|| {
            let out = Command::new(&binary)
                .args(path)
                .arg("--help")
                .output()
                .unwrap_or_else(|e| panic!("run {} --help: {e}", binary.display()));
            assert!(
                out.status.success(),
                "{} {} --help failed: {}",
                binary.display(),
                path.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    }
}

/// The subcommand names a clap help lists under "Commands:".
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Whether a clap help lists `--name`.
fn lists_flag(help: &str, name: &str) -> bool {
    let flag = format!("--{name}");
    help.match_indices(&flag).any(|(i, _)| {
        let next = help[i + flag.len()..].chars().next();
        !next.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn every_documented_flag_is_accepted_by_its_binary() {
    let commands = documented_commands();
    // The pages do run both binaries; finding none means the scan broke.
    for bin in [Bin::Proxy, Bin::LoadTests] {
        assert!(
            commands.iter().filter(|(_, b, _)| *b == bin).count() >= 3,
            "too few {bin:?} commands found in the pages: the scan is broken"
        );
    }
    let mut helps = Helps {
        binaries: HashMap::new(),
        texts: HashMap::new(),
    };
    let mut unknown = Vec::new();
    let mut checked = 0;
    for (at, bin, args) in &commands {
        let mut path: Vec<String> = Vec::new();
        let mut rest = args.as_slice();
        while let Some(next) = rest.first() {
            let help = helps.help(*bin, &path);
            if subcommands(help).contains(next) {
                path.push(next.clone());
                rest = &rest[1..];
            } else {
                // A required subcommand that is not one: a renamed or removed command.
                if help.contains("<COMMAND>") && !next.starts_with('-') && !next.starts_with('…')
                {
                    unknown.push(format!(
                        "{at}: {bin:?} {} has no subcommand {next}",
                        path.join(" ")
                    ));
                }
                break;
            }
        }
        for arg in rest {
            if arg == "--" {
                break;
            }
            let arg = arg.trim_start_matches('[').trim_end_matches(']');
            let Some(name) = arg.strip_prefix("--") else {
                continue;
            };
            let name = name.split('=').next().unwrap_or(name);
            checked += 1;
            if !lists_flag(helps.help(*bin, &path), name) {
                unknown.push(format!(
                    "{at}: {bin:?} {} does not accept --{name}",
                    path.join(" ")
                ));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} flags checked: the scan is broken"
    );
    assert!(
        unknown.is_empty(),
        "flags the binaries do not list:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn the_command_scan_reads_shell_as_written() {
    let text =
        "MKP=1 cargo run --release -p load-tests -- kafka up --brokers 3 # comment --not-a-flag\n\
                echo \"$PW\" | mqtt-kafka-proxy passwd f u\n\
                target/release/load-tests rig --tls \\\n  --speed 10 [--mosquitto]\n\
                cargo build --release -p load-tests -p mqtt-kafka-proxy\n";
    let found: Vec<(Bin, Vec<String>)> = shell_commands(text)
        .iter()
        .filter_map(|w| invocation(w))
        .collect();
    let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        found,
        [
            (Bin::LoadTests, words("kafka up --brokers 3")),
            (Bin::Proxy, words("passwd f u")),
            (Bin::LoadTests, words("rig --tls --speed 10 [--mosquitto]")),
        ]
    );
    assert!(lists_flag("  --tls  use TLS\n", "tls"));
    assert!(!lists_flag("  --tls-ca <F>\n", "tls"));
}

// ---- configuration reference ---------------------------------------------

/// Keys the proxy accepts that the shipped config.toml only shows commented
/// out: the fields of an `[[auth.acl]]` rule.
const KEYS_NOT_IN_CONFIG_TOML: [&str; 3] =
    ["auth.acl.permission", "auth.acl.action", "auth.acl.topic"];

/// Every key path of a TOML table: leaves, empty tables (the librdkafka
/// pass-through maps) and the fields of arrays of tables (`routes.filter`).
fn key_paths(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if t.is_empty() => {
                out.insert(path);
            }
            toml::Value::Table(t) => key_paths(t, &path, out),
            toml::Value::Array(items)
                if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
            {
                for item in items {
                    if let toml::Value::Table(t) = item {
                        key_paths(t, &path, out);
                    }
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// The keys docs/configuration.md documents: the first cell of each table
/// row, when it is one code span.
fn documented_keys(text: &str) -> BTreeSet<String> {
    lines(text)
        .iter()
        .filter(|l| l.fence.is_none())
        .filter_map(|l| {
            let cell = l.text.strip_prefix("| `")?;
            let key = &cell[..cell.find("` |")?];
            let looks_like_key = key.contains('.')
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
            looks_like_key.then(|| key.to_owned())
        })
        .collect()
}

#[test]
fn the_configuration_reference_has_every_key_and_no_other() {
    let shipped: toml::Table = read(&repo().join("config.toml"))
        .parse()
        .expect("config.toml parses");
    let mut accepted = BTreeSet::new();
    key_paths(&shipped, "", &mut accepted);
    assert!(
        accepted.len() > 90,
        "config.toml yielded only {} keys",
        accepted.len()
    );
    let documented = documented_keys(&read(&repo().join("docs/configuration.md")));
    let missing: Vec<&String> = accepted.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys of config.toml with no row in docs/configuration.md: {missing:?}"
    );
    accepted.extend(KEYS_NOT_IN_CONFIG_TOML.map(str::to_owned));
    let unknown: Vec<&String> = documented.difference(&accepted).collect();
    assert!(
        unknown.is_empty(),
        "rows in docs/configuration.md for keys the proxy does not have: {unknown:?}"
    );
}
