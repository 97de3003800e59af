//! What every use of the Kubernetes API shares: the client, and the checks on the shared Secret.

use k8s_openapi::api::core::v1::Secret;
use tracing::warn;

/// A client from the in-cluster service account, or `KUBECONFIG` outside a cluster. kube's errors name
/// what is missing, never the bearer token.
pub async fn client() -> Result<kube::Client, String> {
    let config = kube::Config::infer().await.map_err(|e| {
        format!("cannot configure the Kubernetes client (in-cluster service account or KUBECONFIG): {e}")
    })?;
    kube::Client::try_from(config).map_err(|e| {
        format!("cannot configure the Kubernetes client (in-cluster service account or KUBECONFIG): {e}")
    })
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
