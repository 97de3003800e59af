//! A fake of the Kubernetes API calls sidecred makes, enforcing what its RBAC role grants:
//! - one Secret: `get`, `patch` (JSON merge patch with `resourceVersion` concurrency) and `watch` (a
//!   streaming watch limited to that name by `fieldSelector`, with ADDED / MODIFIED / BOOKMARK events and
//!   `410 Gone` once the resource version it asks from has been compacted away);
//! - Leases: `get` and `update` (PUT with `resourceVersion` concurrency; `spec` times must be MicroTime),
//!   `create` only when allowed (a Role cannot limit `create` by name, so the manifests ship the Lease).
//!
//! It speaks the real JSON (objects with `metadata.resourceVersion`, base64 Secret `data`, `Status`
//! errors), counts every request with its verb and status, and can be taken down (`set_down`: every
//! request answers 503 and open watches end) to play an API server outage. Each pod may get a token of its
//! own (`write_pod_kubeconfig`), so one pod can be cut off (`cut_off`) while the others carry on; Secret
//! writes alone can be refused (`refuse_secret_writes`). `misbehave.rs` holds the switches that make it hang
//! a call, break a watch or send what no client should take.

mod lease;
mod misbehave;
#[cfg(test)]
mod tests;
mod watch;

use crate::fakes::server::FakeServer;
use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

pub use lease::LeaseSpec;
pub use misbehave::WatchMode;

/// A request as the API server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub verb: String,
    pub path: String,
    pub content_type: Option<String>,
    pub status: u16,
    /// The Lease holder named in an update, for counting who renewed.
    pub holder: Option<String>,
    /// When the request arrived, for checking how retries are spaced.
    pub at: Instant,
    /// The pod whose own token made the request ([`FakeKube::write_pod_kubeconfig`]).
    pub pod: Option<String>,
}

type Body = BoxBody<Bytes, Infallible>;

pub(crate) struct State {
    namespace: String,
    name: String,
    token: String,
    data: BTreeMap<String, Vec<u8>>,
    /// One counter for every object, as etcd has.
    resource_version: u64,
    secret_rv: u64,
    /// The Secret's versions since the last compaction, for watches that resume from one.
    history: Vec<(u64, Value)>,
    /// Watches asking for an older version than this get `410 Gone`.
    oldest_rv: u64,
    events: broadcast::Sender<(u64, Value)>,
    bookmark_every: Duration,
    leases: BTreeMap<String, lease::Stored>,
    allow_lease_create: bool,
    seen: Vec<Seen>,
    /// How many more patches to answer with 409 after changing the resourceVersion (a concurrent writer).
    conflicting_patches: u32,
    down: bool,
    /// The Secret's labels (a controller that manages it marks it so).
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    switches: misbehave::Switches,
    /// Tells open watches that the server went down.
    down_tx: tokio::sync::watch::Sender<bool>,
    /// Each pod's own service-account token, and the pod it names.
    pod_tokens: BTreeMap<String, String>,
    /// Pods cut off from the API server: their requests land nowhere.
    cut_off: std::collections::BTreeSet<String>,
    /// Secret patches fail (an API server that takes reads but no writes).
    refuse_secret_writes: bool,
}

impl State {
    fn next_rv(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn secret_changed(&mut self) {
        let rv = self.next_rv();
        self.secret_rv = rv;
        let object = secret_object(self);
        self.history.push((rv, object.clone()));
        let _ = self.events.send((rv, object));
    }
}

pub struct FakeKube {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: FakeServer,
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl FakeKube {
    /// Serves one Secret `namespace/name` holding `key` = `value`; requests must carry `token`.
    pub async fn start(namespace: &str, name: &str, token: &str, key: &str, value: &[u8]) -> FakeKube {
        let (events, _) = broadcast::channel(1024);
        let (down_tx, _) = tokio::sync::watch::channel(false);
        let mut state = State {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            token: token.to_owned(),
            data: BTreeMap::from([(key.to_owned(), value.to_vec())]),
            resource_version: 1000,
            secret_rv: 1000,
            history: Vec::new(),
            oldest_rv: 1000,
            events,
            bookmark_every: Duration::from_secs(1),
            leases: BTreeMap::new(),
            allow_lease_create: false,
            seen: Vec::new(),
            conflicting_patches: 0,
            down: false,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            switches: misbehave::Switches::default(),
            down_tx,
            pod_tokens: BTreeMap::new(),
            cut_off: Default::default(),
            refuse_secret_writes: false,
        };
        let object = secret_object(&state);
        state.history.push((1000, object));
        let state = Arc::new(Mutex::new(state));
        let st = state.clone();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = FakeServer::bind(loopback, move |req| handle(req, st.clone()))
            .await
            .expect("bind the fake Kubernetes API");
        let addr = server.addr;
        FakeKube { addr, state, _server: server }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// A kubeconfig that points at this server, for `KUBECONFIG`.
    pub fn write_kubeconfig(&self, path: &Path) {
        let st = self.st();
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: agent\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: agent\n    namespace: {ns}\ncurrent-context: fake\n",
            addr = self.addr,
            token = st.token,
            ns = st.namespace,
        );
        std::fs::write(path, config).expect("write kubeconfig");
    }

    /// A kubeconfig for one pod, with a token of its own (each pod gets its own projected token), so
    /// the server can tell the pod's requests apart ([`FakeKube::cut_off`]).
    pub fn write_pod_kubeconfig(&self, path: &Path, pod: &str) {
        self.write_kubeconfig(path);
        let mut st = self.st();
        let token = format!("{}-{pod}", st.token);
        st.pod_tokens.insert(token.clone(), pod.to_owned());
        let config = std::fs::read_to_string(path).expect("read kubeconfig");
        let config = config.replace(&format!("token: {}\n", st.token), &format!("token: {token}\n"));
        std::fs::write(path, config).expect("write kubeconfig");
    }

    /// Cuts `pod` off from the API server, or lets it back: while cut off, every request with its token
    /// fails at once with 500 and nothing it sends lands.
    pub fn cut_off(&self, pod: &str, cut: bool) {
        let mut st = self.st();
        if cut {
            st.cut_off.insert(pod.to_owned());
        } else {
            st.cut_off.remove(pod);
        }
    }

    /// Secret patches fail with 500 until told otherwise; reads, watches and Leases work.
    pub fn refuse_secret_writes(&self, refuse: bool) {
        self.st().refuse_secret_writes = refuse;
    }

    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.st().data.get(key).cloned()
    }

