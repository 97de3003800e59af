//! Everything the agent does with the Kubernetes API. The lifecycle decides; this wing talks to the
//! API server.
//!
//! - `client.rs`: the client every other file here uses (each call with a deadline, each answer and
//!   watch event capped at 1 MiB, outside strings clipped), and the checks on the shared Secret (a
//!   controller that manages it, the wording of an API error).
//! - `writeback.rs`: copying the live pair into the Secret after each refresh (compare-and-swap on
//!   its resourceVersion).
//! - `secret_watch.rs`: reading and watching the Secret that followers adopt each new pair from.
//! - `decision.rs`: the election's decision as a pure function of what a round read and the time.
//! - `identity.rs`: who this agent is in the election (the pod's name and UID).
//! - `election.rs`: many agents on one login (`--lease`): the Lease election, with fencing, that
//!   decides which one refreshes.

pub mod client;
pub mod decision;
pub mod election;
pub mod identity;
pub mod secret_watch;
pub mod writeback;

pub use client::{describe, warn_if_managed};
