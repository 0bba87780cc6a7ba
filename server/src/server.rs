//! Running a server: binds the gRPC and admin listeners, starts the background tasks (memory flusher,
//! lease reaper), serves until the shutdown future resolves, then drains and syncs.

use crate::config::Config;
use crate::service::Service;
use crate::store::Store;
use croupier_proto::v1::shuffle_service_server::ShuffleServiceServer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// HTTP/2 frame size: 1 MiB frames halve the CPU cost of moving large messages (measured on loopback).
pub const HTTP2_FRAME_BYTES: u32 = 1 << 20;
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 2 << 20;
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 8 << 20;

pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("installing the metrics recorder: {e}"))
        .ok();
    let store = Store::open(config.clone())?;
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| format!("admin-listen {}: {e}", config.admin_listen))?;
    let grpc_addr = grpc.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    // One line on stdout that scripts and tests can wait for.
    println!("croupier serving grpc={grpc_addr} admin={admin_addr}");
    tracing::info!(%grpc_addr, %admin_addr, data_dirs = ?config.data_dirs, "serving");

    spawn_background(store.clone());
    let admin_router = crate::admin::router(store.clone(), prometheus);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin, admin_router).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let store_for_signal = store.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new pushes, finishing requests in flight");
        store_for_signal.set_draining(true);
        let _ = stop_tx.send(true);
    });
    let mut stop_rx2 = stop_rx.clone();
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let service = ShuffleServiceServer::new(Service::new(store.clone()))
        .max_decoding_message_size(config.message_bytes_max as usize)
        .max_encoding_message_size(config.encoding_bytes_max());
    let serve = tonic::transport::Server::builder()
        .max_frame_size(Some(HTTP2_FRAME_BYTES))
        .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW_BYTES))
        .tcp_nodelay(true)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|v| *v).await;
        });
    tokio::select! {
        r = serve => r.map_err(|e| format!("gRPC server: {e}"))?,
        _ = async {
            let _ = stop_rx2.wait_for(|v| *v).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!("grace period over; closing remaining streams"),
    }
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.sync_all())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

fn spawn_background(store: Arc<Store>) {
    let s = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = s.memory.flush_wanted.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            s.flush_for_memory().await;
        }
    });
    let s = store.clone();
    let probe_every = Duration::from_millis(s.config.disk_probe_interval_ms);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(probe_every).await;
            s.probe_disks().await;
        }
    });
    let s = store;
    let period = Duration::from_millis((s.config.app_lease_timeout_ms / 4).clamp(50, 10_000));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            s.expire_apps().await;
        }
    });
}
