//! `[[client_keys]]`: the keys clients authenticate with, and the group each one may use.

use serde::Deserialize;

use super::secret::{secret, Secret};
use super::{invalid, ConfigError};

/// `[[client_keys]]`: one key a client may present.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientKey {
    /// A name for the key that is safe to log and bill by.
    pub id: String,
    /// The key itself.
    pub key: Secret,
    /// The group whose accounts and state the key may use.
    pub group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientKey {
    id: Option<String>,
    key: Option<String>,
    key_env: Option<String>,
    group: Option<String>,
}

/// `[[client_keys]]` checked: every key resolved, none twice, ids unique, at least one key.
pub(super) fn validate(
    raw: Vec<RawClientKey>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ClientKey>, ConfigError> {
    let mut client_keys = Vec::with_capacity(raw.len());
    for (i, k) in raw.into_iter().enumerate() {
        let at = format!("client_keys[{i}]");
        let key = secret(
            &format!("{at}.key"),
            k.key,
            &format!("{at}.key_env"),
            k.key_env,
            env,
        )?;
        if client_keys.iter().any(|c: &ClientKey| c.key == key) {
            return Err(invalid(format!("{at}.key"), "duplicates an earlier key"));
        }
        let id = k.id.unwrap_or_else(|| format!("key-{i}"));
        if client_keys.iter().any(|c: &ClientKey| c.id == id) {
            return Err(invalid(format!("{at}.id"), format!("`{id}` is used twice")));
        }
        client_keys.push(ClientKey {
            id,
            key,
            group: k.group.unwrap_or_else(|| "default".into()),
        });
    }
    if client_keys.is_empty() {
        return Err(invalid(
            "client_keys",
            "at least one client key is required",
        ));
    }
    Ok(client_keys)
}
