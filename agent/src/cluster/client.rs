//! What every use of the Kubernetes API shares: the client, and the checks on the shared Secret.

use k8s_openapi::api::core::v1::Secret;
use tracing::warn;

/// A client from the in-cluster service account, or `KUBECONFIG` outside a cluster, for the flags in
/// `needed_by`. kube's errors name what is missing, never the bearer token.
pub async fn client(needed_by: &str) -> Result<kube::Client, String> {
    let fail = |e: &dyn std::fmt::Display| {
        format!(
            "{needed_by} needs a Kubernetes client and none can be configured: neither an in-cluster service \
             account (KUBERNETES_SERVICE_HOST and the mounted token) nor a usable KUBECONFIG: {e}"
        )
    };
    let config = kube::Config::infer().await.map_err(|e| fail(&e))?;
    kube::Client::try_from(config).map_err(|e| fail(&e))
}

/// What a failed call to the Kubernetes API means, in one wording for every caller: the verb, the kind
/// and `namespace/name` of the object, and on 403 the RBAC verbs (`needs`) the role lacks. kube's errors
/// describe the request and the status, never the bearer token.
pub fn describe(
    verb: &str,
    kind: &str,
    object: &dyn std::fmt::Display,
    needs: &str,
    e: &kube::Error,
) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "the Kubernetes API refused to {verb} the {kind} {object}: {} (the RBAC role needs {needs} on this {kind})",
            status.message
        ),
        kube::Error::Api(status) if status.code == 404 => format!(
            "cannot {verb} the {kind} {object}: it does not exist (apply it with the manifests; the agent does not create it)"
        ),
        kube::Error::Api(status) if status.code == 409 => {
            format!("cannot {verb} the {kind} {object}: it changed while it was being updated")
        }
        other => format!("cannot {verb} the {kind} {object}: {other}"),
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

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(kube::core::Status::failure(&format!("status {code}"), "").with_code(code).boxed())
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
