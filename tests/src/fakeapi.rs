//! A fake Kubernetes API server, in process: a **test double** for the end-to-end tests of
//! `mirror-agent run --kubernetes` and `mirror-agent controller`, which cannot have a real
//! kube-apiserver here. They find it through a kubeconfig ([`FakeApi::kubeconfig`]): plain
//! HTTP on 127.0.0.1, no authentication.
//!
//! It serves what those two request (`mirror-agent/src/kubernetes/client_tests.rs` pins every
//! request): list and watch of any stored resource (`?watch=true` from a `resourceVersion`,
//! one chunked JSON event per line, `fieldSelector` of `path=value` terms such as
//! `spec.nodeName=node-a`, `timeoutSeconds`), get, create (POST), replace (PUT, a
//! compare-and-swap on `metadata.resourceVersion`: the Lease), delete, and patch of objects
//! and their `/status` subresource, server-side apply (`application/apply-patch+yaml`; kube
//! sends JSON) or JSON merge patch, and `/version`. Objects are kept as JSON, built by tests
//! from the agent's own types (the CRDs of `mirror_agent::kubernetes::crd`, k8s-openapi's
//! Pod, Node, Namespace, Lease); every write takes the next resource version and emits a
//! watch event.
//!
//! What it does not do, being a double: TLS, authentication, RBAC, admission, schema
//! validation, label selectors (refused with 400), pagination (a list is one page), managed
//! fields (a server-side apply replaces what it names and keeps the rest: status for the
//! object, everything but status for `/status`), bookmarks, and generic object
//! validation. Every request is logged ([`FakeApi::requests`]) for tests to check.
//!
//! It listens inside a network namespace (the node's, where the agent runs: 127.0.0.1 there
//! is not the host's): the listening socket is created on a thread that entered it
//! ([`crate::netns::in_netns`]) and served from this double's own tokio runtime. Tests can
//! stop it (every connection is cut, new ones are refused) and start it again on the same
//! port, keeping its objects; [`FakeApi::restart`] can also forget the event history, so
//! watches resuming from an old resource version get 410 Gone as from a real API server
//! whose watch cache moved on.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use kube::Resource;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::{broadcast, watch},
    task::JoinSet,
};

use crate::netns::{NetNs, in_netns};

/// One stored object: (resource `apiVersion/plural`, namespace, name).
type Key = (String, Option<String>, String);

/// A change, as watches see it.
#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    resource: String,
    namespace: Option<String>,
    /// ADDED, MODIFIED or DELETED.
    kind: &'static str,
    object: Value,
    /// The object before a modification (a field-selected watch turns a change out of its
    /// selection into DELETED, and into it into ADDED).
    old: Option<Value>,
}

struct State {
    /// The last resource version given out.
    rv: u64,
    /// Watches from before this version get 410 Gone.
    oldest: u64,
    objects: BTreeMap<Key, Value>,
    events: Vec<Event>,
    /// Resource (`apiVersion/plural`) → kind.
    kinds: BTreeMap<String, String>,
    requests: Vec<String>,
    uids: u64,
}

/// The fake API server. Dropping it stops it.
pub struct FakeApi {
    rt: tokio::runtime::Runtime,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Event>,
    port: u16,
    serving: Option<Serving>,
}

