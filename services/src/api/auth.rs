//! Bearer-token auth with two scopes.
//!
//! A handler that changes state takes a [`WriteAccess`] argument, one that only reads takes a
//! [`ReadAccess`]; the extractor checks the `Authorization: Bearer <token>` header against the
//! configured tokens before the body is read. A write token also grants reads. Reads can be opened
//! to everyone ([`ApiAuth::open_reads`]); writes never can.
//!
//! Tokens are compared in constant time against every configured token (no early exit on the
//! first match), are never logged, and print as `***` in `Debug`.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use subtle::{Choice, ConstantTimeEq};

use super::ApiState;
use super::error::ApiError;

/// The environment variable with the comma-separated write tokens; always honoured.
pub const WRITE_TOKENS_ENV: &str = "MODEL_RUNNER_API_TOKENS";
/// The environment variable with the comma-separated read-only tokens.
pub const READ_TOKENS_ENV: &str = "MODEL_RUNNER_API_READ_TOKENS";

/// A secret token. Its `Debug` output hides it.
#[derive(Clone, PartialEq, Eq)]
struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `GET` endpoints.
    Read,
    /// `GET` and every endpoint that changes state.
    Write,
}

/// Who may call the API.
#[derive(Debug, Clone, Default)]
pub struct ApiAuth {
    write: Vec<Token>,
    read: Vec<Token>,
    /// Whether reads need no token.
    pub open_reads: bool,
}

fn split_tokens(list: &str) -> impl Iterator<Item = Token> + '_ {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Token(t.as_bytes().to_vec()))
}

impl ApiAuth {
    /// Auth with these comma-separated token lists (empty entries are ignored).
    pub fn new(write_tokens: &str, read_tokens: &str, open_reads: bool) -> Self {
        Self {
            write: split_tokens(write_tokens).collect(),
            read: split_tokens(read_tokens).collect(),
            open_reads,
        }
    }

    /// Auth from [`WRITE_TOKENS_ENV`] and [`READ_TOKENS_ENV`].
    pub fn from_env(open_reads: bool) -> Self {
        let var = |name| std::env::var(name).unwrap_or_default();
        Self::new(&var(WRITE_TOKENS_ENV), &var(READ_TOKENS_ENV), open_reads)
    }

    /// Adds write tokens (e.g. from a config file) to those already known.
    pub fn with_write_tokens(mut self, tokens: &str) -> Self {
        self.write.extend(split_tokens(tokens));
        self
    }

    /// Number of write tokens and read tokens, for a start-up message.
    pub fn token_counts(&self) -> (usize, usize) {
        (self.write.len(), self.read.len())
    }

    /// The scope `presented` grants, comparing against every token in constant time.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let presented = presented.as_bytes();
        let any = |tokens: &[Token]| {
            tokens.iter().fold(Choice::from(0), |acc, t| {
                acc | t.0.as_slice().ct_eq(presented)
            })
        };
        let (write, read) = (any(&self.write), any(&self.read));
        if bool::from(write) {
            Some(Scope::Write)
        } else if bool::from(read) {
            Some(Scope::Read)
        } else {
            None
        }
    }

    /// Checks the request's bearer token grants `needed`.
    fn check(&self, parts: &Parts, needed: Scope) -> Result<(), ApiError> {
        if needed == Scope::Read && self.open_reads {
            return Ok(());
        }
        let Some(value) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing bearer token: send `Authorization: Bearer <token>`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "malformed Authorization header: expected `Authorization: Bearer <token>`",
                )
            })?;
        match self.scope_of(token) {
            None => Err(ApiError::unauthorized("invalid bearer token")),
            Some(scope) if scope >= needed => Ok(()),
            Some(_) => Err(ApiError::forbidden(
                "this token may only read; a write token is needed",
            )),
        }
    }
}

/// Proof that the request may read.
#[derive(Debug, Clone, Copy)]
pub struct ReadAccess;

/// Proof that the request may write.
#[derive(Debug, Clone, Copy)]
pub struct WriteAccess;

impl FromRequestParts<ApiState> for ReadAccess {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        state.config.auth.check(parts, Scope::Read).map(|()| Self)
    }
}

impl FromRequestParts<ApiState> for WriteAccess {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        state.config.auth.check(parts, Scope::Write).map(|()| Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_redaction() {
        let auth = ApiAuth::new("w1, w2,", "r1", false);
        assert_eq!(auth.scope_of("w2"), Some(Scope::Write));
        assert_eq!(auth.scope_of("r1"), Some(Scope::Read));
        assert_eq!(auth.scope_of("w"), None);
        assert_eq!(auth.scope_of(""), None);
        assert_eq!(auth.token_counts(), (2, 1));
        let shown = format!("{auth:?}");
        assert!(!shown.contains("w1") && !shown.contains("r1"), "{shown}");
    }
}
