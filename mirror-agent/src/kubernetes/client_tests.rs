//! The requests the node controller makes, pinned against a mock API server (tower-test's
//! mock service behind kube::Client): what it lists and watches and with which selectors,
//! how it resumes after 410 Gone and 429, and the server-side apply of its MirrorNodeState.
//! No cluster and no root needed.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, Client, client::Body};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock::{self, Handle, SendResponse};

use super::{
    crd::{NodeSessionState, NodeStateStatus},
    node::{self, Signal},
    status::StatusWriter,
};

type Mock = Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, Mock) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

fn query(req: &Request<Body>) -> BTreeMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

async fn next(handle: &mut Mock) -> (Request<Body>, SendResponse<Response<Body>>) {
    tokio::time::timeout(std::time::Duration::from_secs(60), handle.next_request())
        .await
        .expect("no request within 60 s")
        .expect("the client went away")
}

fn reply(send: SendResponse<Response<Body>>, code: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn empty_list(kind: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": rv}, "items": []})
}

fn status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

/// Runs a watch of the node's pods, forwarding its signals.
fn pod_signals(client: Client) -> mpsc::UnboundedReceiver<Signal> {
    let (_store, mut stream) =
        node::watch(Api::<Pod>::all(client), node::pods_config("node-a"), "Pod");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(s) = stream.next().await {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    rx
}

/// Answers the initial list with an empty list at `rv`; returns the watch request after it.
async fn list_then_watch(
    handle: &mut Mock,
    rv: &str,
) -> (Request<Body>, SendResponse<Response<Body>>) {
    let (req, send) = next(handle).await;
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri().path(), "/api/v1/pods");
    let q = query(&req);
    assert_eq!(q.get("watch"), None, "a list first: {q:?}");
    reply(send, StatusCode::OK, empty_list("Pod", rv));
    next(handle).await
}

#[tokio::test]
async fn pods_are_listed_and_watched_on_this_node_only() {
    let (client, mut handle) = mock_client();
    let mut signals = pod_signals(client);
    let (req, send) = next(&mut handle).await;
    assert_eq!(req.uri().path(), "/api/v1/pods");
    let q = query(&req);
    assert_eq!(q["fieldSelector"], "spec.nodeName=node-a");
    assert_eq!(q["limit"], "500");
    assert_eq!(
        q.get("resourceVersion"),
        None,
        "MostRecent: a consistent list"
    );
    reply(send, StatusCode::OK, empty_list("Pod", "10"));
    let (req, _send) = next(&mut handle).await;
    let q = query(&req);
    assert_eq!(req.uri().path(), "/api/v1/pods");
    assert_eq!(q["watch"], "true");
    assert_eq!(q["fieldSelector"], "spec.nodeName=node-a");
    assert_eq!(
        q["resourceVersion"], "10",
        "the watch resumes from the list"
    );
    assert_eq!(q["allowWatchBookmarks"], "true");
    assert_eq!(q["timeoutSeconds"], "290");
    assert_eq!(signals.recv().await, Some(Signal::Relisting("Pod")));
    assert_eq!(signals.recv().await, Some(Signal::Listed("Pod")));
}

#[tokio::test]
async fn every_watch_the_node_needs_and_its_selectors() {
    let (client, mut handle) = mock_client();
    let (_watches, stream) = node::watches(&client, "node-a");
    let poll = tokio::spawn(stream.for_each(|_| async {}));
    let mut seen = BTreeMap::new();
    for _ in 0..8 {
        let (req, _send) = next(&mut handle).await;
        let q = query(&req);
        assert_eq!(req.method(), Method::GET);
        seen.insert(
            req.uri().path().to_string(),
            q.get("fieldSelector").cloned(),
        );
    }
    poll.abort();
    let group = "/apis/mirror-agent.io/v1alpha1";
    let want: BTreeMap<String, Option<String>> = [
        (format!("{group}/trafficmirrorfilters"), None),
        (format!("{group}/trafficmirrortargets"), None),
        (format!("{group}/trafficmirrorsessions"), None),
        (format!("{group}/trafficmirrorreceivers"), None),
        (format!("{group}/flowlogs"), None),
        ("/api/v1/namespaces".into(), None),
        (
            "/api/v1/nodes".into(),
            Some("metadata.name=node-a".to_string()),
        ),
        (
            "/api/v1/pods".into(),
            Some("spec.nodeName=node-a".to_string()),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, want);
}

/// 410 Gone on the watch: the resource version is too old, so the watcher lists again (and
/// the store is replaced only when that list completes).
#[tokio::test(start_paused = true)]
async fn gone_relists() {
    let (client, mut handle) = mock_client();
    let mut signals = pod_signals(client);
    let (req, send) = list_then_watch(&mut handle, "10").await;
    assert_eq!(query(&req)["resourceVersion"], "10");
    let event = json!({"type": "ERROR", "object": status(410, "Expired")});
    reply(send, StatusCode::OK, event);
    let (req, send) = next(&mut handle).await;
    let q = query(&req);
    assert_eq!(
        q.get("watch"),
        None,
        "410 must relist, not watch again: {q:?}"
    );
    assert_eq!(q.get("resourceVersion"), None);
    reply(send, StatusCode::OK, empty_list("Pod", "20"));
    let (req, _send) = next(&mut handle).await;
    assert_eq!(query(&req)["resourceVersion"], "20");
    let mut got = Vec::new();
    while let Ok(s) = signals.try_recv() {
        got.push(s);
    }
    assert!(
        got.iter()
            .any(|s| matches!(s, Signal::Error("Pod", e) if e.contains("Expired"))),
        "{got:?}"
    );
    assert_eq!(got.last(), Some(&Signal::Listed("Pod")), "{got:?}");
}

/// Any other watch failure resumes from the last resource version, without a relist.
#[tokio::test(start_paused = true)]
async fn a_dropped_watch_resumes_from_its_resource_version() {
    let (client, mut handle) = mock_client();
    let _signals = pod_signals(client);
    let (_req, send) = list_then_watch(&mut handle, "10").await;
    reply(
        send,
        StatusCode::SERVICE_UNAVAILABLE,
        status(503, "ServiceUnavailable"),
    );
    let (req, _send) = next(&mut handle).await;
    let q = query(&req);
    assert_eq!(q["watch"], "true");
    assert_eq!(q["resourceVersion"], "10");
}

/// 429 Too Many Requests (API priority and fairness) on the list: retried after a backoff.
/// (The agent's real client also retries 429/503/504 itself, honouring Retry-After, before
/// the watcher sees an error: kube's `Config::default_retry`; this mock has no such layer.)
#[tokio::test(start_paused = true)]
async fn too_many_requests_retries_with_backoff() {
    let (client, mut handle) = mock_client();
    let mut signals = pod_signals(client);
    let (_req, send) = next(&mut handle).await;
    let before = tokio::time::Instant::now();
    reply(
        send,
        StatusCode::TOO_MANY_REQUESTS,
        status(429, "TooManyRequests"),
    );
    let (req, send) = next(&mut handle).await;
    assert!(
        before.elapsed() >= std::time::Duration::from_millis(500),
        "retried after {:?}, without backoff",
        before.elapsed()
    );
    let q = query(&req);
    assert_eq!(q.get("watch"), None, "the list again: {q:?}");
    assert_eq!(q["fieldSelector"], "spec.nodeName=node-a");
    reply(send, StatusCode::OK, empty_list("Pod", "5"));
    let mut got = Vec::new();
    while let Some(s) = signals.recv().await {
        let done = s == Signal::Listed("Pod");
        got.push(s);
        if done {
            break;
        }
    }
    assert!(
        matches!(&got[..], [Signal::Relisting("Pod"), Signal::Error("Pod", e), Signal::Relisting("Pod"), Signal::Listed("Pod")] if e.contains("TooManyRequests")),
        "{got:?}"
    );
}

fn node_a() -> Node {
    serde_json::from_value(json!({"metadata": {"name": "node-a", "uid": "uid-a"}})).unwrap()
}

fn state(name: &str, s: &str) -> NodeStateStatus {
    NodeStateStatus {
        sessions: vec![NodeSessionState {
            name: name.into(),
            state: s.into(),
            ..Default::default()
        }],
        connected: true,
        ..Default::default()
    }
}

async fn expect_apply(handle: &mut Mock, path: &str) -> Value {
    let (req, send) = next(handle).await;
    assert_eq!(req.method(), Method::PATCH);
    assert_eq!(req.uri().path(), path);
    assert_eq!(
        req.headers()["content-type"],
        "application/apply-patch+yaml"
    );
    let q = query(&req);
    assert_eq!(q["fieldManager"], "mirror-agent");
    assert_eq!(q["force"], "true");
    let body = req.into_body().collect_bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    let mut answer = body.clone();
    answer["metadata"]["uid"] = json!("state-uid");
    answer["spec"] = json!({"nodeName": "node-a"});
    reply(send, StatusCode::OK, answer);
    body
}

#[tokio::test]
async fn node_state_is_server_side_applied_only_on_change() {
    let (client, mut handle) = mock_client();
    let mut writer = StatusWriter::new(client, "node-a");
    let node = node_a();
    let path = "/apis/mirror-agent.io/v1alpha1/mirrornodestates/node-a";
    let write = tokio::spawn(async move {
        let first = writer.write(&node, state("s", "Creating")).await.unwrap();
        let again = writer.write(&node, state("s", "Creating")).await.unwrap();
        let changed = writer.write(&node, state("s", "Created")).await.unwrap();
        (first, again, changed)
    });
    let object = expect_apply(&mut handle, path).await;
    assert_eq!(object["kind"], "MirrorNodeState");
    assert_eq!(object["apiVersion"], "mirror-agent.io/v1alpha1");
    assert_eq!(object["spec"], json!({"nodeName": "node-a"}));
    assert_eq!(
        object["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "uid-a"}])
    );
    let st = expect_apply(&mut handle, &format!("{path}/status")).await;
    assert_eq!(st["status"]["sessions"][0]["state"], "Creating");
    assert_eq!(st["status"]["connected"], true);
    // The unchanged second write sends nothing: the next request is the changed status.
    let st = expect_apply(&mut handle, &format!("{path}/status")).await;
    assert_eq!(st["status"]["sessions"][0]["state"], "Created");
    assert_eq!(write.await.unwrap(), (true, false, true));
}

/// The mock API server of the controller tests: lists by path, holds watches open (or ends
/// them with 410 when told), has no Lease, echoes creations and server-side applies and
/// reports them as "METHOD path" ("PATCH path by field-manager").
async fn serve(
    mut handle: Mock,
    lists: BTreeMap<&'static str, Value>,
    applied: mpsc::UnboundedSender<(String, Value)>,
    mut gone: tokio::sync::watch::Receiver<bool>,
) {
    let mut watches = Vec::new();
    loop {
        let (req, send) = tokio::select! {
            r = handle.next_request() => match r { Some(r) => r, None => return },
            _ = gone.changed() => {
                // Every open watch ends with 410 Gone; from now on every list fails.
                for send in watches.drain(..) {
                    reply(send, StatusCode::OK, json!({"type": "ERROR", "object": status(410, "Expired")}));
                }
                continue;
            }
        };
        let path = req.uri().path().to_string();
        let q = query(&req);
        if req.method() == Method::PATCH || req.method() == Method::POST {
            let method = req.method().clone();
            let what = if method == Method::PATCH {
                // Server-side apply, forced, by a named field manager.
                assert_eq!(
                    req.headers()["content-type"],
                    "application/apply-patch+yaml"
                );
                assert_eq!(q["force"], "true");
                format!("PATCH {path} by {}", q["fieldManager"])
            } else {
                format!("{method} {path}")
            };
            let body = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            let _ = applied.send((what, body.clone()));
            reply(send, StatusCode::OK, body);
        } else if *gone.borrow() {
            reply(
                send,
                StatusCode::SERVICE_UNAVAILABLE,
                status(503, "ServiceUnavailable"),
            );
        } else if q.contains_key("watch") {
            watches.push(send);
        } else if let Some(list) = lists.get(path.as_str()) {
            reply(send, StatusCode::OK, list.clone());
        } else if path.contains("/leases/") {
            reply(send, StatusCode::NOT_FOUND, status(404, "NotFound"));
        } else {
            panic!("unexpected request {path}?{q:?}");
        }
    }
}

async fn next_apply(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
        .await
        .expect("no server-side apply within 20 s")
        .expect("server gone")
}

fn list_of(kind: &str, items: Value) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": "7"}, "items": items})
}

/// The node controller end to end against the mock server: no plan before every watch has
/// listed; the plan lands in the store as objects of origin kubernetes; the node's
/// MirrorNodeState is applied with the selected pod and its error; an API-server outage
/// (410 on every watch, then 503) leaves the store as it was and shows in the gauge and the
/// probes; the controller stops on request.
#[tokio::test]
async fn the_node_controller_plans_applies_reports_and_survives_the_api_server_going() {
    use std::sync::Arc;

    use crate::{metrics::Health, records::Origin};

    let (store, _dir) = super::apply::tests::temp_store();
    let svc = Arc::new(super::apply::tests::service(store.clone()));
    let (conn, netlink, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(conn);
    let health = Arc::new(Health::default());
    let connection = node::Connection::new(&svc, Arc::clone(&health)).unwrap();
    let gauge = connection.gauge.clone();
    let (client, handle) = mock_client();
    let crd = |kind: &str, name: &str, spec: Value| {
        json!({"apiVersion": "mirror-agent.io/v1alpha1", "kind": kind,
               "metadata": {"name": name}, "spec": spec})
    };
    let g = "/apis/mirror-agent.io/v1alpha1";
    let lists: BTreeMap<&'static str, Value> = [
        ("/apis/mirror-agent.io/v1alpha1/trafficmirrorfilters", list_of("TrafficMirrorFilter", json!([crd("TrafficMirrorFilter", "https", json!({"ingressRules": [{"priority": 1, "action": "accept", "protocol": "TCP", "destinationPortRange": "443/443"}]}))]))),
        ("/apis/mirror-agent.io/v1alpha1/trafficmirrortargets", list_of("TrafficMirrorTarget", json!([crd("TrafficMirrorTarget", "ids", json!({"destinationIp": "10.20.0.15"}))]))),
        ("/apis/mirror-agent.io/v1alpha1/trafficmirrorsessions", list_of("TrafficMirrorSession", json!([crd("TrafficMirrorSession", "payments", json!({"priority": 1, "virtualNetworkId": 100, "packetLength": 256, "filterRef": "https", "targetRef": "ids", "sources": {"interfaces": ["lo"], "podSelector": {"matchLabels": {"app": "payments"}}}}))]))),
        ("/apis/mirror-agent.io/v1alpha1/trafficmirrorreceivers", list_of("TrafficMirrorReceiver", json!([]))),
        ("/apis/mirror-agent.io/v1alpha1/flowlogs", list_of("FlowLog", json!([crd("FlowLog", "shop", json!({"resource": {"interfaces": ["lo"], "podSelector": {"matchLabels": {"app": "payments"}}}, "trafficType": "All", "aggregationInterval": 1, "logProjectName": "flows", "logTopicName": "shop"}))]))),
        ("/api/v1/namespaces", list_of("Namespace", json!([{"metadata": {"name": "shop"}}]))),
        ("/api/v1/nodes", list_of("Node", json!([{"metadata": {"name": "node-a", "uid": "uid-a"}}]))),
        ("/api/v1/pods", list_of("Pod", json!([{
            "metadata": {"name": "pay-1", "namespace": "shop", "labels": {"app": "payments"}},
            "spec": {"nodeName": "node-a", "containers": []},
            "status": {"phase": "Running", "podIPs": [{"ip": "192.0.2.77"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }]))),
    ]
    .into_iter()
    .collect();
    let (applied_tx, mut applied) = mpsc::unbounded_channel();
    let (gone_tx, gone_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(handle, lists, applied_tx, gone_rx));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let controller = tokio::spawn(
        node::NodeController {
            client,
            node: "node-a".into(),
            svc: Arc::clone(&svc),
            netlink,
            connection,
            rule_quota: 10,
            stop: stop_rx,
        }
        .run(),
    );
    let (path, object) = next_apply(&mut applied).await;
    assert_eq!(
        path,
        format!("PATCH {g}/mirrornodestates/node-a by mirror-agent")
    );
    assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "uid-a");
    let (path, st) = next_apply(&mut applied).await;
    assert_eq!(
        path,
        format!("PATCH {g}/mirrornodestates/node-a/status by mirror-agent")
    );
    let session = &st["status"]["sessions"][0];
    assert_eq!(session["name"], "payments");
    assert_eq!(session["sources"], json!([{"interface": "lo"}]));
    let errors = session["errors"].to_string();
    assert!(
        errors.contains("pod shop/pay-1: no host interface routes its IP 192.0.2.77"),
        "{st}"
    );
    // The FlowLog: its interfaces, the pod it could not resolve, applied on the node.
    let fl = &st["status"]["flowLogs"][0];
    assert_eq!(fl["name"], "shop", "{st}");
    assert_eq!(fl["interfaces"], json!([{"interface": "lo"}]));
    assert!(
        fl["errors"]
            .to_string()
            .contains("pod shop/pay-1: no host interface routes its IP 192.0.2.77"),
        "{st}"
    );
    assert_eq!(gauge.get(), 1);
    let snap = store.snapshot().unwrap();
    let f = snap
        .flow_log("fl-k8s-shop")
        .expect("the flow log in the store");
    assert_eq!(
        (f.origin, f.interfaces.as_slice(), f.log_topic.as_str()),
        (Origin::Kubernetes, &["lo".to_string()][..], "shop")
    );
    let ids: Vec<(&str, Origin)> = snap
        .sessions
        .iter()
        .map(|s| (s.id.as_str(), s.origin))
        .collect();
    assert_eq!(
        ids,
        [
            ("tms-k8s-payments", Origin::Kubernetes),
            ("tms-k8s-payments-pods", Origin::Kubernetes)
        ]
    );

    // The API server goes away: every watch gets 410, every relist 503.
    gone_tx.send(true).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while gauge.get() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "never disconnected");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        health
            .readiness()
            .1
            .contains("Kubernetes API server unreachable"),
        "{:?}",
        health.readiness()
    );
    // Planning goes on every 2 s from the kept stores: the store keeps the same objects.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let after = store.snapshot().unwrap();
    assert_eq!(after.sessions.len(), 2);
    assert!(after.sessions.iter().all(
        |s| s.origin == Origin::Kubernetes && s.state != crate::records::SessionState::Deleting
    ));
    assert!(
        after
            .flow_logs
            .iter()
            .all(|f| f.origin == Origin::Kubernetes
                && f.state != crate::records::FlowLogState::Deleting),
        "{:?}",
        after.flow_logs
    );
    assert_eq!(after.flow_logs.len(), 1);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), controller)
        .await
        .expect("the controller stops")
        .unwrap();
}

