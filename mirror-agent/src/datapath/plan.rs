//! What an apply does, decided from the desired objects and what the data path holds, without
//! touching the kernel (`apply` performs the steps).
//!
//! The order is what keeps the programs from ever seeing a dangling slot: devices and maps are
//! written before a source refers to them, sources stop referring to sessions before the
//! sessions' slots are zeroed, and devices go only once no session sends through them.
//!
//! Objects that stay are written again on every apply: their map entries also depend on what
//! `desired` does not say (next hops, path MTU, interfaces re-created under the same name),
//! which is why `next_hops_changed` triggers an apply with unchanged objects.
//!
//! Whether a session can be placed (its filter has a slot, its tunnel device exists, the map
//! has room) is known only while applying; the steps that depend on it say so
//! (`unless_placed`, `unless_any_placed`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::config::Objects;

/// What the data path holds when an apply starts.
#[derive(Debug, Default, Clone)]
pub(super) struct Current {
    /// Sessions, filters and rules with a slot.
    pub sessions: BTreeSet<String>,
    pub filters: BTreeSet<String>,
    pub rules: BTreeSet<String>,
    /// Interfaces with the source programs attached.
    pub sources: BTreeSet<String>,
    /// Ports with a tunnel device of ours.
    pub tunnels: BTreeSet<u16>,
}

/// One step of an apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    /// The tunnel device for a port some session's target uses, `mirror_encap` on it.
    EnsureTunnel(u16),
    /// The segmentation pair, `mirror_segment` on its peer.
    EnsureSegment,
    /// The next hop toward a target's address (each address once).
    ResolveNextHop(IpAddr),
    /// Rule id → filter id, the labels of the rules' metrics.
    LabelRules(BTreeMap<String, String>),
    /// A filter's slot and map entry; `new_rules` get a slot whose counters start from zero.
    WriteFilter {
        id: String,
        new_rules: Vec<String>,
    },
    /// A session's slot and map entry; a `new` one starts with zeroed counters and budget.
    WriteSession {
        id: String,
        new: bool,
    },
    /// A source's map entry (the placed ones of `sessions`, in that order), then its programs
    /// if not attached yet. Without a placed session and without a flow log it is no source.
    WriteSource {
        ifname: String,
        sessions: Vec<String>,
        flow_log: bool,
    },
    /// Detaches a source, unless one of these sessions was placed (then it is still a source).
    DetachSource {
        ifname: String,
        unless_any_placed: Vec<String>,
    },
    /// Releases a session's slot and zeroes its entry; `unless_placed` for a declared session,
    /// which keeps its slot when it was placed.
    ReleaseSession {
        id: String,
        unless_placed: bool,
    },
    ReleaseFilter(String),
    ReleaseRule(String),
    /// Detaches `mirror_encap` and deletes the tunnel device.
    RemoveTunnel(u16),
    /// Detaches `mirror_tx` from the uplinks no placed session sends through.
    RetireUplinks,
    /// Makes the next hops and copy paths found by this apply the current ones.
    PublishPaths,
    /// Attaches the drop tracepoint when a flow log wants it, detaches it otherwise.
    SyncDropAccounting(bool),
    /// The receiving side (XDP programs and capture interfaces).
    ApplyReceivers,
    /// Saves the slot tables and links for the next agent.
    Save,
}

