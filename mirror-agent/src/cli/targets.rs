//! `target`: where mirrored packets go, a VXLAN endpoint or a local interface.

use serde_json::Value;

use super::{
    Plan, Render, TargetCommand,
    error::UsageError,
    params::Params,
    table::{cell, table},
};

pub(super) fn plan(command: TargetCommand) -> Result<Plan, UsageError> {
    Ok(match command {
        TargetCommand::Create(c) => {
            let mut p = Params::default();
            // clap's group enforces this for parsed command lines; checked again for callers
            // that build the struct themselves.
            match (&c.destination_ip, &c.instance_id) {
                (Some(_), Some(_)) => {
                    return Err(UsageError::TargetBothPlaces);
                }
                (None, None) => return Err(UsageError::TargetNoPlace),
                _ => {}
            }
            p.opt("InstanceType", c.instance_type.as_deref());
            p.opt("DestinationIp", c.destination_ip.as_deref());
            p.opt("DestinationPort", c.destination_port);
            p.opt("InstanceId", c.instance_id.as_deref());
            p.opt("TrafficMirrorTargetName", c.name.as_deref());
            p.opt("Description", c.description.as_deref());
            p.tags(&c.tags);
            p.mutation(&c.mutation);
            Plan::new(
                "CreateTrafficMirrorTarget",
                p,
                Render::Created("TrafficMirrorTargetId"),
            )
        }
        TargetCommand::List(list) => {
            Plan::list_by_ids("ListTrafficMirrorTargets", list, Render::Targets)
        }
        TargetCommand::Delete(target) => Plan::by_id("DeleteTrafficMirrorTarget", target),
    })
}

pub(super) fn render(targets: &[Value]) -> String {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            let destination = match (
                cell(t.get("DestinationIp")).as_str(),
                t.get("DestinationPort"),
            ) {
                ("-", _) => "-".to_string(),
                (ip, port) => {
                    let ip = if ip.contains(':') {
                        format!("[{ip}]")
                    } else {
                        ip.to_string()
                    };
                    match cell(port).as_str() {
                        "-" => ip,
                        port => format!("{ip}:{port}"),
                    }
                }
            };
            vec![
                cell(t.get("TrafficMirrorTargetId")),
                cell(t.get("TrafficMirrorTargetName")),
                cell(t.get("InstanceType")),
                cell(t.get("InstanceId")),
                destination,
                cell(t.get("Status")),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "TYPE", "INSTANCE", "DESTINATION", "STATUS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::render as render_targets;
    use serde_json::json;

    #[test]
    fn targets_table() {
        let items = [
            json!({"TrafficMirrorTargetId": "tmt-1", "TrafficMirrorTargetName": "c", "InstanceType": "NetworkInterface", "DestinationIp": "192.0.2.9", "DestinationPort": 4789, "Status": "Available"}),
            json!({"TrafficMirrorTargetId": "tmt-2", "InstanceType": "NetworkInterface", "InstanceId": "eth3", "Status": "Available"}),
            json!({"TrafficMirrorTargetId": "tmt-3", "DestinationIp": "2001:db8::1", "DestinationPort": 4789}),
        ];
        let expected = "\
ID     NAME  TYPE              INSTANCE  DESTINATION         STATUS
tmt-1  c     NetworkInterface  -         192.0.2.9:4789      Available
tmt-2  -     NetworkInterface  eth3      -                   Available
tmt-3  -     -                 -         [2001:db8::1]:4789  -
";
        assert_eq!(render_targets(&items), expected);
    }
}