struct Serving {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// `apiVersion/plural` of `K`, the resource key the server uses.
pub fn resource_of<K: Resource<DynamicType = ()>>() -> String {
    format!("{}/{}", K::api_version(&()), K::plural(&()))
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeApi {
    /// Starts the server on 127.0.0.1 (a free port) inside `ns`, knowing the kinds the agent
    /// and the controller ask for, and no objects.
    pub fn start(ns: &NetNs) -> FakeApi {
        use k8s_openapi::api::{
            coordination::v1::Lease,
            core::v1::{Namespace, Node, Pod},
        };
        use mirror_agent::kubernetes::crd::{
            FlowLog, MirrorNodeState, TrafficMirrorFilter, TrafficMirrorReceiver,
            TrafficMirrorSession, TrafficMirrorTarget,
        };
        fn entry<K: Resource<DynamicType = ()>>() -> (String, String) {
            (resource_of::<K>(), K::kind(&()).into_owned())
        }
        let kinds = [
            entry::<Pod>(),
            entry::<Node>(),
            entry::<Namespace>(),
            entry::<Lease>(),
            entry::<TrafficMirrorFilter>(),
            entry::<TrafficMirrorTarget>(),
            entry::<TrafficMirrorSession>(),
            entry::<TrafficMirrorReceiver>(),
            entry::<FlowLog>(),
            entry::<MirrorNodeState>(),
        ]
        .into_iter()
        .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()
            .expect("the fake API server's runtime");
        let (events, _) = broadcast::channel(4096);
        let listener = in_netns(ns, || {
            std::net::TcpListener::bind(("127.0.0.1", 0)).expect("binding the fake API server")
        });
        let port = listener.local_addr().expect("local address").port();
        let mut api = FakeApi {
            rt,
            state: Arc::new(Mutex::new(State {
                rv: 1,
                oldest: 0,
                objects: BTreeMap::new(),
                events: Vec::new(),
                kinds,
                requests: Vec::new(),
                uids: 0,
            })),
            events,
            port,
            serving: None,
        };
        api.serve(listener);
        api
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Writes a kubeconfig naming this server (`http://127.0.0.1:PORT`, no credentials) to
    /// `path`, for `KUBECONFIG`.
    pub fn kubeconfig(&self, path: &Path) -> PathBuf {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
             http://127.0.0.1:{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: nobody\n    namespace: default\ncurrent-context: fake\nusers:\n- name: \
             nobody\n  user: {{}}\n",
            self.port
        );
        std::fs::write(path, text).expect("writing the kubeconfig");
        path.to_path_buf()
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let (stop, mut stopped) = watch::channel(false);
        let state = Arc::clone(&self.state);
        let events = self.events.clone();
        let task = self.rt.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = Arc::clone(&state);
                        let events = events.clone();
                        conns.spawn(async move {
                            let _ = connection(stream, state, events).await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    _ = stopped.changed() => break,
                }
            }
            // Gone: every connection is cut, the port closed.
            conns.shutdown().await;
        });
        self.serving = Some(Serving { stop, task });
    }

    /// Stops serving: open connections (watches included) are cut, new ones refused. The
    /// objects stay.
    pub fn stop(&mut self) {
        if let Some(s) = self.serving.take() {
            let _ = s.stop.send(true);
            let _ = self.rt.block_on(s.task);
        }
    }

