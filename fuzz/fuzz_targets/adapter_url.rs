//! Adapter URLs: the one redactor (`model_runner_core::redact`), the block-source URLs that
//! `model_runner_adapters::connect::source_from_url` builds without I/O (`devnet://?...`, and
//! `http(s)://` which this build answers "needs the `jsonrpc` feature"), and the services'
//! config file (`model_runner::config::ConfigFile::parse`, whose `redacted_toml` shows its
//! URLs).
//!
//! The first byte chooses: `0` the input is a URL, `1` a config file (TOML).
//!
//! Properties: no panic; and the redactor never shows a password: whenever the `url` crate
//! finds a password in the input, at least 4 bytes long and appearing once in it, the
//! redacted text does not contain it; the same for each URL of a config file, in
//! `redacted_toml`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_runner::config::ConfigFile;
use model_runner_adapters::connect::source_from_url;
use model_runner_adapters::devnet::DevnetConfig;
use model_runner_core::Chain;
use model_runner_core::redact::{redact_url, redact_urls_in};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match kind {
        0 => url(text),
        1 => config(text),
        _ => {}
    }
});

/// The password the `url` crate sees in `url`, when it is one the redactor must hide and a
/// substring check can tell about: at least 4 bytes, once in the input.
fn password(url: &str) -> Option<String> {
    // The `url` crate drops tabs and newlines anywhere: its password may then be other text.
    if url.contains(['\t', '\n', '\r']) {
        return None;
    }
    let parsed = url::Url::parse(url).ok()?;
    let p = parsed.password()?;
    (p.len() >= 4 && url.matches(p).count() == 1).then(|| p.to_owned())
}

/// Whether `show(input)` shows `password`: it contains it, and not only where it shows the
/// same text for the input with the password replaced (the redactor's and the errors' own
/// words, such as "(unparsable URL)" or "ethereum", may contain a short password).
fn shows(show: impl Fn(&str) -> String, input: &str, password: &str) -> bool {
    let shown = show(input);
    if !shown.contains(password) {
        return false;
    }
    // A letter keeps the input parsable where the password was (a TOML string, a URL).
    let mask = ['x', 'y', 'z', 'q', 'w']
        .into_iter()
        .find(|c| !password.contains(*c))
        .unwrap_or('\u{7f}');
    let masked = input.replacen(password, &mask.to_string().repeat(password.len()), 1);
    shown.matches(password).count() > show(&masked).matches(password).count()
}

fn url(text: &str) {
    let shown = redact_url(text);
    if let Some(p) = password(text) {
        assert!(
            !shows(redact_url, text, &p),
            "redact_url({text:?}) = {shown:?} shows the password {p:?}"
        );
    }
    let message = format!("cannot connect to {text}: refused");
    let shown_in = redact_urls_in(&message);
    if let Some(p) = password(text)
        && !text.contains(char::is_whitespace)
    {
        assert!(
            !shows(
                |t| redact_urls_in(&format!("cannot connect to {t}: refused")),
                text,
                &p
            ),
            "redact_urls_in({message:?}) = {shown_in:?} shows the password {p:?}"
        );
    }
    if text.starts_with("devnet:") {
        let _ = DevnetConfig::from_url(text);
    }
    // Only schemes that build without I/O: `file://` reads the path, stores connect.
    if text.starts_with("devnet:") || text.starts_with("http") {
        let chain = Chain::new("ethereum").expect("chain name");
        if let Err(e) = source_from_url(chain, text)
            && let Some(p) = password(text)
        {
            let e = e.to_string();
            let error = |t: &str| {
                let chain = Chain::new("ethereum").expect("chain name");
                source_from_url(chain, t)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            };
            assert!(
                !shows(error, text, &p),
                "the error {e:?} shows the password {p:?}"
            );
        }
    }
}

fn config(text: &str) {
    // `${NAME}` reads the environment: the fuzzer's own variables are not secrets to keep.
    let Ok(config) = ConfigFile::parse(text, "fuzz.toml") else {
        return;
    };
    let shown = config.redacted_toml();
    let urls = [&config.store, &config.queue, &config.sink]
        .into_iter()
        .flatten()
        .cloned()
        .chain(config.chains.values().map(|c| c.url.clone()));
    for u in urls {
        if let Some(p) = password(&u)
            && text.matches(p.as_str()).count() == 1
        {
            assert!(
                !shows(
                    |t| ConfigFile::parse(t, "fuzz.toml")
                        .map(|c| c.redacted_toml())
                        .unwrap_or_default(),
                    text,
                    &p
                ),
                "redacted_toml shows the password {p:?} of {u:?}: {shown}"
            );
        }
    }
}
