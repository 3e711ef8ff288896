//! The one redactor for every URL the project shows: store, queue, sink, chain, index root and
//! object store URLs, in logs, errors, metrics, `Debug` output and a run's `last_error`.
//!
//! [`redact_url`] keeps what helps an operator find the server (scheme, user name, host, port,
//! the path, harmless query parameters) and replaces every secret with `***`:
//!
//! - the password of the user info (`postgres://runner:***@db/runs`), a user name that looks
//!   like a key (`https://***@node`), and the whole user info of object-store URLs (`s3://`,
//!   `gs://`, `az://`: the user is an access key id);
//! - query values whose key names a secret (`password`, `secret`, `token`, `key`, `auth`,
//!   `sig`, `credential`, `session`, ...: `?password=***`, `?sasl.password=***`,
//!   `?apikey=***`);
//! - path keys: the segment after `/v1/`, `/v2/` or `/v3/` (Infura's `/v3/<key>`, Alchemy's
//!   `/v2/<key>`) and any segment that looks like a key (20 or more letters, digits, `-` and
//!   `_`, with both letters and digits, as QuickNode's `/<token>/`);
//! - the fragment, dropped;
//! - in a list of URLs separated by `|` (a chain's JSON-RPC nodes), each URL as above.
//!
//! It never fails: text that is not a URL is returned as it is when it is a plain path or
//! `sqlite::memory:`, and otherwise reduced to its scheme or not shown at all (a bare word given
//! where a URL was expected may be a password). [`redact_urls_in`]
//! applies it to every URL inside a message (an error text that may quote one), and
//! [`UrlSecrets`] removes the secrets of one known URL from a text that quotes them piecewise
//! (a server's or client library's error message), by the same verdict.

/// Whether a query key names a secret (case-insensitive, percent-decoded by the caller).
pub fn is_secret_key(key: &str) -> bool {
    const SECRET: [&str; 12] = [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "sig",
        "credential",
        "session",
        "jwt",
        "private",
        "cookie",
    ];
    let key = key.to_ascii_lowercase();
    SECRET.iter().any(|s| key.contains(s))
}

/// Whether a path segment or user name looks like an API key or token.
fn looks_like_key(s: &str) -> bool {
    s.len() >= 20
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `url` with every secret replaced by `***` (see the module docs).
pub fn redact_url(url: &str) -> String {
    // A list of URLs, `URL|URL...` (a chain's JSON-RPC nodes in failover order): each one.
    let parts: Vec<&str> = url.split('|').collect();
    if parts.len() > 1 && parts.iter().all(|p| p.contains("://")) {
        return parts
            .into_iter()
            .map(redact_url)
            .collect::<Vec<_>>()
            .join("|");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not `scheme://...`: a plain path (`./index`, `runs.db`) or a form such as
        // `sqlite::memory:` is shown as it is; anything else (a bare word may be a password
        // given where a URL was expected) is not echoed, nor anything with credentials or a
        // query.
        let path_like = url.contains('/') || url.contains('.') || url.contains(':');
        return if url.contains('@') || url.contains('?') {
            match url.split_once(':') {
                Some((scheme, _)) if is_scheme(scheme) => format!("{scheme}:…"),
                _ => "(unparsable URL)".to_owned(),
            }
        } else if path_like {
            url.to_owned()
        } else {
            "(unparsable URL)".to_owned()
        };
    };
    if !is_scheme(scheme) {
        return "(unparsable URL)".to_owned();
    }
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    // For the web's schemes the `url` crate, and so the HTTP clients, skips any more `/` and `\`
    // before the authority: `https:///user:pw@host` has a password.
    let before_query = if matches!(
        scheme.to_ascii_lowercase().as_str(),
        "http" | "https" | "ws" | "wss" | "ftp"
    ) {
        let authority_start = before_query.trim_start_matches(['/', '\\']);
        out.push_str(&before_query[..before_query.len() - authority_start.len()]);
        authority_start
    } else {
        before_query
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    // Object-store URLs carry an access key id as their user: hidden with the secret.
    let key_as_user = matches!(
        scheme.to_ascii_lowercase().as_str(),
        "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "adl" | "azure"
    );
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) if !looks_like_key(user) && !key_as_user => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                Some(_) => out.push_str("***:***"),
                None if looks_like_key(userinfo) || key_as_user => out.push_str("***"),
                None => out.push_str(userinfo),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    let mut after_version = false;
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let secret = (after_version && !segment.is_empty()) || looks_like_key(segment);
        out.push_str(if secret { "***" } else { segment });
        after_version = matches!(segment.to_ascii_lowercase().as_str(), "v1" | "v2" | "v3");
    }
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, v)) if is_secret_key(&percent_decoded(k)) || looks_like_key(v) => {
                    out.push_str(k);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    out
}

