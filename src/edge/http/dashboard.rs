//! The live dashboard page at `GET /`, embedded in the binary (`DASHBOARD=off` removes it).
//!
//! Four static files from `src/web/`: the page, its style and script, and the TypeScript client
//! (`clients/typescript`) bundled by esbuild into `citas-realtime.js` (a generated file, kept
//! in the repository so that building the server needs no Node.js; CI rebuilds it and fails
//! if it differs). The page holds no data: it shows what its user's token may see, through the
//! same `/ws` as any client. A token can be passed in the URL fragment (`/#token=...`), which
//! browsers never send to the server.

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");
const CLIENT_JS: &str = include_str!("dashboard/citas-realtime.js");

/// Only what the page needs: its own files, and WebSockets to its own host (`'self'` covers
/// same-origin `ws:`/`wss:` in current browsers; a bare `ws:` would allow any host).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; \
     img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// `GET /` and `GET /assets/<file>`.
pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let index = warp::path::end()
        .and(warp::get())
        .map(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    let assets =
        warp::path!("assets" / String)
            .and(warp::get())
            .and_then(|name: String| async move {
                match name.as_str() {
                    "dashboard.js" => Ok(asset(DASHBOARD_JS, "text/javascript; charset=utf-8")),
                    "citas-realtime.js" => Ok(asset(CLIENT_JS, "text/javascript; charset=utf-8")),
                    "dashboard.css" => Ok(asset(DASHBOARD_CSS, "text/css; charset=utf-8")),
                    _ => Err(warp::reject::not_found()),
                }
            });
    index.or(assets).unify()
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change with the binary: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
