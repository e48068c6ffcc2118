//! `mirror-agent controller`: one replica at a time (a coordination.k8s.io Lease) turns the
//! nodes' MirrorNodeStates into each TrafficMirrorSession's status: `Accepted` (its filter
//! and target exist), `Ready` (applied on every node that selected it), `Degraded` (failed
//! on some node), and the counts of nodes selected, applied and failed. Status is written
//! by server-side apply of the status subresource (field manager
//! `mirror-agent-controller`), only when it changes.
//!
//! A node "selected" a session when its MirrorNodeState lists it; "applied" when its state
//! there is Created without errors; "failed" when it is NotApplied or has errors (a node
//! still Creating or Modifying counts as selected only).

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    crd::{
        MirrorNodeState, SessionStatus, TrafficMirrorFilter, TrafficMirrorSession,
        TrafficMirrorTarget,
    },
    node::{Signal, cloned, watch_all},
    status::status_patch,
};

pub const FIELD_MANAGER: &str = "mirror-agent-controller";
pub const LEASE_NAME: &str = "mirror-agent-controller";
/// A leader that has not renewed for this long is replaced.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews and a follower tries.
pub const RENEW: Duration = Duration::from_secs(5);

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        // Set by `keep_transition_times`.
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// A session's status from the filters, targets and every node's state. Transition times are
/// `now` for a condition whose status changed from `previous`, else kept.
pub fn session_status(
    session: &TrafficMirrorSession,
    filters: &[TrafficMirrorFilter],
    targets: &[TrafficMirrorTarget],
    states: &[MirrorNodeState],
    previous: Option<&SessionStatus>,
    now: Timestamp,
) -> SessionStatus {
    let generation = session.metadata.generation;
    let name = session.name_any();
    let filter = filters
        .iter()
        .any(|f| f.name_any() == session.spec.filter_ref);
    let target = targets
        .iter()
        .any(|t| t.name_any() == session.spec.target_ref);
    let accepted = match (filter, target) {
        (true, true) => condition("Accepted", true, "Valid", String::new(), generation),
        (false, _) => condition(
            "Accepted",
            false,
            "FilterNotFound",
            format!("TrafficMirrorFilter {} not found", session.spec.filter_ref),
            generation,
        ),
        (true, false) => condition(
            "Accepted",
            false,
            "TargetNotFound",
            format!("TrafficMirrorTarget {} not found", session.spec.target_ref),
            generation,
        ),
    };
    let (mut selected, mut applied) = (0u32, 0u32);
    let mut failed: Vec<String> = Vec::new();
    let mut nodes: Vec<&MirrorNodeState> = states.iter().collect();
    nodes.sort_by_key(|s| s.name_any());
    for node in nodes {
        let Some(st) = node
            .status
            .as_ref()
            .and_then(|s| s.sessions.iter().find(|x| x.name == name))
        else {
            continue;
        };
        selected += 1;
        if st.state == "NotApplied" || !st.errors.is_empty() {
            failed.push(format!(
                "{}: {}",
                node.spec.node_name,
                st.errors.first().map_or("not applied", String::as_str)
            ));
        } else if st.state == "Created" {
            applied += 1;
        }
    }
    let accepted_ok = accepted.status == "True";
    let ready = if !accepted_ok {
        condition(
            "Ready",
            false,
            "NotAccepted",
            accepted.message.clone(),
            generation,
        )
    } else if selected == 0 {
        condition(
            "Ready",
            false,
            "NoNodeSelected",
            "no node selected the session".into(),
            generation,
        )
    } else if applied == selected {
        condition(
            "Ready",
            true,
            "Applied",
            format!("applied on {applied} nodes"),
            generation,
        )
    } else {
        condition(
            "Ready",
            false,
            "Pending",
            format!("applied on {applied} of {selected} nodes"),
            generation,
        )
    };
    let degraded = if failed.is_empty() {
        condition("Degraded", false, "NoFailures", String::new(), generation)
    } else {
        let mut message = failed
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if failed.len() > 5 {
            message.push_str(&format!("; and {} more", failed.len() - 5));
        }
        condition("Degraded", true, "FailedOnNodes", message, generation)
    };
    let mut conditions = vec![accepted, ready, degraded];
    for c in &mut conditions {
        c.last_transition_time = previous
            .and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_))
            .filter(|o| o.status == c.status)
            .map_or(Time(now), |o| o.last_transition_time.clone());
    }
    SessionStatus {
        conditions,
        nodes_selected: selected,
        nodes_applied: applied,
        nodes_failed: failed.len() as u32,
    }
}

/// The Lease that makes one controller replica the writer.
pub struct LeaseLock {
    pub api: Api<Lease>,
    pub identity: String,
}

