//! The router: which Kafka topic and key a PUBLISH goes to. Routes are MQTT
//! topic filters whose single-level segments may be named (`{device_id}`), and
//! a key template that draws on those names and on `{client_id}`. The first
//! matching route wins; what matches none is refused or dead-lettered, as
//! configured — never dropped in silence.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;

/// A route table that cannot be built from the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// A filter segment is malformed.
    #[error("route {index} filter {filter:?}: {reason}")]
    BadFilter {
        /// Position of the route in `[[routes]]`, from 0.
        index: usize,
        /// The filter as written.
        filter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key template is malformed or names an unknown segment.
    #[error("route {index} key {key:?}: {reason}")]
    BadKey {
        /// Position of the route in `[[routes]]`, from 0.
        index: usize,
        /// The template as written.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: one non-empty level, captured.
    Named,
    /// `+`: one level, not captured.
    Plus,
    /// `#`: the rest, zero or more levels; only last.
    Hash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    Literal(String),
    ClientId,
    /// Index into the captures of the named segments, in filter order.
    Capture(usize),
}

#[derive(Debug, Clone)]
struct Route {
    segments: Vec<Segment>,
    /// Shared so a metric label per record costs a reference count, not a copy.
    kafka_topic: Arc<str>,
    key: Vec<KeyPart>,
}

/// Where one PUBLISH goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination<'r> {
    /// Kafka topic.
    pub kafka_topic: &'r Arc<str>,
    /// Record key (the device id).
    pub key: Cow<'r, str>,
    /// True when no route matched and this is the dead-letter topic.
    pub dead_letter: bool,
}

/// The compiled `[[routes]]` table.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    dead_letter_topic: Option<Arc<str>>,
}

/// Every Kafka topic a record may be written to (routes, and the
/// dead-letter topic when unmatched records go there), for creating them
/// up front.
pub fn kafka_topics(routes: &[RouteConfig], unmatched: &UnmatchedConfig) -> Vec<String> {
    let mut topics: Vec<String> = routes.iter().map(|r| r.kafka_topic.clone()).collect();
    if unmatched.action == UnmatchedAction::DeadLetter {
        topics.push(unmatched.dead_letter_topic.clone());
    }
    topics.sort();
    topics.dedup();
    topics
}

impl Router {
    /// Compiles the routes; every error names the route and what is wrong.
    pub fn new(routes: &[RouteConfig], unmatched: &UnmatchedConfig) -> Result<Router, RouteError> {
        let routes = routes
            .iter()
            .enumerate()
            .map(|(index, r)| compile(index, r))
            .collect::<Result<Vec<_>, _>>()?;
        let dead_letter_topic = match unmatched.action {
            UnmatchedAction::Refuse => None,
            UnmatchedAction::DeadLetter => Some(unmatched.dead_letter_topic.as_str().into()),
        };
        Ok(Router {
            routes,
            dead_letter_topic,
        })
    }

    /// Routes one topic name. `None` means refused: no route matched and no
    /// dead-letter topic is configured.
    pub fn route<'r>(&'r self, topic: &'r str, client_id: &'r str) -> Option<Destination<'r>> {
        let mut captures: [&str; MAX_CAPTURES] = [""; MAX_CAPTURES];
        for route in &self.routes {
            if matches(&route.segments, topic, &mut captures) {
                return Some(Destination {
                    kafka_topic: &route.kafka_topic,
                    key: render(&route.key, client_id, &captures),
                    dead_letter: false,
                });
            }
        }
        self.dead_letter_topic.as_ref().map(|t| Destination {
            kafka_topic: t,
            key: Cow::Borrowed(client_id),
            dead_letter: true,
        })
    }
}

/// Named segments per filter; more is a config error.
const MAX_CAPTURES: usize = 8;

