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
pub const AIGATEWAY_ADMIN_PATH_DEFAULT: &str = "/v1/chat/completions";
pub const RELAY_MAX_ATTEMPTS_DEFAULT: u32 = 5;
pub const RELAY_TIMEOUT_MS_DEFAULT: u64 = 5_000;
pub const RELAY_BACKOFF_BASE_MS_DEFAULT: u64 = 200;
pub const RELAY_BACKOFF_MAX_MS_DEFAULT: u64 = 30_000;
pub const RELAY_BATCH_DEFAULT: u32 = 100;
pub const RELAY_LEASE_S_DEFAULT: u32 = 60;
pub const RELAY_POLL_MS_DEFAULT: u64 = 1_000;

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
        "QUOTA_AIGATEWAY_URL",
        "(unset)",
        "AiGateway base URL (http://host:port); unset = recharges complete in the ledger alone",
    ),
    (
        "QUOTA_AIGATEWAY_ADMIN_PATH",
        AIGATEWAY_ADMIN_PATH_DEFAULT,
        "AiGateway admin path, prefix of /quota/delta",
    ),
    (
        "QUOTA_AIGATEWAY_CREDENTIAL",
        "(unset)",
        "AiGateway bearer credential; required with QUOTA_AIGATEWAY_URL",
    ),
    (
        "QUOTA_RELAY_MAX_ATTEMPTS",
        "5",
        "deliveries of one recharge before it is failed (1..100)",
    ),
    (
        "QUOTA_RELAY_TIMEOUT_MS",
        "5000",
        "timeout of one delivery in ms (100..600000)",
    ),
    (
        "QUOTA_RELAY_BACKOFF_BASE_MS",
        "200",
        "first retry delay in ms, doubled per attempt, plus 0..50% jitter",
    ),
    (
        "QUOTA_RELAY_BACKOFF_MAX_MS",
        "30000",
        "retry delay cap in ms before jitter (>= base)",
    ),
    (
        "QUOTA_RELAY_BATCH",
        "100",
        "outbox rows claimed at once (1..1000)",
    ),
    (
        "QUOTA_RELAY_LEASE_S",
        "60",
        "seconds a claimed row stays reserved (> 2 x timeout); a crashed relay's rows return after it",
    ),
    (
        "QUOTA_RELAY_POLL_MS",
        "1000",
        "outbox poll interval in ms when no NOTIFY arrives (10..3600000)",
    ),
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
    pub relay: RelayConfig,
}

/// Where the relay delivers recharges (SPEC 6.5).
#[derive(Clone, Debug)]
pub struct AiGatewayConfig {
    /// `http://host:port[/prefix]`, without a trailing `/`.
    pub url: String,
    /// Empty, or starts with `/` without a trailing `/`.
    pub admin_path: String,
    pub credential: Secret,
}

impl AiGatewayConfig {
    pub fn delta_url(&self) -> String {
        format!("{}{}/quota/delta", self.url, self.admin_path)
    }
}

/// The outbox relay (crate::relay).
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// None: no AiGateway; the relay completes recharges without delivering them.
    pub gateway: Option<AiGatewayConfig>,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub batch: u32,
    pub lease_s: u32,
    pub poll_ms: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            gateway: None,
            max_attempts: RELAY_MAX_ATTEMPTS_DEFAULT,
            timeout_ms: RELAY_TIMEOUT_MS_DEFAULT,
            backoff_base_ms: RELAY_BACKOFF_BASE_MS_DEFAULT,
            backoff_max_ms: RELAY_BACKOFF_MAX_MS_DEFAULT,
            batch: RELAY_BATCH_DEFAULT,
            lease_s: RELAY_LEASE_S_DEFAULT,
            poll_ms: RELAY_POLL_MS_DEFAULT,
        }
    }
}

