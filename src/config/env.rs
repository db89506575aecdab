//! Environment overrides (`MQTT_KAFKA_PROXY__SECTION__KEY`) laid over the
//! configuration file before it is parsed.

use super::ConfigError;

/// Lays `over` onto `base`: tables merge key by key, anything else
/// (values, arrays such as `[[routes]]`) replaces.
pub(super) fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "MQTT_KAFKA_PROXY__";

/// Applies `MQTT_KAFKA_PROXY__SECTION__KEY=value` overrides to a parsed
/// config file. Levels are separated by `__` and matched lower-cased
/// (`MQTT_KAFKA_PROXY__KAFKA__BOOTSTRAP_SERVERS`); under `kafka.producer` the
/// rest of the name is a librdkafka option with `_` for `.`
/// (`..__KAFKA__PRODUCER__SASL_PASSWORD` → `"sasl.password"`), and so is it
/// under `kafka.topics.config` (`..__KAFKA__TOPICS__CONFIG__MIN_INSYNC_REPLICAS`
/// → `"min.insync.replicas"`). The value is
/// read as TOML when it parses as a number, boolean or array, else as a
/// string. A variable ending in `_FILE` takes its value from that file
/// (trailing newline dropped), for secrets mounted as files.
pub fn apply_env<I>(tree: &mut toml::Table, env: I) -> Result<(), ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    // Deterministic order: a plain variable and its _FILE twin both set is an error below.
    vars.sort();
    let mut seen = std::collections::HashSet::new();
    for (var, raw) in vars {
        let env_err = |reason: String| ConfigError::Env {
            var: var.clone(),
            reason,
        };
        let mut name = &var[ENV_PREFIX.len()..];
        let mut value = raw.clone();
        // `_FILE` means "read the value from this file", unless the whole
        // name is a key of its own (`auth.password.file`, `auth.jwt.key_file`).
        if let Some(base) = name
            .strip_suffix("_FILE")
            .filter(|_| !has_key(tree, &env_path(name)))
        {
            name = base;
            value = std::fs::read_to_string(&raw)
                .map_err(|e| env_err(format!("cannot read {raw}: {e}")))?
                .trim_end_matches(['\n', '\r'])
                .to_owned();
        }
        if !seen.insert(name.to_owned()) {
            return Err(env_err("set both directly and with _FILE".into()));
        }
        let path = env_path(name);
        if path.iter().any(|p| p.is_empty()) {
            return Err(env_err("empty level between __ separators".into()));
        }
        // Option maps hold strings, even `"min.insync.replicas" = "2"`.
        let parsed = if in_option_map(&path) {
            toml::Value::String(value)
        } else {
            parse_env_value(&value)
        };
        let (last, parents) = path.split_last().ok_or_else(|| env_err("no key".into()))?;
        let mut table = &mut *tree;
        for p in parents {
            let entry = table
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| env_err(format!("{p} is not a section")))?;
        }
        table.insert(last.clone(), parsed);
    }
    Ok(())
}

/// The key path an environment variable name (without the prefix) names.
fn env_path(name: &str) -> Vec<String> {
    let mut path: Vec<String> = name.split("__").map(|p| p.to_ascii_lowercase()).collect();
    // librdkafka option maps: `_` stands for `.`.
    if path.len() > 2 && path[0] == "kafka" && (path[1] == "producer" || path[1] == "client") {
        let option = path[2..].join("_").replace('_', ".");
        path.truncate(2);
        path.push(option);
    }
    // So does it in Kafka topic config names (`min.insync.replicas`).
    if path.len() > 3 && path[..3] == ["kafka", "topics", "config"] {
        let option = path[3..].join("_").replace('_', ".");
        path.truncate(3);
        path.push(option);
    }
    path
}

/// Whether `path` is an entry of a string-valued option map (librdkafka
/// options, Kafka topic configs).
fn in_option_map(path: &[String]) -> bool {
    path.len() == 3 && path[0] == "kafka" && (path[1] == "producer" || path[1] == "client")
        || path.len() == 4 && path[..3] == ["kafka", "topics", "config"]
}

/// Whether `path` names an existing key of `tree`.
fn has_key(tree: &toml::Table, path: &[String]) -> bool {
    let mut table = tree;
    for (i, p) in path.iter().enumerate() {
        match table.get(p) {
            Some(toml::Value::Table(t)) if i + 1 < path.len() => table = t,
            Some(_) if i + 1 == path.len() => return true,
            _ => return false,
        }
    }
    false
}

fn parse_env_value(value: &str) -> toml::Value {
    let wrapped = format!("v = {value}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Boolean(_)
                | toml::Value::Array(_)),
            ) => v,
            _ => toml::Value::String(value.to_owned()),
        },
        Err(_) => toml::Value::String(value.to_owned()),
    }
}
