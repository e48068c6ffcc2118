//! `rule`: one filter's rules, added, changed and deleted one by one.

use super::{
    Plan, Render, RuleAction, RuleCommand,
    error::UsageError,
    params::{Params, RuleSpec},
};

pub(super) fn plan(command: RuleCommand) -> Result<Plan, UsageError> {
    let mut p = Params::default();
    Ok(match command {
        RuleCommand::Add(c) => {
            let mut rule = vec![
                ("Priority", c.priority.to_string()),
                ("Action", c.action.as_str().to_string()),
            ];
            let optional = [
                ("Protocol", c.protocol),
                ("IpVersion", c.ip_version),
                ("SourceCidrBlock", c.src),
                ("DestinationCidrBlock", c.dst),
                ("SourcePortRange", c.src_ports),
                ("DestinationPortRange", c.dst_ports),
            ];
            rule.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
            p.set("TrafficMirrorFilterId", c.filter);
            p.rules(c.direction.list_param(), &[RuleSpec(rule)]);
            p.mutation(&c.mutation);
            Plan::new("CreateTrafficMirrorFilterRules", p, Render::RulesCreated)
        }
        RuleCommand::Update(c) => {
            p.set("TrafficMirrorFilterRuleId", c.rule);
            p.opt("Priority", c.priority);
            p.opt("RuleAction", c.action.map(RuleAction::as_str));
            p.opt("Protocol", c.protocol.as_deref());
            p.opt("SourceCidrBlock", c.src.as_deref());
            p.opt("DestinationCidrBlock", c.dst.as_deref());
            p.opt("SourcePortRange", c.src_ports.as_deref());
            p.opt("DestinationPortRange", c.dst_ports.as_deref());
            Plan::update(
                "UpdateTrafficMirrorFilterRuleAttribute",
                p,
                &c.mutation,
                "at least one attribute",
            )?
        }
        RuleCommand::Delete {
            filter,
            rules,
            mutation,
        } => {
            p.set("TrafficMirrorFilterId", filter);
            p.list("TrafficMirrorFilterRuleIds", &rules);
            p.mutation(&mutation);
            Plan::new("DeleteTrafficMirrorFilterRules", p, Render::Done)
        }
    })
}
