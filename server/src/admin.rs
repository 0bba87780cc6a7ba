//! Admin HTTP: `/` (an HTML status page), `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/status` (JSON), and `POST /drain` / `POST /undrain` (which need the auth token when one is set).
//!
//! Gauges (memory, disks, apps) are refreshed from the store at each scrape, so they are never stale.

use crate::auth::Auth;
use crate::store::Store;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The status page: one self-contained file (no external resources) polling `/status`.
const STATUS_PAGE: &str = include_str!("status_page.html");

/// What the admin endpoints know besides the store.
pub struct AdminContext {
    pub auth: Arc<Auth>,
    /// `app_quota_bytes` (0 = unlimited).
    pub app_quota_bytes: u64,
    pub tls: bool,
    /// Set at SIGTERM: the drain cannot be undone any more.
    pub shutting_down: Arc<AtomicBool>,
}

impl Default for AdminContext {
    fn default() -> Self {
        AdminContext {
            auth: Arc::new(Auth::disabled()),
            app_quota_bytes: 0,
            tls: false,
            shutting_down: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[derive(Clone)]
struct AdminState {
    store: Arc<Store>,
    prometheus: Option<PrometheusHandle>,
    ctx: Arc<AdminContext>,
}

pub fn router(store: Arc<Store>, prometheus: Option<PrometheusHandle>) -> Router {
    router_with(store, prometheus, AdminContext::default())
}

pub fn router_with(
    store: Arc<Store>,
    prometheus: Option<PrometheusHandle>,
    ctx: AdminContext,
) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/drain", post(drain))
        .route("/undrain", post(undrain))
        .with_state(AdminState {
            store,
            prometheus,
            ctx: Arc::new(ctx),
        })
}

async fn status_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        STATUS_PAGE,
    )
}

/// The admin POST endpoints need the auth token when one is configured: `Some(401 response)` when
/// the request lacks it.
fn refuse_unauthorized(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    s.ctx.auth.check_bearer(value).err().map(|_| {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this endpoint requires the auth token: send `Authorization: Bearer <token>`\n",
        )
            .into_response()
    })
}

/// Stop taking new shuffles and pushes; keep serving commits, fetches and deletions.
async fn drain(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse_unauthorized(&s, &headers) {
        return r;
    }
    if !s.store.is_draining() {
        tracing::info!("drain requested: refusing new shuffles and pushes");
    }
    s.store.set_draining(true);
    axum::Json(drain_report(&s.store)).into_response()
}

async fn undrain(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse_unauthorized(&s, &headers) {
        return r;
    }
    if s.ctx.shutting_down.load(Ordering::Acquire) {
        return (
            StatusCode::CONFLICT,
            "the server is shutting down; it cannot be undrained\n",
        )
            .into_response();
    }
    if s.store.is_draining() {
        tracing::info!("undrain requested: taking shuffles and pushes again");
    }
    s.store.set_draining(false);
    axum::Json(drain_report(&s.store)).into_response()
}

fn drain_report(store: &Store) -> serde_json::Value {
    let st = store.status();
    serde_json::json!({
        "draining": st.draining,
        "accepting_pushes": st.accepting_pushes,
        "apps": st.apps,
        "shuffles": st.shuffles.len(),
        "buffered_bytes": st.shuffles.iter().map(|s| s.buffered_bytes).sum::<u64>(),
        "bytes_on_disk": st.bytes_on_disk,
    })
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
    if st.memory.metadata_full() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metadata at metadata_bytes_max\n",
        );
    }
    (StatusCode::OK, "ready\n")
}

/// The store's status, plus per-app usage against the quota and the security settings.
async fn status(State(s): State<AdminState>) -> impl IntoResponse {
    let st = s.store.status();
    let quota = s.ctx.app_quota_bytes;
    let mut usage: std::collections::BTreeMap<&str, (u32, u64, u64)> = Default::default();
    for sh in &st.shuffles {
        let e = usage.entry(sh.app_id.as_str()).or_default();
        e.0 += 1;
        e.1 += sh.buffered_bytes;
        e.2 += sh.disk_bytes;
    }
    let app_usage: Vec<serde_json::Value> = usage
        .iter()
        .map(|(app, (shuffles, buffered, disk))| {
            serde_json::json!({
                "app_id": app,
                "shuffles": shuffles,
                "buffered_bytes": buffered,
                "disk_bytes": disk,
                "stored_bytes": buffered + disk,
                "quota_bytes": quota,
                "over_quota": quota > 0 && buffered + disk > quota,
            })
        })
        .collect();
    let mut v = serde_json::to_value(&st).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("app_usage".into(), app_usage.into());
        o.insert("app_quota_bytes".into(), quota.into());
        o.insert(
            "shutting_down".into(),
            s.ctx.shutting_down.load(Ordering::Acquire).into(),
        );
        o.insert(
            "security".into(),
            serde_json::json!({
                "token_required": s.ctx.auth.token_required(),
                "app_secrets": s.ctx.auth.app_secrets_enforced(),
                "tls": s.ctx.tls,
            }),
        );
    }
    axum::Json(v)
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    refresh_gauges(&s.store);
    metrics::gauge!("croupier_app_quota_bytes").set(s.ctx.app_quota_bytes as f64);
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
    metrics::gauge!("croupier_metadata_bytes").set(st.metadata_bytes as f64);
    metrics::gauge!("croupier_metadata_limit_bytes").set(st.metadata_limit_bytes as f64);
    metrics::gauge!("croupier_memory_high_watermark_bytes")
        .set(st.memory_high_watermark_bytes as f64);
    metrics::gauge!("croupier_apps_active").set(st.apps as f64);
    metrics::gauge!("croupier_shuffles_active").set(st.shuffles.len() as f64);
    metrics::gauge!("croupier_ready").set(if st.accepting_pushes { 1.0 } else { 0.0 });
    metrics::gauge!("croupier_draining").set(if st.draining { 1.0 } else { 0.0 });
    for d in &st.disks {
        let labels = [("disk", d.path.clone())];
        metrics::gauge!("croupier_disk_free_bytes", &labels).set(d.free_bytes as f64);
        metrics::gauge!("croupier_disk_total_bytes", &labels).set(d.total_bytes as f64);
        metrics::gauge!("croupier_disk_used_bytes", &labels).set(d.used_by_croupier_bytes as f64);
        metrics::gauge!("croupier_segment_pool_bytes", &labels).set(d.segment_pool_bytes as f64);
        metrics::gauge!("croupier_disk_healthy", &labels).set(if d.state == "healthy" {
            1.0
        } else {
            0.0
        });
    }
}
