//! Access control as ocs 0.12.1 implements it (`ocs/access.py`): the agent's access policy
//! (`--access-policy` / the site's `access_policy`), credential levels, the rules that grant
//! them for a client's `password`, and the rejection texts.
//!
//! * `none` (the default): every client has level 1 (`BASIC`); an op with `min_privs` 2 or 3
//!   cannot be started by anyone, and a password is accepted and ignored.
//! * `override:PW2,PW3`: no password gives level 1; `PW2` gives 2, `PW3` gives 3 (clear text).
//! * `director:ID` (`director:` alone means `access-director`): everything is blocked (level
//!   0) until the Access Director agent `ID` publishes this agent's rules on its `controls`
//!   feed; the agent subscribes to that feed and calls `{root}.{ID}.agent_poll` on each join.
//!
//! The agent's own startup ops run with the super-user key (level 4), except under `none`,
//! where ocs gives every caller level 1 (so a startup op with `min_privs` above 1 never starts).

use std::fmt;

use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::{json, Value};

/// The access-control protocol version ocs 0.12.1 reports (`access.AC_VERSION`).
pub(crate) const AC_VERSION: i64 = 1;

/// An access policy, parsed from `--access-policy` or the site's `access_policy`.
///
/// ```
/// use ocs_feed::AccessPolicy;
/// assert_eq!(AccessPolicy::parse(None).unwrap(), AccessPolicy::None);
/// assert_eq!(
///     AccessPolicy::parse(Some("director:")).unwrap(),
///     AccessPolicy::Director { director_id: "access-director".into() }
/// );
/// assert!(AccessPolicy::parse(Some("overide:a,b")).is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum AccessPolicy {
    /// No access control: every client has level 1.
    None,
    /// Fixed passwords for levels 2 and 3 (clear text); level 1 needs none.
    Override {
        /// The level-2 password.
        level2: String,
        /// The level-3 password.
        level3: String,
    },
    /// Rules from an Access Director agent; blocked until they arrive.
    Director {
        /// The Access Director's instance id.
        director_id: String,
    },
}

impl fmt::Debug for AccessPolicy {
    // Passwords are never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessPolicy::None => f.write_str("None"),
            AccessPolicy::Override { .. } => f.write_str("Override { .. }"),
            AccessPolicy::Director { director_id } => f
                .debug_struct("Director")
                .field("director_id", director_id)
                .finish(),
        }
    }
}

/// An access policy string that ocs would refuse (ocs raises and the agent does not start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid access policy {shown:?}: {reason} (expected none, override:PW2,PW3 or director:ID)"
)]
pub struct AccessPolicyError {
    shown: String,
    reason: String,
}

impl AccessPolicy {
    /// Parses a policy as ocs's `agent_get_policy_default` does; `None` and `""` are `none`.
    /// Anything ocs would refuse is an error (the agent must not start unprotected).
    pub fn parse(policy: Option<&str>) -> Result<AccessPolicy, AccessPolicyError> {
        let policy = match policy {
            None | Some("") | Some("none") => return Ok(AccessPolicy::None),
            Some(p) => p,
        };
        // Never echo passwords back in the error.
        let shown = policy.split(':').next().unwrap_or("").to_owned();
        let error = |reason: &str| AccessPolicyError {
            shown: format!("{shown}:..."),
            reason: reason.to_owned(),
        };
        let Some((name, args)) = policy.split_once(':') else {
            return Err(AccessPolicyError {
                shown,
                reason: "no ':' (ocs: not enough values to unpack)".into(),
            });
        };
        match name {
            "director" => Ok(AccessPolicy::Director {
                director_id: if args.is_empty() {
                    "access-director".into()
                } else {
                    args.to_owned()
                },
            }),
            "override" => {
                let mut pws = args.split(',');
                match (pws.next(), pws.next()) {
                    (Some(l2), Some(l3)) => Ok(AccessPolicy::Override {
                        level2: l2.to_owned(),
                        level3: l3.to_owned(),
                    }),
                    _ => Err(error(
                        "override needs two passwords, PW2,PW3 (ocs: list index out of range)",
                    )),
                }
            }
            _ => Err(error(&format!("Invalid policy \"{name}\""))),
        }
    }

