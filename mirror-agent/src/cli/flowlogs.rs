//! `flowlog`: per-flow records of an interface, a subnet or the whole node.

use serde_json::Value;

use super::{
    FlowLog, FlowLogCommand, Plan, Render, Resource as _,
    error::UsageError,
    params::Params,
    table::{cell, table},
};

pub(super) fn plan(command: FlowLogCommand) -> Result<Plan, UsageError> {
    let mut p = Params::default();
    Ok(match command {
        FlowLogCommand::Create(c) => {
            p.set("FlowLogName", c.name);
            p.opt("Description", c.description.as_deref());
            p.set("ResourceType", c.resource_type);
            p.set("ResourceId", c.resource_id);
            p.set("TrafficType", c.traffic_type);
            p.set("LogProjectName", c.project);
            p.set("LogTopicName", c.topic);
            p.opt("AggregationInterval", c.interval);
            p.opt("AggregationIntervalSeconds", c.interval_seconds);
            p.opt("LogFormat", c.log_format.as_deref());
            p.tags(&c.tags);
            p.mutation(&c.mutation);
            Plan::new("CreateFlowLog", p, Render::Created("FlowLogId"))
        }
        FlowLogCommand::List { ids } => {
            p.list(FlowLog::IDS_PARAM, &ids);
            p.set("PageSize", "100".to_string());
            Plan::new("DescribeFlowLogs", p, Render::FlowLogs)
        }
        FlowLogCommand::Update {
            id,
            name,
            description,
            interval,
            log_format,
            mutation,
        } => {
            p.set("FlowLogId", id);
            p.opt("FlowLogName", name.as_deref());
            p.opt("Description", description.as_deref());
            p.opt("AggregationInterval", interval);
            p.opt("LogFormat", log_format.as_deref());
            Plan::update(
                "ModifyFlowLogAttribute",
                p,
                &mutation,
                "at least one attribute",
            )?
        }
        FlowLogCommand::Delete(log) => Plan::by_id("DeleteFlowLog", log),
        FlowLogCommand::Activate(log) => Plan::by_id("ActiveFlowLog", log),
        FlowLogCommand::Deactivate(log) => Plan::by_id("DeactiveFlowLog", log),
    })
}

pub(super) fn render(logs: &[Value]) -> String {
    let rows: Vec<Vec<String>> = logs
        .iter()
        .map(|f| {
            vec![
                cell(f.get("FlowLogId")),
                cell(f.get("FlowLogName")),
                format!(
                    "{}:{}",
                    cell(f.get("ResourceType")),
                    cell(f.get("ResourceId"))
                ),
                cell(f.get("TrafficType")),
                format!(
                    "{}/{}",
                    cell(f.get("LogProjectName")),
                    cell(f.get("LogTopicName"))
                ),
                cell(f.get("AggregationInterval")),
                cell(f.get("Status")),
                cell(f.get("Errors")),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "RESOURCE",
            "TRAFFIC",
            "PROJECT/TOPIC",
            "INTERVAL",
            "STATUS",
            "ERRORS",
        ],
        &rows,
    )
}
