//! quota-sidecar binary: configuration from the environment, then serve until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use quota_sidecar::config::{help_requested, usage, Config, ENV_VARS};
use quota_sidecar::shutdown::shutdown_signal;
use quota_sidecar::{app, logging, relay, AppState};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    if help_requested() {
        print!("{}", usage("quota-sidecar: REST API of the pg_quota extension", ENV_VARS));
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("quota-sidecar: {err}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.log_format);

    let listen = config.listen;
    let state = match AppState::new(config) {
        Ok(state) => state,
        Err(err) => {
            tracing::error!(%err, "cannot start");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        %listen,
        db_pool_size = state.config.db_pool_size,
        admin_api = state.config.admin_token.is_some(),
        internal_api = state.config.service_token.is_some(),
        aigateway = state.config.relay.gateway.as_ref().map_or("(none)", |g| g.url.as_str()),
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
    let relay_task = relay::spawn(state.pool.clone(), state.config.clone(), stop_rx);
    let signal_stop = stop_tx.clone();
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
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
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(%err, "server error");
            ExitCode::FAILURE
        }
    }
}

