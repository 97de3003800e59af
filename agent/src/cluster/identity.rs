//! Who this agent is in the lease election: one identity per pod incarnation.
//!
//! A record naming us is renewed at once, so two agents with one identity both believe they hold the
//! lease and both refresh. Pod names alone are reused: a StatefulSet's new `db-0` can start while the old
//! `db-0` still runs (a force delete, a dead kubelet). The pod's UID is not reused, so the identity is
//! the pod's name plus its UID (downward API `metadata.uid` in `POD_UID`): a container restart inside the
//! same pod (the old process is gone by then) keeps the lease, anything else waits for it to expire.
//! Without `POD_UID` (outside Kubernetes, an old manifest) the suffix is random per process.

/// The environment variables the manifests set from the downward API.
pub const POD_NAME_ENV: &str = "POD_NAME";
pub const POD_UID_ENV: &str = "POD_UID";

/// Where the identity's parts came from, for the log line at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    /// `true` when the suffix is the pod's UID: a restart of this container keeps the identity.
    pub per_pod: bool,
}

/// The election identity from `name` (`--lease-holder`, else `POD_NAME`, else the hostname), and
/// `pod_uid` (`POD_UID`), else `random` (a per-process suffix). Blank values count as unset.
pub fn identity(
    flag: Option<&str>,
    pod_name: Option<&str>,
    hostname: impl FnOnce() -> Option<String>,
    pod_uid: Option<&str>,
    random: impl FnOnce() -> String,
) -> Result<Identity, String> {
    let present = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let name = present(flag)
        .or_else(|| present(pod_name))
        .or_else(|| present(hostname().as_deref()))
        .ok_or_else(|| {
            format!("--lease-holder is not set, nor {POD_NAME_ENV}, and the hostname is unreadable or empty")
        })?;
    let (suffix, per_pod) = match present(pod_uid) {
        Some(uid) => (uid, true),
        None => (random(), false),
    };
    Ok(Identity { id: format!("{name}_{suffix}"), per_pod })
}

/// The identity of this process, from its flags and environment.
pub fn of_this_process(flag: Option<&str>) -> Result<Identity, String> {
    let env = |name: &str| std::env::var(name).ok();
    identity(
        flag,
        env(POD_NAME_ENV).as_deref(),
        || nix::unistd::gethostname().ok().map(|h| h.to_string_lossy().into_owned()),
        env(POD_UID_ENV).as_deref(),
        || format!("{:016x}", rand::random::<u64>()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Option<String> {
        Some("node-host".into())
    }

    #[test]
    fn the_pod_uid_makes_the_name_unique_per_incarnation() {
        let random = || "r4nd0m".to_owned();
        let id = identity(None, Some("db-0"), host, Some("9f1c-uid"), random).unwrap();
        assert_eq!(id, Identity { id: "db-0_9f1c-uid".into(), per_pod: true });
        // The same pod name with another UID (a StatefulSet's new pod) is another agent.
        let other = identity(None, Some("db-0"), host, Some("77aa-uid"), random).unwrap();
        assert_ne!(id.id, other.id);
        // The flag names the agent; the incarnation is still added.
        let flagged = identity(Some("proxy"), Some("db-0"), host, Some("9f1c-uid"), random).unwrap();
        assert_eq!(flagged.id, "proxy_9f1c-uid");
    }

    #[test]
    fn without_a_pod_uid_each_process_is_its_own_agent() {
        let mut n = 0;
        let mut next = || {
            n += 1;
            identity(None, Some("db-0"), host, Some("  "), || format!("p{n}")).unwrap()
        };
        let (first, second) = (next(), next());
        assert_eq!(first, Identity { id: "db-0_p1".into(), per_pod: false });
        assert_ne!(first.id, second.id);
        let from_host = identity(None, None, host, None, || "p".into()).unwrap();
        assert_eq!(from_host.id, "node-host_p");
    }

    #[test]
    fn no_name_at_all_says_which_settings_to_give() {
        let err = identity(Some(" "), None, || None, Some("uid"), || "p".into()).unwrap_err();
        assert!(err.contains("--lease-holder") && err.contains("POD_NAME"), "{err}");
    }
}
