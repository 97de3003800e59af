//! The fake's book of what it issued: live access and refresh tokens with the scopes they carry, the
//! refresh tokens rotations killed, and the authorization codes waiting to be exchanged. No HTTP here.

use super::Pair;
use rand::Rng;
use std::collections::HashMap;

/// What a minted authorization code is bound to.
#[derive(Debug, Clone)]
pub struct Grant {
    pub challenge: String,
    pub redirect_uri: String,
    pub state: String,
    pub scopes: Vec<String>,
}

#[derive(Default)]
pub struct Book {
    seq: u64,
    /// Live access tokens and the scopes they were minted with.
    access: HashMap<String, Vec<String>>,
    /// Live refresh tokens and their scopes.
    refresh: HashMap<String, Vec<String>>,
    latest_access: Option<String>,
    /// Refresh tokens that were live once and then spent by a rotation.
    rotated_from: Vec<String>,
    rotations: u64,
    /// Codes not yet presented, and codes already spent (kept, so a reuse is told apart from a made-up code).
    codes: HashMap<String, (Grant, bool)>,
}

/// Why a code could not be redeemed.
#[derive(Debug, PartialEq)]
pub enum CodeRefusal {
    Unknown,
    AlreadyUsed,
}

impl Book {
    /// A pair no one has heard of yet: not live until [`Book::issue`] or a rotation registers it.
    pub fn mint(&mut self) -> Pair {
        self.seq += 1;
        let salt: u64 = rand::rng().random();
        Pair {
            access_token: format!("sctest-at-{}-{salt:016x}", self.seq),
            refresh_token: format!("sctest-rt-{}-{salt:016x}", self.seq),
        }
    }

    /// A new live pair with `scopes`, as a login creates. Earlier pairs stay live too (another login).
    pub fn issue(&mut self, scopes: &[String]) -> Pair {
        let pair = self.mint();
        self.access.insert(pair.access_token.clone(), scopes.to_vec());
        self.refresh.insert(pair.refresh_token.clone(), scopes.to_vec());
        self.latest_access = Some(pair.access_token.clone());
        pair
    }

    /// Redeems the live refresh token `presented` for a new access token (earlier access tokens stay
    /// valid until they are revoked). With `rotate`, `presented` dies and the answer carries a new
    /// refresh token; without, `presented` stays live and the answer carries none. `None` when
    /// `presented` is not live. The new access token carries `narrowed` when the refresh asked for fewer
    /// scopes; the refresh token keeps the whole grant.
    pub fn redeem_refresh(
        &mut self,
        presented: &str,
        rotate: bool,
        narrowed: Option<&[String]>,
    ) -> Option<(Pair, Vec<String>)> {
        let scopes = self.refresh.get(presented)?.clone();
        let pair = self.mint();
        let carried = narrowed.map_or_else(|| scopes.clone(), <[String]>::to_vec);
        self.access.insert(pair.access_token.clone(), carried.clone());
        self.latest_access = Some(pair.access_token.clone());
        self.rotations += 1;
        if rotate {
            self.refresh.remove(presented);
            self.rotated_from.push(presented.to_owned());
            self.refresh.insert(pair.refresh_token.clone(), scopes);
        }
        Some((pair, carried))
    }

    /// The scopes granted to a live refresh token.
    pub fn refresh_scopes(&self, token: &str) -> Option<&[String]> {
        self.refresh.get(token).map(Vec::as_slice)
    }

    /// A single-use code bound to `grant`.
    pub fn bind_code(&mut self, grant: Grant) -> String {
        self.seq += 1;
        let salt: u64 = rand::rng().random();
        let code = format!("sctest-code-{}-{salt:016x}", self.seq);
        self.codes.insert(code.clone(), (grant, false));
        code
    }

    /// Spends `code`: the first presentation uses it up, whatever else is wrong with the request.
    pub fn spend_code(&mut self, code: &str) -> Result<Grant, CodeRefusal> {
        let (grant, used) = self.codes.get_mut(code).ok_or(CodeRefusal::Unknown)?;
        if std::mem::replace(used, true) {
            return Err(CodeRefusal::AlreadyUsed);
        }
        Ok(grant.clone())
    }

    /// The scopes of a live access token.
    pub fn access_scopes(&self, token: &str) -> Option<&[String]> {
        self.access.get(token).map(Vec::as_slice)
    }
    pub fn is_live_refresh_token(&self, token: &str) -> bool {
        self.refresh.contains_key(token)
    }
    pub fn live_refresh_tokens(&self) -> Vec<String> {
        self.refresh.keys().cloned().collect()
    }
    pub fn was_rotated(&self, refresh_token: &str) -> bool {
        self.rotated_from.iter().any(|t| t == refresh_token)
    }
    pub fn latest_access_token(&self) -> Option<String> {
        self.latest_access.clone()
    }
    pub fn rotations(&self) -> u64 {
        self.rotations
    }
    /// Access tokens stop being accepted (revoked upstream); refresh tokens stay live.
    pub fn revoke_access_tokens(&mut self) {
        self.access.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes() -> Vec<String> {
        vec!["user:inference".to_owned()]
    }

    #[test]
    fn a_rotation_spends_the_presented_refresh_token_and_keeps_old_access_tokens() {
        let mut book = Book::default();
        let first = book.issue(&scopes());
        let (second, carried) = book.redeem_refresh(&first.refresh_token, true, None).unwrap();
        assert_eq!(carried, scopes());
        assert!(!book.is_live_refresh_token(&first.refresh_token));
        assert!(book.was_rotated(&first.refresh_token));
        assert!(book.is_live_refresh_token(&second.refresh_token));
        assert!(book.access_scopes(&first.access_token).is_some(), "not revoked by a rotation");
        assert_eq!(book.latest_access_token(), Some(second.access_token));
        assert!(book.redeem_refresh(&first.refresh_token, true, None).is_none(), "single use");
        assert_eq!(book.rotations(), 1);
    }

    #[test]
    fn without_rotation_the_presented_refresh_token_stays_live() {
        let mut book = Book::default();
        let first = book.issue(&scopes());
        let (second, _) = book.redeem_refresh(&first.refresh_token, false, None).unwrap();
        assert!(book.is_live_refresh_token(&first.refresh_token));
        assert!(!book.is_live_refresh_token(&second.refresh_token));
        assert_eq!(book.live_refresh_tokens(), [first.refresh_token]);
    }

    #[test]
    fn a_code_is_spent_by_its_first_presentation() {
        let mut book = Book::default();
        let grant =
            Grant { challenge: "c".into(), redirect_uri: "r".into(), state: "s".into(), scopes: scopes() };
        let code = book.bind_code(grant);
        assert!(book.spend_code(&code).is_ok());
        assert_eq!(book.spend_code(&code).unwrap_err(), CodeRefusal::AlreadyUsed);
        assert_eq!(book.spend_code("made-up").unwrap_err(), CodeRefusal::Unknown);
    }
}
