//! What every use of the Kubernetes API shares: the client with its deadlines and read caps, and the
//! checks on the shared Secret.
//!
//! An API server (or what stands in front of it) may accept a call and never answer, drip an answer a
//! byte at a time, or send an answer without end. Every call here has a deadline, and every answer a
//! size cap, so none of that can stop the agent from keeping its promise or take its memory.

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::params::{GetParams, Patch, PatchParams, PostParams, WatchParams};
use kube::core::Request;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tokio::sync::watch;
use tracing::warn;

/// The most read from the API server in one answer or one watch event: as much as a credentials file
/// may hold (`atomic::MAX_FILE_LEN`). A Secret holds one small document; a Lease a few short fields.
pub const MAX_READ: usize = crate::atomic::MAX_FILE_LEN as usize;
/// One call, from connecting to the last byte of the answer: past this it is abandoned and counts as
/// failed (the caller retries). A healthy API server answers in milliseconds.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// Connecting to the API server, and handing it one request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
const WRITE_TIMEOUT: Duration = Duration::from_secs(4);
/// The API server sends a watch a BOOKMARK about once a minute when it has nothing else to send.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
/// A watch that sends no whole event for this long has stalled (a half-open connection, a server that
/// drips bytes): well past one bookmark interval, so a healthy quiet watch is never cut.
pub const WATCH_IDLE_LIMIT: Duration = Duration::from_secs(BOOKMARK_INTERVAL.as_secs() * 3 / 2);
/// The longest string from the API server that goes into a frame, a log line or a metric. Kubernetes
/// names are at most 253 characters; a message longer than this says nothing more of use.
pub const MAX_OUTSIDE_STRING: usize = 256;

/// A client from the in-cluster service account, or `KUBECONFIG` outside a cluster, for the flags in
/// `needed_by`. kube's errors name what is missing, never the bearer token.
pub async fn client(needed_by: &str) -> Result<ApiClient, String> {
    let fail = |e: &dyn std::fmt::Display| {
        format!(
            "{needed_by} needs a Kubernetes client and none can be configured: neither an in-cluster service \
             account (KUBERNETES_SERVICE_HOST and the mounted token) nor a usable KUBECONFIG: {e}"
        )
    };
    let mut config = kube::Config::infer().await.map_err(|e| fail(&e))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.write_timeout = Some(WRITE_TIMEOUT);
    // No byte at all for this long: the connection is gone. Counted from each request, not from when a
    // pooled connection went idle.
    config.read_timeout = Some(WATCH_IDLE_LIMIT);
    config.reset_reader_on_write = true;
    let client = kube::Client::try_from(config).map_err(|e| fail(&e))?;
    Ok(ApiClient::new(client))
}

/// The kube client, shared by the write-back, the Secret watch and the election, and the news that
/// the API server answered (so a writer that backed off during an outage tries again at once).
#[derive(Clone)]
pub struct ApiClient {
    client: kube::Client,
    answered: watch::Sender<u64>,
}

impl ApiClient {
    pub fn new(client: kube::Client) -> ApiClient {
        ApiClient { client, answered: watch::channel(0).0 }
    }

    /// Changes each time any call gets an answer from the API server (whatever its status but 5xx).
    pub fn answered(&self) -> watch::Receiver<u64> {
        self.answered.subscribe()
    }

