//! Admin HTTP: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/status` (JSON).
//!
//! Gauges (memory, disks, apps) are refreshed from the store at each scrape, so they are never stale.

use crate::store::Store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

#[derive(Clone)]
struct AdminState {
    store: Arc<Store>,
    prometheus: Option<PrometheusHandle>,
}

pub fn router(store: Arc<Store>, prometheus: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(AdminState { store, prometheus })
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let st = &s.store;
    if st.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if st.healthy_disks() == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "no healthy disk\n");
    }
    if st.memory.used_bytes() >= st.memory.limit_bytes {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "memory at its hard limit\n",
        );
    }
    (StatusCode::OK, "ready\n")
}

async fn status(State(s): State<AdminState>) -> impl IntoResponse {
    axum::Json(s.store.status())
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    refresh_gauges(&s.store);
    let body = s
        .prometheus
        .as_ref()
        .map(|p| p.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

pub fn refresh_gauges(store: &Store) {
    let st = store.status();
    metrics::gauge!("croupier_memory_used_bytes").set(st.memory_used_bytes as f64);
    metrics::gauge!("croupier_memory_peak_bytes").set(st.memory_peak_bytes as f64);
    metrics::gauge!("croupier_memory_budget_bytes").set(st.memory_limit_bytes as f64);
    metrics::gauge!("croupier_memory_high_watermark_bytes")
        .set(st.memory_high_watermark_bytes as f64);
    metrics::gauge!("croupier_apps_active").set(st.apps as f64);
    metrics::gauge!("croupier_shuffles_active").set(st.shuffles.len() as f64);
    metrics::gauge!("croupier_ready").set(if st.accepting_pushes { 1.0 } else { 0.0 });
    for d in &st.disks {
        let labels = [("disk", d.path.clone())];
        metrics::gauge!("croupier_disk_free_bytes", &labels).set(d.free_bytes as f64);
        metrics::gauge!("croupier_disk_total_bytes", &labels).set(d.total_bytes as f64);
        metrics::gauge!("croupier_disk_used_bytes", &labels).set(d.used_by_croupier_bytes as f64);
        metrics::gauge!("croupier_disk_healthy", &labels).set(if d.state == "healthy" {
            1.0
        } else {
            0.0
        });
    }
}
