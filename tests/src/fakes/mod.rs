//! Fakes of the services outside sidecred that the tests stand in for: Claude's OAuth and account
//! endpoints, the Anthropic API, a CONNECT proxy, a proxy that refuses everything, the Kubernetes API
//! and the kubelet; and a stand-in agent that misbehaves as the real one never does.

pub mod agent;
pub mod claude_oauth;
pub mod connect_proxy;
pub mod kube;
pub mod kubelet;
pub mod refusing_proxy;
pub mod server;
pub mod upstream;
