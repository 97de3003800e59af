//! How both sidecred processes log: to stderr, as text or JSON (`--log-format`), filtered by
//! `SIDECRED_LOG`, so an operator configures the agent and the forwarder the same way.
//!
//! The filter takes comma-separated `level` and `target=level` directives
//! (`warn,sidecred_forwarder::access=info`): tracing-subscriber's `Targets`, not its `EnvFilter`, which
//! would bring a regex engine (about a megabyte of code) into two long-running processes for nothing.

use std::env::VarError;
use tracing::Level;
use tracing_subscriber::filter::Targets;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sets up logging at `default_level`, or as `SIDECRED_LOG` says. A `SIDECRED_LOG` that cannot be used
/// is named in a warning, and `default_level` applies.
pub fn init(format: LogFormat, default_level: Level) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, problem) = filter(std::env::var("SIDECRED_LOG"), default_level);
    // Colour only on a terminal: escape codes in a collected log file are noise to every reader.
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi))
            .init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr))
            .init(),
    }
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}

/// The filter `SIDECRED_LOG` (as read from the environment) asks for, and why it could not be used if it
/// could not.
fn filter(spec: Result<String, VarError>, default_level: Level) -> (Targets, Option<String>) {
    let default = || Targets::new().with_default(default_level);
    match spec {
        Err(VarError::NotPresent) => (default(), None),
        Err(VarError::NotUnicode(_)) => (default(), Some("SIDECRED_LOG is not valid UTF-8".to_owned())),
        Ok(spec) => match spec.parse::<Targets>() {
            Ok(filter) => (filter, None),
            Err(e) => (
                default(),
                Some(format!("SIDECRED_LOG={spec:?} is not a filter ({e}); logging at {default_level}")),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn unset_means_the_default_level() {
        let (filter, problem) = filter(Err(VarError::NotPresent), Level::WARN);
        assert_eq!(filter.default_level(), Some(LevelFilter::WARN));
        assert_eq!(problem, None);
    }

    #[test]
    fn levels_and_targets_are_taken() {
        let spec = "warn,sidecred_forwarder::access=info".to_owned();
        let (filter, problem) = filter(Ok(spec), Level::INFO);
        assert_eq!(problem, None);
        assert_eq!(filter.default_level(), Some(LevelFilter::WARN));
        assert!(filter.would_enable("sidecred_forwarder::access", &Level::INFO));
        assert!(!filter.would_enable("sidecred_forwarder", &Level::INFO));
    }

    #[test]
    fn an_unusable_filter_is_named_and_the_default_applies() {
        let (filter, problem) = filter(Ok("sidecred_agent=loud".to_owned()), Level::INFO);
        assert_eq!(filter.default_level(), Some(LevelFilter::INFO));
        let problem = problem.unwrap_or_default();
        assert!(problem.contains("SIDECRED_LOG=\"sidecred_agent=loud\" is not a filter"), "{problem}");
        assert!(problem.ends_with("logging at INFO"), "{problem}");
    }
}