    /// Serves again on the same port, in `ns` (the namespace it was started in). With `forget_history`, watches from any resource
    /// version given out before get 410 Gone (their clients list again); otherwise they
    /// resume and get the changes made meanwhile.
    pub fn restart(&mut self, ns: &NetNs, forget_history: bool) {
        self.stop();
        if forget_history {
            let mut st = lock(&self.state);
            st.rv += 100;
            st.oldest = st.rv;
            st.events.clear();
        }
        let port = self.port;
        let listener = in_netns(ns, || {
            std::net::TcpListener::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("rebinding the fake API server to port {port}: {e}"))
        });
        self.serve(listener);
    }

    /// Creates or replaces `obj` (by kind, namespace and name), as `kubectl apply` would;
    /// returns it as stored.
    pub fn put<K: Resource<DynamicType = ()> + Serialize>(&self, obj: &K) -> Value {
        let value = serde_json::to_value(obj).expect("serializing a test object");
        self.put_value(&resource_of::<K>(), value)
    }

    /// [`Self::put`] of a JSON object of `resource` (`apiVersion/plural`).
    pub fn put_value(&self, resource: &str, value: Value) -> Value {
        let ns = value["metadata"]["namespace"].as_str().map(str::to_string);
        let name = value["metadata"]["name"]
            .as_str()
            .expect("an object has metadata.name")
            .to_string();
        let mut st = lock(&self.state);
        let key = (resource.to_string(), ns, name);
        let old = st.objects.get(&key).cloned();
        st.commit(key, value, old, &self.events)
    }

    /// The stored object of kind `K`, if any.
    pub fn get<K: Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let st = lock(&self.state);
        let key = (
            resource_of::<K>(),
            namespace.map(str::to_string),
            name.to_string(),
        );
        st.objects.get(&key).map(|v| {
            serde_json::from_value(v.clone())
                .unwrap_or_else(|e| panic!("stored {key:?} does not parse: {e}: {v}"))
        })
    }

    /// Changes the stored object with `f` (a watch event follows); panics if absent.
    pub fn modify<K: Resource<DynamicType = ()> + Serialize + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut K),
    ) -> Value {
        let mut obj: K = self
            .get(namespace, name)
            .unwrap_or_else(|| panic!("no {} {namespace:?}/{name}", K::kind(&())));
        f(&mut obj);
        self.put(&obj)
    }

    /// Deletes the stored object (a DELETED event follows); whether it was there.
    pub fn delete<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let mut st = lock(&self.state);
        let key = (
            resource_of::<K>(),
            namespace.map(str::to_string),
            name.to_string(),
        );
        match st.remove(&key) {
            Some(event) => {
                let _ = self.events.send(event);
                true
            }
            None => false,
        }
    }

    /// Every request served so far: `METHOD path?query [content-type]`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    /// Polls the stored `K` until `ok` holds for it; panics with the last value after
    /// `timeout` (scaled by [`crate::scaled`]).
    pub fn wait_for<K: Resource<DynamicType = ()> + DeserializeOwned + std::fmt::Debug>(
        &self,
        namespace: Option<&str>,
        name: &str,
        timeout: Duration,
        ok: impl Fn(&K) -> bool,
    ) -> K {
        let timeout = crate::scaled(timeout);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let got = self.get::<K>(namespace, name);
            if got.as_ref().is_some_and(&ok) {
                return got.expect("checked");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} {namespace:?}/{name} not as expected within {timeout:?}: {got:?}",
                K::kind(&())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

impl State {
    /// Stores `value` under `key` with the next resource version (and a uid, a creation
    /// time, a generation bumped when the spec changes); returns it as stored.
    fn write(&mut self, key: Key, mut value: Value, old: Option<&Value>) -> Value {
        self.rv += 1;
        let (resource, ns, name) = &key;
        if !value["metadata"].is_object() {
            value["metadata"] = json!({});
        }
        let meta = &mut value["metadata"];
        meta["name"] = json!(name);
        if let Some(ns) = ns {
            meta["namespace"] = json!(ns);
        }
        meta["resourceVersion"] = json!(self.rv.to_string());
        match old {
            Some(old) => {
                for keep in ["uid", "creationTimestamp"] {
                    meta[keep] = old["metadata"][keep].clone();
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = old.get("spec") != value.get("spec");
                value["metadata"]["generation"] = json!(generation + i64::from(changed));
            }
            None => {
                self.uids += 1;
                if meta["uid"].as_str().is_none_or(str::is_empty) {
                    meta["uid"] = json!(format!("fake-uid-{}", self.uids));
                }
                meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                meta["generation"] = json!(1);
            }
        }
        if let Some((group_version, _)) = resource.rsplit_once('/') {
            value["apiVersion"] = json!(group_version);
            if let Some(kind) = self.kinds.get(resource) {
                value["kind"] = json!(kind);
            }
        }
        self.objects.insert(key, value.clone());
        value
    }

    /// Stores `value` (replacing `old`), and tells the watches; returns it as stored.
    fn commit(
        &mut self,
        key: Key,
        value: Value,
        old: Option<Value>,
        events: &broadcast::Sender<Event>,
    ) -> Value {
        let resource = key.0.clone();
        let stored = self.write(key, value, old.as_ref());
        let event = self.record(&resource, &stored, old);
        let _ = events.send(event);
        stored
    }

    fn record(&mut self, resource: &str, object: &Value, old: Option<Value>) -> Event {
        let event = Event {
            rv: self.rv,
            resource: resource.to_string(),
            namespace: object["metadata"]["namespace"].as_str().map(str::to_string),
            kind: if old.is_some() { "MODIFIED" } else { "ADDED" },
            object: object.clone(),
            old,
        };
        self.events.push(event.clone());
        event
    }

    fn remove(&mut self, key: &Key) -> Option<Event> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let event = Event {
            rv: self.rv,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            kind: "DELETED",
            object,
            old: None,
        };
        self.events.push(event.clone());
        Some(event)
    }
}

/// A parsed request path: which resource, namespace, name and subresource.
#[derive(Debug, PartialEq)]
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, ..] if *plural != "status" => (Some(ns.to_string()), &rest[2..]),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(name.to_string()), None),
        [plural, name, sub] => (plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target {
        resource: format!("{group_version}/{plural}"),
        namespace,
        name,
        subresource,
    })
}