impl LeaseLock {
    /// Takes the lease when it is free, expired or ours, and renews it; `Ok(false)` while
    /// another replica holds it (or won a race for it: 409 Conflict).
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let spec = |acquired: Timestamp, transitions: i32| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..Default::default()
                },
                spec: Some(spec(now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let old = lease.spec.clone().unwrap_or_default();
        let holder = old.holder_identity.clone().unwrap_or_default();
        let duration = i64::from(old.lease_duration_seconds.unwrap_or(0));
        let expired = old
            .renew_time
            .as_ref()
            .is_none_or(|r| r.0.as_second() + duration < now.as_second());
        let ours = holder == self.identity;
        if !(ours || holder.is_empty() || expired) {
            return Ok(false);
        }
        let transitions = old.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            spec(old.acquire_time.map_or(now, |t| t.0), transitions)
        } else {
            spec(now, transitions + 1)
        });
        // The resourceVersion we read makes this a compare-and-swap.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

pub struct Controller {
    pub client: Client,
    pub lease_namespace: String,
    pub identity: String,
    pub stop: watch::Receiver<bool>,
}

impl Controller {
    pub async fn run(mut self) {
        let c = &self.client;
        let (sessions, s1) = watch_all::<TrafficMirrorSession>(c, "TrafficMirrorSession");
        let (filters, s2) = watch_all::<TrafficMirrorFilter>(c, "TrafficMirrorFilter");
        let (targets, s3) = watch_all::<TrafficMirrorTarget>(c, "TrafficMirrorTarget");
        let (states, s4) = watch_all::<MirrorNodeState>(c, "MirrorNodeState");
        let mut signals = futures::stream::select_all(vec![s1, s2, s3, s4]);
        let lock = LeaseLock {
            api: Api::namespaced(self.client.clone(), &self.lease_namespace),
            identity: self.identity.clone(),
        };
        let api: Api<TrafficMirrorSession> = Api::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut listed = std::collections::BTreeSet::new();
        let mut leader = false;
        let mut written: BTreeMap<String, SessionStatus> = BTreeMap::new();
        let mut renew = tokio::time::interval(RENEW);
        let mut dirty = false;
        loop {
            tokio::select! {
                s = signals.next() => match s {
                    Some(Signal::Listed(kind)) => { listed.insert(kind); dirty = true; }
                    Some(Signal::Changed(_)) => dirty = true,
                    Some(Signal::Error(kind, e)) => warn!(kind, "watch: {e}"),
                    Some(_) => {}
                    None => break,
                },
                _ = renew.tick() => {
                    let was = leader;
                    leader = match lock.try_acquire_or_renew(Timestamp::now()).await {
                        Ok(l) => l,
                        Err(e) => { warn!("lease {}: {e}", LEASE_NAME); false }
                    };
                    if leader != was {
                        info!(leader, identity = %self.identity, "leadership changed");
                        // A new leader writes everything once: another replica may have
                        // written meanwhile.
                        written.clear();
                    }
                    dirty = true;
                }
                _ = self.stop.changed() => break,
            }
            if !(dirty && leader && listed.len() == 4) {
                continue;
            }
            dirty = false;
            let (f, t, st) = (cloned(&filters), cloned(&targets), cloned(&states));
            for s in cloned(&sessions) {
                let name = s.name_any();
                let status = session_status(&s, &f, &t, &st, s.status.as_ref(), Timestamp::now());
                if written.get(&name) == Some(&status) || s.status.as_ref() == Some(&status) {
                    written.insert(name, status);
                    continue;
                }
                match api
                    .patch_status(
                        &name,
                        &params,
                        &Patch::Apply(status_patch("TrafficMirrorSession", &name, &status)),
                    )
                    .await
                {
                    Ok(_) => {
                        written.insert(name, status);
                    }
                    Err(e) => warn!(session = %name, "status: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn session() -> TrafficMirrorSession {
        obj(
            json!({"apiVersion": "mirror-agent.io/v1alpha1", "kind": "TrafficMirrorSession",
            "metadata": {"name": "payments", "generation": 3},
            "spec": {"priority": 1, "virtualNetworkId": 100, "filterRef": "https",
                     "targetRef": "ids", "sources": {}}}),
        )
    }

    fn named<T: serde::de::DeserializeOwned>(kind: &str, name: &str, spec: Value) -> T {
        obj(
            json!({"apiVersion": "mirror-agent.io/v1alpha1", "kind": kind,
                   "metadata": {"name": name}, "spec": spec}),
        )
    }

    fn node(name: &str, state: &str, errors: &[&str]) -> MirrorNodeState {
        obj(
            json!({"apiVersion": "mirror-agent.io/v1alpha1", "kind": "MirrorNodeState",
            "metadata": {"name": name}, "spec": {"nodeName": name},
            "status": {"connected": true, "sessions": [
                {"name": "payments", "state": state, "errors": errors}]}}),
        )
    }

    fn cond<'a>(s: &'a SessionStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_session_naming_a_missing_filter_is_not_accepted() {
        let targets = [named(
            "TrafficMirrorTarget",
            "ids",
            json!({"destinationIp": "10.0.0.1"}),
        )];
        let st = session_status(&session(), &[], &targets, &[], None, Timestamp::UNIX_EPOCH);
        let a = cond(&st, "Accepted");
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("False", "FilterNotFound")
        );
        assert!(a.message.contains("https"));
        assert_eq!(a.observed_generation, Some(3));
        assert_eq!(cond(&st, "Ready").reason, "NotAccepted");
        let filters = [named("TrafficMirrorFilter", "https", json!({}))];
        let st = session_status(&session(), &filters, &[], &[], None, Timestamp::UNIX_EPOCH);
        assert_eq!(cond(&st, "Accepted").reason, "TargetNotFound");
    }

    #[test]
    fn nodes_are_counted_and_conditions_keep_their_transition_times() {
        let filters = [named("TrafficMirrorFilter", "https", json!({}))];
        let targets = [named(
            "TrafficMirrorTarget",
            "ids",
            json!({"destinationIp": "10.0.0.1"}),
        )];
        let mut other = node("node-d", "Created", &[]);
        other.status.as_mut().unwrap().sessions[0].name = "other".into();
        let states = [
            node("node-a", "Created", &[]),
            node(
                "node-b",
                "NotApplied",
                &["pod shop/pay-2: no host interface"],
            ),
            node("node-c", "Creating", &[]),
            other,
        ];
        let t0 = Timestamp::from_second(1_000).unwrap();
        let st = session_status(&session(), &filters, &targets, &states, None, t0);
        assert_eq!(
            (st.nodes_selected, st.nodes_applied, st.nodes_failed),
            (3, 1, 1)
        );
        assert_eq!(cond(&st, "Accepted").status, "True");
        let ready = cond(&st, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Pending")
        );
        let degraded = cond(&st, "Degraded");
        assert_eq!(degraded.status, "True");
        assert!(
            degraded.message.contains("node-b: pod shop/pay-2"),
            "{}",
            degraded.message
        );
        // Later, all applied: Ready and Degraded change (new time), Accepted keeps its own.
        let t1 = Timestamp::from_second(2_000).unwrap();
        let healed = [
            node("node-a", "Created", &[]),
            node("node-b", "Created", &[]),
        ];
        let st2 = session_status(&session(), &filters, &targets, &healed, Some(&st), t1);
        assert_eq!(
            (st2.nodes_selected, st2.nodes_applied, st2.nodes_failed),
            (2, 2, 0)
        );
        assert_eq!(cond(&st2, "Ready").status, "True");
        assert_eq!(cond(&st2, "Accepted").last_transition_time.0, t0);
        assert_eq!(cond(&st2, "Ready").last_transition_time.0, t1);
        // Nothing changed: the same status, so nothing is written.
        let st3 = session_status(&session(), &filters, &targets, &healed, Some(&st2), t1);
        assert_eq!(st3, st2);
    }

    type Mock = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn lock() -> (LeaseLock, Mock) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        (
            LeaseLock {
                api: Api::namespaced(client, "mirror-agent"),
                identity: "me".into(),
            },
            handle,
        )
    }

    fn respond(send: tower_test::mock::SendResponse<Response<Body>>, code: StatusCode, v: Value) {
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap(),
        );
    }

    const LEASE: &str =
        "/apis/coordination.k8s.io/v1/namespaces/mirror-agent/leases/mirror-agent-controller";

    fn held_by(holder: &str, renewed: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "mirror-agent-controller", "namespace": "mirror-agent",
                            "resourceVersion": "41"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                        "renewTime": renewed, "acquireTime": renewed, "leaseTransitions": 2}})
    }

    #[tokio::test]
    async fn the_lease_is_created_when_absent() {
        let (lock, mut handle) = lock();
        let now = Timestamp::from_second(10_000).unwrap();
        let t = tokio::spawn(async move { lock.try_acquire_or_renew(now).await.unwrap() });
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!((req.method(), req.uri().path()), (&Method::GET, LEASE));
        respond(
            send,
            StatusCode::NOT_FOUND,
            json!({"apiVersion": "v1", "kind": "Status",
            "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        );
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(
            req.uri().path(),
            "/apis/coordination.k8s.io/v1/namespaces/mirror-agent/leases"
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        respond(send, StatusCode::CREATED, body);
        assert!(t.await.unwrap());
    }

    #[tokio::test]
    async fn a_live_holder_keeps_the_lease_and_an_expired_one_loses_it() {
        let (lock, mut handle) = lock();
        let now = Timestamp::from_second(10_000).unwrap();
        let lock = std::sync::Arc::new(lock);
        let l = std::sync::Arc::clone(&lock);
        let t = tokio::spawn(async move { l.try_acquire_or_renew(now).await.unwrap() });
        let (_req, send) = handle.next_request().await.unwrap();
        // Renewed 5 s ago, 15 s lease: still the other replica's.
        respond(
            send,
            StatusCode::OK,
            held_by("other", "1970-01-01T02:46:35Z"),
        );
        assert!(!t.await.unwrap());
        let l = std::sync::Arc::clone(&lock);
        let t = tokio::spawn(async move { l.try_acquire_or_renew(now).await.unwrap() });
        let (_req, send) = handle.next_request().await.unwrap();
        // Renewed 100 s ago: expired, taken over with a compare-and-swap on its version.
        respond(
            send,
            StatusCode::OK,
            held_by("other", "1970-01-01T02:45:00Z"),
        );
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!((req.method(), req.uri().path()), (&Method::PUT, LEASE));
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        respond(send, StatusCode::OK, body);
        assert!(t.await.unwrap());
    }
}
