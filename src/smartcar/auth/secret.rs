//! Where the client secret comes from: a value (config or environment, replaced on reload) or a
//! file re-read on every token request.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use secrecy::SecretString;

/// Where the client secret comes from. Read on every token request, so a rotated secret is
/// picked up by the next attempt.
#[derive(Clone)]
pub enum SecretSource {
    /// In memory (config file or environment); replaced on reload.
    Value(Arc<RwLock<SecretString>>),
    /// A file (e.g. systemd's `$CREDENTIALS_DIRECTORY/client_secret`), trailing newline ignored.
    File(PathBuf),
}

impl SecretSource {
    pub fn value(secret: SecretString) -> Self {
        SecretSource::Value(Arc::new(RwLock::new(secret)))
    }

    /// The current secret.
    pub fn read(&self) -> Result<SecretString, String> {
        match self {
            SecretSource::Value(v) => Ok(v.read().unwrap_or_else(|e| e.into_inner()).clone()),
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                // An empty file (`printf '%s' "$UNSET" > file`) is no secret: refusing it keeps
                // an empty key from ever signing or verifying anything.
                Ok(s) if s.trim().is_empty() => Err(format!("{} is empty", path.display())),
                Ok(s) => Ok(SecretString::from(
                    s.trim_end_matches(['\r', '\n']).to_owned(),
                )),
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            },
        }
    }

    /// Replaces an in-memory secret (a reload); a file source re-reads by itself.
    pub fn replace(&self, secret: SecretString) {
        if let SecretSource::Value(v) = self {
            *v.write().unwrap_or_else(|e| e.into_inner()) = secret;
        }
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Value(_) => f.write_str("SecretSource::Value([REDACTED])"),
            SecretSource::File(p) => write!(f, "SecretSource::File({})", p.display()),
        }
    }
}
