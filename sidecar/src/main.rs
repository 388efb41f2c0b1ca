//! quota-sidecar binary: configuration from the command line and the environment, then serve
//! until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use quota_sidecar::config::{Config, Startup};
use quota_sidecar::serve::{serve, ServeConfig};
use quota_sidecar::shutdown::shutdown_signal;
use quota_sidecar::{app, logging, relay, AppState};
use tokio::net::TcpListener;

/// After the signal, requests in flight get at most their own timeout plus this.
const SHUTDOWN_GRACE_EXTRA: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    // Before any thread exists: reading the configuration removes blank variables.
    let config = match Config::from_env() {
        Ok(Startup::Run(config)) => *config,
        Ok(Startup::Exit(message)) => {
            // --help, --version
            let _ = message.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("quota-sidecar: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("quota-sidecar: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    logging::init(config.log_format);

    let listen = config.listen;
    let state = match AppState::new(config) {
        Ok(state) => state,
        Err(err) => {
            tracing::error!(%err, "cannot start");
            return ExitCode::from(2);
        }
    };
    let gateway = state.config.relay.gateway.as_ref();
    tracing::info!(
        %listen,
        db_pool_size = state.config.db_pool_size,
        admin_api = state.config.admin_token.is_some(),
        internal_api = state.config.service_token.is_some(),
        request_timeout_ms = state.config.request_timeout.as_millis() as u64,
        aigateway = gateway.map_or("(none)", |g| g.url.as_str()),
        aigateway_idempotent = gateway.is_some_and(|g| g.idempotent),
        "starting quota-sidecar"
    );
    // Not fatal: the database may come up after us; /health says 503 meanwhile.
    if let Err(err) = state.pool.get().await {
        tracing::warn!(error = %err, "database not reachable yet");
    }

    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%listen, %err, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let pool = state.pool.clone();
    // The AiGateway relay runs beside the server and stops with it: the signal stops its
    // claiming at once; its deliveries in flight finish (bounded) before the pool closes.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let relay_budget = relay::shutdown_budget(&state.config.relay);
    let relay_task = relay::spawn(
        state.pool.clone(),
        state.config.clone(),
        state.relay.clone(),
        stop_rx,
    );
    let serve_config = ServeConfig {
        header_read_timeout: state.config.header_read_timeout,
        idle_timeout: state.config.idle_timeout,
        shutdown_grace: state.config.request_timeout + SHUTDOWN_GRACE_EXTRA,
    };
    let signal_stop = stop_tx.clone();
    serve(listener, app(state), serve_config, async move {
        shutdown_signal().await;
        let _ = signal_stop.send(true);
    })
    .await;
    let _ = stop_tx.send(true);
    if tokio::time::timeout(relay_budget, relay_task)
        .await
        .is_err()
    {
        tracing::warn!(
            "the AiGateway relay did not stop in time; its rows return after their lease"
        );
    }
    pool.close();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