fn compile(index: usize, r: &RouteConfig) -> Result<Route, RouteError> {
    let bad_filter = |reason: String| RouteError::BadFilter {
        index,
        filter: r.filter.clone(),
        reason,
    };
    let bad_key = |reason: String| RouteError::BadKey {
        index,
        key: r.key.clone(),
        reason,
    };
    if r.filter.is_empty() {
        return Err(bad_filter("filter is empty".into()));
    }
    let mut names: Vec<String> = Vec::new();
    let mut segments = Vec::new();
    let levels: Vec<&str> = r.filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let seg = match *level {
            "#" if i + 1 == levels.len() => Segment::Hash,
            "#" => return Err(bad_filter("'#' must be the last level".into())),
            "+" => Segment::Plus,
            l if l.starts_with('{') && l.ends_with('}') && l.len() > 2 => {
                let name = &l[1..l.len() - 1];
                if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(bad_filter(format!(
                        "segment name {name:?} must be [A-Za-z0-9_]"
                    )));
                }
                if name == "client_id" || names.iter().any(|n| n == name) {
                    return Err(bad_filter(format!(
                        "segment name {name:?} is reserved or repeated"
                    )));
                }
                if names.len() == MAX_CAPTURES {
                    return Err(bad_filter(format!(
                        "more than {MAX_CAPTURES} named segments"
                    )));
                }
                names.push(name.to_owned());
                Segment::Named
            }
            l if l.contains(['+', '#', '{', '}']) => {
                return Err(bad_filter(format!(
                    "level {l:?} mixes wildcards or braces with text"
                )))
            }
            l => Segment::Literal(l.to_owned()),
        };
        segments.push(seg);
    }
    if r.kafka_topic.is_empty() {
        return Err(bad_filter("kafka_topic is empty".into()));
    }

    let mut key = Vec::new();
    let mut rest = r.key.as_str();
    while !rest.is_empty() {
        if let Some(open) = rest.find('{') {
            if open > 0 {
                key.push(KeyPart::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| bad_key("unclosed '{'".into()))?;
            let name = &rest[open + 1..open + close];
            let part = if name == "client_id" {
                KeyPart::ClientId
            } else if let Some(pos) = names.iter().position(|n| n == name) {
                KeyPart::Capture(pos)
            } else {
                return Err(bad_key(format!(
                    "{{{name}}} is neither {{client_id}} nor a named segment of the filter"
                )));
            };
            key.push(part);
            rest = &rest[open + close + 1..];
        } else {
            key.push(KeyPart::Literal(rest.to_owned()));
            rest = "";
        }
    }
    if key.is_empty() {
        return Err(bad_key("key template is empty".into()));
    }
    Ok(Route {
        segments,
        kafka_topic: r.kafka_topic.as_str().into(),
        key,
    })
}