    /// The name ocs reports in `get_api`'s `access_control.policy`.
    pub fn name(&self) -> &'static str {
        match self {
            AccessPolicy::None => "none",
            AccessPolicy::Override { .. } => "override",
            AccessPolicy::Director { .. } => "director",
        }
    }
}

/// A credential level (ocs's `CredLevel`).
pub(crate) fn level_name(level: u8) -> String {
    let name = match level {
        0 => "BLOCKED",
        1 => "BASIC",
        2 => "ADVANCED",
        3 => "FULL",
        _ => "SUPERUSER",
    };
    format!("{level}-{name}")
}

/// A stored password (ocs's `HashedPass`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct HashedPass {
    hash: String,
    #[serde(default)]
    value: String,
}

impl HashedPass {
    fn free() -> HashedPass {
        HashedPass {
            hash: "none".into(),
            value: String::new(),
        }
    }

    fn blocked() -> HashedPass {
        HashedPass {
            hash: "blocked".into(),
            value: String::new(),
        }
    }

    /// ocs's `HashedPass.check`: `blocked` never matches, an empty value always does, else
    /// the password hashed with `hash` (`none`: clear text; `md5`: the first 16 hex digits of
    /// its MD5) must equal the value.
    fn check(&self, password: Option<&str>) -> bool {
        let password = password.unwrap_or("");
        if self.hash == "blocked" {
            return false;
        }
        if self.value.is_empty() {
            return true;
        }
        match self.hash.as_str() {
            "none" => password == self.value,
            "md5" => {
                let digest = Md5::digest(password.as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                hex[..16] == self.value
            }
            _ => false,
        }
    }
}

/// Which agents a rule applies to (ocs's `ScopeSpec`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ScopeSpec {
    #[serde(default)]
    default: Option<bool>,
    #[serde(default)]
    agent_class: Option<String>,
    #[serde(default)]
    instance_id: Option<String>,
}

impl ScopeSpec {
    fn everyone() -> ScopeSpec {
        ScopeSpec {
            default: Some(true),
            agent_class: None,
            instance_id: None,
        }
    }

    fn applies(&self, agent_class: &str, instance_id: &str) -> bool {
        if self.default == Some(true) {
            return true;
        }
        if self.agent_class.is_none() && self.instance_id.is_none() {
            return false;
        }
        if let Some(p) = &self.agent_class {
            if !pattern_match(agent_class, p) {
                return false;
            }
        }
        if let Some(p) = &self.instance_id {
            if !pattern_match(instance_id, p) {
                return false;
            }
        }
        true
    }
}

fn default_scope() -> ScopeSpec {
    ScopeSpec::everyone()
}

/// One rule (ocs's `AccessRule`), as the Access Director sends it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct AccessRule {
    hashed_pass: HashedPass,
    cred_level: u8,
    #[serde(default = "default_scope")]
    scope_spec: ScopeSpec,
    #[serde(default)]
    lockout_id: Option<String>,
    #[serde(default)]
    lockout_owner: Option<String>,
    #[serde(default)]
    lockout_levels: Option<Vec<u8>>,
}

/// ocs's `pattern_match`: comma-separated `fnmatch` patterns; `!pat` excludes.
fn pattern_match(target: &str, pattern: &str) -> bool {
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for sub in pattern.split(',') {
        let (dest, sub) = match sub.strip_prefix('!') {
            Some(s) => (&mut neg, s),
            None => (&mut pos, sub),
        };
        if sub.is_empty() {
            continue;
        }
        dest.push(fnmatch(target.as_bytes(), sub.as_bytes()));
    }
    (pos.is_empty() || pos.iter().any(|m| *m)) && !neg.iter().any(|m| *m)
}