/// `%XX` and `+` decoding of a query component.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Whether `object` matches a field selector of `a.b=value` / `a.b!=value` terms.
fn selected(selector: Option<&String>, object: &Value) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, want, equal) = match term.split_once("!=") {
            Some((p, v)) => (p, v, false),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((p, v)) => (p, v, true),
                None => return false,
            },
        };
        let mut v = object;
        for part in path.split('.') {
            v = &v[part];
        }
        let got = v.as_str().unwrap_or_default();
        (got == want) == equal
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// An error answer: the code and its Status.
fn fail(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (code, status(code, reason, message))
}

/// An HTTP request as read off the connection.
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let uri = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = headers.get("content-length").and_then(|n| n.parse().ok()) {
        body = vec![0; n];
        r.read_exact(&mut body).await?;
    }
    let (path, q) = uri.split_once('?').unwrap_or((&uri, ""));
    Ok(Some(Request {
        method,
        path: path.to_string(),
        query: query(q),
        headers,
        body,
    }))
}

async fn respond<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    code: u16,
    body: &Value,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        reason(code),
        body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        _ => "Error",
    }
}

/// Serves one client connection (HTTP/1.1 keep-alive) until it closes or the server stops.
async fn connection(
    stream: TcpStream,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Event>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    while let Some(req) = read_request(&mut r).await? {
        let close = req
            .headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        {
            let mut st = lock(&state);
            let q: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let line = format!(
                "{} {}?{} {}",
                req.method,
                req.path,
                q.join("&"),
                req.headers
                    .get("content-type")
                    .map(String::as_str)
                    .unwrap_or("")
            );
            st.requests.push(line);
        }
        if req.method == "GET"
            && req
                .query
                .get("watch")
                .is_some_and(|w| w == "true" || w == "1")
        {
            watch_stream(&mut w, &req, &state, &events).await?;
            // A watch ends its response with the stream; the client may reuse the connection.
            continue;
        }
        let (code, body) = handle(&req, &state, &events);
        respond(&mut w, code, &body).await?;
        if close {
            break;
        }
    }
    Ok(())
}

