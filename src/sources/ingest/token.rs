//! The ingest API's bearer token (see the parent module): a literal, or a file re-read when
//! it changes, so that a rotated Secret takes effect without a restart; compared by its
//! SHA-256 digest, in constant time.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// The bearer token: a literal, or a file re-read when it changes.
pub struct Token {
    file: Option<PathBuf>,
    current: Mutex<(Option<SystemTime>, [u8; 32])>,
}

impl From<&str> for Token {
    fn from(token: &str) -> Token {
        Token {
            file: None,
            current: Mutex::new((None, digest(token.trim().as_bytes()))),
        }
    }
}

/// An ingest token file that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("reading the ingest token {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the ingest token file {0} is empty")]
    Empty(String),
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

impl Token {
    /// The token in `path`; an unreadable or empty file is an error now, and later keeps the
    /// token last read.
    pub fn file(path: PathBuf) -> Result<Token, TokenError> {
        let (mtime, token) = read_token(&path)?;
        Ok(Token {
            file: Some(path),
            current: Mutex::new((mtime, digest(token.as_bytes()))),
        })
    }

    /// Whether `presented` is the token, comparing SHA-256 digests in constant time (so
    /// neither the content nor the length of the token leaks through timing).
    pub(super) fn accepts(&self, presented: &str) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.file {
            let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if mtime != current.0 {
                match read_token(path) {
                    Ok((mtime, token)) => {
                        info!(file = %path.display(), "the ingest token file changed: using the new token");
                        *current = (mtime, digest(token.as_bytes()));
                    }
                    Err(e) => warn!("{e}; keeping the token read before"),
                }
            }
        }
        let want = current.1;
        let got = digest(presented.as_bytes());
        want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

fn read_token(path: &std::path::Path) -> Result<(Option<SystemTime>, String), TokenError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenError::Read {
        path: path.display().to_string(),
        reason: crate::sources::io_reason(&e),
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(TokenError::Empty(path.display().to_string()));
    }
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((mtime, token))
}
