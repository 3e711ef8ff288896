//! The runs dashboard at `/ui` and the static assets it shares with the API reference at
//! `/docs` ([`openapi::DOCS_PAGE`](super::openapi::DOCS_PAGE)).
//!
//! Everything here is HTML, CSS and JavaScript written for this project and embedded in the
//! binary with `include_str!`: no build step, nothing fetched from another host, so both pages
//! work on networks without internet access. The pages are static and need no auth; their
//! scripts call the JSON API of the same process with the token the user enters, so the API's
//! own auth decides what they may read and change. None of these routes is an OpenAPI
//! operation.
//!
//! | Path | What |
//! |---|---|
//! | `/ui` | the dashboard (runs by state, progress per chain and model, recent failures, the runs list with filters and pages, a run's detail with cancel and retry) |
//! | `/ui/` | redirects to `/ui` (the pages use relative URLs so the API may sit behind a path prefix) |
//! | `/ui/assets/{name}` | `style.css`, `dashboard.js`, `docs.js` |

use axum::Router;
use axum::extract::Path;
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use super::ApiState;
use super::error::ApiError;
use super::input::Input;

/// The dashboard page; its script is [`DASHBOARD_JS`].
pub const DASHBOARD_PAGE: &str = include_str!("ui/dashboard.html");
/// The dashboard's script.
pub const DASHBOARD_JS: &str = include_str!("ui/dashboard.js");
/// The API reference's script: renders `/openapi.json`.
pub const DOCS_JS: &str = include_str!("ui/docs.js");
/// The styles of both pages.
pub const STYLE_CSS: &str = include_str!("ui/style.css");

/// The dashboard and asset routes, merged into [`app`](super::app).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(|| async { Html(DASHBOARD_PAGE) }))
        .route("/ui/", get(|| async { Redirect::permanent("../ui") }))
        .route("/ui/assets/{name}", get(asset))
}

async fn asset(Input(Path(name)): Input<Path<String>>) -> Response {
    let (body, content_type) = match name.as_str() {
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        "dashboard.js" => (DASHBOARD_JS, "text/javascript; charset=utf-8"),
        "docs.js" => (DOCS_JS, "text/javascript; charset=utf-8"),
        _ => {
            return ApiError::not_found(
                "not_found",
                format!(
                    "no asset {:?}; the dashboard is at /ui",
                    name.chars().take(64).collect::<String>()
                ),
            )
            .into_response();
        }
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Assets change with the binary, which may be replaced under the same URL.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
