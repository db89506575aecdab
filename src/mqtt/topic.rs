//! Topic filters as MQTT defines them (section 4.7): validation of a filter a
//! client subscribes with, and matching a topic name against it.

/// Whether `filter` is a well-formed topic filter: `#` only as the last level
/// and alone in it, `+` alone in its level [MQTT-4.7.1-1] [MQTT-4.7.1-2].
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i + 1 == levels.len(),
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// Whether topic name `topic` matches `filter` [MQTT-4.7.1]. Topics starting
/// with `$` do not match a leading wildcard [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => {
                if t.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

/// Whether every topic `requested` can match is also matched by `allowed`:
/// a device may subscribe to a narrower filter than the one it is allowed.
pub fn covers(allowed: &str, requested: &str) -> bool {
    let mut r = requested.split('/');
    for a in allowed.split('/') {
        match (a, r.next()) {
            ("#", _) => return true,
            (_, None) => return false,
            ("+", Some("#")) => return false,
            ("+", Some(_)) => {}
            (lit, Some(req)) if lit == req => {}
            _ => return false,
        }
    }
    r.next().is_none()
}

/// Whether some topic name matches both filters: a deny rule refuses a
/// subscription that could receive anything it denies, not only one it covers.
pub fn intersects(a: &str, b: &str) -> bool {
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            // One filter is longer; only a trailing `#` on the shorter one
            // (handled above, it matches its parent level) could join them.
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_topics_as_the_spec_says() {
        let cases = [
            ("devices/d1/commands/#", "devices/d1/commands/reboot", true),
            ("devices/d1/commands/#", "devices/d1/commands", true),
            ("devices/d1/commands/#", "devices/d2/commands/reboot", false),
            ("devices/+/commands/+", "devices/d1/commands/reboot", true),
            ("devices/+/commands/+", "devices/d1/commands/a/b", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} ~ {t}");
        }
    }

    #[test]
    fn narrower_filters_are_covered() {
        let allowed = "devices/d1/commands/#";
        for ok in [
            "devices/d1/commands/#",
            "devices/d1/commands/+",
            "devices/d1/commands/reboot",
            "devices/d1/commands",
        ] {
            assert!(covers(allowed, ok), "{ok}");
        }
        for no in [
            "devices/+/commands/#",
            "devices/d2/commands/#",
            "#",
            "devices/d1/#",
        ] {
            assert!(!covers(allowed, no), "{no}");
        }
        assert!(covers("a/+/c", "a/b/c"));
        assert!(!covers("a/+/c", "a/#"));
    }

    #[test]
    fn malformed_filters_are_refused() {
        for f in ["", "a/#/b", "a/b#", "a+/b", "#/a"] {
            assert!(!valid_filter(f), "{f}");
        }
        for f in ["#", "+", "a/+/b", "a/#", "devices/d1/commands/#"] {
            assert!(valid_filter(f), "{f}");
        }
    }

    #[test]
    fn intersecting_filters() {
        let cases = [
            ("a/+/c", "a/b/#", true),
            ("a/b", "a/#", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b/c", false),
            ("#", "x/y", true),
            ("a/b/c", "a/+/c", true),
            ("a/b/c", "a/b", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(intersects(a, b), want, "{a} & {b}");
            assert_eq!(intersects(b, a), want, "{b} & {a}");
        }
    }
}
