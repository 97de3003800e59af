//! The metrics page in the format the scraper asked for. Both binaries build their page with
//! `prometheus-client`, which writes OpenMetrics only; Prometheus asks for that, but `promtool check
//! metrics`, `curl` and older scrapers read the classic text format (0.0.4), where a counter family is
//! named with its `_total` and there is no `# EOF`. The samples are the same in both; only the family
//! lines differ, so the classic page is derived from the OpenMetrics one rather than written by hand.

/// The content type of an OpenMetrics page.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (Prometheus does; `curl` and promtool do not).
pub fn wants_openmetrics(accept: Option<&[u8]>) -> bool {
    const OPENMETRICS: &[u8] = b"application/openmetrics-text";
    accept.is_some_and(|a| a.windows(OPENMETRICS.len()).any(|w| w.eq_ignore_ascii_case(OPENMETRICS)))
}

/// The page and its content type for a scraper that sent `accept`.
pub fn negotiate(openmetrics: String, accept: Option<&[u8]>) -> (String, &'static str) {
    if wants_openmetrics(accept) {
        (openmetrics, OPENMETRICS_CONTENT_TYPE)
    } else {
        (to_classic_text(&openmetrics), TEXT_CONTENT_TYPE)
    }
}

/// Rewrites an OpenMetrics page as classic text: counter families take their samples' `_total` name in
/// `# HELP` and `# TYPE`, and `# UNIT` and `# EOF` go.
pub fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 12);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let family_line =
            ["# HELP ", "# TYPE "].iter().find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match family_line {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP sc_requests Requests.\n# TYPE sc_requests counter\n\
                        sc_requests_total{route=\"messages\"} 3\n# HELP sc_open Open streams.\n\
                        # TYPE sc_open gauge\n# UNIT sc_open streams\nsc_open 1\n# EOF\n";

    #[test]
    fn counters_take_their_total_name_and_the_eof_goes() {
        assert_eq!(
            to_classic_text(PAGE),
            "# HELP sc_requests_total Requests.\n# TYPE sc_requests_total counter\n\
             sc_requests_total{route=\"messages\"} 3\n# HELP sc_open Open streams.\n\
             # TYPE sc_open gauge\nsc_open 1\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_classic_text() {
        let prometheus = b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(PAGE.to_owned(), Some(prometheus)).1, OPENMETRICS_CONTENT_TYPE);
        assert_eq!(negotiate(PAGE.to_owned(), Some(b"*/*")).1, TEXT_CONTENT_TYPE);
        assert_eq!(negotiate(PAGE.to_owned(), None).1, TEXT_CONTENT_TYPE);
        assert!(!negotiate(PAGE.to_owned(), None).0.contains("# EOF"));
    }
}
