//! Config loading from TOML text (`Config::parse`), and the upstream base URL parser it uses
//! (`config::Endpoint::parse`), fed the input's first line.
//!
//! Invariants: nothing panics; no error and no `Debug` of a loaded config shows a secret, be
//! it taken from the environment (every `*_env` name resolves to a marker here) or written
//! inline on a `key` / `api_key` / `redis_url` line; a parsed endpoint's WebSocket URL parses
//! back to the same endpoint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::config::{Config, Endpoint};

/// What every `*_env` lookup returns.
const ENV_SECRET: &str = "sk-fuzz-env-secret-7f3a";
/// Keys whose values are secrets.
const SECRET_KEYS: [&str; 3] = ["key", "api_key", "redis_url"];

/// The strings written inline on secret lines (`api_key = "..."`) that look like a key: at
/// least 8 characters, letters and digits, no space (so not a word or number an error message
/// uses anyway, like a field name), and written only once in the text (a value that also sits
/// under another key may be quoted as that key's).
fn inline_secrets(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let key = key.trim().trim_matches('"');
            let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
            let plain = value.len() >= 8
                && value.bytes().any(|b| b.is_ascii_digit())
                && value.bytes().any(|b| b.is_ascii_alphabetic())
                && !value
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b == b'"' || b == b'\\');
            (SECRET_KEYS.contains(&key) && plain && text.matches(value).count() == 1)
                .then_some(value)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(line) = text.lines().next() {
        if let Ok(ep) = Endpoint::parse(line) {
            let url = ep.responses_ws_url();
            let back = Endpoint::parse(&url).expect("a derived URL parses");
            assert_eq!(
                (back.tls, &back.host, back.port),
                (ep.tls, &ep.host, ep.port)
            );
            assert_eq!(back.path, format!("{}/responses", ep.path));
        }
    }
    let shown = match Config::parse(text, &|_| Some(ENV_SECRET.to_string())) {
        Ok(config) => format!("{config:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        !shown.contains(ENV_SECRET),
        "a secret from the environment shown: {shown}"
    );
    for secret in inline_secrets(text) {
        assert!(!shown.contains(secret), "an inline secret shown: {shown}");
    }
});