/// The cluster controller against the mock server: it creates its Lease, then writes the
/// session's status by server-side apply of the status subresource, from the node states.
#[tokio::test]
async fn the_controller_takes_its_lease_and_applies_session_status() {
    let (client, handle) = mock_client();
    let crd = |kind: &str, name: &str, spec: Value, status: Value| {
        json!({"apiVersion": "mirror-agent.io/v1alpha1", "kind": kind,
               "metadata": {"name": name, "generation": 2}, "spec": spec, "status": status})
    };
    let g = "/apis/mirror-agent.io/v1alpha1";
    let lists: BTreeMap<&'static str, Value> = [
        ("/apis/mirror-agent.io/v1alpha1/trafficmirrorsessions", list_of("TrafficMirrorSession", json!([
            crd("TrafficMirrorSession", "payments", json!({"priority": 1, "virtualNetworkId": 100, "filterRef": "https", "targetRef": "ids", "sources": {}}), json!({}))]))),
        ("/apis/mirror-agent.io/v1alpha1/trafficmirrorfilters", list_of("TrafficMirrorFilter", json!([
            crd("TrafficMirrorFilter", "https", json!({}), json!({}))]))),
        ("/apis/mirror-agent.io/v1alpha1/trafficmirrortargets", list_of("TrafficMirrorTarget", json!([]))),
        ("/apis/mirror-agent.io/v1alpha1/mirrornodestates", list_of("MirrorNodeState", json!([
            crd("MirrorNodeState", "node-a", json!({"nodeName": "node-a"}),
                json!({"connected": true, "sessions": [{"name": "payments", "state": "NotApplied", "errors": ["TrafficMirrorTarget ids not found"]}]}))]))),
    ]
    .into_iter()
    .collect();
    let (applied_tx, mut applied) = mpsc::unbounded_channel();
    let (_gone_tx, gone_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(handle, lists, applied_tx, gone_rx));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let controller = tokio::spawn(
        super::controller::Controller {
            client,
            lease_namespace: "mirror-agent".into(),
            identity: "controller-0".into(),
            stop,
        }
        .run(),
    );
    let (what, lease) = next_apply(&mut applied).await;
    assert_eq!(
        what,
        "POST /apis/coordination.k8s.io/v1/namespaces/mirror-agent/leases"
    );
    assert_eq!(lease["spec"]["holderIdentity"], "controller-0");
    let (what, st) = next_apply(&mut applied).await;
    assert_eq!(
        what,
        format!("PATCH {g}/trafficmirrorsessions/payments/status by mirror-agent-controller")
    );
    assert_eq!(st["kind"], "TrafficMirrorSession");
    let status = &st["status"];
    assert_eq!(status["nodesSelected"], 1);
    assert_eq!(status["nodesFailed"], 1);
    let accepted = &status["conditions"][0];
    assert_eq!(
        (&accepted["type"], &accepted["status"], &accepted["reason"]),
        (
            &json!("Accepted"),
            &json!("False"),
            &json!("TargetNotFound")
        )
    );
    assert_eq!(accepted["observedGeneration"], 2);
    stop_tx.send(true).unwrap();
    controller.await.unwrap();
}
