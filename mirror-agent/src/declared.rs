//! Objects declared in the config file, kept in the store next to the API's. At start and on
//! every reload the file's objects are written in (`Origin::Config`), changed ones are marked
//! for re-apply, and config objects the file no longer declares are removed. The API can
//! read and change them; the file wins again at the next reload.

use crate::{
    config::{ConfigError, FileConfig},
    model::{self, DEFAULT_VXLAN_PORT},
    records::{
        FilterRecord, FlowLogRecord, FlowLogState, Origin, ReceiverRecord, RuleRecord,
        SessionRecord, SessionState, TargetRecord, now_rfc3339,
    },
    store::{Batch, Kind, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("receiver {id}: {code}: {message}")]
    Receiver {
        id: String,
        code: String,
        message: String,
    },
    #[error("{what} {id}: {source}")]
    Invalid {
        what: &'static str,
        id: String,
        source: model::InvalidParam,
    },
}

/// Writes the file's objects into the store in one transaction. Validation is the config
/// module's (`FileConfig::objects`), so a bad file changes nothing.
pub fn sync(store: &Store, file: &FileConfig) -> Result<usize, DeclareError> {
    // Validates everything (ranges, references, quotas) before anything is written.
    file.objects()?;
    sync_as(store, file, Origin::Config)
}

/// Writes `file`'s objects as the whole set of objects of `origin`: changed ones are marked
/// for re-apply, objects of that origin it no longer declares are removed; other origins'
/// objects are left alone. The caller has validated the objects (Kubernetes' node controller
/// validates each planned session on its own, so one bad object does not block the others).
pub fn sync_as(store: &Store, file: &FileConfig, origin: Origin) -> Result<usize, DeclareError> {
    sync_with_flow_logs(store, file, &[], origin)
}

