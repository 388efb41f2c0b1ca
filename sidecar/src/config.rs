//! Sidecar configuration, read once at start-up from the command line or the environment
//! (clap's `env` support: every option has a `QUOTA_*` variable, `--help` lists them with their
//! defaults). [`Args`] is what clap parses; [`Config`] is the checked result the sidecar runs on.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{BoolishValueParser, RangedU64ValueParser};
use clap::error::ContextKind;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use subtle::ConstantTimeEq;

pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
pub const DATABASE_URL_DEFAULT: &str = "host=/tmp port=5432 user=postgres dbname=postgres";
pub const DB_POOL_SIZE_DEFAULT: usize = 16;
pub const DB_POOL_SIZE_MAX: u64 = 1024;
pub const REQUEST_TIMEOUT_S_DEFAULT: u64 = 30;
pub const REQUEST_TIMEOUT_S_MAX: u64 = 3600;
pub const REQUEST_TIMEOUT_MS_MIN: u64 = 100;
pub const HEADER_READ_TIMEOUT_S_DEFAULT: u64 = 10;
pub const IDLE_TIMEOUT_S_DEFAULT: u64 = 60;
/// The server-side `statement_timeout` of pooled connections is the request timeout plus this:
/// a backstop for a statement whose cancel request was lost.
pub const STATEMENT_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);
pub const AIGATEWAY_ADMIN_PATH_DEFAULT: &str = "/v1/chat/completions";
pub const RELAY_MAX_ATTEMPTS_DEFAULT: u32 = 5;
pub const RELAY_TIMEOUT_MS_DEFAULT: u64 = 5_000;
pub const RELAY_BACKOFF_BASE_MS_DEFAULT: u64 = 200;
pub const RELAY_BACKOFF_MAX_MS_DEFAULT: u64 = 30_000;
pub const RELAY_BATCH_DEFAULT: u32 = 100;
pub const RELAY_LEASE_S_DEFAULT: u32 = 60;
pub const RELAY_POLL_MS_DEFAULT: u64 = 1_000;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses a secret; the value is never echoed (a blank one is refused).
fn secret(text: &str) -> Result<Secret, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Secret::new(text))
}