    /// Replaces the Secret's value, as `kubectl apply` after a new login would.
    pub fn set_value(&self, key: &str, value: &[u8]) {
        let mut st = self.st();
        st.data.insert(key.to_owned(), value.to_vec());
        st.secret_changed();
    }

    /// The Secret's `resourceVersion` now.
    pub fn secret_resource_version(&self) -> u64 {
        self.st().secret_rv
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.st().seen.clone()
    }

    /// The Secret's annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<String> {
        self.st().annotations.get(key).cloned()
    }

    /// Labels the Secret, as External Secrets does the Secrets it renders.
    pub fn set_label(&self, key: &str, value: &str) {
        let mut st = self.st();
        st.labels.insert(key.to_owned(), value.to_owned());
        st.secret_changed();
    }

    pub fn conflict_next_patch(&self) {
        self.conflict_next_patches(1);
    }

    /// A writer that always gets in first: the next `n` patches each lose the race.
    pub fn conflict_next_patches(&self, n: u32) {
        self.st().conflicting_patches = n;
    }

    /// Forgets the Secret's history: a watch resuming from an older version gets `410 Gone`.
    pub fn compact(&self) {
        let mut st = self.st();
        st.oldest_rv = st.secret_rv;
        let keep = st.secret_rv;
        st.history.retain(|(rv, _)| *rv >= keep);
    }

    pub fn set_bookmark_interval(&self, every: Duration) {
        self.st().bookmark_every = every;
    }

    /// An outage: while down, every request answers 503 and open watches end.
    pub fn set_down(&self, down: bool) {
        let mut st = self.st();
        st.down = down;
        let _ = st.down_tx.send(down);
    }

    /// Lets the service account create Leases (a Role cannot limit `create` to one name).
    pub fn allow_lease_create(&self) {
        self.st().allow_lease_create = true;
    }

    /// Creates a Lease directly, as applying the manifests would.
    pub fn put_lease(&self, name: &str, spec: LeaseSpec) {
        let mut st = self.st();
        let rv = st.next_rv();
        st.leases.insert(name.to_owned(), lease::Stored { spec, rv });
    }

    pub fn lease(&self, name: &str) -> Option<LeaseSpec> {
        self.st().leases.get(name).map(|l| l.spec.clone())
    }

    /// Reads the Lease `name` from anywhere (a task that outlives a borrow of the fake).
    pub fn lease_reader(&self, name: &str) -> impl Fn() -> Option<LeaseSpec> + Send + 'static {
        let (state, name) = (self.state.clone(), name.to_owned());
        move || state.lock().unwrap().leases.get(&name).map(|l| l.spec.clone())
    }
}

pub(crate) fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(code, status_object(code, reason, message))
}

pub(crate) fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    })
}

pub(crate) fn respond(code: StatusCode, body: Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp
}

fn forbidden(verb: &str, path: &str) -> Response<Body> {
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!("{verb} {path} is forbidden: not allowed for this service account"),
    )
}

fn secret_object(st: &State) -> Value {
    let data: serde_json::Map<String, Value> =
        st.data.iter().map(|(k, v)| (k.clone(), Value::String(b64(v)))).collect();
    json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {
            "name": st.name, "namespace": st.namespace,
            "resourceVersion": st.secret_rv.to_string(),
            "uid": "00000000-0000-0000-0000-000000000001",
            "labels": st.labels,
            "annotations": st.annotations,
        },
        "type": "Opaque",
        "data": data,
    })
}