impl RelayConfig {
    fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<RelayConfig, ConfigError> {
        let bounded = |name: &str, default: u64, min: u64, max: u64| match get(name) {
            None => Ok(default),
            Some(text) => parse_bounded(name, &text, min, max),
        };
        let gateway = match get("QUOTA_AIGATEWAY_URL") {
            None => None,
            Some(url) => {
                let url = gateway_url(&url)?;
                let admin_path = admin_path(
                    &get("QUOTA_AIGATEWAY_ADMIN_PATH")
                        .unwrap_or_else(|| AIGATEWAY_ADMIN_PATH_DEFAULT.to_owned()),
                )?;
                let credential = get("QUOTA_AIGATEWAY_CREDENTIAL").ok_or_else(|| {
                    ConfigError(
                        "QUOTA_AIGATEWAY_CREDENTIAL is required when QUOTA_AIGATEWAY_URL is set"
                            .into(),
                    )
                })?;
                Some(AiGatewayConfig {
                    url,
                    admin_path,
                    credential: Secret::new(credential.trim()),
                })
            }
        };
        let relay = RelayConfig {
            gateway,
            max_attempts: bounded(
                "QUOTA_RELAY_MAX_ATTEMPTS",
                RELAY_MAX_ATTEMPTS_DEFAULT.into(),
                1,
                100,
            )? as u32,
            timeout_ms: bounded(
                "QUOTA_RELAY_TIMEOUT_MS",
                RELAY_TIMEOUT_MS_DEFAULT,
                100,
                600_000,
            )?,
            backoff_base_ms: bounded(
                "QUOTA_RELAY_BACKOFF_BASE_MS",
                RELAY_BACKOFF_BASE_MS_DEFAULT,
                1,
                3_600_000,
            )?,
            backoff_max_ms: bounded(
                "QUOTA_RELAY_BACKOFF_MAX_MS",
                RELAY_BACKOFF_MAX_MS_DEFAULT,
                1,
                86_400_000,
            )?,
            batch: bounded("QUOTA_RELAY_BATCH", RELAY_BATCH_DEFAULT.into(), 1, 1000)? as u32,
            lease_s: bounded(
                "QUOTA_RELAY_LEASE_S",
                RELAY_LEASE_S_DEFAULT.into(),
                1,
                86_400,
            )? as u32,
            poll_ms: bounded("QUOTA_RELAY_POLL_MS", RELAY_POLL_MS_DEFAULT, 10, 3_600_000)?,
        };
        if relay.backoff_max_ms < relay.backoff_base_ms {
            return Err(ConfigError(format!(
                "QUOTA_RELAY_BACKOFF_MAX_MS={} is below QUOTA_RELAY_BACKOFF_BASE_MS={}",
                relay.backoff_max_ms, relay.backoff_base_ms
            )));
        }
        // A lease shorter than a delivery would let a second relay take a row in flight.
        if u64::from(relay.lease_s) * 1000 < 2 * relay.timeout_ms {
            return Err(ConfigError(format!(
                "QUOTA_RELAY_LEASE_S={} must be at least twice QUOTA_RELAY_TIMEOUT_MS={} ms",
                relay.lease_s, relay.timeout_ms
            )));
        }
        Ok(relay)
    }
}

