//! Sidecar configuration, read once from the environment at start-up.

use std::fmt;
use std::net::SocketAddr;

use subtle::ConstantTimeEq;

pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
pub const DATABASE_URL_DEFAULT: &str = "host=/tmp port=5432 user=postgres dbname=postgres";
pub const DB_POOL_SIZE_DEFAULT: usize = 16;
pub const DB_POOL_SIZE_MAX: usize = 1024;
pub const REQUEST_TIMEOUT_S_DEFAULT: u64 = 30;
pub const REQUEST_TIMEOUT_S_MAX: u64 = 3600;

/// Every variable the sidecar reads, with its default, for `--help` and the README.
pub const ENV_VARS: &[(&str, &str, &str)] = &[
    ("QUOTA_LISTEN", LISTEN_DEFAULT, "address:port to listen on"),
    (
        "QUOTA_DATABASE_URL",
        DATABASE_URL_DEFAULT,
        "libpq key=value string or postgres:// URL (no TLS)",
    ),
    (
        "QUOTA_DB_POOL_SIZE",
        "16",
        "maximum pooled connections (1..1024)",
    ),
    (
        "QUOTA_ADMIN_TOKEN",
        "(unset)",
        "admin bearer / X-Admin-Token; unset = admin API answers 403",
    ),
    (
        "QUOTA_SERVICE_TOKEN",
        "(unset)",
        "X-Service-Token of the internal API; unset = internal API answers 403",
    ),
    (
        "QUOTA_REQUEST_TIMEOUT_S",
        "30",
        "whole-request timeout in seconds (1..3600); on expiry 503",
    ),
    ("QUOTA_LOG_FORMAT", "text", "log line format: text | json"),
    (
        "RUST_LOG",
        "info",
        "tracing filter, e.g. info,quota_sidecar=debug",
    ),
];

/// A secret from the environment: never printed, compared in constant time.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Constant-time comparison with a presented credential.
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }

    /// The raw value, for the few places that must hand it on (the database driver).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Equal-length inputs are compared without data-dependent branches (subtle), so timing
/// does not reveal how many leading bytes of a guess were right. Only the length can leak.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// May hold a password, hence a Secret (kept out of Debug output and logs).
    pub database_url: Secret,
    pub db_pool_size: usize,
    pub admin_token: Option<Secret>,
    pub service_token: Option<Secret>,
    pub request_timeout_s: u64,
    pub log_format: LogFormat,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads through `lookup` so tests need not mutate the process environment.
    /// Empty values count as unset: `QUOTA_ADMIN_TOKEN=` must not enable an empty admin token.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let listen_text = get("QUOTA_LISTEN").unwrap_or_else(|| LISTEN_DEFAULT.to_owned());
        let listen = listen_text.trim().parse::<SocketAddr>().map_err(|e| {
            ConfigError(format!(
                "QUOTA_LISTEN={listen_text:?} is not an address:port ({e})"
            ))
        })?;

        let database_url =
            get("QUOTA_DATABASE_URL").unwrap_or_else(|| DATABASE_URL_DEFAULT.to_owned());
        // Parse now so a typo fails at start-up; the message of tokio-postgres does not echo
        // the string, which may contain a password.
        database_url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| {
                ConfigError(format!(
                    "QUOTA_DATABASE_URL is not a valid connection string: {e}"
                ))
            })?;

        let db_pool_size = match get("QUOTA_DB_POOL_SIZE") {
            None => DB_POOL_SIZE_DEFAULT,
            Some(text) => {
                parse_bounded("QUOTA_DB_POOL_SIZE", &text, 1, DB_POOL_SIZE_MAX as u64)? as usize
            }
        };

        let request_timeout_s = match get("QUOTA_REQUEST_TIMEOUT_S") {
            None => REQUEST_TIMEOUT_S_DEFAULT,
            Some(text) => {
                parse_bounded("QUOTA_REQUEST_TIMEOUT_S", &text, 1, REQUEST_TIMEOUT_S_MAX)?
            }
        };

        let log_format = match get("QUOTA_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError(format!(
                    "QUOTA_LOG_FORMAT={other:?}: expected text or json"
                )))
            }
        };

        Ok(Config {
            listen,
            database_url: Secret::new(database_url),
            db_pool_size,
            admin_token: get("QUOTA_ADMIN_TOKEN").map(Secret::new),
            service_token: get("QUOTA_SERVICE_TOKEN").map(Secret::new),
            request_timeout_s,
            log_format,
        })
    }
}

fn parse_bounded(name: &str, text: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    match text.trim().parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(ConfigError(format!(
            "{name}={text:?}: expected an integer in {min}..={max}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config_from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| env.get(name).cloned())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = config_from(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.database_url.expose(), DATABASE_URL_DEFAULT);
        assert_eq!(config.db_pool_size, 16);
        assert!(config.admin_token.is_none());
        assert!(config.service_token.is_none());
        assert_eq!(config.request_timeout_s, 30);
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn values_from_the_environment_override_defaults() {
        let config = config_from(&[
            ("QUOTA_LISTEN", "0.0.0.0:18080"),
            (
                "QUOTA_DATABASE_URL",
                "postgres://u:p@localhost:55432/pg_quota",
            ),
            ("QUOTA_DB_POOL_SIZE", "4"),
            ("QUOTA_ADMIN_TOKEN", "adm"),
            ("QUOTA_SERVICE_TOKEN", "svc"),
            ("QUOTA_REQUEST_TIMEOUT_S", "5"),
            ("QUOTA_LOG_FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 18080);
        assert_eq!(config.db_pool_size, 4);
        assert!(config.admin_token.unwrap().matches("adm"));
        assert!(config.service_token.unwrap().matches("svc"));
        assert_eq!(config.request_timeout_s, 5);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn empty_token_counts_as_unset() {
        let config =
            config_from(&[("QUOTA_ADMIN_TOKEN", ""), ("QUOTA_SERVICE_TOKEN", "  ")]).unwrap();
        assert!(config.admin_token.is_none());
        assert!(config.service_token.is_none());
    }

    #[test]
    fn bad_values_are_rejected_with_the_variable_name() {
        for (name, value) in [
            ("QUOTA_LISTEN", "localhost"),
            ("QUOTA_DB_POOL_SIZE", "0"),
            ("QUOTA_DB_POOL_SIZE", "many"),
            ("QUOTA_REQUEST_TIMEOUT_S", "0"),
            ("QUOTA_LOG_FORMAT", "xml"),
            ("QUOTA_DATABASE_URL", "postgres://host:notaport/db"),
        ] {
            let err = config_from(&[(name, value)]).unwrap_err();
            assert!(err.0.contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn secrets_are_not_printed_by_debug() {
        let config = config_from(&[
            ("QUOTA_ADMIN_TOKEN", "super-secret-admin"),
            ("QUOTA_DATABASE_URL", "postgres://u:hunter2@localhost/db"),
        ])
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("super-secret-admin"));
        assert!(!printed.contains("hunter2"));
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"token-1", b"token-1"));
        assert!(!constant_time_eq(b"token-1", b"token-2"));
        assert!(!constant_time_eq(b"token", b"token-1"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        assert!(Secret::new("abc").matches("abc"));
        assert!(!Secret::new("abc").matches("ABC"));
    }
}