/// Every `scheme://...` word of `text` passed through [`redact_url`] (brackets, quotes and
/// punctuation around it kept), so an error message that quotes a URL shows no secret.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // ASCII control characters too: the `url` crate drops them around a URL.
        let is_edge = |c: char| {
            c.is_ascii_control()
                || matches!(
                    c,
                    '(' | ')' | '[' | ']' | '<' | '>' | '"' | '\'' | ',' | ';' | '`'
                )
        };
        let core = word.trim_matches(is_edge);
        // `https:/user:pw@host` and `https:user:pw@host` are URLs with a password too, to the
        // `url` crate and so to the clients that take them: a scheme and an `@` are enough.
        let scheme_and_userinfo =
            core.contains('@') && core.split_once(':').is_some_and(|(s, _)| is_scheme(s));
        if !core.contains("://") && !scheme_and_userinfo {
            out.push_str(word);
            continue;
        }
        let start = word.len() - word.trim_start_matches(is_edge).len();
        out.push_str(&word[..start]);
        // A trailing ':' (as in "cannot connect to URL: why") is not part of the URL.
        let (url, tail) = match core.strip_suffix(':') {
            Some(u) => (u, ":"),
            None => (core, ""),
        };
        out.push_str(&redact_url(url));
        out.push_str(tail);
        out.push_str(&word[start + core.len()..]);
    }
    out
}

/// The secrets [`redact_url`] hides in one URL (its password, path keys, secret query values),
/// to be removed from texts that may quote them without the rest of the URL: a client
/// library's parse error, a server's error page echoing the request path. Derived from
/// [`redact_url`]'s verdict, so both agree on what is secret.
#[derive(Clone, Default)]
pub struct UrlSecrets(Vec<String>);

impl std::fmt::Debug for UrlSecrets {
    /// The number of secrets only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UrlSecrets({} hidden)", self.0.len())
    }
}