/// Python's `fnmatch` on POSIX (case-sensitive): `*`, `?`, `[seq]`, `[!seq]`.
fn fnmatch(name: &[u8], pat: &[u8]) -> bool {
    match pat.first() {
        None => name.is_empty(),
        Some(b'*') => (0..=name.len()).any(|i| fnmatch(&name[i..], &pat[1..])),
        Some(b'?') => !name.is_empty() && fnmatch(&name[1..], &pat[1..]),
        Some(b'[') => {
            let Some(close) = pat.iter().skip(2).position(|c| *c == b']').map(|i| i + 2) else {
                return name.first() == Some(&b'[') && fnmatch(&name[1..], &pat[1..]);
            };
            let Some(c) = name.first() else { return false };
            let (negate, set) = match pat[1] {
                b'!' => (true, &pat[2..close]),
                _ => (false, &pat[1..close]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= *c && *c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == *c;
                    i += 1;
                }
            }
            hit != negate && fnmatch(&name[1..], &pat[close + 1..])
        }
        Some(p) => name.first() == Some(p) && fnmatch(&name[1..], &pat[1..]),
    }
}

/// Who is asking: a client with its `password` argument, or the agent itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Caller<'a> {
    /// A client; `None` when it passed no password.
    Client(Option<&'a Value>),
    /// The agent's own startup ops (ocs's `superuser_key`).
    Agent,
}

/// The agent's access state: its policy, current rules and `get_api`'s `access_control`.
pub(crate) struct AccessState {
    pub(crate) policy: AccessPolicy,
    rules: Vec<AccessRule>,
    update_timestamp: f64,
    update_count: u64,
    step: Value,
}

impl AccessState {
    pub(crate) fn new(policy: AccessPolicy, now: f64) -> AccessState {
        let rules = match &policy {
            AccessPolicy::None => [1, 2, 3]
                .map(|level| AccessRule::everyone(HashedPass::free(), level))
                .to_vec(),
            AccessPolicy::Director { .. } => [1, 2, 3]
                .map(|level| AccessRule::everyone(HashedPass::blocked(), level))
                .to_vec(),
            AccessPolicy::Override { level2, level3 } => vec![
                AccessRule::everyone(HashedPass::free(), 1),
                AccessRule::everyone(
                    HashedPass {
                        hash: "none".into(),
                        value: level2.clone(),
                    },
                    2,
                ),
                AccessRule::everyone(
                    HashedPass {
                        hash: "none".into(),
                        value: level3.clone(),
                    },
                    3,
                ),
            ],
        };
        AccessState {
            policy,
            rules,
            update_timestamp: now,
            update_count: 0,
            step: json!(0),
        }
    }

    /// `get_api`'s `access_control` block, in ocs's key order.
    pub(crate) fn encoded(&self) -> Value {
        json!({
            "version": AC_VERSION,
            "policy": self.policy.name(),
            "update_timestamp": self.update_timestamp,
            "update_count": self.update_count,
            "step": self.step,
        })
    }