/// `http://host:port[/prefix]` without a trailing `/`. This build speaks plain HTTP only (no TLS
/// stack is compiled in): an https gateway is reached through a local TLS proxy.
fn gateway_url(text: &str) -> Result<String, ConfigError> {
    let text = text.trim().trim_end_matches('/');
    let bad = |why: &str| {
        ConfigError(format!(
            "QUOTA_AIGATEWAY_URL={text:?}: {why} (expected http://host:port)"
        ))
    };
    let url = reqwest::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "http" {
        return Err(bad("only http:// is supported by this build"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("no query, fragment or user info allowed"));
    }
    Ok(text.to_owned())
}

/// `/v1/chat/completions/` -> `/v1/chat/completions`; `/` -> `` (endpoints at `/quota...`).
fn admin_path(text: &str) -> Result<String, ConfigError> {
    let text = text.trim();
    let ok_chars = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/-._~".contains(c));
    if !text.starts_with('/') || !ok_chars || text.contains("//") {
        return Err(ConfigError(format!(
            "QUOTA_AIGATEWAY_ADMIN_PATH={text:?}: expected a path like /v1/chat/completions"
        )));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A listen address from `name`'s value (unset: `default`); the error names the variable.
pub fn parse_listen(name: &str, value: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_owned());
    text.trim()
        .parse::<SocketAddr>()
        .map_err(|e| ConfigError(format!("{name}={text:?} is not an address:port ({e})")))
}

/// `--help` text of a binary: its title, then one line per environment variable.
pub fn usage(title: &str, vars: &[(&str, &str, &str)]) -> String {
    let width = vars.iter().map(|(name, _, _)| name.len()).max().unwrap_or(0) + 2;
    let mut text = format!("{title}\n\nEnvironment:\n");
    for (name, default, about) in vars {
        text.push_str(&format!("  {name:<width$}{about} (default: {default})\n"));
    }
    text
}

/// Whether the command line asks for `--help` / `-h`.
pub fn help_requested() -> bool {
    std::env::args().skip(1).any(|arg| arg == "--help" || arg == "-h")
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads through `lookup` so tests need not mutate the process environment.
    /// Empty values count as unset: `QUOTA_ADMIN_TOKEN=` must not enable an empty admin token.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let listen = parse_listen("QUOTA_LISTEN", get("QUOTA_LISTEN"), LISTEN_DEFAULT)?;

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

        let relay = RelayConfig::from_lookup(&get)?;

        Ok(Config {
            listen,
            database_url: Secret::new(database_url),
            db_pool_size,
            admin_token: get("QUOTA_ADMIN_TOKEN").map(Secret::new),
            service_token: get("QUOTA_SERVICE_TOKEN").map(Secret::new),
            request_timeout_s,
            log_format,
            relay,
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
    fn relay_defaults_and_no_gateway() {
        let relay = config_from(&[]).unwrap().relay;
        assert!(relay.gateway.is_none());
        assert_eq!(relay.max_attempts, 5);
        assert_eq!(relay.timeout_ms, 5000);
        assert_eq!(relay.backoff_base_ms, 200);
        assert_eq!(relay.backoff_max_ms, 30000);
        assert_eq!(relay.batch, 100);
        assert_eq!(relay.lease_s, 60);
        assert_eq!(relay.poll_ms, 1000);
    }

    #[test]
    fn relay_gateway_from_the_environment() {
        let relay = config_from(&[
            ("QUOTA_AIGATEWAY_URL", "http://127.0.0.1:1002/"),
            ("QUOTA_AIGATEWAY_CREDENTIAL", "gw-secret"),
            ("QUOTA_RELAY_MAX_ATTEMPTS", "4"),
            ("QUOTA_RELAY_TIMEOUT_MS", "1000"),
            ("QUOTA_RELAY_BACKOFF_BASE_MS", "50"),
            ("QUOTA_RELAY_BACKOFF_MAX_MS", "400"),
            ("QUOTA_RELAY_BATCH", "10"),
            ("QUOTA_RELAY_LEASE_S", "5"),
            ("QUOTA_RELAY_POLL_MS", "250"),
        ])
        .unwrap()
        .relay;
        let gateway = relay.gateway.as_ref().unwrap();
        assert_eq!(gateway.url, "http://127.0.0.1:1002");
        assert_eq!(gateway.admin_path, "/v1/chat/completions");
        assert_eq!(
            gateway.delta_url(),
            "http://127.0.0.1:1002/v1/chat/completions/quota/delta"
        );
        assert!(gateway.credential.matches("gw-secret"));
        assert!(!format!("{relay:?}").contains("gw-secret"));
        assert_eq!(
            (
                relay.max_attempts,
                relay.timeout_ms,
                relay.backoff_base_ms,
                relay.backoff_max_ms
            ),
            (4, 1000, 50, 400)
        );
        assert_eq!((relay.batch, relay.lease_s, relay.poll_ms), (10, 5, 250));

        let root = config_from(&[
            ("QUOTA_AIGATEWAY_URL", "http://gw:8080"),
            ("QUOTA_AIGATEWAY_CREDENTIAL", "c"),
            ("QUOTA_AIGATEWAY_ADMIN_PATH", "/"),
        ])
        .unwrap()
        .relay;
        assert_eq!(
            root.gateway.unwrap().delta_url(),
            "http://gw:8080/quota/delta"
        );
    }

    #[test]
    fn bad_relay_values_are_rejected() {
        let gw = [
            ("QUOTA_AIGATEWAY_URL", "http://127.0.0.1:1002"),
            ("QUOTA_AIGATEWAY_CREDENTIAL", "c"),
        ];
        for (pairs, needle) in [
            (
                vec![("QUOTA_AIGATEWAY_URL", "http://127.0.0.1:1002")],
                "QUOTA_AIGATEWAY_CREDENTIAL",
            ),
            (
                vec![("QUOTA_AIGATEWAY_URL", "127.0.0.1:1002"), gw[1]],
                "QUOTA_AIGATEWAY_URL",
            ),
            (
                vec![("QUOTA_AIGATEWAY_URL", "https://gw"), gw[1]],
                "QUOTA_AIGATEWAY_URL",
            ),
            (
                vec![gw[0], gw[1], ("QUOTA_AIGATEWAY_ADMIN_PATH", "v1")],
                "QUOTA_AIGATEWAY_ADMIN_PATH",
            ),
            (
                vec![("QUOTA_RELAY_MAX_ATTEMPTS", "0")],
                "QUOTA_RELAY_MAX_ATTEMPTS",
            ),
            (
                vec![("QUOTA_RELAY_TIMEOUT_MS", "5")],
                "QUOTA_RELAY_TIMEOUT_MS",
            ),
            (vec![("QUOTA_RELAY_BATCH", "x")], "QUOTA_RELAY_BATCH"),
            (vec![("QUOTA_RELAY_POLL_MS", "0")], "QUOTA_RELAY_POLL_MS"),
            (
                vec![
                    ("QUOTA_RELAY_BACKOFF_BASE_MS", "500"),
                    ("QUOTA_RELAY_BACKOFF_MAX_MS", "100"),
                ],
                "QUOTA_RELAY_BACKOFF_MAX_MS",
            ),
            (
                vec![
                    ("QUOTA_RELAY_LEASE_S", "5"),
                    ("QUOTA_RELAY_TIMEOUT_MS", "5000"),
                ],
                "QUOTA_RELAY_LEASE_S",
            ),
        ] {
            let err = config_from(&pairs).unwrap_err();
            assert!(err.0.contains(needle), "{pairs:?}: {err}");
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
