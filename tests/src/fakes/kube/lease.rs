//! `coordination.k8s.io/v1` Leases: `get`, `update` and (when allowed) `create`, with `resourceVersion`
//! concurrency, and `spec` times that must be MicroTime as the real API server requires.

use super::{respond, status, Body, State};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

/// A Lease's `spec`, as written by its last holder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseSpec {
    pub holder_identity: Option<String>,
    pub lease_duration_seconds: Option<i64>,
    pub acquire_time: Option<String>,
    pub renew_time: Option<String>,
    pub lease_transitions: Option<i64>,
}

pub(super) struct Stored {
    pub spec: LeaseSpec,
    pub rv: u64,
}

/// `2026-11-30T11:00:00.123456Z`: RFC 3339 with exactly six fractional digits.
pub fn is_micro_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let zone = &s.get(26..).unwrap_or("");
    b.len() >= 27
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26)
        && (*zone == "Z" || (zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-'))))
}

fn object(ns: &str, name: &str, stored: &Stored) -> Value {
    let spec = &stored.spec;
    let mut s = serde_json::Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            s.insert(k.to_owned(), v);
        }
    };
    put("holderIdentity", spec.holder_identity.clone().map(Value::from));
    put("leaseDurationSeconds", spec.lease_duration_seconds.map(Value::from));
    put("acquireTime", spec.acquire_time.clone().map(Value::from));
    put("renewTime", spec.renew_time.clone().map(Value::from));
    put("leaseTransitions", spec.lease_transitions.map(Value::from));
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": stored.rv.to_string()},
        "spec": Value::Object(s),
    })
}

fn parse_spec(v: &Value) -> Result<LeaseSpec, String> {
    let spec = v.get("spec").cloned().unwrap_or(Value::Null);
    let time = |k: &str| -> Result<Option<String>, String> {
        match spec.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(t)) if is_micro_time(t) => Ok(Some(t.clone())),
            Some(other) => Err(format!("spec.{k}: {other} is not a MicroTime")),
        }
    };
    Ok(LeaseSpec {
        holder_identity: spec.get("holderIdentity").and_then(Value::as_str).map(str::to_owned),
        lease_duration_seconds: spec.get("leaseDurationSeconds").and_then(Value::as_i64),
        acquire_time: time("acquireTime")?,
        renew_time: time("renewTime")?,
        lease_transitions: spec.get("leaseTransitions").and_then(Value::as_i64),
    })
}

pub(super) fn get(s: &State, name: &str) -> Response<Body> {
    match s.leases.get(name) {
        Some(stored) => respond(StatusCode::OK, object(&s.namespace, name, stored)),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{name}\" not found"),
        ),
    }
}

pub(super) fn update(s: &mut State, name: &str, body: &[u8]) -> (Response<Body>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON"), None);
    };
    if v.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return (status(StatusCode::BAD_REQUEST, "BadRequest", "metadata.name does not match the URL"), None);
    }
    let spec = match parse_spec(&v) {
        Ok(spec) => spec,
        Err(e) => return (status(StatusCode::BAD_REQUEST, "BadRequest", &e), None),
    };
    let Some(current) = s.leases.get(name).map(|l| l.rv) else {
        return (get(s, name), None);
    };
    let wanted = v.pointer("/metadata/resourceVersion").and_then(Value::as_str);
    if wanted != Some(current.to_string().as_str()) {
        let msg = format!(
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        );
        return (status(StatusCode::CONFLICT, "Conflict", &msg), None);
    }
    let holder = spec.holder_identity.clone();
    let rv = s.next_rv();
    s.leases.insert(name.to_owned(), Stored { spec, rv });
    (get(s, name), holder)
}

pub(super) fn create(s: &mut State, body: &[u8]) -> (Response<Body>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON"), None);
    };
    let Some(name) = v.pointer("/metadata/name").and_then(Value::as_str).map(str::to_owned) else {
        return (status(StatusCode::BAD_REQUEST, "BadRequest", "metadata.name is required"), None);
    };
    if s.leases.contains_key(&name) {
        let msg = format!("leases.coordination.k8s.io \"{name}\" already exists");
        return (status(StatusCode::CONFLICT, "AlreadyExists", &msg), None);
    }
    let spec = match parse_spec(&v) {
        Ok(spec) => spec,
        Err(e) => return (status(StatusCode::BAD_REQUEST, "BadRequest", &e), None),
    };
    let holder = spec.holder_identity.clone();
    let rv = s.next_rv();
    s.leases.insert(name.clone(), Stored { spec, rv });
    let mut resp = get(s, &name);
    *resp.status_mut() = StatusCode::CREATED;
    (resp, holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_is_six_fractional_digits() {
        assert!(is_micro_time("2026-11-30T11:00:00.123456Z"));
        assert!(is_micro_time("2026-11-30T11:00:00.123456+02:00"));
        assert!(!is_micro_time("2026-11-30T11:00:00Z"));
        assert!(!is_micro_time("2026-11-30T11:00:00.123Z"));
        assert!(!is_micro_time("yesterday"));
    }
}