/// What clap reads. Every option has its environment variable; an empty variable counts as
/// unset (`QUOTA_ADMIN_TOKEN=` must not enable an empty admin token).
#[derive(Clone, Debug, Parser)]
#[command(
    name = "quota-sidecar",
    version,
    about = "REST API of the pg_quota extension, and the relay of its recharges to the AiGateway"
)]
pub struct Args {
    /// address:port to listen on
    #[arg(long, env = "QUOTA_LISTEN", default_value = LISTEN_DEFAULT)]
    pub listen: SocketAddr,
    /// libpq key=value string or postgres:// URL (no TLS)
    #[arg(long, env = "QUOTA_DATABASE_URL", hide_env_values = true,
          default_value = DATABASE_URL_DEFAULT, value_parser = secret)]
    pub database_url: Secret,
    /// maximum pooled connections (1..1024)
    #[arg(long, env = "QUOTA_DB_POOL_SIZE", default_value_t = DB_POOL_SIZE_DEFAULT,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=DB_POOL_SIZE_MAX))]
    pub db_pool_size: usize,
    /// admin bearer / X-Admin-Token; unset = the admin API answers 403
    #[arg(long, env = "QUOTA_ADMIN_TOKEN", hide_env_values = true, value_parser = secret)]
    pub admin_token: Option<Secret>,
    /// X-Service-Token of the internal API; unset = the internal API answers 403
    #[arg(long, env = "QUOTA_SERVICE_TOKEN", hide_env_values = true, value_parser = secret)]
    pub service_token: Option<Secret>,
    /// whole-request timeout in seconds (1..3600); on expiry the SQL statement is cancelled and the answer
    /// is 503 {"error": "timeout"}
    #[arg(long, env = "QUOTA_REQUEST_TIMEOUT_S", default_value_t = REQUEST_TIMEOUT_S_DEFAULT,
          value_parser = RangedU64ValueParser::<u64>::new().range(1..=REQUEST_TIMEOUT_S_MAX))]
    pub request_timeout_s: u64,
    /// the same in milliseconds (100..3600000); when set it takes precedence over
    /// QUOTA_REQUEST_TIMEOUT_S
    #[arg(long, env = "QUOTA_REQUEST_TIMEOUT_MS",
          value_parser = RangedU64ValueParser::<u64>::new()
              .range(REQUEST_TIMEOUT_MS_MIN..=REQUEST_TIMEOUT_S_MAX * 1000))]
    pub request_timeout_ms: Option<u64>,
    /// seconds (1..3600) a connection has to send a request's headers once it has sent their
    /// first byte
    #[arg(long, env = "QUOTA_HEADER_READ_TIMEOUT_S", default_value_t = HEADER_READ_TIMEOUT_S_DEFAULT,
          value_parser = RangedU64ValueParser::<u64>::new().range(1..=3600))]
    pub header_read_timeout_s: u64,
    /// seconds (1..86400) a connection may stay open with no request in flight and no bytes
    /// moving
    /// (idle keep-alive connections)
    #[arg(long, env = "QUOTA_IDLE_TIMEOUT_S", default_value_t = IDLE_TIMEOUT_S_DEFAULT,
          value_parser = RangedU64ValueParser::<u64>::new().range(1..=86_400))]
    pub idle_timeout_s: u64,
    /// log line format (the filter is RUST_LOG, default info)
    #[arg(long, env = "QUOTA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// AiGateway base URL (http:// or https://host:port); unset = recharges complete in the
    /// ledger alone
    #[arg(long, env = "QUOTA_AIGATEWAY_URL")]
    pub aigateway_url: Option<String>,
    /// AiGateway admin path, prefix of /quota/delta
    #[arg(long, env = "QUOTA_AIGATEWAY_ADMIN_PATH", default_value = AIGATEWAY_ADMIN_PATH_DEFAULT)]
    pub aigateway_admin_path: String,
    /// AiGateway bearer credential; required with QUOTA_AIGATEWAY_URL
    #[arg(long, env = "QUOTA_AIGATEWAY_CREDENTIAL", hide_env_values = true, value_parser = secret)]
    pub aigateway_credential: Option<Secret>,
    /// whether the gateway deduplicates deliveries by Idempotency-Key; false (Higress): a
    /// delivery whose outcome is unknown is not re-sent but marked `unknown` for an operator
    #[arg(long, env = "QUOTA_AIGATEWAY_IDEMPOTENT", default_value_t = false,
          action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub aigateway_idempotent: bool,
    /// PEM file of extra CA certificates trusted for an https:// gateway (besides the
    /// built-in web roots)
    #[arg(long, env = "QUOTA_AIGATEWAY_CA_FILE")]
    pub aigateway_ca_file: Option<PathBuf>,
    /// deliveries of one recharge before it is failed (1..100)
    #[arg(long, env = "QUOTA_RELAY_MAX_ATTEMPTS", default_value_t = RELAY_MAX_ATTEMPTS_DEFAULT,
          value_parser = RangedU64ValueParser::<u32>::new().range(1..=100))]
    pub relay_max_attempts: u32,
    /// timeout of one delivery in ms (100..600000)
    #[arg(long, env = "QUOTA_RELAY_TIMEOUT_MS", default_value_t = RELAY_TIMEOUT_MS_DEFAULT,
          value_parser = RangedU64ValueParser::<u64>::new().range(100..=600_000))]
    pub relay_timeout_ms: u64,
    /// first retry delay in ms (1..3600000), doubled per attempt, plus 0..50% jitter
    #[arg(long, env = "QUOTA_RELAY_BACKOFF_BASE_MS", default_value_t = RELAY_BACKOFF_BASE_MS_DEFAULT,
          value_parser = RangedU64ValueParser::<u64>::new().range(1..=3_600_000))]
    pub relay_backoff_base_ms: u64,
    /// retry delay cap in ms before jitter (>= base, ..86400000)
    #[arg(long, env = "QUOTA_RELAY_BACKOFF_MAX_MS", default_value_t = RELAY_BACKOFF_MAX_MS_DEFAULT,
          value_parser = RangedU64ValueParser::<u64>::new().range(1..=86_400_000))]
    pub relay_backoff_max_ms: u64,
    /// outbox rows claimed at once (1..1000)
    #[arg(long, env = "QUOTA_RELAY_BATCH", default_value_t = RELAY_BATCH_DEFAULT,
          value_parser = RangedU64ValueParser::<u32>::new().range(1..=1000))]
    pub relay_batch: u32,
    /// seconds a claimed row stays reserved (>= 2 x the delivery timeout); a crashed relay's
    /// rows return after it
    #[arg(long, env = "QUOTA_RELAY_LEASE_S", default_value_t = RELAY_LEASE_S_DEFAULT,
          value_parser = RangedU64ValueParser::<u32>::new().range(1..=86_400))]
    pub relay_lease_s: u32,
    /// outbox poll interval in ms when no NOTIFY arrives (10..3600000)
    #[arg(long, env = "QUOTA_RELAY_POLL_MS", default_value_t = RELAY_POLL_MS_DEFAULT,
          value_parser = RangedU64ValueParser::<u64>::new().range(10..=3_600_000))]
    pub relay_poll_ms: u64,
    /// comma-separated http:// or https:// URLs that receive pool alerts as JSON (through the
    /// relay's outbox, with its retries); unset = alerts complete without delivery
    #[arg(long, env = "QUOTA_ALERT_WEBHOOK_URLS")]
    pub alert_webhook_urls: Option<String>,
    /// bearer token GET /metrics requires; unset = /metrics is open
    #[arg(long, env = "QUOTA_METRICS_TOKEN", hide_env_values = true, value_parser = secret)]
    pub metrics_token: Option<Secret>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// May hold a password, hence a Secret (kept out of Debug output and logs).
    pub database_url: Secret,
    pub db_pool_size: usize,
    pub admin_token: Option<Secret>,
    pub service_token: Option<Secret>,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub log_format: LogFormat,
    pub relay: RelayConfig,
    /// None: /metrics is open.
    pub metrics_token: Option<Secret>,
}

