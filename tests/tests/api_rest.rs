//! The REST-style API (Huawei Cloud, seed 003) of a real agent, over its Unix socket:
//! `/v3/{project_id}/vpc/traffic-mirror-sessions`, `…-filters` and `…-filter-rules` through
//! create, show, list, update and delete, add-sources and remove-sources; seed 003's sample PUT
//! as written; and bad bodies, which get a 4xx and change nothing.
//!
//! Requirements: root (network namespaces, and the agent loads eBPF programs); the agent binary
//! built first (`cargo build -p mirror-agent`). Each test starts its own agent in its own
//! `Topology` (uniquely named namespaces), which go away also when the test panics. Run with
//! `--test-threads=1`.
//!
//! Targets have no REST resource (docs/api.md), so they are made with the RPC action; session
//! states are read with ListTrafficMirrorSessions, the documented way to see them.

use std::{
    collections::BTreeSet,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::Agent,
    http::{self, Response, json},
    topology::{COLLECTOR_ADDR, Topology, config_with_collector},
};
use serde_json::{Value, json};

/// The project id of seed 003's answer; any project id is accepted (one node).
const PROJECT: &str = "7365fcd452924e398ec4cc1fe39c0d12";
const SETTLE: Duration = Duration::from_secs(8);

/// The session fields of seed 003's answer (docs/api.md lists the same).
const SESSION_FIELDS: [&str; 15] = [
    "id",
    "project_id",
    "name",
    "description",
    "traffic_mirror_filter_id",
    "traffic_mirror_sources",
    "traffic_mirror_target_id",
    "traffic_mirror_target_type",
    "virtual_network_id",
    "packet_length",
    "priority",
    "enabled",
    "type",
    "created_at",
    "updated_at",
];

/// The agent with the namespaces it runs in; the agent is stopped first.
struct Node {
    agent: Agent,
    _topo: Topology,
}

fn node() -> Node {
    let topo = Topology::new();
    let agent = Agent::start(&topo.node, &config_with_collector(""));
    Node { agent, _topo: topo }
}

