//! `receiver`: this node as a mirror target, VXLAN terminated into capture interfaces.

use serde_json::Value;

use super::{
    Plan, ReceiverCommand, Render,
    params::Params,
    table::{cell, table},
};

pub(super) fn plan(command: ReceiverCommand) -> Plan {
    match command {
        ReceiverCommand::Create {
            interface,
            vnis,
            port,
            name,
            description,
            tags,
            mutation,
        } => {
            let mut p = Params::default();
            p.set("NetworkInterfaceId", interface);
            let vnis: Vec<String> = vnis.iter().map(u32::to_string).collect();
            p.list("VirtualNetworkIds", &vnis);
            p.opt("DestinationPort", port);
            p.opt("TrafficMirrorReceiverName", name.as_deref());
            p.opt("Description", description.as_deref());
            p.tags(&tags);
            p.mutation(&mutation);
            Plan::new(
                "CreateTrafficMirrorReceiver",
                p,
                Render::Created("TrafficMirrorReceiverId"),
            )
        }
        ReceiverCommand::List(list) => {
            Plan::list_by_ids("ListTrafficMirrorReceivers", list, Render::Receivers)
        }
        ReceiverCommand::Delete(receiver) => Plan::by_id("DeleteTrafficMirrorReceiver", receiver),
    }
}

/// One row per served VNI, so each capture interface's counters are on their own line.
pub(super) fn render(receivers: &[Value]) -> String {
    let mut rows = Vec::new();
    for r in receivers {
        let captures = r
            .get("Captures")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in &captures {
            rows.push(vec![
                cell(r.get("TrafficMirrorReceiverId")),
                cell(r.get("NetworkInterfaceId")),
                cell(r.get("DestinationPort")),
                cell(r.get("XdpMode")),
                cell(c.get("VirtualNetworkId")),
                cell(c.get("CaptureInterface")),
                cell(c.get("Frames")),
                cell(c.get("Bytes")),
                format!(
                    "{}/{}/{}",
                    cell(c.get("Malformed")),
                    cell(c.get("NoCaptureInterface")),
                    cell(c.get("RedirectErrors"))
                ),
                cell(r.get("TrafficMirrorReceiverStatus")),
                cell(r.get("TrafficMirrorReceiverErrors")),
            ]);
        }
    }
    table(
        &[
            "ID",
            "INTERFACE",
            "PORT",
            "MODE",
            "VNI",
            "CAPTURE",
            "FRAMES",
            "BYTES",
            "MALFORMED/NO-CAPTURE/REDIRECT-ERR",
            "STATUS",
            "ERRORS",
        ],
        &rows,
    )
}
