//! What the forwarder tells its operator, apart from the answers themselves: the metrics registry
//! (`metrics.rs`) built from lock-free parts (`instruments.rs`), the account's usage windows as the API
//! reports them (`usage.rs`), one access-log line per request (`access_log.rs`), and `GET /metrics`
//! (`exposition.rs`). The request path writes to these; nothing here decides what a request gets.

pub mod access_log;
pub mod exposition;
pub mod instruments;
pub mod metrics;
pub mod usage;
