//! Secrets taken out of upstream text before a client or a log sees it.
//!
//! An upstream that refuses a key often quotes it back ("Incorrect API key provided:
//! sk-abc1…wxyz"), in full or masked. That text belongs to the account, not to the tenant whose
//! request happened to carry it, so every upstream error body and `error` event passes through
//! [`redact_secrets`] before it is relayed or logged. A token is replaced when it contains one of
//! the account's secrets (an OAuth account's access and refresh tokens among them), when it
//! looks like an OpenAI key (`sk-…`) or a JSON Web Token (`eyJ….….…`, OAuth tokens), or when it is a masked form
//! (a run of `*`) that shares four or more leading or trailing characters with a secret.
//! Replacements keep JSON valid: they contain no quote or backslash.

use std::borrow::Cow;

/// What a redacted token is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The shortest secret matched verbatim; shorter ones would redact ordinary words.
const MIN_SECRET_LEN: usize = 8;
/// Characters shared with a secret that make a masked token count as that secret.
const MASK_EDGE: usize = 4;

/// `text` with every token that carries one of `secrets` (in full or masked) or looks like an
/// API key replaced by [`REDACTED`]; borrowed unchanged when there is nothing to redact.
pub fn redact_secrets<'a>(text: &'a str, secrets: &[&str]) -> Cow<'a, str> {
    let secrets: Vec<&str> = secrets
        .iter()
        .copied()
        .filter(|s| s.len() >= MIN_SECRET_LEN)
        .collect();
    let mut out = String::new();
    let mut copied = 0;
    for (start, end) in tokens(text) {
        let token = &text[start..end];
        if is_secret(token, &secrets) {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = end;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

fn is_secret(token: &str, secrets: &[&str]) -> bool {
    if token.starts_with("sk-") && token.len() > 6 {
        return true;
    }
    if is_jwt(token) {
        return true;
    }
    if secrets.iter().any(|s| token.contains(s)) {
        return true;
    }
    if !token.contains("**") {
        return false;
    }
    let head = token.split('*').next().unwrap_or_default();
    let tail = token.rsplit('*').next().unwrap_or_default();
    secrets.iter().any(|s| {
        (head.len() >= MASK_EDGE && s.starts_with(head))
            || (tail.len() >= MASK_EDGE && s.ends_with(tail))
    })
}

/// `true` for a JSON Web Token (`eyJ…` header, payload and signature): ChatGPT/Codex OAuth
/// access and id tokens look like this.
fn is_jwt(token: &str) -> bool {
    token.len() >= 20
        && token.starts_with("eyJ")
        && token.bytes().filter(|b| *b == b'.').count() >= 2
}

/// Byte ranges of the maximal runs of characters a key or a masked key is made of.
fn tokens(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = text.as_bytes();
    let keyish = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*' | b'.');
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < bytes.len() && !keyish(bytes[at]) {
            at += 1;
        }
        if at >= bytes.len() {
            return None;
        }
        let start = at;
        while at < bytes.len() && keyish(bytes[at]) {
            at += 1;
        }
        Some((start, at))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-upstream-0123456789abcdef";

    #[test]
    fn text_without_secrets_is_borrowed() {
        let t = r#"{"error":{"message":"Rate limit reached for gpt-5 in organization org-1"}}"#;
        assert!(matches!(redact_secrets(t, &[KEY]), Cow::Borrowed(_)));
    }

    #[test]
    fn the_key_in_full_is_redacted_and_json_stays_valid() {
        let t = format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}."}}}}"#);
        let out = redact_secrets(&t, &[KEY]);
        assert!(!out.contains("0123456789abcdef"), "{out}");
        assert!(out.contains("provided: [redacted]"), "{out}");
        assert!(sonic_rs::from_str::<sonic_rs::Value>(&out).is_ok());
    }

    #[test]
    fn masked_forms_of_the_key_are_redacted() {
        for masked in ["sk-ups************cdef", "sk-u***", "upst*********bcdef"] {
            let t = format!("key {masked} refused");
            let out = redact_secrets(&t, &[KEY]);
            assert_eq!(out, "key [redacted] refused", "{masked}");
        }
    }

    #[test]
    fn a_secret_without_a_key_prefix_is_redacted() {
        let token = "eyJhbGciOiJSUzI1NiJ9.payload.signature";
        let t = format!("token {token} expired");
        assert_eq!(redact_secrets(&t, &[token]), "token [redacted] expired");
        let masked = "eyJh****ture";
        let t = format!("token {masked} expired");
        assert_eq!(redact_secrets(&t, &[token]), "token [redacted] expired");
    }

    #[test]
    fn short_secrets_and_ordinary_stars_are_left_alone() {
        assert_eq!(
            redact_secrets("a **bold** word", &["abc"]),
            "a **bold** word"
        );
        assert_eq!(
            redact_secrets("use the task-list", &[KEY]),
            "use the task-list"
        );
    }

    #[test]
    fn oauth_tokens_are_redacted_whatever_their_shape() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJl";
        let text = format!("bad token {jwt}, refresh rt-opaque-123456");
        let out = redact_secrets(&text, &["rt-opaque-123456"]);
        assert_eq!(out, "bad token [redacted], refresh [redacted]");
    }
}