    /// ocs's `agent_get_creds`: the caller's level and a detail text.
    pub(crate) fn creds(
        &self,
        caller: Caller<'_>,
        agent_class: &str,
        instance_id: &str,
    ) -> (u8, String) {
        if self.policy == AccessPolicy::None {
            return (1, "No access policy -- level 1 for all.".into());
        }
        let password = match caller {
            Caller::Agent => return (4, "Super-user.".into()),
            Caller::Client(p) => p,
        };
        // A password that is not a string matches only password-free rules (ocs would fail
        // to hash it).
        let text = match password {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => Some("\u{0}not a string"),
        };
        let mut level = 0u8;
        let mut blocked: Vec<u8> = Vec::new();
        let mut owners: Vec<String> = Vec::new();
        for rule in &self.rules {
            if !rule.scope_spec.applies(agent_class, instance_id) {
                continue;
            }
            if rule.hashed_pass.check(text) {
                level = level.max(rule.cred_level);
            } else if let Some(l) = rule.lockout_levels.as_ref().filter(|l| !l.is_empty()) {
                blocked.extend(l);
                let owner = format!(
                    "{}[{}]",
                    rule.lockout_id.as_deref().unwrap_or("None"),
                    rule.lockout_owner.as_deref().unwrap_or("None")
                );
                if !owners.contains(&owner) {
                    owners.push(owner);
                }
            }
        }
        let mut diminished = false;
        while level > 0 && blocked.contains(&level) {
            level -= 1;
            diminished = true;
        }
        let detail = if diminished {
            let list: Vec<Value> = owners.into_iter().map(Value::String).collect();
            format!(
                "Privileges diminished; lockouts active: {}",
                crate::params::py_repr(&Value::Array(list))
            )
        } else {
            String::new()
        };
        (level, detail)
    }

    /// Takes one message of the Access Director's `controls` feed (ocs's `_access_handler`);
    /// returns whether the rules changed.
    pub(crate) fn apply_director_message(
        &mut self,
        message: &Value,
        instance_id: &str,
        now: f64,
    ) -> Result<bool, String> {
        let version = message.get("ac_version");
        if version != Some(&json!(AC_VERSION)) {
            return Err(format!(
                "Access Control version mismatch: director={}, Agent={AC_VERSION}",
                version.map_or("None".into(), crate::params::py_repr)
            ));
        }
        let reset = message.get("reset").is_some_and(truthy);
        let target = message.get("target").and_then(Value::as_str);
        if !(reset || target == Some(instance_id)) {
            return Ok(false);
        }
        let rules: Vec<AccessRule> =
            serde_json::from_value(message.get("rules").cloned().unwrap_or(Value::Null))
                .map_err(|e| format!("bad rules from the Access Director: {e}"))?;
        self.rules = rules;
        self.update_timestamp = now;
        self.update_count += 1;
        self.step = message.get("step").cloned().unwrap_or(Value::Null);
        Ok(true)
    }
}

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
        && v.as_f64() != Some(0.0)
        && v.as_str() != Some("")
}

impl AccessRule {
    fn everyone(hashed_pass: HashedPass, cred_level: u8) -> AccessRule {
        AccessRule {
            hashed_pass,
            cred_level,
            scope_spec: ScopeSpec::everyone(),
            lockout_id: None,
            lockout_owner: None,
            lockout_levels: None,
        }
    }
}

