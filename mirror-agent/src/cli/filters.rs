//! `filter`: mirror filters with their rules, and how a filter's rules are printed.

use serde_json::Value;

use super::{
    FilterCommand, Plan, Render,
    error::UsageError,
    params::Params,
    reply::str_field,
    table::{aligned_lines, cell, indented, sanitize},
};

pub(super) fn plan(command: FilterCommand) -> Result<Plan, UsageError> {
    let mut p = Params::default();
    Ok(match command {
        FilterCommand::Create(c) => {
            p.opt("TrafficMirrorFilterName", c.name.as_deref());
            p.opt("TrafficMirrorFilterDescription", c.description.as_deref());
            p.rules("IngressRules", &c.ingress);
            p.rules("EgressRules", &c.egress);
            p.tags(&c.tags);
            p.mutation(&c.mutation);
            Plan::new("CreateTrafficMirrorFilter", p, Render::FilterCreated)
        }
        FilterCommand::List(list) => {
            Plan::list_by_ids("ListTrafficMirrorFilters", list, Render::Filters)
        }
        FilterCommand::Update {
            id,
            name,
            description,
            mutation,
        } => {
            p.set("TrafficMirrorFilterId", id);
            p.opt("TrafficMirrorFilterName", name.as_deref());
            p.opt("TrafficMirrorFilterDescription", description.as_deref());
            Plan::update(
                "UpdateTrafficMirrorFilterAttribute",
                p,
                &mutation,
                "--name or --description",
            )?
        }
        FilterCommand::Delete(filter) => Plan::by_id("DeleteTrafficMirrorFilter", filter),
    })
}

/// `IngressRules: [{InstanceId}]` and `EgressRules` of a create answer, one line per rule.
pub(super) fn created_rules(json: &Value, indent: &str) -> String {
    let mut rows = Vec::new();
    for (field, direction) in [("IngressRules", "ingress"), ("EgressRules", "egress")] {
        for rule in json
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = match rule {
                Value::String(s) => s.as_str(),
                other => str_field(other, "InstanceId")
                    .or_else(|| str_field(other, "TrafficMirrorFilterRuleId"))
                    .unwrap_or("-"),
            };
            rows.push(vec![direction.to_string(), sanitize(id)]);
        }
    }
    indented(indent, &aligned_lines(None, &rows))
}