    fn saw_answer(&self, status: http::StatusCode) {
        if !status.is_server_error() {
            self.answered.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Sends `request` and reads its whole answer, within [`CALL_DEADLINE`] and [`MAX_READ`].
    async fn call<T: DeserializeOwned>(
        &self,
        request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<T, CallError> {
        let request = request.map_err(|e| CallError::Request(e.to_string()))?;
        let answer = async {
            let response = self.client.send(request.map(kube::client::Body::from)).await?;
            let status = response.status();
            let body = read_capped(response.into_body()).await?;
            self.saw_answer(status);
            if !status.is_success() {
                return Err(api_error(status, &body));
            }
            serde_json::from_slice(&body).map_err(|e| CallError::Malformed(clip(&e.to_string())))
        };
        tokio::time::timeout(CALL_DEADLINE, answer).await.unwrap_or(Err(CallError::Timeout(CALL_DEADLINE)))
    }

    /// Starts a watch: the answer's head within [`CALL_DEADLINE`]; its events are read with
    /// [`EventLines`].
    async fn open(
        &self,
        request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<EventLines, CallError> {
        let request = request.map_err(|e| CallError::Request(e.to_string()))?;
        let answer = async {
            let response = self.client.send(request.map(kube::client::Body::from)).await?;
            let status = response.status();
            self.saw_answer(status);
            if !status.is_success() {
                let body = read_capped(response.into_body()).await?;
                return Err(api_error(status, &body));
            }
            Ok(EventLines { body: response.into_body(), buf: Vec::new(), start: 0 })
        };
        tokio::time::timeout(CALL_DEADLINE, answer).await.unwrap_or(Err(CallError::Timeout(CALL_DEADLINE)))
    }
}

/// One kind of object in one namespace, as kube's `Api`, with the deadlines and caps of [`ApiClient`].
#[derive(Clone)]
pub struct Objects<K> {
    client: ApiClient,
    request: Request,
    _kind: std::marker::PhantomData<fn() -> K>,
}

impl<K> Objects<K>
where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned + Serialize,
{
    pub fn namespaced(client: ApiClient, namespace: &str) -> Objects<K> {
        let request = Request::new(K::url_path(&(), Some(namespace)));
        Objects { client, request, _kind: std::marker::PhantomData }
    }

    pub fn client(&self) -> &ApiClient {
        &self.client
    }

    pub async fn get(&self, name: &str) -> Result<K, CallError> {
        self.client.call(self.request.get(name, &GetParams::default())).await
    }

    pub async fn patch<P: Serialize + std::fmt::Debug>(
        &self,
        name: &str,
        params: &PatchParams,
        patch: &Patch<P>,
    ) -> Result<K, CallError> {
        self.client.call(self.request.patch(name, params, patch)).await
    }

    pub async fn replace(&self, name: &str, params: &PostParams, object: &K) -> Result<K, CallError> {
        let body = serde_json::to_vec(object).map_err(|e| CallError::Request(e.to_string()))?;
        self.client.call(self.request.replace(name, params, body)).await
    }

    pub async fn watch(&self, params: &WatchParams, version: &str) -> Result<EventLines, CallError> {
        self.client.open(self.request.watch(params, version)).await
    }
}

/// Why a call to the Kubernetes API failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is larger than {MAX_READ} bytes; not reading more")]
    TooLarge,
    #[error("the answer is not the JSON expected: {0}")]
    Malformed(String),
    #[error("cannot build the request: {0}")]
    Request(String),
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

impl CallError {
    /// The HTTP status the API server answered with, if it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            CallError::Kube(kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }
}

/// Reads a whole answer, refusing one past [`MAX_READ`] as soon as it gets there.
async fn read_capped(mut body: kube::client::Body) -> Result<Vec<u8>, CallError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len().saturating_add(data.len()) > MAX_READ {
                return Err(CallError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// An error answer as kube words it: the API's `Status` when the body is one, else the (clipped) text.
fn api_error(status: http::StatusCode, body: &[u8]) -> CallError {
    let parsed = serde_json::from_slice::<kube::core::Status>(body).ok().filter(|s| s.code != 0);
    let mut parsed = parsed.unwrap_or_else(|| {
        kube::core::Status::failure(&clip(&String::from_utf8_lossy(body)), "").with_code(status.as_u16())
    });
    parsed.message = clip(&parsed.message);
    CallError::Kube(kube::Error::Api(parsed.boxed()))
}

/// The events of a watch, one JSON document a line, each at most [`MAX_READ`] bytes.
pub struct EventLines {
    body: kube::client::Body,
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
}

/// Why a watch's stream of events ended.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("one event is longer than {MAX_READ} bytes; dropping the watch")]
    TooLong,
    #[error("the connection failed: {0}")]
    Connection(#[from] kube::Error),
}

impl EventLines {
    /// The next line, or `None` when the server ended the stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        loop {
            if let Some(end) = self.buf[self.start..].iter().position(|b| *b == b'\n') {
                let line = self.buf[self.start..self.start + end].to_vec();
                self.start += end + 1;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(Some(line));
            }
            if self.buf.len() - self.start > MAX_READ {
                return Err(LineError::TooLong);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// `s` made safe for a status frame, a log line or a metric: control characters replaced, and cut at
/// [`MAX_OUTSIDE_STRING`] bytes with a note of how long it was.
pub fn clip(s: &str) -> String {
    let clean = |c: char| if c.is_control() { '?' } else { c };
    if s.len() <= MAX_OUTSIDE_STRING {
        return s.chars().map(clean).collect();
    }
    let mut end = MAX_OUTSIDE_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = s[..end].chars().map(clean).collect();
    out.push_str(&format!("... ({} bytes in all)", s.len()));
    out
}

/// Whether `meta` names the object `namespace/name`: an API server that ignores a field selector, or a
/// proxy that mixes answers up, must not make the agent adopt another login.
pub fn is_object(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    namespace: &str,
    name: &str,
) -> bool {
    meta.name.as_deref() == Some(name) && meta.namespace.as_deref() == Some(namespace)
}

/// What a failed call to the Kubernetes API means, in one wording for every caller: the verb, the kind
/// and `namespace/name` of the object, and on 403 the RBAC verbs (`needs`) the role lacks. kube's errors
/// describe the request and the status, never the bearer token.
pub fn describe(
    verb: &str,
    kind: &str,
    object: &dyn std::fmt::Display,
    needs: &str,
    e: &CallError,
) -> String {
    let message = match e {
        CallError::Kube(kube::Error::Api(status)) => clip(&status.message),
        _ => String::new(),
    };
    match e.code() {
        Some(403) => format!(
            "the Kubernetes API refused to {verb} the {kind} {object}: {message} (the RBAC role needs {needs} on this {kind})"
        ),
        Some(404) => format!(
            "cannot {verb} the {kind} {object}: it does not exist (apply it with the manifests; the agent does not create it)"
        ),
        Some(409) => format!("cannot {verb} the {kind} {object}: it changed while it was being updated"),
        _ => format!("cannot {verb} the {kind} {object}: {}", clip(&e.to_string())),
    }
}

/// Annotation and label prefixes of the controllers that render Secrets from elsewhere and put them
/// back when someone else changes them.
const MANAGERS: [(&str, &str); 3] = [
    ("reconcile.external-secrets.io/", "External Secrets"),
    ("external-secrets.io/", "External Secrets"),
    ("sealedsecrets.bitnami.com/", "Sealed Secrets"),
];

/// Who, besides the agents, manages `secret`: a controller that reverts the agents' writes leaves the
/// next pod a spent refresh token.
pub fn manager_of(secret: &Secret) -> Option<String> {
    let meta = &secret.metadata;
    if let Some(owner) = meta.owner_references.as_ref().and_then(|o| o.first()) {
        return Some(format!("owned by {} {}", owner.kind, owner.name));
    }
    let keys = meta.annotations.iter().flatten().chain(meta.labels.iter().flatten()).map(|(k, _)| k);
    for key in keys {
        if let Some((_, who)) = MANAGERS.iter().find(|(prefix, _)| key.starts_with(prefix)) {
            return Some(format!("managed by {who} (`{key}`)"));
        }
    }
    None
}

/// Warns once, at start, when another controller manages the Secret the agents write.
pub fn warn_if_managed(secret: &Secret, name: &str) {
    if let Some(manager) = manager_of(secret) {
        warn!(
            secret = name,
            "the Secret is {manager}: it may put back the pair it knows after the agent writes a new one, and \
             a pod that starts from it then holds a spent refresh token. See docs/deploy.md \
             (\"Secrets managed by another controller\") for the recipe"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use std::collections::BTreeMap;

    fn api_error(code: u16) -> CallError {
        CallError::Kube(kube::Error::Api(
            kube::core::Status::failure(&format!("status {code}"), "").with_code(code).boxed(),
        ))
    }

    #[test]
    fn descriptions_name_the_verb_the_object_and_the_missing_rbac() {
        let forbidden = describe("patch", "Secret", &"ns/creds", "`get` and `patch`", &api_error(403));
        assert!(forbidden.contains("patch the Secret ns/creds"), "{forbidden}");
        assert!(forbidden.contains("RBAC role needs `get` and `patch`"), "{forbidden}");
        let missing = describe("get", "Lease", &"ns/lock", "`get`", &api_error(404));
        assert!(missing.contains("get the Lease ns/lock") && missing.contains("does not exist"), "{missing}");
        let conflict = describe("patch", "Secret", &"ns/creds", "`patch`", &api_error(409));
        assert!(conflict.contains("changed while"), "{conflict}");
        let other = describe("watch", "Secret", &"ns/creds", "`watch`", &api_error(500));
        assert!(other.contains("watch the Secret ns/creds") && other.contains("status 500"), "{other}");
    }

    #[test]
    fn outside_strings_are_clipped_and_cleaned() {
        assert_eq!(clip("pod-a"), "pod-a");
        assert_eq!(clip("a\nstate: valid"), "a?state: valid");
        let long = "é".repeat(40_000);
        let clipped = clip(&long);
        assert!(clipped.len() < MAX_OUTSIDE_STRING + 40, "{}", clipped.len());
        assert!(clipped.ends_with("(80000 bytes in all)"), "{clipped}");
    }

    #[tokio::test]
    async fn watch_lines_are_split_and_capped() {
        let body = kube::client::Body::from(b"{\"a\":1}\n\n{\"b\":2}\n".to_vec());
        let mut lines = EventLines { body, buf: Vec::new(), start: 0 };
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some(&b"{\"b\":2}"[..]));
        assert!(lines.next_line().await.unwrap().is_none());
        let endless = kube::client::Body::from(vec![b'x'; MAX_READ + 2]);
        let mut lines = EventLines { body: endless, buf: Vec::new(), start: 0 };
        assert!(matches!(lines.next_line().await, Err(LineError::TooLong)));
    }

    #[tokio::test]
    async fn answers_past_the_cap_are_refused() {
        let small = read_capped(kube::client::Body::from(vec![b'x'; 10])).await.unwrap();
        assert_eq!(small.len(), 10);
        let big = read_capped(kube::client::Body::from(vec![b'x'; MAX_READ + 1])).await;
        assert!(matches!(big, Err(CallError::TooLarge)));
    }

    #[test]
    fn owners_and_controller_annotations_are_named() {
        let plain = Secret::default();
        assert_eq!(manager_of(&plain), None);
        let owned = Secret {
            metadata: ObjectMeta {
                owner_references: Some(vec![OwnerReference {
                    kind: "SealedSecret".into(),
                    name: "creds".into(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        assert_eq!(manager_of(&owned).as_deref(), Some("owned by SealedSecret creds"));
        let annotated = Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    "reconcile.external-secrets.io/created-by".into(),
                    "x".into(),
                )])),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        assert!(manager_of(&annotated).is_some_and(|m| m.contains("External Secrets")));
    }
}