impl Config {
    /// The server-side `statement_timeout` set on every pooled connection.
    pub fn statement_timeout(&self) -> Duration {
        self.request_timeout + STATEMENT_TIMEOUT_MARGIN
    }
}

/// Where the relay delivers recharges (SPEC 6.5).
#[derive(Clone, Debug)]
pub struct AiGatewayConfig {
    /// `http(s)://host:port[/prefix]`, without a trailing `/`.
    pub url: String,
    /// Empty, or starts with `/` without a trailing `/`.
    pub admin_path: String,
    pub credential: Secret,
    /// The gateway drops a repeated `Idempotency-Key`, so re-sending a delivery whose outcome is
    /// unknown is safe.
    pub idempotent: bool,
    /// Extra trusted CA certificates (PEM) for an https gateway.
    pub ca_file: Option<PathBuf>,
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
    /// Where pool alerts are POSTed (each URL gets each alert); empty: alerts complete at once.
    pub alert_webhooks: Vec<String>,
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
            alert_webhooks: Vec::new(),
        }
    }
}

impl RelayConfig {
    /// True when the gateway is configured and deduplicates by `Idempotency-Key`.
    pub fn gateway_idempotent(&self) -> bool {
        self.gateway.as_ref().is_some_and(|g| g.idempotent)
    }
}

/// `http(s)://host:port[/prefix]` without a trailing `/`.
fn gateway_url(text: &str) -> Result<String, ConfigError> {
    let text = text.trim().trim_end_matches('/');
    let bad = |why: &str| {
        ConfigError(format!(
            "QUOTA_AIGATEWAY_URL={text:?}: {why} (expected http://host:port or https://host:port)"
        ))
    };
    let url = reqwest::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("only http:// and https:// are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("no query, fragment or user info allowed"));
    }
    Ok(text.to_owned())
}

