//! The OpenAPI 3.1 document of the whole server, generated from the handlers' annotations:
//! this API's modules plus the live, health, metrics and webhook routes.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v2/openapi.json", get(serve))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Trellis API",
        description = "REST API of the Trellis workflow server. Errors are always \
            `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0")
    ),
    paths(serve),
    components(schemas(crate::error::ErrorBody, crate::views::StatusSchema)),
    security(("basic" = []), ("bearer" = [])),
    tags(
        (name = "dags", description = "Workflow files in the dags dir"),
        (name = "runs", description = "Runs of DAGs and their logs"),
        (name = "queues", description = "Runs waiting for the scheduler"),
        (name = "workers", description = "Workers of the cluster"),
        (name = "meta", description = "This document")
    ),
    modifiers(&Security)
)]
struct ApiDoc;

/// Basic credentials and API tokens; both are ignored while authentication is off.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The whole document, the same on every call.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    for part in [
        super::dags::Doc::openapi(),
        super::runs::Doc::openapi(),
        super::queue::Doc::openapi(),
        super::workers::Doc::openapi(),
        crate::events::Doc::openapi(),
        crate::health::Doc::openapi(),
        crate::metrics::Doc::openapi(),
        crate::webhook::Doc::openapi(),
    ] {
        doc.merge(part);
    }
    doc
}

/// This document.
#[utoipa::path(get, path = "/api/v2/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn serve(State(app): State<Arc<App>>) -> Json<utoipa::openapi::OpenApi> {
    let mut doc = document();
    // Behind a path prefix the routes are found under it.
    if !app.path_prefix.is_empty() {
        doc.servers = Some(vec![utoipa::openapi::Server::new(&app.path_prefix)]);
    }
    Json(doc)
}
