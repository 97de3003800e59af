//! What comes back from the authorization server, by the browser's redirect or pasted by a person, and
//! the check that it belongs to this login.

use super::error::LoginError;
use sidecred_proto::Secret;

/// What the authorization server sent back through the redirect (or the pasted text).
#[derive(Debug)]
pub enum Callback {
    Code { code: Secret, state: Secret },
    Denied { error: String, description: Option<String> },
    Incomplete,
}

impl Callback {
    /// Reads `code`/`state` (or `error`) from a redirect's query string.
    pub fn from_query(query: &str) -> Callback {
        let mut code = None;
        let mut state = None;
        let mut error = None;
        let mut description = None;
        for (k, v) in oauth2::url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "code" if !v.is_empty() => code = Some(Secret::new(v.into_owned())),
                "state" if !v.is_empty() => state = Some(Secret::new(v.into_owned())),
                "error" => error = Some(printable(&v)),
                "error_description" => description = Some(printable(&v)),
                _ => {}
            }
        }
        match (code, state, error) {
            (_, _, Some(error)) => Callback::Denied { error, description },
            (Some(code), Some(state), None) => Callback::Code { code, state },
            _ => Callback::Incomplete,
        }
    }

    /// Reads what a person pasted: `CODE#STATE` as Claude's callback page shows it, or the whole
    /// callback URL. `None` when it is neither.
    pub fn from_pasted(text: &str) -> Option<Callback> {
        let text = text.trim();
        if text.starts_with("http://") || text.starts_with("https://") {
            let url = oauth2::url::Url::parse(text).ok()?;
            return url.query().map(Callback::from_query).filter(|c| !matches!(c, Callback::Incomplete));
        }
        let (code, state) = text.split_once('#')?;
        let valid = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains('#');
        if valid(code) && valid(state) {
            Some(Callback::Code { code: Secret::new(code), state: Secret::new(state) })
        } else {
            None
        }
    }

    /// Whether a redirect's query carries `expected` as its state: anything else did not come from the
    /// authorization server for this login (a forged or stale callback) and must not end it.
    pub fn query_has_state(query: &str, expected: &Secret) -> bool {
        oauth2::url::form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == "state" && Secret::new(v.into_owned()) == *expected)
    }

    pub fn into_code(self, expected_state: &Secret) -> Result<Secret, LoginError> {
        match self {
            // Secret's equality is constant-time.
            Callback::Code { code, state } if state == *expected_state => Ok(code),
            Callback::Code { .. } => Err(LoginError::StateMismatch),
            Callback::Denied { error, description } => Err(LoginError::Denied { error, description }),
            Callback::Incomplete => Err(LoginError::Incomplete),
        }
    }
}

/// An error text from the other side, kept short and printable.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasted_text_forms() {
        let state = Secret::new("st");
        let ok = |s: &str| Callback::from_pasted(s).expect(s).into_code(&state).expect(s);
        assert_eq!(ok("abc#st").expose(), "abc");
        assert_eq!(ok("  abc#st \n").expose(), "abc");
        assert_eq!(ok("https://platform.claude.com/oauth/code/callback?code=abc&state=st").expose(), "abc");
        assert!(Callback::from_pasted("abc").is_none());
        assert!(Callback::from_pasted("#st").is_none());
        assert!(Callback::from_pasted("abc#").is_none());
        assert!(Callback::from_pasted("a b#st").is_none());
        assert!(Callback::from_pasted("https://x.test/cb?foo=1").is_none());
        let wrong = Callback::from_pasted("abc#other").expect("parses");
        assert!(matches!(wrong.into_code(&state), Err(LoginError::StateMismatch)));
    }

    #[test]
    fn redirect_query_forms() {
        let state = Secret::new("st");
        assert_eq!(
            Callback::from_query("code=c%2B1&state=st").into_code(&state).expect("code").expose(),
            "c+1"
        );
        let denied = Callback::from_query("error=access_denied&error_description=User%20said%20no&state=st");
        let err = denied.into_code(&state).expect_err("denied").to_string();
        assert!(err.contains("access_denied") && err.contains("User said no"), "{err}");
        assert!(matches!(Callback::from_query("state=st").into_code(&state), Err(LoginError::Incomplete)));
    }

    #[test]
    fn only_the_expected_state_belongs_to_the_login() {
        let state = Secret::new("st");
        assert!(Callback::query_has_state("code=c&state=st", &state));
        assert!(Callback::query_has_state("error=access_denied&state=st", &state));
        assert!(!Callback::query_has_state("code=c&state=forged", &state));
        assert!(!Callback::query_has_state("code=c", &state));
        assert!(!Callback::query_has_state("", &state));
    }

    #[test]
    fn errors_never_show_the_code_or_state() {
        let c = Callback::from_pasted("sctest-code#sctest-state").expect("parses");
        let err = c.into_code(&Secret::new("x")).expect_err("mismatch");
        assert!(!err.to_string().contains("sctest"));
        assert!(!format!("{err:?}").contains("sctest"));
    }
}
