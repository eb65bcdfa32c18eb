//! Outrider's control plane: the REST API under `/api/v1`, wire-compatible
//! with Hookdeck Outpost's OpenAPI contract (paths, field names, status codes,
//! error bodies, seek pagination).

pub mod auth;
pub mod cursor;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod portal;
pub mod routes;
pub mod views;

use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::Router;

use outrider_engine::Engine;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub jwt: Option<Arc<auth::Jwt>>,
    /// `GET /api/v1/openapi.json`, rendered once: it depends only on the
    /// build and the destination types' metadata, both fixed at start.
    pub openapi: Arc<bytes::Bytes>,
    /// The tenant portal's page and assets, rendered at start.
    pub portal: Arc<portal::Portal>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> Self {
        let jwt = auth::Jwt::new(engine.config.api_jwt_secret.expose(), &engine.config.deployment_id).map(Arc::new);
        let openapi = serde_json::to_vec(&openapi::document_json(&engine.types)).unwrap_or_default();
        let portal = portal::Portal::new(&engine.config);
        Self {
            portal,
            engine,
            jwt,
            openapi: Arc::new(bytes::Bytes::from(openapi)),
        }
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    use routes::*;
    let api = Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/topics", get(meta::topics))
        .route("/openapi.json", get(meta::openapi))
        .route("/destination-types", get(meta::destination_types))
        .route("/destination-types/{kind}", get(meta::destination_type))
        .route("/publish", post(publish::publish))
        .route("/retry", post(publish::retry))
        .route("/tenants", get(tenants::list))
        .route(
            "/tenants/{tenant_id}",
            put(tenants::upsert).get(tenants::get_one).delete(tenants::delete),
        )
        .route("/tenants/{tenant_id}/token", get(tenants::token))
        .route("/tenants/{tenant_id}/portal", get(tenants::portal))
        .route(
            "/tenants/{tenant_id}/destinations",
            get(destinations::list).post(destinations::create),
        )
        .route(
            "/tenants/{tenant_id}/destinations/{destination_id}",
            get(destinations::get_one)
                .patch(destinations::update)
                .delete(destinations::delete),
        )
        .route(
            "/tenants/{tenant_id}/destinations/{destination_id}/enable",
            put(destinations::enable),
        )
        .route(
            "/tenants/{tenant_id}/destinations/{destination_id}/disable",
            put(destinations::disable),
        )
        .route(
            "/tenants/{tenant_id}/destinations/{destination_id}/test",
            post(destinations::send_test_event),
        )
        .route(
            "/tenants/{tenant_id}/destinations/{destination_id}/attempts",
            get(logs::destination_attempts),
        )
        .route(
            "/tenants/{tenant_id}/destinations/{destination_id}/attempts/{attempt_id}",
            get(logs::destination_attempt),
        )
        .route("/events", get(logs::list_events))
        .route("/events/{event_id}", get(logs::get_event))
        .route("/attempts", get(logs::list_attempts))
        .route("/attempts/{attempt_id}", get(logs::get_attempt))
        .route("/metrics/events", get(metrics::events))
        .route("/metrics/attempts", get(metrics::attempts));
    // Outpost's api_calls and api_response_latency, by route pattern.
    let api = if outrider_engine::otel::get().is_some() {
        api.route_layer(axum::middleware::from_fn(count_api_call))
    } else {
        api
    };
    let api = api
        .fallback(meta::not_found)
        .method_not_allowed_fallback(meta::not_found);
    // With METRICS_PORT set, Prometheus scrapes that port and the API port
    // does not answer /metrics.
    let top = Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/", get(crate::portal::index))
        .route("/portal/app.js", get(crate::portal::app_js))
        .route("/portal/app.css", get(crate::portal::app_css))
        .route("/inject-portal-config.js", get(crate::portal::config_js));
    let top = if state.engine.config.metrics_port.is_none() {
        top.route("/metrics", get(meta::prometheus))
    } else {
        top
    };
    top.nest("/api/v1", api).fallback(meta::not_found).with_state(state)
}

async fn count_api_call(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let method = req.method().clone();
    let path = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let start = std::time::Instant::now();
    let response = next.run(req).await;
    if let Some(otel) = outrider_engine::otel::get() {
        otel.api_call(method.as_str(), &path, start.elapsed());
    }
    response
}

/// A delivery node's HTTP surface: health only.
pub fn health_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(routes::meta::healthz))
        .route("/api/v1/healthz", get(routes::meta::healthz))
        .route("/metrics", get(routes::meta::prometheus))
        .fallback(routes::meta::not_found)
        .with_state(state)
}

/// The `METRICS_PORT` listener's surface: `/metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(routes::meta::prometheus))
        .fallback(routes::meta::not_found)
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
