//! Kubernetes label selectors (`matchLabels` and `matchExpressions`), as the API server
//! defines them: every requirement must hold; an empty selector matches everything.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::crd::Labels;

/// A selector the API server would refuse (an unknown operator, `In` without values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label selector: {0}")]
pub struct SelectorError(pub String);

/// Whether `labels` satisfy `selector`.
pub fn matches(selector: &LabelSelector, labels: &Labels) -> Result<bool, SelectorError> {
    if let Some(m) = &selector.match_labels
        && m.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return Ok(false);
    }
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(SelectorError(format!(
                    "{} {} needs values",
                    e.key, e.operator
                )));
            }
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => !have.is_some_and(|v| values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => {
                return Err(SelectorError(format!(
                    "unknown operator {other:?} for key {}",
                    e.key
                )));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn selectors_as_the_api_server_defines_them() {
        let pod = labels(&[("app", "payments"), ("tier", "web")]);
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!me.is_empty()).then_some(me),
        };
        let cases: Vec<(&str, LabelSelector, Result<bool, ()>)> = vec![
            ("empty matches all", sel(&[], vec![]), Ok(true)),
            (
                "matchLabels hit",
                sel(&[("app", "payments")], vec![]),
                Ok(true),
            ),
            (
                "matchLabels value differs",
                sel(&[("app", "web")], vec![]),
                Ok(false),
            ),
            (
                "matchLabels key missing",
                sel(&[("team", "a")], vec![]),
                Ok(false),
            ),
            (
                "all of matchLabels",
                sel(&[("app", "payments"), ("tier", "db")], vec![]),
                Ok(false),
            ),
            (
                "In",
                sel(&[], vec![expr("tier", "In", &["web", "db"])]),
                Ok(true),
            ),
            (
                "In, missing key",
                sel(&[], vec![expr("team", "In", &["a"])]),
                Ok(false),
            ),
            (
                "NotIn",
                sel(&[], vec![expr("tier", "NotIn", &["web"])]),
                Ok(false),
            ),
            (
                "NotIn, missing key",
                sel(&[], vec![expr("team", "NotIn", &["a"])]),
                Ok(true),
            ),
            (
                "Exists",
                sel(&[], vec![expr("app", "Exists", &[])]),
                Ok(true),
            ),
            (
                "DoesNotExist",
                sel(&[], vec![expr("app", "DoesNotExist", &[])]),
                Ok(false),
            ),
            (
                "labels and expressions both hold",
                sel(&[("app", "payments")], vec![expr("tier", "In", &["web"])]),
                Ok(true),
            ),
            (
                "In without values",
                sel(&[], vec![expr("tier", "In", &[])]),
                Err(()),
            ),
            (
                "unknown operator",
                sel(&[], vec![expr("tier", "Gt", &["1"])]),
                Err(()),
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(matches(&s, &pod).map_err(|_| ()), want, "{name}");
        }
    }
}
