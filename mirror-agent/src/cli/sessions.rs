//! `session`: which sources are mirrored, through which filter, to which target.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    Plan, Render, Resource as _, Session, SessionCommand, SessionSources,
    error::UsageError,
    params::Params,
    table::{cell, table},
};

pub(super) fn plan(command: SessionCommand) -> Result<Plan, UsageError> {
    let mut p = Params::default();
    Ok(match command {
        SessionCommand::Create(c) => {
            p.opt("TrafficMirrorSessionName", c.name.as_deref());
            p.opt("TrafficMirrorSessionDescription", c.description.as_deref());
            p.set("Priority", c.priority.to_string());
            p.opt("VirtualNetworkId", c.vni);
            p.opt("PacketLength", c.packet_length);
            p.opt("Enabled", c.enabled);
            p.set("TrafficMirrorFilterId", c.filter);
            p.set("TrafficMirrorTargetId", c.target);
            p.list("TrafficMirrorSourceIds", &c.sources);
            p.tags(&c.tags);
            p.budget(&c.budget);
            p.mutation(&c.mutation);
            Plan::new(
                "CreateTrafficMirrorSession",
                p,
                Render::Created("TrafficMirrorSessionId"),
            )
        }
        SessionCommand::List(c) => {
            p.list(Session::IDS_PARAM, &c.ids);
            p.opt("TrafficMirrorSessionName", c.name.as_deref());
            p.opt("TrafficMirrorSourceId", c.source.as_deref());
            p.opt("TrafficMirrorFilterId", c.filter.as_deref());
            p.opt("TrafficMirrorTargetId", c.target.as_deref());
            p.paging(&c.paging);
            Plan::list("ListTrafficMirrorSessions", p, Render::Sessions, &c.paging)
        }
        SessionCommand::Update(c) => {
            p.set("TrafficMirrorSessionId", c.id);
            p.opt("TrafficMirrorSessionName", c.name.as_deref());
            p.opt("TrafficMirrorSessionDescription", c.description.as_deref());
            p.opt("Priority", c.priority);
            p.opt("VirtualNetworkId", c.vni);
            p.opt("PacketLength", c.packet_length);
            p.opt("Enabled", c.enabled);
            p.opt("TrafficMirrorFilterId", c.filter.as_deref());
            p.opt("TrafficMirrorTargetId", c.target.as_deref());
            p.budget(&c.budget);
            Plan::update(
                "UpdateTrafficMirrorSessionAttribute",
                p,
                &c.mutation,
                "at least one attribute",
            )?
        }
        SessionCommand::Delete(session) => Plan::by_id("DeleteTrafficMirrorSession", session),
        SessionCommand::AddSources(c) => sources("AddSourcesToTrafficMirrorSession", c),
        SessionCommand::RemoveSources(c) => sources("RemoveSourcesFromTrafficMirrorSession", c),
    })
}

fn sources(action: &str, c: SessionSources) -> Plan {
    let mut p = Params::default();
    p.set("TrafficMirrorSessionId", c.id);
    p.list("TrafficMirrorSourceIds", &c.sources);
    p.mutation(&c.mutation);
    Plan::new(action, p, Render::Done)
}