fn matches<'t>(segments: &[Segment], topic: &'t str, captures: &mut [&'t str]) -> bool {
    // Wildcards never match a first level starting with '$' [MQTT-4.7.2-1].
    if topic.starts_with('$') && !matches!(segments.first(), Some(Segment::Literal(_))) {
        return false;
    }
    let mut levels = topic.split('/');
    let mut captured = 0;
    for seg in segments {
        match seg {
            Segment::Hash => return true,
            _ => {
                let Some(level) = levels.next() else {
                    return false;
                };
                match seg {
                    Segment::Literal(l) if l != level => return false,
                    Segment::Named if level.is_empty() => return false,
                    Segment::Named => {
                        captures[captured] = level;
                        captured += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    levels.next().is_none()
}

fn render<'r>(key: &'r [KeyPart], client_id: &'r str, captures: &[&'r str]) -> Cow<'r, str> {
    match key {
        [KeyPart::ClientId] => Cow::Borrowed(client_id),
        [KeyPart::Capture(i)] => Cow::Borrowed(captures[*i]),
        parts => {
            let mut s = String::new();
            for p in parts {
                match p {
                    KeyPart::Literal(l) => s.push_str(l),
                    KeyPart::ClientId => s.push_str(client_id),
                    KeyPart::Capture(i) => s.push_str(captures[*i]),
                }
            }
            Cow::Owned(s)
        }
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// MQTT topic filter; `{name}` names a single level, `+` and a final `#`
    /// are wildcards.
    pub filter: String,
    /// Kafka topic the records go to.
    pub kafka_topic: String,
    /// Record key template over `{client_id}` and the filter's named levels.
    /// Default `{client_id}`.
    #[serde(default = "default_key")]
    pub key: String,
}

fn default_key() -> String {
    "{client_id}".into()
}

/// What happens when no route matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedAction {
    /// Refuse the PUBLISH (5.0: reason 0x90; 3.1.1: close the connection).
    #[default]
    Refuse,
    /// Write the record to `dead_letter_topic`, keyed by client id.
    DeadLetter,
}

/// Unmatched-topic policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnmatchedConfig {
    /// `refuse` or `dead_letter`. Default `refuse`.
    pub action: UnmatchedAction,
    /// Topic for `dead_letter`. Default `iot.deadletter`.
    pub dead_letter_topic: String,
}

impl Default for UnmatchedConfig {
    fn default() -> Self {
        UnmatchedConfig {
            action: UnmatchedAction::Refuse,
            dead_letter_topic: "iot.deadletter".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(filter: &str, topic: &str, key: &str) -> RouteConfig {
        RouteConfig {
            filter: filter.into(),
            kafka_topic: topic.into(),
            key: key.into(),
        }
    }

    fn setup(action: UnmatchedAction) -> (Vec<RouteConfig>, UnmatchedConfig) {
        (
            vec![
                route("devices/{device_id}/events/#", "iot.events", "{client_id}"),
                route(
                    "devices/{device_id}/snapshot",
                    "iot.snapshots",
                    "{device_id}",
                ),
                route("t/{tenant}/+/{dev}", "iot.tenant", "{tenant}:{dev}"),
            ],
            UnmatchedConfig {
                action,
                dead_letter_topic: "iot.dead".into(),
            },
        )
    }

    fn router(action: UnmatchedAction) -> Router {
        let (routes, unmatched) = setup(action);
        Router::new(&routes, &unmatched).unwrap()
    }

    #[test]
    fn routes_by_first_match_with_keys() {
        let r = router(UnmatchedAction::Refuse);
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("devices/d1/events", Some(("iot.events", "c1"))),
            ("devices/d1/events/door/open", Some(("iot.events", "c1"))),
            ("devices/d1/snapshot", Some(("iot.snapshots", "d1"))),
            ("devices//snapshot", None),
            ("devices/d1/snapshot/x", None),
            ("devices/d1", None),
            ("t/acme/x/d9", Some(("iot.tenant", "acme:d9"))),
            ("t/acme/x/d9/more", None),
            ("other", None),
        ];
        for (topic, want) in cases {
            let got = r.route(topic, "c1");
            let got = got.as_ref().map(|d| (&**d.kafka_topic, d.key.as_ref()));
            assert_eq!(got, *want, "topic {topic}");
        }
    }

    #[test]
    fn dollar_topics_do_not_match_leading_wildcards() {
        let r = Router::new(
            &[route("+/{x}", "a", "{x}"), route("#", "b", "{client_id}")],
            &UnmatchedConfig::default(),
        )
        .unwrap();
        assert!(r.route("$SYS/x", "c").is_none());
        assert_eq!(&**r.route("s/x", "c").unwrap().kafka_topic, "a");
        assert_eq!(&**r.route("s", "c").unwrap().kafka_topic, "b");
    }

    #[test]
    fn unmatched_goes_to_dead_letter_when_configured() {
        let r = router(UnmatchedAction::DeadLetter);
        let d = r.route("nowhere", "c1").unwrap();
        assert!(d.dead_letter);
        assert_eq!((&**d.kafka_topic, d.key.as_ref()), ("iot.dead", "c1"));
        let (routes, unmatched) = setup(UnmatchedAction::DeadLetter);
        assert_eq!(
            kafka_topics(&routes, &unmatched),
            vec!["iot.dead", "iot.events", "iot.snapshots", "iot.tenant"]
        );
    }

    #[test]
    fn bad_routes_are_refused_with_the_reason() {
        let none = UnmatchedConfig::default();
        let bad = [
            route("a/#/b", "t", "{client_id}"),
            route("a/x+/b", "t", "{client_id}"),
            route("a/{x}/{x}", "t", "{client_id}"),
            route("a/{x}", "t", "{y}"),
            route("a/{x}", "t", "{x"),
            route("a/{x}", "", "{x}"),
            route("", "t", "{client_id}"),
        ];
        for r in bad {
            assert!(
                Router::new(std::slice::from_ref(&r), &none).is_err(),
                "{r:?}"
            );
        }
    }
}