/// Every request but a watch: (status code, body).
fn handle(req: &Request, state: &Mutex<State>, events: &broadcast::Sender<Event>) -> (u16, Value) {
    if req.path == "/version" {
        return (
            200,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                   "gitCommit": "fake", "gitTreeState": "clean",
                   "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                   "compiler": "gc", "platform": "linux/amd64"}),
        );
    }
    let Some(t) = target(&req.path) else {
        return fail(404, "NotFound", &format!("no route {}", req.path));
    };
    if req.query.contains_key("labelSelector") {
        return fail(
            400,
            "BadRequest",
            "the fake API server has no label selectors",
        );
    }
    let mut st = lock(state);
    let Some(kind) = st.kinds.get(&t.resource).cloned() else {
        return fail(
            404,
            "NotFound",
            &format!("the server could not find {}", t.resource),
        );
    };
    let not_found = |name: &str| fail(404, "NotFound", &format!("{kind} \"{name}\" not found"));
    let Ok(body) =
        serde_json::from_slice::<Value>(&req.body).or_else(|e| match req.method.as_str() {
            "POST" | "PUT" | "PATCH" => Err(e),
            _ => Ok(Value::Null),
        })
    else {
        return fail(400, "BadRequest", "body is not JSON");
    };
    let key_of = |name: &str| (t.resource.clone(), t.namespace.clone(), name.to_string());
    match (req.method.as_str(), &t.name) {
        ("GET", None) => {
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((r, ns, _), o)| {
                    *r == t.resource
                        && (t.namespace.is_none() || *ns == t.namespace)
                        && selected(req.query.get("fieldSelector"), o)
                })
                .map(|(_, o)| o.clone())
                .collect();
            let api_version = t.resource.rsplit_once('/').map_or("", |(gv, _)| gv);
            (
                200,
                json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                       "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            )
        }
        ("GET", Some(name)) => {
            let key = key_of(name);
            match st.objects.get(&key) {
                Some(o) => (200, o.clone()),
                None => not_found(name),
            }
        }
        ("POST", None) => {
            let mut value = body;
            let Some(name) = value["metadata"]["name"].as_str().map(str::to_string) else {
                return fail(400, "BadRequest", "metadata.name is required");
            };
            if let Some(ns) = &t.namespace {
                value["metadata"]["namespace"] = json!(ns);
            }
            let key = key_of(&name);
            if st.objects.contains_key(&key) {
                let taken = format!("{kind} \"{name}\" already exists");
                return fail(409, "AlreadyExists", &taken);
            }
            (201, st.commit(key, value, None, events))
        }
        ("PUT", Some(name)) => {
            let value = body;
            let key = key_of(name);
            let Some(old) = st.objects.get(&key).cloned() else {
                return not_found(name);
            };
            let theirs = &value["metadata"]["resourceVersion"];
            if theirs.is_string() && *theirs != old["metadata"]["resourceVersion"] {
                return fail(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {kind} \"{name}\": the object has \
                         been modified; please apply your changes to the latest version"
                    ),
                );
            }
            let value = with_status(value, &old, t.subresource.as_deref());
            (200, st.commit(key, value, Some(old), events))
        }
        ("PATCH", Some(name)) => {
            let patch = body;
            let key = key_of(name);
            let old = st.objects.get(&key).cloned();
            let content_type = req.headers.get("content-type").map_or("", String::as_str);
            let new = match content_type {
                // Server-side apply by one forced manager: the fields it sends replace the
                // object's (kept: status for the object, everything else for /status).
                "application/apply-patch+yaml" => {
                    if t.subresource.is_some() && old.is_none() {
                        return not_found(name);
                    }
                    let mut new = old.clone().unwrap_or_else(|| json!({}));
                    match t.subresource.as_deref() {
                        Some("status") => new["status"] = patch["status"].clone(),
                        _ => {
                            let status = new["status"].clone();
                            let keep = new["metadata"].clone();
                            new = patch;
                            for (k, v) in keep.as_object().into_iter().flatten() {
                                if new["metadata"].get(k).is_none() {
                                    new["metadata"][k] = v.clone();
                                }
                            }
                            if !status.is_null() {
                                new["status"] = status;
                            }
                        }
                    }
                    new
                }
                "application/merge-patch+json" => {
                    let Some(mut new) = old.clone() else {
                        return not_found(name);
                    };
                    merge(&mut new, &patch);
                    new
                }
                other => {
                    return fail(
                        415,
                        "UnsupportedMediaType",
                        &format!("the fake API server does not take {other:?} patches"),
                    );
                }
            };
            (200, st.commit(key, new, old, events))
        }
        ("DELETE", Some(name)) => {
            let key = key_of(name);
            match st.remove(&key) {
                Some(event) => {
                    let object = event.object.clone();
                    let _ = events.send(event);
                    (200, object)
                }
                None => not_found(name),
            }
        }
        _ => fail(
            405,
            "MethodNotAllowed",
            &format!("{} {}", req.method, req.path),
        ),
    }
}

