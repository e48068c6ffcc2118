//! `call`: any action with parameters as given, for what the other subcommands do not cover.

use super::{Plan, Render, error::UsageError, params::Params};

pub(super) fn plan(action: String, params: &[String]) -> Result<Plan, UsageError> {
    if action.is_empty() {
        return Err(UsageError::EmptyAction);
    }
    let mut p = Params::default();
    for s in params {
        let (k, v) = parse_key_value(s)?;
        p.set(k, v);
    }
    Ok(Plan::new(&action, p, Render::Raw))
}

/// `Key=Value` of `call`; only the first '=' separates, so values may contain '='.
fn parse_key_value(s: &str) -> Result<(String, String), UsageError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(UsageError::NotKeyValue(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::{pairs, plan_of};

    #[test]
    fn key_value_parsing() {
        assert_eq!(
            parse_key_value("MaxResults=10").unwrap(),
            ("MaxResults".into(), "10".into())
        );
        assert_eq!(
            parse_key_value("NextToken=abc==").unwrap(),
            ("NextToken".into(), "abc==".into())
        );
        assert_eq!(
            parse_key_value("Name=").unwrap(),
            ("Name".into(), "".into())
        );
        assert!(parse_key_value("MaxResults").is_err());
        assert!(parse_key_value("=x").is_err());

        let p = plan_of(&[
            "call",
            "ListTrafficMirrorSessions",
            "MaxResults=10",
            "TrafficMirrorSourceIds.1=eth0",
        ]);
        assert_eq!(p.action, "ListTrafficMirrorSessions");
        assert_eq!(p.render, Render::Raw);
        assert_eq!(
            pairs(&p),
            [("MaxResults", "10"), ("TrafficMirrorSourceIds.1", "eth0")]
        );
    }
}