async fn handle(req: Request<Incoming>, st: Arc<Mutex<State>>) -> Result<Response<Body>, hyper::Error> {
    let at = Instant::now();
    let query = req.uri().query().unwrap_or("").to_owned();
    let params: BTreeMap<String, String> = form_pairs(&query);
    let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match *req.method() {
        Method::GET if watching => "watch",
        Method::GET => "get",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        Method::POST => "create",
        _ => "other",
    }
    .to_owned();
    let path = req.uri().path().to_owned();
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = req.into_body().collect().await?.to_bytes();

    let hang = {
        let mut s = st.lock().unwrap();
        let hang = verb == "get"
            && path == format!("/api/v1/namespaces/{}/secrets/{}", s.namespace, s.name)
            && misbehave::hangs(&s);
        if hang {
            let pod = pod_of(&s, auth.as_deref());
            s.seen.push(Seen {
                verb: verb.clone(),
                path: path.clone(),
                content_type: None,
                status: 0,
                holder: None,
                pod,
                at,
            });
        }
        hang
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let mut s = st.lock().unwrap();
    let secret_path = format!("/api/v1/namespaces/{}/secrets/{}", s.namespace, s.name);
    let secrets_path = format!("/api/v1/namespaces/{}/secrets", s.namespace);
    let leases_path = format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases", s.namespace);
    let mut holder = None;
    let resp = if s.down {
        status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the API server is down (fake outage)")
    } else if !authorized(&s, auth.as_deref()) {
        status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    } else if is_cut_off(&s, auth.as_deref()) {
        status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "the pod is cut off (fake partition)")
    } else if path == secret_path && verb == "get" {
        match s.switches.huge_secret {
            Some(bytes) => misbehave::huge_secret(&s, bytes),
            None => respond(StatusCode::OK, secret_object(&s)),
        }
    } else if path == secret_path && verb == "patch" && s.refuse_secret_writes {
        status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "writes are refused (fake)")
    } else if path == secret_path && verb == "patch" {
        patch_secret(&mut s, content_type.as_deref(), &body)
    } else if path == secrets_path && verb == "watch" {
        // `resourceNames` allows a watch only when it names the one object.
        if params.get("fieldSelector").map(String::as_str) != Some(&format!("metadata.name={}", s.name)) {
            forbidden(&verb, &path)
        } else {
            watch::start(&mut s, &params)
        }
    } else if let Some(name) = path.strip_prefix(&format!("{leases_path}/")) {
        match verb.as_str() {
            "get" => lease::get(&s, name),
            "update" => {
                let (resp, who) = lease::update(&mut s, name, &body);
                holder = who;
                resp
            }
            _ => forbidden(&verb, &path),
        }
    } else if path == leases_path && verb == "create" && s.allow_lease_create {
        let (resp, who) = lease::create(&mut s, &body);
        holder = who;
        resp
    } else {
        forbidden(&verb, &path)
    };
    let code = resp.status().as_u16();
    let pod = pod_of(&s, auth.as_deref());
    s.seen.push(Seen { verb, path, content_type, status: code, holder, at, pod });
    Ok(resp)
}

/// The service account's token, or one of the pods' own.
fn authorized(s: &State, auth: Option<&str>) -> bool {
    let token = auth.and_then(|a| a.strip_prefix("Bearer "));
    token.is_some_and(|t| t == s.token || s.pod_tokens.contains_key(t))
}

fn pod_of(s: &State, auth: Option<&str>) -> Option<String> {
    let token = auth.and_then(|a| a.strip_prefix("Bearer "))?;
    s.pod_tokens.get(token).cloned()
}

fn is_cut_off(s: &State, auth: Option<&str>) -> bool {
    pod_of(s, auth).is_some_and(|pod| s.cut_off.contains(&pod))
}

fn form_pairs(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn patch_secret(s: &mut State, content_type: Option<&str>, body: &[u8]) -> Response<Body> {
    if content_type != Some("application/merge-patch+json") {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "expected a JSON merge patch",
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "patch is not JSON");
    };
    let wanted_rv = patch.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_owned);
    if s.conflicting_patches > 0 {
        s.conflicting_patches -= 1;
        s.secret_changed();
    }
    if wanted_rv.is_some() && wanted_rv != Some(s.secret_rv.to_string()) {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    let mut decoded = Vec::new();
    if let Some(data) = patch.get("data").and_then(Value::as_object) {
        for (k, v) in data {
            match v.as_str().and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok()) {
                Some(bytes) => decoded.push((k.clone(), bytes)),
                None => return status(StatusCode::BAD_REQUEST, "BadRequest", "data values must be base64"),
            }
        }
    }
    for (k, bytes) in decoded {
        s.data.insert(k, bytes);
    }
    if let Some(annotations) = patch.pointer("/metadata/annotations").and_then(Value::as_object) {
        for (k, v) in annotations {
            match v.as_str() {
                Some(v) => s.annotations.insert(k.clone(), v.to_owned()),
                None => s.annotations.remove(k),
            };
        }
    }
    s.secret_changed();
    respond(StatusCode::OK, secret_object(s))
}
