//! Pool account credentials at rest (issue 13, SPEC 1.5): AES-256-GCM (the RustCrypto `aes-gcm`
//! crate) with a key that is not in the database: the file named by `quota.credentials_key_file`
//! (superuser-only), else the server's environment variable `QUOTA_CREDENTIALS_KEY`; either holds
//! 64 hex characters. Stored form: version byte 1, a 12-byte nonce from PostgreSQL's CSPRNG, then
//! the ciphertext and its tag. The account id is the associated data, so a ciphertext copied to
//! another account does not decrypt. Plaintext never appears in a message or a log line.

use crate::gucs;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use pgrx::pg_sys;
use quota_core::{ErrorKind, QuotaError};
use std::cell::RefCell;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
pub const KEY_ENV: &str = "QUOTA_CREDENTIALS_KEY";

thread_local! {
    // (where the key came from, the key): re-read when the setting names another file.
    static KEY: RefCell<Option<(String, [u8; 32])>> = const { RefCell::new(None) };
}

fn missing(message: &str) -> QuotaError {
    QuotaError::new(
        ErrorKind::CredentialsKeyMissing,
        format!(
            "pool account credentials cannot be {message}: {}",
            key_help()
        ),
    )
}

fn key_help() -> String {
    format!("set quota.credentials_key_file to a file holding 64 hex characters (or {KEY_ENV} in the server's environment)")
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    let hex = text.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

fn key(purpose: &str) -> Result<Aes256Gcm, QuotaError> {
    let source = gucs::credentials_key_file().unwrap_or_else(|| format!("env:{KEY_ENV}"));
    let cached = KEY.with(|k| {
        k.borrow()
            .as_ref()
            .filter(|(s, _)| *s == source)
            .map(|(_, key)| *key)
    });
    let key = match cached {
        Some(key) => key,
        None => {
            let text = match source.strip_prefix("env:") {
                Some(var) if gucs::credentials_key_file().is_none() => std::env::var(var).ok(),
                _ => std::fs::read_to_string(&source).ok(),
            };
            let Some(key) = text.as_deref().and_then(parse_key) else {
                return Err(missing(purpose));
            };
            KEY.with(|k| *k.borrow_mut() = Some((source, key)));
            key
        }
    };
    Ok(Aes256Gcm::new(&key.into()))
}

pub fn encrypt(account_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, QuotaError> {
    let cipher = key("encrypted")?;
    let mut nonce = [0u8; NONCE_LEN];
    // SAFETY: pg_strong_random writes exactly `len` bytes into the buffer we own.
    if !unsafe { pg_sys::pg_strong_random(nonce.as_mut_ptr().cast(), nonce.len()) } {
        return Err(QuotaError::new(
            ErrorKind::CredentialsKeyMissing,
            "could not generate random bytes for a nonce",
        ));
    }
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: account_id.as_bytes(),
            },
        )
        .map_err(|_| missing("encrypted"))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

pub fn decrypt(account_id: &str, stored: &[u8]) -> Result<Vec<u8>, QuotaError> {
    let cipher = key("decrypted")?;
    if stored.len() < 1 + NONCE_LEN || stored[0] != VERSION {
        return Err(undecryptable(account_id));
    }
    let (nonce, sealed) = stored[1..].split_at(NONCE_LEN);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: account_id.as_bytes(),
            },
        )
        .map_err(|_| undecryptable(account_id))
}

fn undecryptable(account_id: &str) -> QuotaError {
    QuotaError::new(
        ErrorKind::CredentialsKeyMissing,
        format!("the credentials of pool account {account_id} do not decrypt with the configured key (was the key changed?)"),
    )
    .with("account_id", account_id)
}

#[cfg(test)]
mod tests {
    use super::parse_key;

    #[test]
    fn keys_are_64_hex_characters() {
        assert!(parse_key(&"ab".repeat(32)).is_some());
        assert!(parse_key(&format!("  {}\n", "0F".repeat(32))).is_some());
        assert!(parse_key(&"ab".repeat(31)).is_none());
        assert!(parse_key(&"zz".repeat(32)).is_none());
        assert!(parse_key("").is_none());
    }
}