/// `sync_as` with flow logs (the config file declares none; the node controller does): the
/// declared ones are the whole set of `origin`'s flow logs, written in the same transaction
/// as the other objects. Only their declared values count: state, generation, errors, tags
/// and times are the store's.
pub fn sync_with_flow_logs(
    store: &Store,
    file: &FileConfig,
    flow_logs: &[FlowLogRecord],
    origin: Origin,
) -> Result<usize, DeclareError> {
    let snap = store.snapshot()?;
    let now = now_rfc3339();
    let mut batch = Batch::default();
    let mut changes = 0;

    for t in &file.targets {
        let rec = TargetRecord {
            id: t.id.clone(),
            name: String::new(),
            description: String::new(),
            instance_type: "NetworkInterface".into(),
            instance_id: None,
            destination_ip: Some(t.destination_ip.to_string()),
            destination_port: t.destination_port.unwrap_or(DEFAULT_VXLAN_PORT),
            tags: Vec::new(),
            origin,
            created_at: now.clone(),
            updated_at: now.clone(),
        };
        match snap.target(&t.id) {
            Some(old) if same_target(old, &rec) => {}
            old => {
                let mut rec = rec;
                if let Some(old) = old {
                    rec.created_at = old.created_at.clone();
                }
                batch.put_target(&rec)?;
                changes += 1;
            }
        }
    }

    for f in &file.filters {
        let mut rules = Vec::new();
        for (direction, list) in [("ingress", &f.ingress_rules), ("egress", &f.egress_rules)] {
            for (i, r) in list.iter().enumerate() {
                let id = r.id(&f.id, direction, i);
                let rule = RuleRecord::from_spec(&r.spec(&id, direction)).map_err(|source| {
                    DeclareError::Invalid {
                        what: "filter rule",
                        id: id.clone(),
                        source,
                    }
                })?;
                rules.push(rule);
            }
        }
        let old = snap.filter(&f.id);
        if old.is_some_and(|o| o.rules == rules && o.origin == origin) {
            continue;
        }
        let rec = FilterRecord {
            id: f.id.clone(),
            name: old.map(|o| o.name.clone()).unwrap_or_default(),
            description: old.map(|o| o.description.clone()).unwrap_or_default(),
            tags: old.map(|o| o.tags.clone()).unwrap_or_default(),
            rules,
            origin,
            created_at: old.map_or_else(|| now.clone(), |o| o.created_at.clone()),
            updated_at: now.clone(),
        };
        batch.put_filter(&rec)?;
        changes += 1;
        batch.touch_sessions_of_filter(&snap, &f.id)?;
    }

    for s in &file.sessions {
        let old = snap.session(&s.id);
        let rec = SessionRecord {
            id: s.id.clone(),
            name: old.map(|o| o.name.clone()).unwrap_or_default(),
            description: old.map(|o| o.description.clone()).unwrap_or_default(),
            priority: s.priority as u16,
            vni: s.virtual_network_id as u32,
            packet_length: s.packet_length.map(|l| l as u32),
            // Checked with the rest of the file (`FileConfig::objects`) before it is declared.
            budget: s.budget().unwrap_or_default(),
            enabled: s.enabled,
            filter_id: s.filter_id.clone(),
            target_id: s.target_id.clone(),
            sources: s.sources.clone(),
            state: SessionState::Creating,
            generation: 1,
            errors: Vec::new(),
            tags: old.map(|o| o.tags.clone()).unwrap_or_default(),
            origin,
            created_at: old.map_or_else(|| now.clone(), |o| o.created_at.clone()),
            updated_at: now.clone(),
        };
        match old {
            Some(o) if same_session(o, &rec) && o.state != SessionState::Deleting => {}
            Some(o) => {
                let mut rec = rec;
                rec.generation = o.generation + 1;
                rec.state = if o.state == SessionState::Creating {
                    SessionState::Creating
                } else {
                    SessionState::Modifying
                };
                batch.put_session(&rec)?;
                changes += 1;
            }
            None => {
                batch.put_session(&rec)?;
                changes += 1;
            }
        }
    }

    changes += sync_receivers(&snap, file, origin, &now, &mut batch)?;
    changes += sync_flow_logs(&snap, flow_logs, origin, &now, &mut batch)?;

    // Config objects the file no longer declares.
    for s in snap.sessions.iter().filter(|s| s.origin == origin) {
        if !file.sessions.iter().any(|d| d.id == s.id) && s.state != SessionState::Deleting {
            let mut s = s.clone();
            s.generation += 1;
            s.state = SessionState::Deleting;
            batch.put_session(&s)?;
            changes += 1;
        }
    }
    for f in snap.filters.iter().filter(|f| f.origin == origin) {
        if !file.filters.iter().any(|d| d.id == f.id) {
            batch.delete(Kind::Filter, &f.id);
            changes += 1;
        }
    }
    for t in snap.targets.iter().filter(|t| t.origin == origin) {
        if !file.targets.iter().any(|d| d.id == t.id) {
            batch.delete(Kind::Target, &t.id);
            changes += 1;
        }
    }
    store.commit(batch)?;
    Ok(changes)
}

/// The file's receivers, validated as the API validates them; a receiver whose interface,
/// port or VNIs changed is applied again (Creating), one the file dropped is deleted.
fn sync_receivers(
    snap: &crate::store::Snapshot,
    file: &FileConfig,
    origin: Origin,
    now: &str,
    batch: &mut Batch,
) -> Result<usize, DeclareError> {
    use crate::api::receivers::{check_conflicts, check_port, check_vnis};
    let invalid = |id: &str| {
        let id = id.to_string();
        move |e: crate::api::ApiError| DeclareError::Receiver {
            id,
            code: e.code,
            message: e.message,
        }
    };
    // Conflicts count against the other origins' receivers and the file's own, not the
    // file's old ones.
    let mut others = crate::store::Snapshot {
        receivers: snap
            .receivers
            .iter()
            .filter(|r| r.origin != origin)
            .cloned()
            .collect(),
        ..Default::default()
    };
    let mut records = Vec::new();
    for r in &file.receivers {
        let vnis = check_vnis(&r.virtual_network_ids).map_err(invalid(&r.id))?;
        let port = check_port(r.destination_port).map_err(invalid(&r.id))?;
        check_conflicts(&others, &r.id, &r.interface, &vnis).map_err(invalid(&r.id))?;
        let old = snap.receiver(&r.id);
        let rec = ReceiverRecord {
            id: r.id.clone(),
            name: old.map(|o| o.name.clone()).unwrap_or_default(),
            description: old.map(|o| o.description.clone()).unwrap_or_default(),
            interface: r.interface.clone(),
            destination_port: port,
            vnis,
            state: SessionState::Creating,
            generation: old.map_or(1, |o| o.generation + 1),
            errors: Vec::new(),
            tags: old.map(|o| o.tags.clone()).unwrap_or_default(),
            origin,
            created_at: old.map_or_else(|| now.to_string(), |o| o.created_at.clone()),
            updated_at: now.to_string(),
        };
        others.receivers.push(rec.clone());
        let same = old.is_some_and(|o| {
            o.interface == rec.interface
                && o.destination_port == rec.destination_port
                && o.vnis == rec.vnis
                && o.origin == origin
                && o.state != SessionState::Deleting
        });
        if !same {
            records.push(rec);
        }
    }
    let mut changes = records.len();
    for rec in &records {
        batch.put_receiver(rec)?;
    }
    for r in snap.receivers.iter().filter(|r| r.origin == origin) {
        if !file.receivers.iter().any(|d| d.id == r.id) && r.state != SessionState::Deleting {
            let mut r = r.clone();
            r.generation += 1;
            r.state = SessionState::Deleting;
            batch.put_receiver(&r)?;
            changes += 1;
        }
    }
    Ok(changes)
}

