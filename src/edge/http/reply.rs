//! How the HTTP endpoints answer: JSON bodies, `{"error": ...}` for every refusal, and a JSON
//! 404/405/413/411/400 for whatever no route took.

use std::convert::Infallible;

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

pub fn json_response(code: StatusCode, body: &serde_json::Value) -> Response {
    warp::reply::with_status(warp::reply::json(body), code).into_response()
}

pub fn error_response(code: StatusCode, message: &str) -> Response {
    json_response(code, &serde_json::json!({ "error": message }))
}

/// A 401 with the reason, and the `WWW-Authenticate` challenge.
pub fn unauthorized(reason: &str) -> Response {
    let mut response = error_response(StatusCode::UNAUTHORIZED, reason);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// What no route took, as JSON.
pub async fn rejection(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(if rejection.is_not_found() {
        error_response(StatusCode::NOT_FOUND, "not found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        error_response(StatusCode::PAYLOAD_TOO_LARGE, "body too large")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        error_response(
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required",
        )
    } else {
        tracing::debug!(?rejection, "request rejected");
        error_response(StatusCode::BAD_REQUEST, "bad request")
    })
}
