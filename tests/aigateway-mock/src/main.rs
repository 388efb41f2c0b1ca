//! aigateway-mock binary: an in-memory AiGateway (Higress ai-quota admin API) for development
//! and tests. Configuration from the command line or the environment (see `--help`); serves
//! until SIGTERM/SIGINT. The endpoints, the fault switch and the test hooks are described in the
//! library (`aigateway_mock`).

use std::process::ExitCode;
use std::time::Duration;

use aigateway_mock::{init_logging, router, shutdown_signal, MockConfig, MockState};
use clap::Parser;
use tokio::net::TcpListener;

/// After the signal, in-flight requests get this long (a stalled one may be waiting 30 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let config = MockConfig::parse();
    init_logging(config.log_format);

    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(listen = %config.listen, %err, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        listen = %config.listen,
        admin_path = %config.admin_path,
        max_deltas = config.max_deltas,
        "starting aigateway-mock"
    );
    let app = router(MockState::from_config(&config));

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let grace = async move {
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => match served {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(err) => {
                tracing::error!(%err, "server error");
                ExitCode::FAILURE
            }
        },
        () = grace => {
            tracing::warn!("requests still in flight after the grace period; exiting");
            ExitCode::SUCCESS
        }
    }
}