/// A new flow log is Creating; a changed one keeps its state with a new generation (as the
/// API's ModifyFlowLogAttribute does), so the reconciler's next pass applies it; one no
/// longer declared is Deleting, which the reconciler stops and removes.
fn sync_flow_logs(
    snap: &crate::store::Snapshot,
    declared: &[FlowLogRecord],
    origin: Origin,
    now: &str,
    batch: &mut Batch,
) -> Result<usize, DeclareError> {
    let mut changes = 0;
    for d in declared {
        let old = snap.flow_log(&d.id);
        let mut rec = FlowLogRecord {
            description: old.map(|o| o.description.clone()).unwrap_or_default(),
            state: FlowLogState::Creating,
            generation: 1,
            errors: Vec::new(),
            tags: old.map(|o| o.tags.clone()).unwrap_or_default(),
            origin,
            created_at: old.map_or_else(|| now.to_string(), |o| o.created_at.clone()),
            updated_at: now.to_string(),
            ..d.clone()
        };
        if let Some(o) = old {
            if same_flow_log(o, &rec) && o.state != FlowLogState::Deleting {
                continue;
            }
            rec.generation = o.generation + 1;
            if o.state != FlowLogState::Deleting {
                rec.state = o.state;
                rec.errors = o.errors.clone();
            }
        }
        batch.put_flow_log(&rec)?;
        changes += 1;
    }
    for f in snap.flow_logs.iter().filter(|f| f.origin == origin) {
        if !declared.iter().any(|d| d.id == f.id) && f.state != FlowLogState::Deleting {
            let mut f = f.clone();
            f.generation += 1;
            f.state = FlowLogState::Deleting;
            f.updated_at = now.to_string();
            batch.put_flow_log(&f)?;
            changes += 1;
        }
    }
    Ok(changes)
}

/// Equal in what is declared (a field added to flow logs counts unless listed here).
fn same_flow_log(a: &FlowLogRecord, b: &FlowLogRecord) -> bool {
    let declared = |f: &FlowLogRecord| FlowLogRecord {
        description: String::new(),
        state: FlowLogState::Creating,
        generation: 0,
        errors: Vec::new(),
        tags: Vec::new(),
        created_at: String::new(),
        updated_at: String::new(),
        ..f.clone()
    };
    declared(a) == declared(b)
}

fn same_target(a: &TargetRecord, b: &TargetRecord) -> bool {
    a.destination_ip == b.destination_ip
        && a.destination_port == b.destination_port
        && a.instance_id == b.instance_id
        && a.origin == b.origin
}

fn same_session(a: &SessionRecord, b: &SessionRecord) -> bool {
    a.priority == b.priority
        && a.vni == b.vni
        && a.packet_length == b.packet_length
        && a.budget == b.budget
        && a.enabled == b.enabled
        && a.filter_id == b.filter_id
        && a.target_id == b.target_id
        && a.sources == b.sources
        && a.origin == b.origin
}