/// The steps reconciling `current` to `desired`, in the order they must run.
pub(super) fn plan(desired: &Objects, current: &Current) -> Vec<Op> {
    let mut ops = Vec::new();
    let target_port: BTreeMap<&str, u16> = desired
        .targets
        .iter()
        .map(|t| (t.id.as_str(), t.destination_port))
        .collect();

    // Devices and next hops first: session entries carry their indexes and addresses.
    let ports: BTreeSet<u16> = desired
        .sessions
        .iter()
        .filter_map(|s| target_port.get(s.target_id.as_str()).copied())
        .collect();
    ops.extend(ports.iter().map(|&p| Op::EnsureTunnel(p)));
    ops.push(Op::EnsureSegment);
    let mut resolved = BTreeSet::new();
    for t in &desired.targets {
        if resolved.insert(t.destination_ip) {
            ops.push(Op::ResolveNextHop(t.destination_ip));
        }
    }

    // Filters before the sessions that refer to their slots.
    ops.push(Op::LabelRules(
        desired
            .filters
            .iter()
            .flat_map(|f| f.rules.iter().map(|r| (r.id.clone(), f.id.clone())))
            .collect(),
    ));
    let mut rules_seen: BTreeSet<&str> = BTreeSet::new();
    for f in &desired.filters {
        let new_rules = f
            .rules
            .iter()
            .map(|r| r.id.as_str())
            .filter(|id| !current.rules.contains(*id) && rules_seen.insert(id))
            .map(str::to_string)
            .collect();
        ops.push(Op::WriteFilter {
            id: f.id.clone(),
            new_rules,
        });
    }

    // Sessions before the sources that refer to their slots.
    for s in &desired.sessions {
        ops.push(Op::WriteSession {
            id: s.id.clone(),
            new: !current.sessions.contains(&s.id),
        });
    }

    // Each interface's sessions in ascending priority; flow-logged interfaces get the programs
    // too, for the flow table.
    let mut by_source: BTreeMap<&str, Vec<&crate::model::Session>> = BTreeMap::new();
    for s in &desired.sessions {
        for src in &s.sources {
            by_source.entry(src.as_str()).or_default().push(s);
        }
    }
    let flow_logged: BTreeSet<&str> = desired.flow_interfaces.iter().map(String::as_str).collect();
    for ifname in &flow_logged {
        by_source.entry(ifname).or_default();
    }
    for (ifname, sessions) in by_source.iter_mut() {
        sessions.sort_by_key(|s| s.priority);
        ops.push(Op::WriteSource {
            ifname: ifname.to_string(),
            sessions: sessions.iter().map(|s| s.id.clone()).collect(),
            flow_log: flow_logged.contains(*ifname),
        });
    }

    // Removals once nothing refers to what goes: sources, then slots, then devices.
    for ifname in &current.sources {
        if flow_logged.contains(ifname.as_str()) {
            continue;
        }
        ops.push(Op::DetachSource {
            ifname: ifname.clone(),
            unless_any_placed: by_source
                .get(ifname.as_str())
                .map(|ss| ss.iter().map(|s| s.id.clone()).collect())
                .unwrap_or_default(),
        });
    }
    let declared: BTreeSet<&str> = desired.sessions.iter().map(|s| s.id.as_str()).collect();
    for id in &current.sessions {
        ops.push(Op::ReleaseSession {
            id: id.clone(),
            unless_placed: declared.contains(id.as_str()),
        });
    }
    ops.extend(
        undeclared(
            &current.filters,
            desired.filters.iter().map(|f| f.id.as_str()),
        )
        .into_iter()
        .map(Op::ReleaseFilter),
    );
    let rules = desired
        .filters
        .iter()
        .flat_map(|f| f.rules.iter().map(|r| r.id.as_str()));
    ops.extend(
        undeclared(&current.rules, rules)
            .into_iter()
            .map(Op::ReleaseRule),
    );
    ops.extend(
        current
            .tunnels
            .iter()
            .filter(|p| !ports.contains(p))
            .map(|&p| Op::RemoveTunnel(p)),
    );
    ops.push(Op::RetireUplinks);
    ops.push(Op::PublishPaths);
    ops.push(Op::SyncDropAccounting(!desired.flow_interfaces.is_empty()));
    ops.push(Op::ApplyReceivers);
    ops.push(Op::Save);
    ops
}

