//! Access control for PUBLISH topics and SUBSCRIBE filters: an ordered list
//! of allow/deny rules over topic filters with `{device_id}`, `{username}`
//! and `{client_id}` filled in per connection; the first rule that applies
//! decides, and when none does the default is deny with authentication on,
//! allow with it off.
//!
//! A PUBLISH topic is allowed by an allow rule whose filter matches it. A
//! SUBSCRIBE filter is allowed by an allow rule whose filter covers it (so
//! `devices/{device_id}/#` allows `devices/d1/commands/+` for d1), and denied
//! by a deny rule whose filter could match any of the same topics.
//!
//! Substituted values must be single, wildcard-free topic levels. A value
//! holding `/`, `+`, `#` or nothing at all would widen a rule (a user named
//! `#` and a rule `{username}/#`), so such a rule does not apply to that
//! connection if it allows, and applies to everything if it denies.

use serde::Deserialize;

use crate::mqtt::topic;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
}

/// What an ACL rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclAction {
    /// PUBLISH topic names.
    Publish,
    /// SUBSCRIBE topic filters.
    Subscribe,
    /// Both.
    All,
}

/// One ACL rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// `allow` or `deny`.
    pub permission: Permission,
    /// `publish`, `subscribe` or `all`.
    pub action: AclAction,
    /// Topic filter with `{device_id}`, `{username}`, `{client_id}`.
    pub topic: String,
}

/// Who the rules are evaluated for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Authenticated (or client-id) device id.
    pub device_id: &'a str,
    /// CONNECT user name, if any.
    pub username: Option<&'a str>,
    /// CONNECT client id.
    pub client_id: &'a str,
}

/// The compiled rule list.
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<AclRule>,
    default: Permission,
}

/// Which question is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A PUBLISH topic name.
    Publish,
    /// A SUBSCRIBE topic filter.
    Subscribe,
}

impl Access {
    /// Label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Access::Publish => "publish",
            Access::Subscribe => "subscribe",
        }
    }
}

impl Acl {
    /// Rules from the config; `auth_enabled` chooses the default.
    pub fn new(rules: &[AclRule], auth_enabled: bool) -> Acl {
        Acl {
            rules: rules.to_vec(),
            default: if auth_enabled {
                Permission::Deny
            } else {
                Permission::Allow
            },
        }
    }

    /// True when every question is answered "allow" without looking: no
    /// rules and authentication off. Lets the hot path skip the check.
    pub fn allows_everything(&self) -> bool {
        self.rules.is_empty() && self.default == Permission::Allow
    }

    /// Decides one topic (Publish) or filter (Subscribe).
    pub fn check(&self, access: Access, topic_or_filter: &str, who: &Subject<'_>) -> Permission {
        for rule in &self.rules {
            let applies_to = matches!(
                (rule.action, access),
                (AclAction::All, _)
                    | (AclAction::Publish, Access::Publish)
                    | (AclAction::Subscribe, Access::Subscribe)
            );
            if !applies_to {
                continue;
            }
            let Some(filter) = render(&rule.topic, who) else {
                match rule.permission {
                    // Unsafe value: an allow rule does not apply, a deny rule denies.
                    Permission::Allow => continue,
                    Permission::Deny => return Permission::Deny,
                }
            };
            let hit = match (access, rule.permission) {
                (Access::Publish, _) => topic::matches(&filter, topic_or_filter),
                (Access::Subscribe, Permission::Allow) => topic::covers(&filter, topic_or_filter),
                (Access::Subscribe, Permission::Deny) => {
                    topic::intersects(&filter, topic_or_filter)
                }
            };
            if hit {
                return rule.permission;
            }
        }
        self.default
    }
}

