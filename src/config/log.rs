//! `[log]`: log format and level.

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[log]`: log format and level.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Emit JSON lines instead of text.
    pub json: bool,
    /// Default filter when `RUST_LOG` is not set.
    pub level: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

impl RawLog {
    /// `[log]` checked: the format is `text` (default) or `json`; the level defaults to `info`.
    pub(super) fn validate(self) -> Result<LogConfig, ConfigError> {
        Ok(LogConfig {
            json: match self.format.as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(invalid(
                        "log.format",
                        format!("`{other}` is not `text` or `json`"),
                    ))
                }
            },
            level: self.level.unwrap_or_else(|| "info".into()),
        })
    }
}
