//! Secrets in the config: the `Secret` wrapper that never prints, and how an inline value or an
//! `*_env` name becomes one.

use std::fmt;

use super::{invalid, ConfigError};

/// A secret value (an API key). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A required secret: inline at `key_path` or named by the `*_env` key at `env_path`, not both.
pub(super) fn secret(
    key_path: &str,
    inline: Option<String>,
    env_path: &str,
    env: Option<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    match (inline, env) {
        (Some(_), Some(_)) => Err(invalid(
            key_path,
            format!("set either it or `{env_path}`, not both"),
        )),
        (Some(v), None) if v.is_empty() => Err(invalid(key_path, "must not be empty")),
        (Some(v), None) => Ok(Secret(v)),
        (None, Some(name)) => match lookup(&name) {
            Some(v) if !v.is_empty() => Ok(Secret(v)),
            _ => Err(invalid(
                env_path,
                format!("environment variable {name} is not set or empty"),
            )),
        },
        (None, None) => Err(invalid(key_path, format!("required (or `{env_path}`)"))),
    }
}

/// A secret that may be left out: `None` when neither key is set, else as [`secret`].
pub(super) fn optional_secret(
    key_path: &str,
    inline: Option<String>,
    env_path: &str,
    env: Option<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    if inline.is_none() && env.is_none() {
        return Ok(None);
    }
    secret(key_path, inline, env_path, env, lookup).map(Some)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{no_env, MINIMAL};
    use crate::config::Config;
    #[test]
    fn env_secrets_resolve_and_never_print() {
        let text = MINIMAL.replace("api_key = \"sk-up\"", "api_key_env = \"UP_KEY\"");
        let c = Config::parse(&text, &|n| (n == "UP_KEY").then(|| "sk-secret-up".into())).unwrap();
        assert_eq!(c.accounts[0].api_key.expose(), "sk-secret-up");
        assert!(!format!("{c:?}").contains("sk-secret-up"));
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(
            err.contains("accounts[0].api_key_env") && err.contains("UP_KEY"),
            "{err}"
        );
    }
}