/// Fills the placeholders in; `None` when a value used is not a single,
/// wildcard-free, non-empty topic level. Also used by config validation,
/// with sample values, to find placeholders it does not know.
pub fn render(template: &str, who: &Subject<'_>) -> Option<String> {
    if !template.contains('{') {
        return Some(template.to_owned());
    }
    let mut out = template.to_owned();
    for (name, value) in [
        ("{device_id}", Some(who.device_id)),
        ("{username}", who.username),
        ("{client_id}", Some(who.client_id)),
    ] {
        if !out.contains(name) {
            continue;
        }
        let value = value?;
        if value.is_empty() || value.contains(['/', '+', '#']) {
            return None;
        }
        out = out.replace(name, value);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(permission: Permission, action: AclAction, topic: &str) -> AclRule {
        AclRule {
            permission,
            action,
            topic: topic.into(),
        }
    }

    fn who<'a>(device_id: &'a str, username: Option<&'a str>) -> Subject<'a> {
        Subject {
            device_id,
            username,
            client_id: "client-x",
        }
    }

    use AclAction::*;
    use Permission::*;

    fn fleet() -> Acl {
        Acl::new(
            &[
                rule(Deny, All, "devices/{device_id}/secret/#"),
                rule(Allow, Publish, "devices/{device_id}/#"),
                rule(Allow, Subscribe, "devices/{device_id}/commands/#"),
                rule(Allow, Publish, "users/{username}/status"),
            ],
            true,
        )
    }

    #[test]
    fn publish_rules_first_match_and_default_deny() {
        let acl = fleet();
        let d1 = who("d1", Some("alice"));
        let cases = [
            ("devices/d1/events/t", Allow),
            ("devices/d2/events/t", Deny),
            ("devices/d1/secret/x", Deny),
            ("users/alice/status", Allow),
            ("users/bob/status", Deny),
            ("elsewhere", Deny),
        ];
        for (topic, want) in cases {
            assert_eq!(acl.check(Access::Publish, topic, &d1), want, "{topic}");
        }
    }

    #[test]
    fn subscribe_needs_cover_and_deny_needs_only_overlap() {
        let acl = fleet();
        let d1 = who("d1", None);
        let cases = [
            ("devices/d1/commands/#", Allow),
            ("devices/d1/commands/reboot", Allow),
            ("devices/d1/#", Deny),         // overlaps the secret deny rule
            ("devices/+/commands/#", Deny), // not covered: would see d2's commands
            ("devices/d2/commands/#", Deny),
        ];
        for (filter, want) in cases {
            assert_eq!(acl.check(Access::Subscribe, filter, &d1), want, "{filter}");
        }
    }

    #[test]
    fn wildcards_or_slashes_in_values_never_widen_a_rule() {
        let acl = fleet();
        // A user named "#" must not get users/#/status → everything under users/.
        let hostile = who("d1", Some("#"));
        assert_eq!(
            acl.check(Access::Publish, "users/bob/status", &hostile),
            Deny
        );
        // A device id with a slash cannot reach another device's subtree.
        let slash = who("d1/../d2", None);
        assert_eq!(
            acl.check(Access::Publish, "devices/d1/../d2/x", &slash),
            Deny
        );
        // No user name: rules that use it do not apply.
        assert_eq!(
            acl.check(Access::Publish, "users//status", &who("d1", None)),
            Deny
        );
        // A deny rule with an unusable value denies.
        let deny_first = Acl::new(
            &[
                rule(Deny, Publish, "blocked/{username}"),
                rule(Allow, Publish, "#"),
            ],
            true,
        );
        assert_eq!(
            deny_first.check(Access::Publish, "x", &who("d1", Some("a+b"))),
            Deny
        );
        assert_eq!(
            deny_first.check(Access::Publish, "x", &who("d1", Some("ab"))),
            Allow
        );
    }

    #[test]
    fn default_follows_authentication() {
        let none = Acl::new(&[], false);
        assert!(none.allows_everything());
        assert_eq!(none.check(Access::Publish, "a", &who("d", None)), Allow);
        let locked = Acl::new(&[], true);
        assert!(!locked.allows_everything());
        assert_eq!(locked.check(Access::Publish, "a", &who("d", None)), Deny);
    }
}
