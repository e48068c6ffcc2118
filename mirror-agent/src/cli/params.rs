//! Form parameters as the API takes them, and the values of flags that become several.

use std::fmt;

use super::args::{BudgetArgs, Mutation, Paging};

/// A resource tag; the API allows a key without a value, never the reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: Option<String>,
}

pub(super) fn parse_tag(s: &str) -> Result<Tag, ParamError> {
    let (key, value) = match s.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (s, None),
    };
    if key.is_empty() {
        return Err(ParamError::TagWithoutKey { tag: s.to_string() });
    }
    Ok(Tag {
        key: key.to_string(),
        value,
    })
}

/// One rule of `--ingress`/`--egress`: API parameter names and values, in the user's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSpec(pub Vec<(&'static str, String)>);

/// Why a `--tag` or a `--ingress`/`--egress` RULE was refused; clap prints it after the
/// flag and the value, so it names what was wrong inside the value.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("tag {tag:?} has no key; expected KEY=VALUE")]
    TagWithoutKey { tag: String },
    #[error("{part:?} in rule {rule:?} is not key=value")]
    RulePartNotKeyValue { part: String, rule: String },
    /// Most likely a typo, which the list of keys fixes.
    #[error("unknown key {key:?} in rule {rule:?}; keys are {}", rule_keys())]
    UnknownRuleKey { key: String, rule: String },
    #[error("key {key:?} appears twice in rule {rule:?}")]
    RuleKeyTwice { key: String, rule: String },
    #[error("key {key:?} has no value in rule {rule:?}")]
    RuleKeyWithoutValue { key: String, rule: String },
}

fn rule_keys() -> String {
    let known: Vec<&str> = RULE_KEYS.iter().map(|(k, _)| *k).collect();
    known.join(", ")
}

/// The short keys of a RULE and the API parameters they stand for.
const RULE_KEYS: [(&str, &str); 8] = [
    ("priority", "Priority"),
    ("action", "Action"),
    ("protocol", "Protocol"),
    ("ip-version", "IpVersion"),
    ("src", "SourceCidrBlock"),
    ("dst", "DestinationCidrBlock"),
    ("src-ports", "SourcePortRange"),
    ("dst-ports", "DestinationPortRange"),
];

/// Values are passed on unchecked: the agent validates them and names the parameter in its
/// error, so the client does not keep a second, drifting copy of the rules.
pub(super) fn parse_rule_spec(s: &str) -> Result<RuleSpec, ParamError> {
    let rule = || s.to_string();
    let mut out = Vec::new();
    for part in s.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(ParamError::RulePartNotKeyValue {
                part: part.to_string(),
                rule: rule(),
            });
        };
        let key = key.trim();
        let Some(&(_, param)) = RULE_KEYS.iter().find(|(k, _)| *k == key) else {
            return Err(ParamError::UnknownRuleKey {
                key: key.to_string(),
                rule: rule(),
            });
        };
        if out.iter().any(|(p, _)| *p == param) {
            return Err(ParamError::RuleKeyTwice {
                key: key.to_string(),
                rule: rule(),
            });
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(ParamError::RuleKeyWithoutValue {
                key: key.to_string(),
                rule: rule(),
            });
        }
        out.push((param, value.to_string()));
    }
    Ok(RuleSpec(out))
}

/// Form parameters in the order they are sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Params(pub(super) Vec<(String, String)>);

impl Params {
    pub(super) fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    pub(super) fn opt<T: fmt::Display>(&mut self, key: &str, value: Option<T>) {
        if let Some(v) = value {
            self.set(key, v.to_string());
        }
    }

    pub(super) fn budget(&mut self, b: &BudgetArgs) {
        self.opt("MaxPacketsPerSecond", b.max_packets_per_second);
        self.opt("MaxBitsPerSecond", b.max_bits_per_second);
        self.opt("SampleOneIn", b.sample_one_in);
        self.opt("SampleMode", b.sample_mode.as_deref());
    }

    /// `Prefix.1=a&Prefix.2=b`, the list form every cloud SDK sends.
    pub(super) fn list(&mut self, prefix: &str, items: &[String]) {
        for (i, item) in items.iter().enumerate() {
            self.set(format!("{prefix}.{}", i + 1), item.clone());
        }
    }

    pub(super) fn tags(&mut self, tags: &[Tag]) {
        for (i, tag) in tags.iter().enumerate() {
            let n = i + 1;
            self.set(format!("Tags.{n}.Key"), tag.key.clone());
            if let Some(v) = &tag.value {
                self.set(format!("Tags.{n}.Value"), v.clone());
            }
        }
    }

    pub(super) fn rules(&mut self, list: &str, rules: &[RuleSpec]) {
        for (i, rule) in rules.iter().enumerate() {
            for (param, value) in &rule.0 {
                self.set(format!("{list}.{}.{param}", i + 1), value.clone());
            }
        }
    }

    pub(super) fn mutation(&mut self, m: &Mutation) {
        self.opt("ClientToken", m.client_token.as_deref());
        if m.dry_run {
            self.set("DryRun", "true");
        }
    }

    pub(super) fn paging(&mut self, p: &Paging) {
        self.opt("MaxResults", p.max_results);
        self.opt("NextToken", p.next_token.as_deref());
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap prints these after `invalid value … for '--ingress <RULE>':`, so each must say on
    /// its own which part of which rule is wrong.
    #[test]
    fn rule_errors_name_the_part_and_the_rule() {
        let message = |s: &str| parse_rule_spec(s).unwrap_err().to_string();
        assert_eq!(
            message("prio=1"),
            "unknown key \"prio\" in rule \"prio=1\"; keys are priority, action, protocol, \
             ip-version, src, dst, src-ports, dst-ports"
        );
        assert_eq!(
            message("priority=1,action"),
            "\"action\" in rule \"priority=1,action\" is not key=value"
        );
        assert_eq!(
            parse_tag("=x").unwrap_err().to_string(),
            "tag \"=x\" has no key; expected KEY=VALUE"
        );
    }
}
