//! A fake of the two Kubernetes API calls the agent's Secret write-back makes: `get` and `patch` of one
//! Secret. It speaks the real JSON (Secret objects with base64 `data`, `Status` errors, JSON merge patch
//! with `resourceVersion` concurrency) and enforces what the RBAC role grants: only those two verbs, only
//! on that one Secret, only with the expected bearer token.

use crate::fakes::server::FakeServer;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A request as the API server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub verb: String,
    pub path: String,
    pub content_type: Option<String>,
    pub status: u16,
}

struct State {
    namespace: String,
    name: String,
    token: String,
    data: BTreeMap<String, Vec<u8>>,
    resource_version: u64,
    seen: Vec<Seen>,
    /// Answer the next patch with 409 after changing the resourceVersion (a concurrent writer).
    conflict_next_patch: bool,
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
        let state = Arc::new(Mutex::new(State {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            token: token.to_owned(),
            data: BTreeMap::from([(key.to_owned(), value.to_vec())]),
            resource_version: 1000,
            seen: Vec::new(),
            conflict_next_patch: false,
        }));
        let st = state.clone();
        let server = FakeServer::start(move |req| handle(req, st.clone())).await;
        let addr = server.addr;
        FakeKube { addr, state, _server: server }
    }

    /// A kubeconfig that points at this server, for `KUBECONFIG`.
    pub fn write_kubeconfig(&self, path: &Path) {
        let st = self.state.lock().unwrap();
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

    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().data.get(key).cloned()
    }

    /// Replaces the Secret's value, as `kubectl apply` after a new login would.
    pub fn set_value(&self, key: &str, value: &[u8]) {
        let mut st = self.state.lock().unwrap();
        st.data.insert(key.to_owned(), value.to_vec());
        st.resource_version += 1;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn conflict_next_patch(&self) {
        self.state.lock().unwrap().conflict_next_patch = true;
    }

    fn secret_path(st: &State) -> String {
        format!("/api/v1/namespaces/{}/secrets/{}", st.namespace, st.name)
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    respond(code, body)
}

fn respond(code: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = code;
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp
}

fn secret_object(st: &State) -> Value {
    let data: serde_json::Map<String, Value> =
        st.data.iter().map(|(k, v)| (k.clone(), Value::String(b64(v)))).collect();
    json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {
            "name": st.name, "namespace": st.namespace,
            "resourceVersion": st.resource_version.to_string(),
            "uid": "00000000-0000-0000-0000-000000000001",
        },
        "type": "Opaque",
        "data": data,
    })
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let verb = match *req.method() {
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

    let mut s = st.lock().unwrap();
    let resp = if auth != Some(format!("Bearer {}", s.token)) {
        status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    } else if path != FakeKube::secret_path(&s) || !(verb == "get" || verb == "patch") {
        // What `resourceNames: [<name>]` with verbs get+patch allows; everything else is forbidden.
        status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!("secrets is forbidden: {verb} {path} is not allowed for this service account"),
        )
    } else if verb == "get" {
        respond(StatusCode::OK, secret_object(&s))
    } else if content_type.as_deref() != Some("application/merge-patch+json") {
        status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", "expected a JSON merge patch")
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Err(_) => status(StatusCode::BAD_REQUEST, "BadRequest", "patch is not JSON"),
            Ok(patch) => {
                let wanted_rv =
                    patch.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_owned);
                if s.conflict_next_patch {
                    s.conflict_next_patch = false;
                    s.resource_version += 1;
                }
                if wanted_rv.is_some() && wanted_rv != Some(s.resource_version.to_string()) {
                    status(StatusCode::CONFLICT, "Conflict", "the object has been modified; please apply your changes to the latest version and try again")
                } else {
                    let mut bad = false;
                    if let Some(data) = patch.get("data").and_then(Value::as_object) {
                        for (k, v) in data {
                            match v
                                .as_str()
                                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                            {
                                Some(bytes) => {
                                    s.data.insert(k.clone(), bytes);
                                }
                                None => bad = true,
                            }
                        }
                    }
                    if bad {
                        status(StatusCode::BAD_REQUEST, "BadRequest", "data values must be base64")
                    } else {
                        s.resource_version += 1;
                        respond(StatusCode::OK, secret_object(&s))
                    }
                }
            }
        }
    };
    let code = resp.status().as_u16();
    s.seen.push(Seen { verb, path, content_type, status: code });
    Ok(resp)
}