pub(super) fn render(sessions: &[Value]) -> String {
    let has_errors = sessions.iter().any(|s| {
        s.get("TrafficMirrorSessionErrors")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty())
    });
    let mut headers = vec![
        "ID", "NAME", "PRIORITY", "VNI", "PKT-LEN", "ENABLED", "FILTER", "TARGET", "SOURCES",
        "STATUS", "PATH",
    ];
    // Budget columns only where a session has a budget or sampling, or skipped something.
    let has_budget = sessions
        .iter()
        .any(|s| budget_cell(s) != "-" || skipped_cell(s) != "-");
    if has_budget {
        headers.extend(["BUDGET", "SKIPPED"]);
    }
    if has_errors {
        headers.push("ERRORS");
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let mut row: Vec<String> = [
                "TrafficMirrorSessionId",
                "TrafficMirrorSessionName",
                "Priority",
                "VirtualNetworkId",
                "PacketLength",
                "Enabled",
                "TrafficMirrorFilterId",
                "TrafficMirrorTargetId",
                "TrafficMirrorSourceIds",
                "TrafficMirrorSessionStatus",
                "CopyPath",
            ]
            .iter()
            .map(|f| cell(s.get(*f)))
            .collect();
            if has_budget {
                row.push(budget_cell(s));
                row.push(skipped_cell(s));
            }
            if has_errors {
                let errors = s
                    .get("TrafficMirrorSessionErrors")
                    .and_then(Value::as_array)
                    .map(|e| {
                        e.iter()
                            .map(|x| cell(Some(x)))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "-".to_string());
                row.push(errors);
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

/// `10000pps,1000000bps,1/100flow`, or `-` for a session that mirrors everything it matches.
fn budget_cell(s: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(n) = s.get("MaxPacketsPerSecond").and_then(Value::as_u64) {
        parts.push(format!("{n}pps"));
    }
    if let Some(n) = s.get("MaxBitsPerSecond").and_then(Value::as_u64) {
        parts.push(format!("{n}bps"));
    }
    if let Some(n) = s
        .get("SampleOneIn")
        .and_then(Value::as_u64)
        .filter(|n| *n > 1)
    {
        let mode = s
            .get("SampleMode")
            .and_then(Value::as_str)
            .unwrap_or("packet");
        parts.push(format!("1/{n}{mode}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// Skipped packets by reason, both directions together: `budget_packets=12,sampled_out=3`.
fn skipped_cell(s: &Value) -> String {
    let Some(dirs) = s.get("SkippedPackets").and_then(Value::as_object) else {
        return "-".into();
    };
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for reasons in dirs.values().filter_map(Value::as_object) {
        for (reason, n) in reasons {
            *totals.entry(reason.as_str()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    let parts: Vec<String> = totals
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::render as render_sessions;
    use crate::cli::{
        Render, plan,
        tests::{TestCli, pairs, parse, plan_of, sample_sessions},
    };
    use clap::Parser as _;
    use serde_json::json;

    #[test]
    fn session_create_params() {
        let p = plan_of(&[
            "session",
            "create",
            "--priority",
            "1",
            "--filter",
            "tmf-1",
            "--target",
            "tmt-1",
            "--vni",
            "42",
            "--packet-length",
            "128",
            "--enabled",
            "--name",
            "web",
            "--description",
            "a=b",
            "--source",
            "eth0",
            "--source",
            "eth1",
            "--tag",
            "env=prod=1",
            "--tag",
            "bare",
            "--max-packets-per-second",
            "10000",
            "--sample-one-in",
            "100",
            "--sample-mode",
            "flow",
            "--client-token",
            "tok-1",
            "--dry-run",
        ]);
        assert_eq!(p.action, "CreateTrafficMirrorSession");
        assert_eq!(p.render, Render::Created("TrafficMirrorSessionId"));
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorSessionName", "web"),
                ("TrafficMirrorSessionDescription", "a=b"),
                ("Priority", "1"),
                ("VirtualNetworkId", "42"),
                ("PacketLength", "128"),
                ("Enabled", "true"),
                ("TrafficMirrorFilterId", "tmf-1"),
                ("TrafficMirrorTargetId", "tmt-1"),
                ("TrafficMirrorSourceIds.1", "eth0"),
                ("TrafficMirrorSourceIds.2", "eth1"),
                ("Tags.1.Key", "env"),
                ("Tags.1.Value", "prod=1"),
                ("Tags.2.Key", "bare"),
                ("MaxPacketsPerSecond", "10000"),
                ("SampleOneIn", "100"),
                ("SampleMode", "flow"),
                ("ClientToken", "tok-1"),
                ("DryRun", "true"),
            ]
        );

        let minimal = plan_of(&[
            "session",
            "create",
            "--priority",
            "3",
            "--filter",
            "tmf-1",
            "--target",
            "tmt-1",
            "--enabled=false",
        ]);
        assert_eq!(
            pairs(&minimal),
            [
                ("Priority", "3"),
                ("Enabled", "false"),
                ("TrafficMirrorFilterId", "tmf-1"),
                ("TrafficMirrorTargetId", "tmt-1"),
            ]
        );
        assert!(TestCli::try_parse_from(["m", "session", "create", "--priority", "1"]).is_err());
    }

    #[test]
    fn session_update_params() {
        let p = plan_of(&[
            "session",
            "update",
            "tms-1",
            "--priority",
            "2",
            "--vni",
            "7",
            "--packet-length",
            "64",
            "--enabled",
            "false",
            "--name",
            "n",
            "--description",
            "d",
            "--filter",
            "tmf-2",
            "--target",
            "tmt-2",
            "--client-token",
            "t",
        ]);
        assert_eq!(p.action, "UpdateTrafficMirrorSessionAttribute");
        assert_eq!(p.render, Render::Done);
        assert_eq!(
            pairs(&p),
            [
                ("TrafficMirrorSessionId", "tms-1"),
                ("TrafficMirrorSessionName", "n"),
                ("TrafficMirrorSessionDescription", "d"),
                ("Priority", "2"),
                ("VirtualNetworkId", "7"),
                ("PacketLength", "64"),
                ("Enabled", "false"),
                ("TrafficMirrorFilterId", "tmf-2"),
                ("TrafficMirrorTargetId", "tmt-2"),
                ("ClientToken", "t"),
            ]
        );
        assert!(plan(parse(&["session", "update", "tms-1", "--dry-run"]).command).is_err());
    }

    #[test]
    fn sessions_table() {
        let answer = sample_sessions();
        let items = answer["TrafficMirrorSessions"].as_array().unwrap();
        let expected = "\
ID          NAME  PRIORITY  VNI  PKT-LEN  ENABLED  FILTER  TARGET  SOURCES    STATUS   PATH  ERRORS
tms-aaa     web   1         100  128      true     tmf-1   tmt-1   eth0,eth1  Created  fast  -
tms-bbbbbb  -     20        7    -        false    tmf-2   tmt-2   veth9      Created  -     veth9: no such interface
";
        assert_eq!(render_sessions(items), expected);
        // Without errors anywhere, no ERRORS column.
        let first = render_sessions(&items[..1]);
        assert_eq!(
            first.lines().next().unwrap().split_whitespace().last(),
            Some("PATH")
        );
        assert_eq!(
            render_sessions(&[]),
            "ID  NAME  PRIORITY  VNI  PKT-LEN  ENABLED  FILTER  TARGET  SOURCES  STATUS  PATH\n"
        );
    }

    #[test]
    fn sessions_table_shows_budgets_and_skips() {
        let mut answer = sample_sessions();
        answer["TrafficMirrorSessions"][0]["MaxPacketsPerSecond"] = json!(10000);
        answer["TrafficMirrorSessions"][0]["SampleOneIn"] = json!(100);
        answer["TrafficMirrorSessions"][0]["SampleMode"] = json!("flow");
        answer["TrafficMirrorSessions"][0]["SkippedPackets"] = json!({
            "Ingress": {"budget_packets": 5, "budget_bits": 0, "sampled_out": 7, "send_errors": 0},
            "Egress": {"budget_packets": 1, "budget_bits": 0, "sampled_out": 0, "send_errors": 0},
        });
        let items = answer["TrafficMirrorSessions"].as_array().unwrap();
        let out = render_sessions(items);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert!(header.ends_with(&["PATH", "BUDGET", "SKIPPED", "ERRORS"]));
        let first: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert!(first.contains(&"10000pps,1/100flow"), "{first:?}");
        assert!(
            first.contains(&"budget_packets=6,sampled_out=7"),
            "{first:?}"
        );
    }
}
