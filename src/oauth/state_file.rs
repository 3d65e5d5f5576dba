//! The rotated tokens of an OAuth account, kept across restarts. OpenAI's refresh tokens are
//! single-use: once a refresh rotated it, the token in the operator's config is spent, so the
//! new one is written here (mode 0600, written to a temporary file, synced, then renamed over
//! the old one) before it is put in force. The operator's config file is never rewritten.
//!
//! The file records a fingerprint (SHA-256) of the configured refresh token it descends from:
//! when the operator puts a new refresh token in the config (a fresh login), the file no longer
//! matches and the config's token wins.

use sonic_rs::JsonValueTrait;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::config::Secret;

/// Why the state file could not be read or written. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading or writing failed.
    #[error("oauth state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file exists but is not a state file this version wrote.
    #[error("oauth state file {0}: not a readable state file (fix or remove it; it may hold the only valid refresh token)")]
    Corrupt(PathBuf),
    /// The directory the file goes in does not exist.
    #[error("oauth state file {0}: its directory does not exist")]
    NoDirectory(PathBuf),
}

/// What the file holds.
#[derive(Debug)]
pub struct Stored {
    /// The access token last issued.
    pub access_token: Secret,
    /// The refresh token in force.
    pub refresh_token: Secret,
    /// When the access token was issued and when it expires, as Unix seconds.
    pub issued_at: u64,
    /// See `issued_at`.
    pub expires_at: u64,
}

/// The fingerprint of a configured refresh token.
pub fn seed_of(refresh: &Secret) -> String {
    let digest = Sha256::digest(refresh.expose().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Checks the file can be written later (its directory exists).
pub fn check_location(path: &Path) -> Result<(), StateFileError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            Err(StateFileError::NoDirectory(path.to_path_buf()))
        }
        _ => Ok(()),
    }
}

/// Reads the file: `None` when it does not exist or descends from another configured refresh
/// token than `seed`.
pub fn load(path: &Path, seed: &str) -> Result<Option<Stored>, StateFileError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateFileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let corrupt = || StateFileError::Corrupt(path.to_path_buf());
    crate::protocol::json_depth::check_depth(&text, crate::protocol::json_depth::MAX_JSON_DEPTH)
        .map_err(|_| corrupt())?;
    let text_field = |name: &str| {
        sonic_rs::get_from_slice(&text, [name])
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    };
    let number = |name: &str| {
        sonic_rs::get_from_slice(&text, [name])
            .ok()
            .and_then(|v| v.as_u64())
    };
    if text_field("seed").ok_or_else(corrupt)? != seed {
        return Ok(None);
    }
    Ok(Some(Stored {
        access_token: Secret::new(text_field("access_token").ok_or_else(corrupt)?),
        refresh_token: Secret::new(
            text_field("refresh_token")
                .filter(|t| !t.is_empty())
                .ok_or_else(corrupt)?,
        ),
        issued_at: number("issued_at").ok_or_else(corrupt)?,
        expires_at: number("expires_at").ok_or_else(corrupt)?,
    }))
}

/// Replaces the file with `stored` (descending from `seed`) atomically, readable by the owner
/// only.
pub fn save(path: &Path, seed: &str, stored: &Stored) -> Result<(), StateFileError> {
    let io = |source| StateFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let body = sonic_rs::json!({
        "seed": seed,
        "access_token": stored.access_token.expose(),
        "refresh_token": stored.refresh_token.expose(),
        "issued_at": stored.issued_at,
        "expires_at": stored.expires_at,
    })
    .to_string();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(body.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saves_owner_only_and_reads_back_for_the_same_seed() {
        let dir = std::env::temp_dir().join(format!("sg-oauth-state-{:x}", fastrand::u64(..)));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        let seed = seed_of(&Secret::new("rt-config".into()));
        let stored = Stored {
            access_token: Secret::new("at-9".into()),
            refresh_token: Secret::new("rt-9".into()),
            issued_at: 10,
            expires_at: 20,
        };
        save(&path, &seed, &stored).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = load(&path, &seed).unwrap().unwrap();
        assert_eq!(back.refresh_token.expose(), "rt-9");
        assert_eq!((back.issued_at, back.expires_at), (10, 20));
        let other = seed_of(&Secret::new("rt-new-login".into()));
        assert!(load(&path, &other).unwrap().is_none());
        fs::write(&path, "{").unwrap();
        assert!(matches!(
            load(&path, &seed),
            Err(StateFileError::Corrupt(_))
        ));
        assert!(load(&dir.join("missing.json"), &seed).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