fn str_of(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
        .to_string()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// `2023-03-23T10:53:12Z`, as in seed 003.
fn is_timestamp(v: &Value) -> bool {
    let Some(s) = v.as_str() else {
        return false;
    };
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// A Huawei session object: every field of seed 003, timestamps in its format.
fn assert_session_shape(s: &Value) {
    let have = keys(s);
    let missing: Vec<&str> = SESSION_FIELDS
        .iter()
        .copied()
        .filter(|k| !have.contains(*k))
        .collect();
    assert!(missing.is_empty(), "missing {missing:?} in {s}");
    assert_eq!(s["project_id"], PROJECT, "{s}");
    assert_eq!(s["type"], "eni", "{s}");
    assert!(s["traffic_mirror_sources"].is_array(), "{s}");
    assert!(s["enabled"].is_boolean(), "{s}");
    assert!(s["priority"].is_u64(), "{s}");
    assert!(s["virtual_network_id"].is_u64(), "{s}");
    assert!(
        is_timestamp(&s["created_at"]) && is_timestamp(&s["updated_at"]),
        "timestamps as in seed 003: {s}"
    );
}

/// The Huawei error shape: `{"error_code", "error_msg", "request_id"}`.
fn assert_error(r: &Response, status: u16, context: &str) -> Value {
    assert_eq!(r.status, status, "{context}: {}", r.body);
    let v = json(r);
    assert_eq!(
        keys(&v),
        ["error_code", "error_msg", "request_id"]
            .into_iter()
            .map(String::from)
            .collect(),
        "{context}: {v}"
    );
    for k in ["error_code", "error_msg", "request_id"] {
        assert!(
            v[k].as_str().is_some_and(|s| !s.is_empty()),
            "{context}: empty {k} in {v}"
        );
    }
    v
}

impl Node {
    fn socket(&self) -> &Path {
        &self.agent.socket
    }

    /// `method /v3/{PROJECT}/vpc/{path}` with an optional JSON body.
    fn rest(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let body = body.map(Value::to_string).unwrap_or_default();
        http::call(
            self.socket(),
            method,
            &format!("/v3/{PROJECT}/vpc/{path}"),
            Some("application/json"),
            body.as_bytes(),
        )
    }

    /// A request that must answer `status` with a JSON body carrying a request_id.
    fn expect(&self, method: &str, path: &str, body: Option<&Value>, status: u16) -> Value {
        let r = self.rest(method, path, body);
        assert_eq!(
            r.status,
            status,
            "{method} {path} {}: {}\nagent log:\n{}",
            body.map(Value::to_string).unwrap_or_default(),
            r.body,
            self.agent.log_text()
        );
        if status == 204 {
            assert!(r.body.is_empty(), "204 with a body: {}", r.body);
            return Value::Null;
        }
        assert!(
            r.content_type.starts_with("application/json"),
            "{method} {path}: {:?}",
            r.content_type
        );
        let v = json(&r);
        assert!(
            v["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path}: no request_id in {v}"
        );
        v
    }

    fn rpc(&self, params: &[(&str, &str)]) -> Value {
        let r = http::rpc_get_params(self.socket(), params);
        assert_eq!(r.status, 200, "{params:?}: {}", r.body);
        json(&r)
    }

    /// A target (RPC: REST has none) of the given InstanceType.
    fn target(&self, instance_type: &str) -> String {
        str_of(
            &self.rpc(&[
                ("Action", "CreateTrafficMirrorTarget"),
                ("InstanceType", instance_type),
                ("DestinationIp", COLLECTOR_ADDR),
            ]),
            "TrafficMirrorTargetId",
        )
    }

    fn filter(&self, name: &str) -> String {
        let v = self.expect(
            "POST",
            "traffic-mirror-filters",
            Some(&json!({"traffic_mirror_filter": {"name": name}})),
            201,
        );
        str_of(&v["traffic_mirror_filter"], "id")
    }

    fn session(&self, filter: &str, target: &str, priority: u16, sources: &[&str]) -> String {
        let v = self.expect(
            "POST",
            "traffic-mirror-sessions",
            Some(&json!({"traffic_mirror_session": {
                "name": format!("s{priority}"),
                "traffic_mirror_filter_id": filter,
                "traffic_mirror_target_id": target,
                "traffic_mirror_sources": sources,
                "priority": priority,
            }})),
            201,
        );
        str_of(&v["traffic_mirror_session"], "id")
    }

    /// The session's state from ListTrafficMirrorSessions (None: gone).
    fn state(&self, id: &str) -> Option<String> {
        let v = self.rpc(&[
            ("Action", "ListTrafficMirrorSessions"),
            ("TrafficMirrorSessionIds.1", id),
        ]);
        v["TrafficMirrorSessions"]
            .as_array()
            .and_then(|a| a.first())
            .map(|s| str_of(s, "TrafficMirrorSessionStatus"))
    }

    fn wait_state(&self, id: &str, want: Option<&str>) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let state = self.state(id);
            if state.as_deref() == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "session {id} is {state:?}, not {want:?}, after {SETTLE:?}\nagent log:\n{}",
                self.agent.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every session, filter and rule as REST lists them (without the request ids).
    fn everything(&self) -> Value {
        let mut all = serde_json::Map::new();
        for (path, field) in [
            ("traffic-mirror-sessions", "traffic_mirror_sessions"),
            ("traffic-mirror-filters", "traffic_mirror_filters"),
            ("traffic-mirror-filter-rules", "traffic_mirror_filter_rules"),
        ] {
            let v = self.expect("GET", path, None, 200);
            all.insert(field.into(), v[field].clone());
        }
        Value::Object(all)
    }
}

/// Sessions: POST (201, the object with every seed 003 field), GET one and all, PUT (200, the
/// changed object), add-sources and remove-sources (200, the object), DELETE (204, then
/// gone).
#[test]
fn session_crud_and_sources() {
    let n = node();
    let f = n.filter("f1");
    let f2 = n.filter("f2");
    let t = n.target("NetworkInterface");
    let created = n.expect(
        "POST",
        "traffic-mirror-sessions",
        Some(&json!({"traffic_mirror_session": {
            "name": "test-session",
            "description": "",
            "traffic_mirror_filter_id": f,
            "traffic_mirror_target_id": t,
            "traffic_mirror_sources": ["src0"],
            "virtual_network_id": 1,
            "packet_length": 96,
            "priority": 11,
            "enabled": true,
            "max_packets_per_second": 10000,
            "sample_one_in": 100,
            "sample_mode": "flow",
        }})),
        201,
    );
    let s = &created["traffic_mirror_session"];
    assert_session_shape(s);
    let id = str_of(s, "id");
    for (k, v) in [
        ("name", json!("test-session")),
        ("description", json!("")),
        ("traffic_mirror_filter_id", json!(f)),
        ("traffic_mirror_target_id", json!(t)),
        ("traffic_mirror_target_type", json!("eni")),
        ("traffic_mirror_sources", json!(["src0"])),
        ("virtual_network_id", json!(1)),
        ("packet_length", json!(96)),
        ("priority", json!(11)),
        ("enabled", json!(true)),
        ("max_packets_per_second", json!(10000)),
        ("max_bits_per_second", Value::Null),
        ("sample_one_in", json!(100)),
        ("sample_mode", json!("flow")),
    ] {
        assert_eq!(s[k], v, "{k} of {s}");
    }

    let shown = n.expect("GET", &format!("traffic-mirror-sessions/{id}"), None, 200);
    assert_session_shape(&shown["traffic_mirror_session"]);
    assert_eq!(shown["traffic_mirror_session"]["id"], id.as_str());
    let listed = n.expect("GET", "traffic-mirror-sessions", None, 200);
    let list = listed["traffic_mirror_sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no traffic_mirror_sessions in {listed}"));
    assert_eq!(list.len(), 1, "{listed}");
    assert_session_shape(&list[0]);
    n.wait_state(&id, Some("Created"));

    let updated = n.expect(
        "PUT",
        &format!("traffic-mirror-sessions/{id}"),
        Some(&json!({"traffic_mirror_session": {
            "name": "renamed",
            "description": "mirror of src0",
            "traffic_mirror_filter_id": f2,
            "virtual_network_id": 77,
            "packet_length": 128,
            "priority": 12,
            "enabled": false,
            "max_packets_per_second": 0,
            "max_bits_per_second": 20000000,
        }})),
        200,
    );
    let s = &updated["traffic_mirror_session"];
    assert_session_shape(s);
    for (k, v) in [
        ("name", json!("renamed")),
        ("description", json!("mirror of src0")),
        ("traffic_mirror_filter_id", json!(f2)),
        ("virtual_network_id", json!(77)),
        ("packet_length", json!(128)),
        ("priority", json!(12)),
        ("enabled", json!(false)),
        ("max_packets_per_second", Value::Null),
        ("max_bits_per_second", json!(20000000)),
        ("sample_one_in", json!(100)),
    ] {
        assert_eq!(s[k], v, "{k} of {s}");
    }
    assert!(
        str_of(s, "updated_at") >= str_of(s, "created_at"),
        "updated_at before created_at: {s}"
    );
    n.wait_state(&id, Some("Created"));

    let added = n.expect(
        "PUT",
        &format!("traffic-mirror-sessions/{id}/add-sources"),
        Some(&json!({"traffic_mirror_session": {"traffic_mirror_sources": ["src1"]}})),
        200,
    );
    assert_session_shape(&added["traffic_mirror_session"]);
    assert_eq!(
        added["traffic_mirror_session"]["traffic_mirror_sources"],
        json!(["src0", "src1"]),
        "{added}"
    );
    n.wait_state(&id, Some("Created"));

    let removed = n.expect(
        "PUT",
        &format!("traffic-mirror-sessions/{id}/remove-sources"),
        Some(&json!({"traffic_mirror_session": {"traffic_mirror_sources": ["src0"]}})),
        200,
    );
    assert_eq!(
        removed["traffic_mirror_session"]["traffic_mirror_sources"],
        json!(["src1"]),
        "{removed}"
    );
    n.wait_state(&id, Some("Created"));

    n.expect(
        "DELETE",
        &format!("traffic-mirror-sessions/{id}"),
        None,
        204,
    );
    n.wait_state(&id, None);
    let r = n.rest("GET", &format!("traffic-mirror-sessions/{id}"), None);
    assert_error(&r, 404, "GET a deleted session");
    let listed = n.expect("GET", "traffic-mirror-sessions", None, 200);
    assert_eq!(listed["traffic_mirror_sessions"], json!([]), "{listed}");
}

/// Filters: POST (201), GET one and all, PUT (200), DELETE (204, then 404).
#[test]
fn filter_crud() {
    let n = node();
    let created = n.expect(
        "POST",
        "traffic-mirror-filters",
        Some(&json!({"traffic_mirror_filter": {"name": "web", "description": "http"}})),
        201,
    );
    let f = &created["traffic_mirror_filter"];
    let id = str_of(f, "id");
    assert!(id.starts_with("tmf-"), "{f}");
    assert_eq!(
        (
            &f["name"],
            &f["description"],
            &f["project_id"],
            &f["ingress_rules"],
            &f["egress_rules"]
        ),
        (
            &json!("web"),
            &json!("http"),
            &json!(PROJECT),
            &json!([]),
            &json!([])
        ),
        "{f}"
    );
    assert!(
        is_timestamp(&f["created_at"]) && is_timestamp(&f["updated_at"]),
        "{f}"
    );

    let shown = n.expect("GET", &format!("traffic-mirror-filters/{id}"), None, 200);
    assert_eq!(shown["traffic_mirror_filter"]["id"], id.as_str(), "{shown}");
    let listed = n.expect("GET", "traffic-mirror-filters", None, 200);
    assert_eq!(
        listed["traffic_mirror_filters"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    let updated = n.expect(
        "PUT",
        &format!("traffic-mirror-filters/{id}"),
        Some(&json!({"traffic_mirror_filter": {"name": "web2", "description": "changed"}})),
        200,
    );
    assert_eq!(
        (
            &updated["traffic_mirror_filter"]["name"],
            &updated["traffic_mirror_filter"]["description"]
        ),
        (&json!("web2"), &json!("changed")),
        "{updated}"
    );

    n.expect("DELETE", &format!("traffic-mirror-filters/{id}"), None, 204);
    let r = n.rest("GET", &format!("traffic-mirror-filters/{id}"), None);
    assert_error(&r, 404, "GET a deleted filter");
    let listed = n.expect("GET", "traffic-mirror-filters", None, 200);
    assert_eq!(listed["traffic_mirror_filters"], json!([]), "{listed}");
}

/// Filter rules: POST (201, Huawei's spellings: `reject`, lower-case protocol, `80-200`
/// ports, `ethertype`), GET one and all, shown in their filter, PUT (200), DELETE (204).
#[test]
fn filter_rule_crud() {
    let n = node();
    let f = n.filter("rules");
    let created = n.expect(
        "POST",
        "traffic-mirror-filter-rules",
        Some(&json!({"traffic_mirror_filter_rule": {
            "traffic_mirror_filter_id": f,
            "direction": "ingress",
            "priority": 1,
            "action": "accept",
            "protocol": "tcp",
            "ethertype": "IPv4",
            "source_cidr_block": "198.18.0.0/16",
            "destination_cidr_block": "198.18.10.0/24",
            "source_port_range": "1-65535",
            "destination_port_range": "80-200",
        }})),
        201,
    );
    let r = &created["traffic_mirror_filter_rule"];
    let rid = str_of(r, "id");
    for (k, v) in [
        ("traffic_mirror_filter_id", json!(f)),
        ("project_id", json!(PROJECT)),
        ("direction", json!("ingress")),
        ("priority", json!(1)),
        ("action", json!("accept")),
        ("protocol", json!("tcp")),
        ("ethertype", json!("IPv4")),
        ("source_cidr_block", json!("198.18.0.0/16")),
        ("destination_cidr_block", json!("198.18.10.0/24")),
        ("destination_port_range", json!("80-200")),
    ] {
        assert_eq!(r[k], v, "{k} of {r}");
    }
    let egress = n.expect(
        "POST",
        "traffic-mirror-filter-rules",
        Some(&json!({"traffic_mirror_filter_rule": {
            "traffic_mirror_filter_id": f,
            "direction": "egress",
            "priority": 2,
            "action": "reject",
            "protocol": "udp",
        }})),
        201,
    );
    let egress = &egress["traffic_mirror_filter_rule"];
    assert_eq!(
        (&egress["direction"], &egress["action"], &egress["protocol"]),
        (&json!("egress"), &json!("reject"), &json!("udp")),
        "{egress}"
    );
    let egress_id = str_of(egress, "id");

    let shown = n.expect(
        "GET",
        &format!("traffic-mirror-filter-rules/{rid}"),
        None,
        200,
    );
    assert_eq!(shown["traffic_mirror_filter_rule"]["id"], rid.as_str());
    let listed = n.expect("GET", "traffic-mirror-filter-rules", None, 200);
    let all: BTreeSet<String> = listed["traffic_mirror_filter_rules"]
        .as_array()
        .unwrap_or_else(|| panic!("no list in {listed}"))
        .iter()
        .map(|r| str_of(r, "id"))
        .collect();
    assert_eq!(all, [rid.clone(), egress_id.clone()].into(), "{listed}");
    let filter = n.expect("GET", &format!("traffic-mirror-filters/{f}"), None, 200);
    assert_eq!(
        (
            &filter["traffic_mirror_filter"]["ingress_rules"][0]["id"],
            &filter["traffic_mirror_filter"]["egress_rules"][0]["id"]
        ),
        (&json!(rid), &json!(egress_id)),
        "{filter}"
    );

    // Only the priority: the other fields stay.
    let updated = n.expect(
        "PUT",
        &format!("traffic-mirror-filter-rules/{rid}"),
        Some(&json!({"traffic_mirror_filter_rule": {"priority": 5}})),
        200,
    );
    let mut want = r.clone();
    want["priority"] = json!(5);
    assert_eq!(updated["traffic_mirror_filter_rule"], want, "{updated}");
    let updated = n.expect(
        "PUT",
        &format!("traffic-mirror-filter-rules/{rid}"),
        Some(&json!({"traffic_mirror_filter_rule": {"action": "reject", "protocol": "udp"}})),
        200,
    );
    assert_eq!(
        (
            &updated["traffic_mirror_filter_rule"]["action"],
            &updated["traffic_mirror_filter_rule"]["protocol"]
        ),
        (&json!("reject"), &json!("udp")),
        "{updated}"
    );

    n.expect(
        "DELETE",
        &format!("traffic-mirror-filter-rules/{rid}"),
        None,
        204,
    );
    let r = n.rest("GET", &format!("traffic-mirror-filter-rules/{rid}"), None);
    assert_error(&r, 404, "GET a deleted rule");
    let filter = n.expect("GET", &format!("traffic-mirror-filters/{f}"), None, 200);
    assert_eq!(
        filter["traffic_mirror_filter"]["ingress_rules"],
        json!([]),
        "{filter}"
    );
}

/// Seed 003's sample PUT, body as written, with the project id of the seed's answer in place
/// of `{project_id}`: the session does not exist here, so 404 in Huawei's error shape.
#[test]
fn seed_003_update_session_sample_as_written() {
    let n = node();
    let before = n.everything();
    let body = r#"{
    "traffic_mirror_session": {
        "traffic_mirror_target_id":"c9f8acef-d550-4fbe-be7c-e8bfd3501dc1",
        "traffic_mirror_target_type":"elb"
    }
}"#;
    let path =
        format!("/v3/{PROJECT}/vpc/traffic-mirror-sessions/16538eda-7e94-4b90-b5f3-a653f62dc817");
    let r = http::call(
        n.socket(),
        "PUT",
        &path,
        Some("application/json"),
        body.as_bytes(),
    );
    assert_error(&r, 404, &format!("seed 003 PUT {path}"));
    assert_eq!(n.everything(), before);
}

/// Seed 003's sample PUT with a real session and an SLB target: 200 and the seed's answer
/// shape, the target changed and typed `elb`.
#[test]
fn seed_003_update_session_sample_with_real_ids() {
    let n = node();
    let f = n.filter("f");
    let eni = n.target("NetworkInterface");
    let elb = n.target("SLB");
    let id = n.session(&f, &eni, 11, &["src0"]);
    n.wait_state(&id, Some("Created"));
    let body = format!(
        r#"{{
    "traffic_mirror_session": {{
        "traffic_mirror_target_id":"{elb}",
        "traffic_mirror_target_type":"elb"
    }}
}}"#
    );
    let r = http::call(
        n.socket(),
        "PUT",
        &format!("/v3/{PROJECT}/vpc/traffic-mirror-sessions/{id}"),
        Some("application/json"),
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r);
    assert_eq!(
        keys(&v),
        ["request_id", "traffic_mirror_session"]
            .into_iter()
            .map(String::from)
            .collect(),
        "{v}"
    );
    let s = &v["traffic_mirror_session"];
    assert_session_shape(s);
    assert_eq!(
        (
            &s["id"],
            &s["traffic_mirror_target_id"],
            &s["traffic_mirror_target_type"]
        ),
        (&json!(id), &json!(elb), &json!("elb")),
        "{s}"
    );
}

/// Every object kind answers 404 (Huawei's error shape) for an id that does not exist, for
/// every method that names one.
#[test]
fn unknown_ids_are_404() {
    let n = node();
    let session_body = json!({"traffic_mirror_session": {"name": "x"}});
    let sources_body = json!({"traffic_mirror_session": {"traffic_mirror_sources": ["src0"]}});
    let filter_body = json!({"traffic_mirror_filter": {"name": "x"}});
    let rule_body = json!({"traffic_mirror_filter_rule": {"priority": 3}});
    let missing = "16538eda-7e94-4b90-b5f3-a653f62dc817";
    let cases: Vec<(&str, String, Option<&Value>)> = vec![
        ("GET", format!("traffic-mirror-sessions/{missing}"), None),
        (
            "PUT",
            format!("traffic-mirror-sessions/{missing}"),
            Some(&session_body),
        ),
        ("DELETE", format!("traffic-mirror-sessions/{missing}"), None),
        (
            "PUT",
            format!("traffic-mirror-sessions/{missing}/add-sources"),
            Some(&sources_body),
        ),
        (
            "PUT",
            format!("traffic-mirror-sessions/{missing}/remove-sources"),
            Some(&sources_body),
        ),
        ("GET", format!("traffic-mirror-filters/{missing}"), None),
        (
            "PUT",
            format!("traffic-mirror-filters/{missing}"),
            Some(&filter_body),
        ),
        ("DELETE", format!("traffic-mirror-filters/{missing}"), None),
        (
            "GET",
            format!("traffic-mirror-filter-rules/{missing}"),
            None,
        ),
        (
            "PUT",
            format!("traffic-mirror-filter-rules/{missing}"),
            Some(&rule_body),
        ),
        (
            "DELETE",
            format!("traffic-mirror-filter-rules/{missing}"),
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body) in &cases {
        let r = n.rest(method, path, *body);
        let shape_ok = serde_json::from_str::<Value>(&r.body)
            .is_ok_and(|v| v["error_code"].is_string() && v["request_id"].is_string());
        if r.status != 404 || !shape_ok {
            failures.push(format!("{method} {path} → {} {}", r.status, r.body));
        }
    }
    assert!(
        failures.is_empty(),
        "{} requests were not 404:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Invalid bodies and values: 400 in Huawei's error shape (never a 5xx), and nothing changes.
#[test]
fn invalid_bodies_are_400_and_change_nothing() {
    let n = node();
    let f = n.filter("f");
    let t = n.target("NetworkInterface");
    let s = n.session(&f, &t, 1, &["src0"]);
    n.wait_state(&s, Some("Created"));
    let rule = n.expect(
        "POST",
        "traffic-mirror-filter-rules",
        Some(&json!({"traffic_mirror_filter_rule": {
            "traffic_mirror_filter_id": f, "direction": "ingress", "priority": 1, "action": "accept",
        }})),
        201,
    );
    let rule = str_of(&rule["traffic_mirror_filter_rule"], "id");
    n.wait_state(&s, Some("Created"));
    let before = n.everything();

    let session = |o: Value| -> Vec<u8> {
        let mut base = json!({
            "traffic_mirror_filter_id": f,
            "traffic_mirror_target_id": t,
            "traffic_mirror_sources": ["src1"],
            "priority": 2,
        });
        if let (Some(b), Value::Object(o)) = (base.as_object_mut(), o) {
            b.extend(o);
        }
        json!({"traffic_mirror_session": base})
            .to_string()
            .into_bytes()
    };
    let sessions = "traffic-mirror-sessions".to_string();
    let this = format!("traffic-mirror-sessions/{s}");
    let add = format!("traffic-mirror-sessions/{s}/add-sources");
    let filters = "traffic-mirror-filters".to_string();
    let rules = "traffic-mirror-filter-rules".to_string();
    let this_rule = format!("traffic-mirror-filter-rules/{rule}");
    let long = "n".repeat(129);
    let cases: Vec<(&str, &String, Vec<u8>)> = vec![
        ("POST", &sessions, b"".to_vec()),
        ("POST", &sessions, b"not json".to_vec()),
        ("POST", &sessions, b"{\"traffic_mirror_session\": ".to_vec()),
        ("POST", &sessions, b"[]".to_vec()),
        ("POST", &sessions, b"{}".to_vec()),
        ("POST", &sessions, br#"{"traffic_mirror_session": "x"}"#.to_vec()),
        ("POST", &sessions, br#"{"traffic_mirror_session": null}"#.to_vec()),
        ("POST", &sessions, vec![0xff, 0xfe, 0x00, 0x7b]),
        ("POST", &sessions, session(json!({"priority": "abc"}))),
        ("POST", &sessions, session(json!({"priority": 0}))),
        ("POST", &sessions, session(json!({"priority": 32767}))),
        ("POST", &sessions, session(json!({"priority": 1.5}))),
        ("POST", &sessions, session(json!({"priority": [2]}))),
        ("POST", &sessions, session(json!({"priority": null}))),
        ("POST", &sessions, session(json!({"virtual_network_id": 16_777_216}))),
        ("POST", &sessions, session(json!({"virtual_network_id": -1}))),
        ("POST", &sessions, session(json!({"packet_length": 63}))),
        ("POST", &sessions, session(json!({"packet_length": 9001}))),
        ("POST", &sessions, session(json!({"max_packets_per_second": -1}))),
        ("POST", &sessions, session(json!({"max_bits_per_second": 1.5}))),
        ("POST", &sessions, session(json!({"sample_one_in": 0}))),
        ("POST", &sessions, session(json!({"sample_one_in": 16_777_217}))),
        ("POST", &sessions, session(json!({"sample_mode": "bytes"}))),
        ("PUT", &this, br#"{"traffic_mirror_session": {"max_packets_per_second": "many"}}"#.to_vec()),
        ("POST", &sessions, session(json!({"name": long}))),
        ("POST", &sessions, session(json!({"description": "<b>"}))),
        ("POST", &sessions, session(json!({"enabled": "maybe"}))),
        ("POST", &sessions, session(json!({"traffic_mirror_sources": "src1"}))),
        ("POST", &sessions, session(json!({"traffic_mirror_sources": [1, {"a": 2}]}))),
        ("POST", &sessions, session(json!({"traffic_mirror_sources": ["src1", "src1"]}))),
        ("POST", &sessions, session(json!({"traffic_mirror_sources": ["nosuchif0"]}))),
        ("POST", &sessions, session(json!({"priority": 1}))),
        ("PUT", &this, br#"{"traffic_mirror_session": {"priority": 0}}"#.to_vec()),
        ("PUT", &this, br#"{"traffic_mirror_session": {"description": "a>b"}}"#.to_vec()),
        ("PUT", &this, br#"{"traffic_mirror_filter": {"name": "wrong wrapper"}}"#.to_vec()),
        ("PUT", &this, b"garbage".to_vec()),
        ("PUT", &add, br#"{"traffic_mirror_session": {}}"#.to_vec()),
        ("PUT", &add, br#"{"traffic_mirror_session": {"traffic_mirror_sources": "src1"}}"#.to_vec()),
        ("PUT", &add, br#"{"traffic_mirror_session": {"traffic_mirror_sources": ["src0"]}}"#.to_vec()),
        ("PUT", &add, br#"{"traffic_mirror_session": {"traffic_mirror_sources": ["nosuchif0"]}}"#.to_vec()),
        ("POST", &filters, br#"{"traffic_mirror_filter": {"name": ""}}"#.to_vec()),
        ("POST", &filters, format!(r#"{{"traffic_mirror_filter": {{"name": "{long}"}}}}"#).into_bytes()),
        ("POST", &filters, br#"{"traffic_mirror_filter": {"description": "<script>"}}"#.to_vec()),
        ("POST", &filters, br#"{"traffic_mirror_filter": {"name": ["x"]}}"#.to_vec()),
        ("POST", &rules, br#"{"traffic_mirror_filter_rule": {"direction": "ingress", "priority": 2, "action": "accept"}}"#.to_vec()),
        ("POST", &rules, format!(r#"{{"traffic_mirror_filter_rule": {{"traffic_mirror_filter_id": "{f}", "direction": "sideways", "priority": 2, "action": "accept"}}}}"#).into_bytes()),
        ("POST", &rules, format!(r#"{{"traffic_mirror_filter_rule": {{"traffic_mirror_filter_id": "{f}", "direction": "ingress", "priority": 0, "action": "accept"}}}}"#).into_bytes()),
        ("POST", &rules, format!(r#"{{"traffic_mirror_filter_rule": {{"traffic_mirror_filter_id": "{f}", "direction": "ingress", "priority": 65536, "action": "accept"}}}}"#).into_bytes()),
        ("POST", &rules, format!(r#"{{"traffic_mirror_filter_rule": {{"traffic_mirror_filter_id": "{f}", "direction": "ingress", "priority": 2, "action": "explode"}}}}"#).into_bytes()),
        ("POST", &rules, format!(r#"{{"traffic_mirror_filter_rule": {{"traffic_mirror_filter_id": "{f}", "direction": "ingress", "priority": 2, "action": "accept", "protocol": "tcp", "destination_port_range": "80-70000"}}}}"#).into_bytes()),
        ("POST", &rules, format!(r#"{{"traffic_mirror_filter_rule": {{"traffic_mirror_filter_id": "{f}", "direction": "ingress", "priority": 2, "action": "accept", "source_cidr_block": "10.0.0.0/40"}}}}"#).into_bytes()),
        ("POST", &rules, format!(r#"{{"traffic_mirror_filter_rule": {{"traffic_mirror_filter_id": "{f}", "direction": "ingress", "priority": 2, "action": "accept", "ethertype": "IPv5"}}}}"#).into_bytes()),
        ("PUT", &this_rule, br#"{"traffic_mirror_filter_rule": {"priority": "high"}}"#.to_vec()),
        ("PUT", &this_rule, br#"{"traffic_mirror_filter_rule": {"protocol": "gre2"}}"#.to_vec()),
    ];
    let mut failures = Vec::new();
    for (method, path, body) in &cases {
        let r = http::call(
            n.socket(),
            method,
            &format!("/v3/{PROJECT}/vpc/{path}"),
            Some("application/json"),
            body,
        );
        let shape_ok = serde_json::from_str::<Value>(&r.body)
            .is_ok_and(|v| v["error_code"].is_string() && v["request_id"].is_string());
        // 409 is the right answer for the one priority conflict in the table.
        if !(r.status == 400 || r.status == 409) || !shape_ok {
            failures.push(format!(
                "{method} {path} {} → {} {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]),
                r.status,
                r.body
            ));
        }
    }
    // Paths and methods that do not exist: 4xx, never 5xx.
    for (method, path) in [
        ("GET", format!("/v3/{PROJECT}/vpc/traffic-mirror-nothing")),
        (
            "PATCH",
            format!("/v3/{PROJECT}/vpc/traffic-mirror-sessions/{s}"),
        ),
        (
            "POST",
            format!("/v3/{PROJECT}/vpc/traffic-mirror-sessions/{s}"),
        ),
        ("GET", format!("/v3/{PROJECT}/vpc")),
        ("GET", "/v3/".to_string()),
        (
            "DELETE",
            format!("/v3/{PROJECT}/vpc/traffic-mirror-sessions"),
        ),
    ] {
        let r = http::call(n.socket(), method, &path, None, b"");
        if !(400..500).contains(&r.status) {
            failures.push(format!("{method} {path} → {} {}", r.status, r.body));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad requests were not answered 400/409 with an error body:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        n.everything(),
        before,
        "bad requests changed the state\nagent log:\n{}",
        n.agent.log_text()
    );
}