/// `QUOTA_ALERT_WEBHOOK_URLS`: comma-separated absolute http(s) URLs (blank items are skipped,
/// duplicates removed). A query string is allowed (some receivers authenticate with one); user
/// info and fragments are not.
pub fn webhook_urls(text: &str) -> Result<Vec<String>, ConfigError> {
    let mut urls: Vec<String> = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        // User info may hold a password: never echoed.
        let shown = match item.rfind('@') {
            Some(at) => format!("<redacted>{}", &item[at..]),
            None => item.to_owned(),
        };
        let bad = |why: &str| {
            ConfigError(format!(
                "QUOTA_ALERT_WEBHOOK_URLS: {:?}: {why} (expected comma-separated \
                 http://host[:port]/path or https://... URLs)",
                shown.chars().take(200).collect::<String>()
            ))
        };
        let url = reqwest::Url::parse(item).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(bad("only http:// and https:// are supported"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(bad("no fragment or user info allowed"));
        }
        let url = url.to_string();
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
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

/// What start-up does with the command line: run with a configuration, or print (help,
/// version) and exit.
pub enum Startup {
    Run(Box<Config>),
    Exit(clap::Error),
}

impl Config {
    /// The real command line and environment. Blank variables are removed first, so they count
    /// as unset; call it before any other thread exists (the sidecar's `main` does).
    pub fn from_env() -> Result<Startup, ConfigError> {
        for arg in Args::command().get_arguments() {
            if let Some(name) = arg.get_env() {
                if std::env::var_os(name).is_some_and(|v| v.to_string_lossy().trim().is_empty()) {
                    std::env::remove_var(name);
                }
            }
        }
        match Args::try_parse() {
            Ok(args) => Config::from_args(args).map(|c| Startup::Run(Box::new(c))),
            Err(err) if !err.use_stderr() => Ok(Startup::Exit(err)),
            Err(err) => Err(clap_error(&err)),
        }
    }

    /// Reads through `lookup` instead of the process environment, so tests need not mutate it.
    /// Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let command = Args::command();
        let mut argv = vec!["quota-sidecar".to_owned()];
        for arg in command.get_arguments() {
            let (Some(name), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            if let Some(value) = lookup(&name.to_string_lossy()).filter(|v| !v.trim().is_empty()) {
                argv.push(format!("--{long}={value}"));
            }
        }
        let command = command.mut_args(|arg| arg.env(None::<&str>));
        let matches = command
            .try_get_matches_from(argv)
            .map_err(|e| clap_error(&e))?;
        let args = Args::from_arg_matches(&matches).map_err(|e| clap_error(&e))?;
        Config::from_args(args)
    }

    /// The checks that span several options.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        // Parse now so a typo fails at start-up; the message of tokio-postgres does not echo
        // the string, which may contain a password.
        args.database_url
            .expose()
            .parse::<tokio_postgres::Config>()
            .map_err(|e| {
                ConfigError(format!(
                    "QUOTA_DATABASE_URL is not a valid connection string: {e}"
                ))
            })?;
        let request_timeout = match args.request_timeout_ms {
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(args.request_timeout_s),
        };
        let gateway = match args.aigateway_url {
            None => None,
            Some(url) => {
                let credential = args.aigateway_credential.ok_or_else(|| {
                    ConfigError(
                        "QUOTA_AIGATEWAY_CREDENTIAL is required when QUOTA_AIGATEWAY_URL is set"
                            .into(),
                    )
                })?;
                Some(AiGatewayConfig {
                    url: gateway_url(&url)?,
                    admin_path: admin_path(&args.aigateway_admin_path)?,
                    credential,
                    idempotent: args.aigateway_idempotent,
                    ca_file: args.aigateway_ca_file,
                })
            }
        };
        let relay = RelayConfig {
            gateway,
            max_attempts: args.relay_max_attempts,
            timeout_ms: args.relay_timeout_ms,
            backoff_base_ms: args.relay_backoff_base_ms,
            backoff_max_ms: args.relay_backoff_max_ms,
            batch: args.relay_batch,
            lease_s: args.relay_lease_s,
            poll_ms: args.relay_poll_ms,
            alert_webhooks: match &args.alert_webhook_urls {
                Some(text) => webhook_urls(text)?,
                None => Vec::new(),
            },
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
        Ok(Config {
            listen: args.listen,
            database_url: args.database_url,
            db_pool_size: args.db_pool_size,
            admin_token: args.admin_token,
            service_token: args.service_token,
            request_timeout,
            header_read_timeout: Duration::from_secs(args.header_read_timeout_s),
            idle_timeout: Duration::from_secs(args.idle_timeout_s),
            log_format: args.log_format,
            relay,
            metrics_token: args.metrics_token,
        })
    }
}

/// A clap error as one line that names the environment variable of the offending option.
fn clap_error(err: &clap::Error) -> ConfigError {
    let rendered = err.to_string();
    let line = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    let variable = err.get(ContextKind::InvalidArg).and_then(|invalid| {
        let invalid = invalid.to_string();
        Args::command().get_arguments().find_map(|arg| {
            let long = format!("--{}", arg.get_long()?);
            let starts = invalid == long || invalid.starts_with(&format!("{long} "));
            starts.then(|| arg.get_env().map(|e| e.to_string_lossy().into_owned()))?
        })
    });
    match variable {
        Some(name) => ConfigError(format!("{name}: {line}")),
        None => ConfigError(line),
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
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!(config.statement_timeout(), Duration::from_secs(31));
        assert_eq!(config.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
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
            ("QUOTA_HEADER_READ_TIMEOUT_S", "3"),
            ("QUOTA_IDLE_TIMEOUT_S", "7"),
            ("QUOTA_LOG_FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 18080);
        assert_eq!(config.db_pool_size, 4);
        assert!(config.admin_token.unwrap().matches("adm"));
        assert!(config.service_token.unwrap().matches("svc"));
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert_eq!(config.header_read_timeout, Duration::from_secs(3));
        assert_eq!(config.idle_timeout, Duration::from_secs(7));
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn request_timeout_in_ms_takes_precedence() {
        let config = config_from(&[
            ("QUOTA_REQUEST_TIMEOUT_S", "5"),
            ("QUOTA_REQUEST_TIMEOUT_MS", "1500"),
        ])
        .unwrap();
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert_eq!(config.statement_timeout(), Duration::from_millis(2500));
        assert!(config_from(&[("QUOTA_REQUEST_TIMEOUT_MS", "99")]).is_err());
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
            ("QUOTA_DB_POOL_SIZE", "1025"),
            ("QUOTA_DB_POOL_SIZE", "many"),
            ("QUOTA_REQUEST_TIMEOUT_S", "0"),
            ("QUOTA_REQUEST_TIMEOUT_S", "3601"),
            ("QUOTA_HEADER_READ_TIMEOUT_S", "0"),
            ("QUOTA_IDLE_TIMEOUT_S", "x"),
            ("QUOTA_LOG_FORMAT", "xml"),
            ("QUOTA_DATABASE_URL", "postgres://host:notaport/db"),
            ("QUOTA_AIGATEWAY_IDEMPOTENT", "maybe"),
        ] {
            let err = config_from(&[(name, value)]).unwrap_err();
            assert!(err.0.contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn the_database_url_is_never_echoed() {
        let err =
            config_from(&[("QUOTA_DATABASE_URL", "postgres://u:hunter2@h:x/db")]).unwrap_err();
        assert!(!err.0.contains("hunter2"), "{err}");
    }

    #[test]
    fn relay_defaults_and_no_gateway() {
        let relay = config_from(&[]).unwrap().relay;
        assert!(relay.gateway.is_none());
        assert!(!relay.gateway_idempotent());
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
        assert!(
            !gateway.idempotent,
            "Higress does not deduplicate: default false"
        );
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
            ("QUOTA_AIGATEWAY_URL", "https://gw.example:8443"),
            ("QUOTA_AIGATEWAY_CREDENTIAL", "c"),
            ("QUOTA_AIGATEWAY_ADMIN_PATH", "/"),
            ("QUOTA_AIGATEWAY_IDEMPOTENT", "true"),
            ("QUOTA_AIGATEWAY_CA_FILE", "/etc/ssl/private-ca.pem"),
        ])
        .unwrap()
        .relay;
        assert!(root.gateway_idempotent());
        let gateway = root.gateway.unwrap();
        assert_eq!(gateway.delta_url(), "https://gw.example:8443/quota/delta");
        assert_eq!(
            gateway.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ssl/private-ca.pem"))
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
                vec![("QUOTA_AIGATEWAY_URL", "ftp://gw"), gw[1]],
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
    fn alert_webhooks_and_metrics_token() {
        let config = config_from(&[]).unwrap();
        assert!(config.relay.alert_webhooks.is_empty());
        assert!(config.metrics_token.is_none());
        let config = config_from(&[
            (
                "QUOTA_ALERT_WEBHOOK_URLS",
                " http://127.0.0.1:9000/hook , https://alerts.example/x?k=1,,http://127.0.0.1:9000/hook",
            ),
            ("QUOTA_METRICS_TOKEN", "scrape-secret"),
        ])
        .unwrap();
        assert_eq!(
            config.relay.alert_webhooks,
            vec![
                "http://127.0.0.1:9000/hook".to_owned(),
                "https://alerts.example/x?k=1".to_owned()
            ]
        );
        assert!(config
            .metrics_token
            .as_ref()
            .unwrap()
            .matches("scrape-secret"));
        assert!(!format!("{config:?}").contains("scrape-secret"));
        for bad in [
            "127.0.0.1:9000/hook",
            "ftp://host/x",
            "http://user:pw@host/x",
            "http://host/x#frag",
            "http://",
            "http://ok/x, nonsense",
        ] {
            let err = config_from(&[("QUOTA_ALERT_WEBHOOK_URLS", bad)]).unwrap_err();
            assert!(err.0.contains("QUOTA_ALERT_WEBHOOK_URLS"), "{bad}: {err}");
            assert!(!err.0.contains("pw@"), "{bad}: {err}");
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
    fn help_lists_every_variable() {
        let help = Args::command().render_long_help().to_string();
        for arg in Args::command().get_arguments() {
            if matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            let name = arg.get_env().expect("every option has a variable");
            assert!(
                help.contains(name.to_str().unwrap()),
                "{name:?} missing from --help"
            );
        }
        assert!(help.contains("QUOTA_AIGATEWAY_IDEMPOTENT"));
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