impl UrlSecrets {
    /// The secrets of `url`: every part of it that [`redact_url`] does not show (parts of
    /// fewer than 3 characters only when they are the password), each also percent-decoded.
    pub fn of(url: &str) -> Self {
        let split = |s: &str| -> Vec<String> {
            s.split(['/', ':', '@', '?', '&', '=', '#'])
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let kept = split(&redact_url(url));
        let password = url
            .split_once("://")
            .map(|(_, rest)| rest.trim_start_matches(['/', '\\']))
            .and_then(|rest| rest.split(['/', '?', '#']).next())
            .and_then(|authority| authority.rsplit_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password)
            .filter(|p| !p.is_empty());
        let mut secrets = Self::default();
        for token in split(url) {
            if kept.contains(&token) || (token.len() < 3 && Some(token.as_str()) != password) {
                continue;
            }
            secrets.add(percent_decoded(&token));
            secrets.add(token);
        }
        if let Some(p) = password {
            secrets.add(percent_decoded(p));
            secrets.add(p);
        }
        secrets
    }

    /// Hides `secret` too (e.g. a header token made from the URL's user info).
    pub fn add(&mut self, secret: impl Into<String>) {
        let secret = secret.into();
        if secret.is_empty() || self.0.contains(&secret) {
            return;
        }
        self.0.push(secret);
        // Longest first, so a secret containing another is replaced whole.
        self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with every secret replaced by `***` and every URL in it redacted.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        redact_urls_in(&out)
    }
}

fn is_scheme(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `s` with `%XX` escapes decoded (invalid ones kept), for matching query keys.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of secret the project's URLs carry, and what stays visible.
    #[test]
    fn every_secret_is_replaced_and_the_rest_kept() {
        let cases = [
            (
                "postgres://runner:hunter2@db:5432/runs",
                "postgres://runner:***@db:5432/runs",
            ),
            (
                "postgres://runner@127.0.0.1:1/db?password=hunter2&sslmode=require",
                "postgres://runner@127.0.0.1:1/db?password=***&sslmode=require",
            ),
            ("amqp://guest:guest@mq/%2f", "amqp://guest:***@mq/%2f"),
            (
                "amqp://u:p@mq/%2f?queue_type=quorum&delivery_limit=5",
                "amqp://u:***@mq/%2f?queue_type=quorum&delivery_limit=5",
            ),
            (
                "https://mainnet.infura.io/v3/0123456789abcdef0123456789abcdef",
                "https://mainnet.infura.io/v3/***",
            ),
            (
                "https://eth-mainnet.g.alchemy.com/v2/short",
                "https://eth-mainnet.g.alchemy.com/v2/***",
            ),
            (
                "https://name.quiknode.pro/9f8e7d6c5b4a39281706f5e4d3c2b1a0/",
                "https://name.quiknode.pro/***/",
            ),
            (
                "https://node.example/rpc?apikey=hunter2&chain=1",
                "https://node.example/rpc?apikey=***&chain=1",
            ),
            (
                "kafka://b1:9092,b2:9092?sasl.password=hunter2&acks=all",
                "kafka://b1:9092,b2:9092?sasl.password=***&acks=all",
            ),
            (
                "s3://bucket/prefix?aws_secret_access_key=hunter2&region=eu-west-1",
                "s3://bucket/prefix?aws_secret_access_key=***&region=eu-west-1",
            ),
            (
                "https://ABCDEFGHIJ0123456789xyz@node.example/",
                "https://***@node.example/",
            ),
            (
                "https://node.example/#token=hunter2",
                "https://node.example/",
            ),
            ("s3://AKIAXXXX:hunter2@bucket/p", "s3://***:***@bucket/p"),
            ("sqlite://model-runner.db", "sqlite://model-runner.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("devnet://?logs=0&seed=2", "devnet://?logs=0&seed=2"),
            ("file:///data/sink", "file:///data/sink"),
            (
                "https://a.example/v3/0123abcd|https://user:hunter2@b.example/#rps=1",
                "https://a.example/v3/***|https://user:***@b.example/",
            ),
            ("./index", "./index"),
            ("hunter2", "(unparsable URL)"),
            ("x?password=hunter2", "(unparsable URL)"),
            ("pg:user:hunter2@db", "pg:…"),
            (
                "postgres://u:p%40ss@db/x?pass%77ord=hunter2",
                "postgres://u:***@db/x?pass%77ord=***",
            ),
        ];
        for (input, want) in cases {
            let got = redact_url(input);
            assert_eq!(got, want, "{input}");
            assert!(!got.contains("hunter2"), "{input} -> {got}");
        }
    }

    #[test]
    fn web_urls_with_more_slashes_are_redacted() {
        // Found by fuzz/fuzz_targets/adapter_url.rs: the `url` crate reads
        // `https:///u:pw@host` as `https://u:pw@host`; the redactor took the user info for a
        // path and showed the password.
        assert_eq!(
            redact_url("https:///runpwdrs3cretu:pw1key1@nodeef"),
            "https:///runpwdrs3cretu:***@nodeef"
        );
        assert_eq!(
            redact_url("http://\\\\u:hunter22@node:8545/x"),
            "http://\\\\u:***@node:8545/x"
        );
        // Other schemes keep their empty authority: a file path is shown as it is.
        assert_eq!(redact_url("file:///data/blocks"), "file:///data/blocks");
    }

    #[test]
    fn urls_without_both_slashes_inside_messages_are_redacted() {
        // Found by fuzz/fuzz_targets/adapter_url.rs: the `url` crate reads `https:/u:pw12@host`
        // as `https://u:pw12@host`, and the message showed the password.
        let msg = "cannot connect to https:/$u:pw12@n.pasqwoo,e-a:85/.bn: refused";
        assert_eq!(redact_urls_in(msg), "cannot connect to https:…: refused");
        let msg = "bad node (https:u:hunter22@node:8545)";
        assert_eq!(redact_urls_in(msg), "bad node (https:…)");
        // Found by the same target: control characters before the scheme, which the `url`
        // crate drops.
        let msg = "cannot connect to \0\0https:/@u:pw2d1@e: refused";
        assert_eq!(
            redact_urls_in(msg),
            "cannot connect to \0\0https:…: refused"
        );
        // Words with a colon and an `@` but no scheme before the colon stay as they are.
        assert_eq!(redact_urls_in("at 12:00 @noon"), "at 12:00 @noon");
    }

    /// What a client's error text may quote of a URL, and what of it must stay readable.
    #[test]
    fn texts_quoting_a_url_piecewise_lose_its_secrets() {
        let cases: [(&str, &str, &[&str], &[&str]); 5] = [
            (
                "https://runner:pa%24%24word@node.example:8545/v3/0123abcd?apikey=hunter22&chain=1",
                "GET /v3/0123abcd?apikey=hunter22 failed for runner with pa$$word and \
                 pa%24%24word on node.example chain=1",
                &["0123abcd", "hunter22", "pa$$word", "pa%24%24word"],
                &["runner", "node.example", "chain=1"],
            ),
            (
                "amqp://guest:s3cretpw@mq:5672/%2f",
                "invalid port in mq:5672x for guest (password s3cretpw)",
                &["s3cretpw"],
                &["guest", "mq"],
            ),
            // A short password is hidden as well: it is the one part surely secret.
            (
                "redis://:pw@cache:6379/0",
                "auth failed with pw",
                &["pw"],
                &["auth failed"],
            ),
            (
                "kafka://b1:9092?sasl.password=hunter22&acks=all",
                "bad sasl.password hunter22, acks all",
                &["hunter22"],
                &["sasl.password", "acks all"],
            ),
            (
                "s3://AKIAEXAMPLEKEY:hunter22@bucket/prefix",
                "signature mismatch for AKIAEXAMPLEKEY on bucket",
                &["AKIAEXAMPLEKEY", "hunter22"],
                &["bucket"],
            ),
        ];
        for (url, text, hidden, shown) in cases {
            let got = UrlSecrets::of(url).scrub(text);
            for s in hidden {
                assert!(!got.contains(s), "{url}: {s} in {got}");
            }
            for s in shown {
                assert!(got.contains(s), "{url}: {s} missing from {got}");
            }
        }
        let mut with_header = UrlSecrets::of("https://node.example/");
        with_header.add("dXNlcjpwdw==");
        assert_eq!(with_header.scrub("Basic dXNlcjpwdw=="), "Basic ***");
        assert!(!format!("{with_header:?}").contains("dXNl"));
    }

    #[test]
    fn urls_inside_messages_are_redacted() {
        let msg = "cannot connect to postgres://runner@db/x?password=hunter2: refused (see \
                   \"amqp://u:hunter2@mq/%2f\")";
        assert_eq!(
            redact_urls_in(msg),
            "cannot connect to postgres://runner@db/x?password=***: refused (see \
             \"amqp://u:***@mq/%2f\")"
        );
    }
}