/// A replace of the object keeps its status, a replace of `/status` changes only that.
fn with_status(mut value: Value, old: &Value, subresource: Option<&str>) -> Value {
    if subresource == Some("status") {
        let mut new = old.clone();
        new["status"] = value["status"].take();
        new
    } else {
        if !old["status"].is_null() {
            value["status"] = old["status"].clone();
        }
        value
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    if let Some(t) = target.as_object_mut() {
                        t.remove(k);
                    }
                } else {
                    merge(&mut target[k], v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// What a watch sends for `event` under its field selector, if anything.
fn watch_event(event: &Event, selector: Option<&String>) -> Option<Value> {
    let now = selected(selector, &event.object);
    let before = event.old.as_ref().map(|o| selected(selector, o));
    let kind = match (event.kind, now, before) {
        ("MODIFIED", true, Some(false)) => "ADDED",
        ("MODIFIED", false, Some(true)) => "DELETED",
        (k, true, _) => k,
        _ => return None,
    };
    Some(json!({"type": kind, "object": event.object}))
}

async fn chunk<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, event: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    w.write_all(format!("{:x}\r\n", line.len()).as_bytes())
        .await?;
    w.write_all(&line).await?;
    w.write_all(b"\r\n").await?;
    w.flush().await
}

/// A watch: the events after the request's resource version, then live ones, one JSON
/// object per chunk, until `timeoutSeconds` (or the server stops).
async fn watch_stream<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    req: &Request,
    state: &Mutex<State>,
    events: &broadcast::Sender<Event>,
) -> std::io::Result<()> {
    let Some(t) = target(&req.path) else {
        return respond(w, 404, &status(404, "NotFound", &req.path)).await;
    };
    let selector = req.query.get("fieldSelector");
    let wanted = |e: &Event| {
        e.resource == t.resource && (t.namespace.is_none() || e.namespace == t.namespace)
    };
    let from: Option<u64> = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v != 0);
    // Subscribed under the lock: nothing falls between the replay and the live events.
    let (mut live, backlog, last, gone) = {
        let st = lock(state);
        let live = events.subscribe();
        let gone = from.is_some_and(|f| f < st.oldest);
        let backlog: Vec<Value> = match from {
            Some(f) => st
                .events
                .iter()
                .filter(|e| e.rv > f && wanted(e))
                .filter_map(|e| watch_event(e, selector))
                .collect(),
            // No version: the current objects as ADDED, as a real server does.
            None => st
                .objects
                .iter()
                .filter(|((r, ns, _), o)| {
                    *r == t.resource
                        && (t.namespace.is_none() || *ns == t.namespace)
                        && selected(selector, o)
                })
                .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                .collect(),
        };
        (live, backlog, st.rv, gone)
    };
    w.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await?;
    if gone {
        let expired = status(
            410,
            "Expired",
            &format!("too old resource version: {}", from.unwrap_or(0)),
        );
        chunk(w, &json!({"type": "ERROR", "object": expired})).await?;
    } else {
        for e in &backlog {
            chunk(w, e).await?;
        }
        let timeout = req
            .query
            .get("timeoutSeconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1800u64);
        let end = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(end);
        loop {
            tokio::select! {
                e = live.recv() => match e {
                    Ok(e) if e.rv > last && wanted(&e) => {
                        if let Some(v) = watch_event(&e, selector) {
                            chunk(w, &v).await?;
                        }
                    }
                    Ok(_) => {}
                    // Fell behind or closed: end the stream; the client resumes from its
                    // last version, which the history replays.
                    Err(_) => break,
                },
                _ = &mut end => break,
            }
        }
    }
    w.write_all(b"0\r\n\r\n").await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resource_namespace_and_subresource() {
        let t = |p| target(p).unwrap();
        assert_eq!(
            t("/api/v1/pods"),
            Target {
                resource: "v1/pods".into(),
                namespace: None,
                name: None,
                subresource: None
            }
        );
        assert_eq!(t("/api/v1/namespaces").resource, "v1/namespaces");
        let ns = t("/api/v1/namespaces/shop");
        assert_eq!(
            (ns.resource.as_str(), ns.name.as_deref()),
            ("v1/namespaces", Some("shop"))
        );
        let pods = t("/api/v1/namespaces/shop/pods");
        assert_eq!((pods.namespace.as_deref(), pods.name), (Some("shop"), None));
        let lease = t("/apis/coordination.k8s.io/v1/namespaces/m/leases/l");
        assert_eq!(lease.resource, "coordination.k8s.io/v1/leases");
        assert_eq!(
            (lease.namespace.as_deref(), lease.name.as_deref()),
            (Some("m"), Some("l"))
        );
        let st = t("/apis/mirror-agent.io/v1alpha1/mirrornodestates/node-a/status");
        assert_eq!(st.resource, "mirror-agent.io/v1alpha1/mirrornodestates");
        assert_eq!(
            (st.name.as_deref(), st.subresource.as_deref()),
            (Some("node-a"), Some("status"))
        );
        assert_eq!(target("/healthz"), None);
    }

    #[test]
    fn queries_are_decoded_and_field_selectors_match() {
        let q = query("watch=true&fieldSelector=spec.nodeName%3Dnode-a&x=a+b");
        assert_eq!(q["fieldSelector"], "spec.nodeName=node-a");
        assert_eq!(q["x"], "a b");
        let pod = json!({"spec": {"nodeName": "node-a"}});
        assert!(selected(q.get("fieldSelector"), &pod));
        assert!(!selected(Some(&"spec.nodeName=node-b".to_string()), &pod));
        assert!(selected(Some(&"spec.nodeName!=node-b".to_string()), &pod));
    }
}
