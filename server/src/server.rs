//! Running a server: binds the gRPC and admin listeners (TLS when configured), starts the background
//! tasks (memory flusher, lease reaper, gRPC health), serves until the shutdown future resolves, then
//! drains and syncs.

use crate::auth::Auth;
use crate::config::Config;
use crate::quota::Quota;
use crate::service::fast_path::FastPath;
use crate::service::{token_interceptor, Service};
use crate::store::Store;
use crate::tls::{TlsFiles, TlsListener};
use croupier_proto::v1::shuffle_service_server::ShuffleServiceServer;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

/// HTTP/2 frame size: 1 MiB frames halve the CPU cost of moving large messages (measured on loopback).
pub const HTTP2_FRAME_BYTES: u32 = 1 << 20;
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 2 << 20;
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 8 << 20;

/// How often the gRPC health status is brought in line with readiness.
const HEALTH_PERIOD: Duration = Duration::from_millis(250);

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
    crate::tls::install_provider();
    let tls = TlsFiles::load(&config)?;
    let auth = Arc::new(Auth::from_config(&config)?);
    let quota = Quota::new(config.app_quota_bytes);
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
    tracing::info!(
        %grpc_addr,
        %admin_addr,
        data_dirs = ?config.data_dirs,
        tls = tls.is_some(),
        token = auth.token_required(),
        app_secrets = auth.app_secrets_enforced(),
        app_quota_bytes = config.app_quota_bytes,
        "serving"
    );

    spawn_background(store.clone());
    let shutting_down = Arc::new(AtomicBool::new(false));
    let admin_router = crate::admin::router_with(
        store.clone(),
        prometheus,
        crate::admin::AdminContext {
            auth: auth.clone(),
            app_quota_bytes: config.app_quota_bytes,
            tls: tls.is_some(),
            shutting_down: shutting_down.clone(),
        },
    );
    match &tls {
        Some(files) => {
            let listener = TlsListener::new(admin, files.admin_acceptor()?)
                .map_err(|e| format!("admin-listen {}: {e}", config.admin_listen))?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, admin_router).await {
                    tracing::error!(error = %e, "admin server stopped");
                }
            });
        }
        None => {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(admin, admin_router).await {
                    tracing::error!(error = %e, "admin server stopped");
                }
            });
        }
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let store_for_signal = store.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new pushes, finishing requests in flight");
        shutting_down.store(true, Ordering::Release);
        store_for_signal.set_draining(true);
        let _ = stop_tx.send(true);
    });
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    spawn_health(store.clone(), health_reporter, stop_rx.clone()).await;
    let mut stop_rx2 = stop_rx.clone();
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let shuffle_service = Arc::new(Service::with_security(store.clone(), auth.clone(), quota));
    let service = ShuffleServiceServer::from_arc(shuffle_service.clone())
        .max_decoding_message_size(config.message_bytes_max as usize)
        .max_encoding_message_size(config.encoding_bytes_max());
    let service = InterceptedService::new(service, token_interceptor(auth));
    // Fetch and Push skip tonic's codec (block data is not copied); the rest is unchanged.
    let service = FastPath::new(service, shuffle_service, config.message_bytes_max as usize);
    let mut builder = tonic::transport::Server::builder();
    if let Some(files) = &tls {
        builder = builder
            .tls_config(files.grpc())
            .map_err(|e| format!("TLS configuration: {e}"))?;
    }
    let serve = builder
        .max_frame_size(Some(HTTP2_FRAME_BYTES))
        .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW_BYTES))
        .tcp_nodelay(true)
        .add_service(service)
        .add_service(health_service)
        // `tcp_nodelay` above is ignored with a custom incoming (tonic documents it): set it here, or
        // every small write (acks, commit answers, fetch summaries) waits up to 40 ms (Nagle + delayed ACK).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            async move {
                let mut rx = stop_rx;
                let _ = rx.wait_for(|v| *v).await;
            },
        );
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

/// gRPC health (grpc.health.v1): "" is SERVING while the process serves (like `/healthz`);
/// "croupier.v1.ShuffleService" is SERVING exactly when the server accepts pushes (like `/readyz`).
async fn spawn_health(
    store: Arc<Store>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    const NAME: &str = <ShuffleServiceServer<Service> as NamedService>::NAME;
    let status = |ready: bool| {
        if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let mut ready = store.accepting_pushes();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    reporter.set_service_status(NAME, status(ready)).await;
    tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(HEALTH_PERIOD) => false,
                _ = stop.wait_for(|v| *v) => true,
            };
            if stopping {
                reporter
                    .set_service_status(NAME, ServingStatus::NotServing)
                    .await;
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                return;
            }
            let now = store.accepting_pushes();
            if now != ready {
                ready = now;
                reporter.set_service_status(NAME, status(ready)).await;
            }
        }
    });
}

fn spawn_background(store: Arc<Store>) {
    let s = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = s.memory.flush_wanted.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            s.drop_lost_buffers();
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

/// Keeps push buffers' memory with the process instead of handing it back to the kernel after every
/// batch. Call once, before any thread starts.
///
/// Pushed data arrives in freshly allocated buffers (the HTTP/2 frames it came in, about 1 MiB each, or
/// one buffer per copied block, see `service::raw_push`) that live until its blocks are written. With
/// glibc's defaults such buffers are `mmap`ed or trimmed off the heap as soon as they are freed, so
/// every batch pays page faults on new pages again (on the benchmark VM: page faults were 11 % of the
/// server's push CPU). Raising the mmap threshold to its
/// maximum (32 MiB) and the trim threshold to 256 MiB lets freed batches be reused hot: `large_blocks`
/// push CPU fell from 0.79-1.18 to 0.52-0.61 s/GiB (docs/PERFORMANCE.md). What the process keeps is
/// bounded by the memory budget's peak: freed memory is reused before the heap grows.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_BYTES: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD_BYTES: libc::c_int = 256 << 20;
        // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
        };
        if !ok {
            tracing::warn!("mallopt refused the allocator settings; keeping glibc's defaults");
        }
    }
}