pub(super) fn render(filters: &[Value]) -> String {
    const FILTER_HEADERS: [&str; 5] = ["ID", "NAME", "INGRESS", "EGRESS", "STATUS"];
    const RULE_HEADERS: [&str; 9] = [
        "RULE-ID",
        "DIRECTION",
        "PRIORITY",
        "ACTION",
        "PROTOCOL",
        "SRC",
        "DST",
        "SRC-PORTS",
        "DST-PORTS",
    ];
    let rules_of = |f: &Value, field: &str| -> Vec<Value> {
        f.get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut filter_rows = Vec::new();
    let mut rule_rows: Vec<Vec<Vec<String>>> = Vec::new();
    for f in filters {
        let ingress = rules_of(f, "IngressRules");
        let egress = rules_of(f, "EgressRules");
        filter_rows.push(vec![
            cell(f.get("TrafficMirrorFilterId")),
            cell(f.get("TrafficMirrorFilterName")),
            ingress.len().to_string(),
            egress.len().to_string(),
            cell(f.get("TrafficMirrorFilterStatus")),
        ]);
        let rows = [("ingress", &ingress), ("egress", &egress)]
            .into_iter()
            .flat_map(|(direction, rules)| {
                rules.iter().map(move |r| {
                    let dir = match cell(r.get("TrafficDirection")).as_str() {
                        "-" => direction.to_string(),
                        d => d.to_string(),
                    };
                    vec![
                        cell(r.get("TrafficMirrorFilterRuleId")),
                        dir,
                        cell(r.get("Priority")),
                        cell(r.get("Action")),
                        cell(r.get("Protocol")),
                        cell(r.get("SourceCidrBlock")),
                        cell(r.get("DestinationCidrBlock")),
                        cell(r.get("SourcePortRange")),
                        cell(r.get("DestinationPortRange")),
                    ]
                })
            })
            .collect();
        rule_rows.push(rows);
    }
    // One width per column across all filters, and one across all rules, so every block
    // lines up with the others: two grids, whose lines are then interleaved.
    let filter_lines = aligned_lines(Some(&FILTER_HEADERS), &filter_rows);
    let all_rules: Vec<Vec<String>> = rule_rows.iter().flatten().cloned().collect();
    let rule_lines = aligned_lines(Some(&RULE_HEADERS), &all_rules);
    let (rule_header, mut rule_lines) = match rule_lines.split_first() {
        Some((header, rest)) => (header.as_str(), rest.iter()),
        None => ("", [].iter()),
    };
    let mut filter_lines = filter_lines.iter();
    let mut s = filter_lines
        .next()
        .map(|header| format!("{header}\n"))
        .unwrap_or_default();
    for (row, rules) in filter_lines.zip(&rule_rows) {
        s.push_str(&format!("{row}\n"));
        if !rules.is_empty() {
            s.push_str(&format!("  {rule_header}\n"));
            for line in rule_lines.by_ref().take(rules.len()) {
                s.push_str(&format!("  {line}\n"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::render as render_filters;
    use crate::cli::params::parse_rule_spec;
    use crate::cli::tests::{TestCli, pairs, plan_of};
    use clap::Parser as _;
    use serde_json::json;

    #[test]
    fn rule_spec_parsing() {
        let spec = parse_rule_spec(
            "priority=1,action=accept,protocol=TCP,ip-version=IPv4,src=10.0.0.0/8,dst=0.0.0.0/0,src-ports=-1/-1,dst-ports=80/80",
        )
        .unwrap();
        assert_eq!(
            spec.0,
            [
                ("Priority", "1".to_string()),
                ("Action", "accept".to_string()),
                ("Protocol", "TCP".to_string()),
                ("IpVersion", "IPv4".to_string()),
                ("SourceCidrBlock", "10.0.0.0/8".to_string()),
                ("DestinationCidrBlock", "0.0.0.0/0".to_string()),
                ("SourcePortRange", "-1/-1".to_string()),
                ("DestinationPortRange", "80/80".to_string()),
            ]
        );
        assert!(
            parse_rule_spec("priority=1,port=80")
                .unwrap_err()
                .to_string()
                .contains("unknown key")
        );
        assert!(
            parse_rule_spec("priority=1,priority=2")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(
            parse_rule_spec("priority")
                .unwrap_err()
                .to_string()
                .contains("not key=value")
        );
        assert!(
            parse_rule_spec("priority=")
                .unwrap_err()
                .to_string()
                .contains("no value")
        );

        let p = plan_of(&[
            "filter",
            "create",
            "--name",
            "web",
            "--ingress",
            "priority=1,action=accept,protocol=TCP,dst-ports=80/80",
            "--ingress",
            "priority=2,action=reject,protocol=ALL",
            "--egress",
            "priority=1,action=accept,protocol=UDP,src=192.0.2.0/24",
            "--tag",
            "team=net",
        ]);
        assert_eq!(p.action, "CreateTrafficMirrorFilter");
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorFilterName", "web"),
                ("IngressRules.1.Priority", "1"),
                ("IngressRules.1.Action", "accept"),
                ("IngressRules.1.Protocol", "TCP"),
                ("IngressRules.1.DestinationPortRange", "80/80"),
                ("IngressRules.2.Priority", "2"),
                ("IngressRules.2.Action", "reject"),
                ("IngressRules.2.Protocol", "ALL"),
                ("EgressRules.1.Priority", "1"),
                ("EgressRules.1.Action", "accept"),
                ("EgressRules.1.Protocol", "UDP"),
                ("EgressRules.1.SourceCidrBlock", "192.0.2.0/24"),
                ("Tags.1.Key", "team"),
                ("Tags.1.Value", "net"),
            ]
        );
        // A bad RULE is rejected by clap, before anything is sent.
        assert!(TestCli::try_parse_from(["m", "filter", "create", "--ingress", "prio=1"]).is_err());
    }

    #[test]
    fn filters_table() {
        let answer = json!({
            "RequestId": "REQ-2",
            "TotalCount": 2,
            "TrafficMirrorFilters": [
                {
                    "TrafficMirrorFilterId": "tmf-1",
                    "TrafficMirrorFilterName": "web",
                    "TrafficMirrorFilterStatus": "Created",
                    "IngressRules": [{
                        "TrafficMirrorFilterRuleId": "tmr-1",
                        "TrafficMirrorFilterId": "tmf-1",
                        "TrafficDirection": "ingress",
                        "Priority": 1,
                        "Action": "accept",
                        "Protocol": "TCP",
                        "IpVersion": "IPv4",
                        "SourceCidrBlock": "0.0.0.0/0",
                        "DestinationCidrBlock": "10.0.0.0/8",
                        "SourcePortRange": "-1/-1",
                        "DestinationPortRange": "80/80",
                        "TrafficMirrorFilterRuleStatus": "Created"
                    }],
                    "EgressRules": [{
                        "TrafficMirrorFilterRuleId": "tmr-2",
                        "TrafficDirection": "egress",
                        "Priority": 10,
                        "Action": "drop",
                        "Protocol": "ALL",
                        "SourceCidrBlock": "0.0.0.0/0",
                        "DestinationCidrBlock": "0.0.0.0/0",
                        "SourcePortRange": "-1/-1",
                        "DestinationPortRange": "-1/-1"
                    }],
                    "Tags": []
                },
                {
                    "TrafficMirrorFilterId": "tmf-22",
                    "TrafficMirrorFilterStatus": "Created",
                    "IngressRules": [],
                    "EgressRules": []
                }
            ]
        });
        let items = answer["TrafficMirrorFilters"].as_array().unwrap();
        let expected = "\
ID      NAME  INGRESS  EGRESS  STATUS
tmf-1   web   1        1       Created
  RULE-ID  DIRECTION  PRIORITY  ACTION  PROTOCOL  SRC        DST         SRC-PORTS  DST-PORTS
  tmr-1    ingress    1         accept  TCP       0.0.0.0/0  10.0.0.0/8  -1/-1      80/80
  tmr-2    egress     10        drop    ALL       0.0.0.0/0  0.0.0.0/0   -1/-1      -1/-1
tmf-22  -     0        0       Created
";
        assert_eq!(render_filters(items), expected);
    }
}
