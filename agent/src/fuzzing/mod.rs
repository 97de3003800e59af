//! What must hold for any credentials file and any token endpoint answer, checked by the fuzz targets
//! (`fuzz/` at the repository's root) and by the replay of their seed corpora below, on any toolchain.
//! A property that does not hold panics, which is what libFuzzer reports as a crash. Not an API: the
//! crate is a library only so that these reach the parsers.

mod credentials;
mod token;

pub use credentials::credentials;
pub use token::token_response;

use sidecred_proto::anthropic::TOKEN_PREFIX;

/// What the seed corpora's tokens carry, as the tests' do: seen in a message, a token leaked.
const MARKER: &str = "sctest";

/// Error text may name a field, a status or a position, never a token.
fn assert_no_token(text: &str) {
    assert!(!text.contains(TOKEN_PREFIX), "a message carries a token: {text}");
}

#[cfg(test)]
mod tests {
    use sidecred_proto::fuzzing::replay_corpus;

    #[test]
    fn the_credentials_corpus_holds() {
        replay_corpus("credentials", super::credentials);
    }

    #[test]
    fn the_token_response_corpus_holds() {
        replay_corpus("token_response", super::token_response);
    }
}