/// ocs's `agent_rejection_message`.
pub(crate) fn rejection_message(level: u8, required: u8, detail: &str) -> String {
    let mut text = format!(
        "The action requires credential level {} but the client has only level {}",
        level_name(required),
        level_name(level)
    );
    if !detail.is_empty() {
        text.push(' ');
        text.push_str(detail);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(policy: &str) -> AccessState {
        AccessState::new(AccessPolicy::parse(Some(policy)).unwrap(), 1.0)
    }

    fn level(s: &AccessState, pw: Option<&str>) -> u8 {
        let v = pw.map(|p| json!(p));
        s.creds(Caller::Client(v.as_ref()), "TwinAgent", "twin1").0
    }

    #[test]
    fn policies_parse_as_in_ocs() {
        assert_eq!(
            AccessPolicy::parse(Some("none")).unwrap(),
            AccessPolicy::None
        );
        assert_eq!(AccessPolicy::parse(Some("")).unwrap(), AccessPolicy::None);
        assert_eq!(
            AccessPolicy::parse(Some("director:ad1")).unwrap(),
            AccessPolicy::Director {
                director_id: "ad1".into()
            }
        );
        assert_eq!(
            AccessPolicy::parse(Some("override:a,b,c")).unwrap(),
            AccessPolicy::Override {
                level2: "a".into(),
                level3: "b".into()
            }
        );
        for bad in ["override:only", "director", "strict:x", "overide:pw2,pw3"] {
            let e = AccessPolicy::parse(Some(bad)).unwrap_err().to_string();
            assert!(!e.contains("pw2"), "no password in {e}");
            assert!(e.contains("invalid access policy"), "{e}");
        }
    }

    #[test]
    fn override_levels_and_superuser() {
        let s = state("override:two,three");
        assert_eq!(level(&s, None), 1);
        assert_eq!(level(&s, Some("wrong")), 1);
        assert_eq!(level(&s, Some("two")), 2);
        assert_eq!(level(&s, Some("three")), 3);
        assert_eq!(s.creds(Caller::Agent, "A", "a").0, 4);
        let none = state("none");
        assert_eq!(none.creds(Caller::Agent, "A", "a").0, 1, "ocs: none wins");
        assert_eq!(
            rejection_message(1, 2, "No access policy -- level 1 for all."),
            "The action requires credential level 2-ADVANCED but the client has only level \
             1-BASIC No access policy -- level 1 for all."
        );
    }

    #[test]
    fn director_rules_with_md5_scopes_and_lockouts() {
        let mut s = state("director:ad");
        assert_eq!(level(&s, None), 0, "blocked until rules arrive");
        // md5("pw3")[:16]
        let digest = Md5::digest(b"pw3");
        let h: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let msg = json!({"reset": true, "ac_version": 1, "step": 7, "rules": [
            {"hashed_pass": {"hash": "none", "value": ""}, "cred_level": 1,
             "scope_spec": {"default": true, "agent_class": null, "instance_id": null},
             "lockout_id": null, "lockout_owner": null, "lockout_levels": []},
            {"hashed_pass": {"hash": "md5", "value": &h[..16]}, "cred_level": 3,
             "scope_spec": {"default": false, "agent_class": "Twin*,!Other", "instance_id": null},
             "lockout_id": null, "lockout_owner": null, "lockout_levels": []},
            {"hashed_pass": {"hash": "md5", "value": "0000000000000000"}, "cred_level": 2,
             "scope_spec": {"default": false, "agent_class": null, "instance_id": "twin[0-9]"},
             "lockout_id": "grant", "lockout_owner": "me", "lockout_levels": [3]}
        ]});
        assert!(s.apply_director_message(&msg, "twin1", 2.0).unwrap());
        assert_eq!(level(&s, None), 1);
        let (l, detail) = s.creds(Caller::Client(Some(&json!("pw3"))), "TwinAgent", "twin1");
        assert_eq!(l, 2, "level 3 locked out");
        assert_eq!(
            detail,
            "Privileges diminished; lockouts active: ['grant[me]']"
        );
        assert_eq!(s.encoded()["update_count"], 1);
        assert_eq!(s.encoded()["step"], 7);
        let other = json!({"target": "someone-else", "ac_version": 1, "step": 8, "rules": []});
        assert!(!s.apply_director_message(&other, "twin1", 3.0).unwrap());
        let bad = json!({"reset": true, "ac_version": 2, "rules": []});
        assert!(s.apply_director_message(&bad, "twin1", 3.0).is_err());
    }

    #[test]
    fn fnmatch_like_python() {
        assert!(pattern_match("FakeDataAgent", "*Agent"));
        assert!(!pattern_match("FakeDataAgent", "*Agent,!Fake*"));
        assert!(pattern_match("compute3", "compute*,login*,!*9,!*8"));
        assert!(!pattern_match("compute9", "compute*,login*,!*9,!*8"));
        assert!(pattern_match("a1", "a[0-9]"));
        assert!(!pattern_match("ab", "a[!b]"));
        assert!(pattern_match("x", "!y"));
    }
}