/// The ids `held` that are not `declared`, in order.
fn undeclared<'a>(held: &BTreeSet<String>, declared: impl Iterator<Item = &'a str>) -> Vec<String> {
    let declared: BTreeSet<&str> = declared.collect();
    held.iter()
        .filter(|id| !declared.contains(id.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Budget, Filter, FilterRule, RuleSpec, Session, Target};

    fn target(id: &str, ip: &str, port: u16) -> Target {
        Target {
            id: id.into(),
            destination_ip: ip.parse().expect("test address"),
            destination_port: port,
        }
    }

    fn filter(id: &str, rules: &[&str]) -> Filter {
        Filter {
            id: id.into(),
            rules: rules
                .iter()
                .map(|r| {
                    FilterRule::from_spec(&RuleSpec {
                        id: r,
                        direction: "ingress",
                        priority: 1,
                        action: "accept",
                        protocol: "TCP",
                        ..Default::default()
                    })
                    .expect("valid test rule")
                })
                .collect(),
        }
    }

    fn session(id: &str, priority: u16, filter: &str, target: &str, sources: &[&str]) -> Session {
        Session {
            id: id.into(),
            priority,
            vni: 1,
            packet_length: None,
            enabled: true,
            filter_id: filter.into(),
            target_id: target.into(),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            budget: Budget::default(),
        }
    }

    fn set<T: Ord + Clone>(items: &[T]) -> BTreeSet<T> {
        items.iter().cloned().collect()
    }

    fn strings(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// One session s1 on eth0 through filter f1 (rule r1) to t1 (port 4789).
    fn one_session() -> Objects {
        Objects {
            targets: vec![target("t1", "198.18.0.2", 4789)],
            filters: vec![filter("f1", &["r1"])],
            sessions: vec![session("s1", 1, "f1", "t1", &["eth0"])],
            ..Default::default()
        }
    }

    /// What the data path holds once `one_session` is applied.
    fn one_session_applied() -> Current {
        Current {
            sessions: strings(&["s1"]),
            filters: strings(&["f1"]),
            rules: strings(&["r1"]),
            sources: strings(&["eth0"]),
            tunnels: set(&[4789]),
        }
    }

    fn write_source(ifname: &str, sessions: &[&str], flow_log: bool) -> Op {
        Op::WriteSource {
            ifname: ifname.into(),
            sessions: sessions.iter().map(|s| s.to_string()).collect(),
            flow_log,
        }
    }

    const TAIL: [Op; 5] = [
        Op::RetireUplinks,
        Op::PublishPaths,
        Op::SyncDropAccounting(false),
        Op::ApplyReceivers,
        Op::Save,
    ];

    fn labels(pairs: &[(&str, &str)]) -> Op {
        Op::LabelRules(
            pairs
                .iter()
                .map(|(r, f)| (r.to_string(), f.to_string()))
                .collect(),
        )
    }

    /// Steps that add or remove something, for a plan where every session is placed (the
    /// conditional removals then do nothing).
    fn changes(ops: &[Op]) -> Vec<&Op> {
        ops.iter()
            .filter(|op| match op {
                Op::WriteFilter { new_rules, .. } => !new_rules.is_empty(),
                Op::WriteSession { new, .. } => *new,
                Op::DetachSource {
                    unless_any_placed, ..
                } => unless_any_placed.is_empty(),
                Op::ReleaseSession { unless_placed, .. } => !unless_placed,
                Op::ReleaseFilter(_) | Op::ReleaseRule(_) | Op::RemoveTunnel(_) => true,
                _ => false,
            })
            .collect()
    }

    fn position(ops: &[Op], want: impl Fn(&Op) -> bool) -> usize {
        ops.iter()
            .position(want)
            .unwrap_or_else(|| panic!("no such step in {ops:#?}"))
    }

    #[test]
    fn nothing_to_do_when_nothing_is_declared_or_held() {
        let ops = plan(&Objects::default(), &Current::default());
        let mut want = vec![Op::EnsureSegment, labels(&[])];
        want.extend(TAIL);
        assert_eq!(ops, want);
    }

    #[test]
    fn adding_a_session_writes_everything_before_the_source_refers_to_it() {
        let ops = plan(&one_session(), &Current::default());
        let mut want = vec![
            Op::EnsureTunnel(4789),
            Op::EnsureSegment,
            Op::ResolveNextHop("198.18.0.2".parse().expect("address")),
            labels(&[("r1", "f1")]),
            Op::WriteFilter {
                id: "f1".into(),
                new_rules: vec!["r1".into()],
            },
            Op::WriteSession {
                id: "s1".into(),
                new: true,
            },
            write_source("eth0", &["s1"], false),
        ];
        want.extend(TAIL);
        assert_eq!(ops, want);
    }

    #[test]
    fn nothing_changed_rewrites_but_adds_and_removes_nothing() {
        let ops = plan(&one_session(), &one_session_applied());
        assert_eq!(changes(&ops), Vec::<&Op>::new());
        // What stays is rewritten: its entries follow next hops and MTU, which `desired` does
        // not carry.
        assert!(ops.contains(&Op::WriteSession {
            id: "s1".into(),
            new: false
        }));
        assert!(ops.contains(&write_source("eth0", &["s1"], false)));
    }

    #[test]
    fn removing_everything_detaches_before_releasing_and_devices_go_last() {
        let ops = plan(&Objects::default(), &one_session_applied());
        let mut want = vec![
            Op::EnsureSegment,
            labels(&[]),
            Op::DetachSource {
                ifname: "eth0".into(),
                unless_any_placed: vec![],
            },
            Op::ReleaseSession {
                id: "s1".into(),
                unless_placed: false,
            },
            Op::ReleaseFilter("f1".into()),
            Op::ReleaseRule("r1".into()),
            Op::RemoveTunnel(4789),
        ];
        want.extend(TAIL);
        assert_eq!(ops, want);
    }

    #[test]
    fn table_of_changes() {
        struct Case {
            name: &'static str,
            desired: Objects,
            current: Current,
            changes: Vec<Op>,
        }
        let mut two_rules = one_session();
        two_rules.filters = vec![filter("f1", &["r1", "r2"])];
        let mut rule_removed = one_session();
        rule_removed.filters = vec![filter("f1", &[])];
        let mut filter_swapped = one_session();
        filter_swapped.filters = vec![filter("f2", &["r1"])];
        filter_swapped.sessions[0].filter_id = "f2".into();
        let mut port_changed = one_session();
        port_changed.targets[0].destination_port = 4790;
        let mut source_moved = one_session();
        source_moved.sessions[0].sources = vec!["eth1".into()];
        let mut second_session = one_session();
        second_session
            .sessions
            .push(session("s2", 2, "f1", "t1", &["eth0"]));
        let cases = vec![
            Case {
                name: "a rule added to a filter",
                desired: two_rules,
                current: one_session_applied(),
                changes: vec![Op::WriteFilter {
                    id: "f1".into(),
                    new_rules: vec!["r2".into()],
                }],
            },
            Case {
                name: "a rule removed from a filter",
                desired: rule_removed,
                current: one_session_applied(),
                changes: vec![Op::ReleaseRule("r1".into())],
            },
            Case {
                name: "a session moved to another filter",
                desired: filter_swapped,
                current: one_session_applied(),
                changes: vec![Op::ReleaseFilter("f1".into())],
            },
            Case {
                name: "a target's port changed",
                desired: port_changed,
                current: one_session_applied(),
                changes: vec![Op::RemoveTunnel(4789)],
            },
            Case {
                name: "a session moved to another source",
                desired: source_moved,
                current: one_session_applied(),
                changes: vec![Op::DetachSource {
                    ifname: "eth0".into(),
                    unless_any_placed: vec![],
                }],
            },
            Case {
                name: "a second session on a source",
                desired: second_session,
                current: one_session_applied(),
                changes: vec![Op::WriteSession {
                    id: "s2".into(),
                    new: true,
                }],
            },
        ];
        for case in cases {
            let ops = plan(&case.desired, &case.current);
            assert_eq!(
                changes(&ops),
                case.changes.iter().collect::<Vec<_>>(),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn a_port_changing_makes_the_new_device_first_and_removes_the_old_last() {
        let mut desired = one_session();
        desired.targets[0].destination_port = 4790;
        let ops = plan(&desired, &one_session_applied());
        assert_eq!(ops[0], Op::EnsureTunnel(4790));
        let session = position(&ops, |op| matches!(op, Op::WriteSession { .. }));
        let source = position(&ops, |op| matches!(op, Op::WriteSource { .. }));
        let removed = position(&ops, |op| *op == Op::RemoveTunnel(4789));
        assert!(session < source && source < removed, "{ops:#?}");
    }

    #[test]
    fn a_source_keeps_its_sessions_in_priority_order() {
        let mut desired = one_session();
        desired.sessions = vec![
            session("s-low", 9, "f1", "t1", &["eth0"]),
            session("s-high", 1, "f1", "t1", &["eth0"]),
            session("s-mid", 5, "f1", "t1", &["eth0", "eth1"]),
        ];
        let ops = plan(&desired, &Current::default());
        assert!(ops.contains(&write_source("eth0", &["s-high", "s-mid", "s-low"], false)));
        assert!(ops.contains(&write_source("eth1", &["s-mid"], false)));
    }

    #[test]
    fn a_flow_logged_interface_is_a_source_without_sessions_and_never_detached() {
        let desired = Objects {
            flow_interfaces: vec!["eth0".into()],
            ..Default::default()
        };
        let ops = plan(&desired, &one_session_applied());
        assert!(ops.contains(&write_source("eth0", &[], true)));
        assert!(!ops.iter().any(|op| matches!(op, Op::DetachSource { .. })));
        assert!(ops.contains(&Op::SyncDropAccounting(true)));
    }

    #[test]
    fn what_depends_on_placing_a_session_waits_for_it() {
        // s1 stays declared: whether eth0 stays a source and s1 keeps its slot depends on
        // placing it this time (its tunnel device or filter may fail).
        let ops = plan(&one_session(), &one_session_applied());
        let write = position(&ops, |op| matches!(op, Op::WriteSession { .. }));
        let detach = position(&ops, |op| {
            *op == Op::DetachSource {
                ifname: "eth0".into(),
                unless_any_placed: vec!["s1".into()],
            }
        });
        let release = position(&ops, |op| {
            *op == Op::ReleaseSession {
                id: "s1".into(),
                unless_placed: true,
            }
        });
        assert!(write < detach && detach < release, "{ops:#?}");
    }

    #[test]
    fn removals_follow_every_write_and_each_address_is_resolved_once() {
        let mut desired = one_session();
        desired.targets.push(target("t2", "198.18.0.2", 4790));
        let current = Current {
            sessions: strings(&["s-old"]),
            filters: strings(&["f-old"]),
            rules: strings(&["r-old"]),
            sources: strings(&["eth9"]),
            tunnels: set(&[4000]),
        };
        let ops = plan(&desired, &current);
        let resolves = ops
            .iter()
            .filter(|op| matches!(op, Op::ResolveNextHop(_)))
            .count();
        assert_eq!(resolves, 1);
        let last_write = ops
            .iter()
            .rposition(|op| {
                matches!(
                    op,
                    Op::WriteFilter { .. } | Op::WriteSession { .. } | Op::WriteSource { .. }
                )
            })
            .unwrap_or_else(|| panic!("no writes in {ops:#?}"));
        let first_removal = position(&ops, |op| {
            matches!(
                op,
                Op::DetachSource { .. }
                    | Op::ReleaseSession { .. }
                    | Op::ReleaseFilter(_)
                    | Op::ReleaseRule(_)
                    | Op::RemoveTunnel(_)
            )
        });
        assert!(last_write < first_removal, "{ops:#?}");
        // Sources stop referring to sessions before session slots are zeroed; filters go
        // after the sessions that used them; tunnel devices go last.
        let detach = position(&ops, |op| matches!(op, Op::DetachSource { .. }));
        let session = position(&ops, |op| matches!(op, Op::ReleaseSession { .. }));
        let filter = position(&ops, |op| matches!(op, Op::ReleaseFilter(_)));
        let tunnel = position(&ops, |op| matches!(op, Op::RemoveTunnel(_)));
        assert!(
            detach < session && session < filter && filter < tunnel,
            "{ops:#?}"
        );
        assert_eq!(&ops[ops.len() - TAIL.len()..], &TAIL);
    }
}
