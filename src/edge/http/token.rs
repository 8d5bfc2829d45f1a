//! The request's token: `?token=` (what the Angular app sends; browsers cannot set headers on
//! a WebSocket) or `Authorization: Bearer`, verified.

use std::collections::HashMap;

use warp::http::{header, HeaderMap};
use warp::reply::Response;
use warp::Filter;

use crate::auth::jwt::{AuthError, Principal, Verifier};
use crate::edge::http::reply::unauthorized;

/// The query string as a map; an unparsable one is empty.
pub fn query(
) -> impl Filter<Extract = (HashMap<String, String>,), Error = std::convert::Infallible> + Clone {
    warp::query::<HashMap<String, String>>()
        .or(warp::any().map(HashMap::new))
        .unify()
}

/// The verified principal, or the 401 answer.
pub async fn authenticate(
    verifier: &Verifier,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Principal, Response> {
    let bearer = || {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
    };
    let token = query.get("token").map(String::as_str).or_else(bearer);
    match token {
        Some(token) => verifier
            .verify(token)
            .await
            .map_err(|e| unauthorized(&e.to_string())),
        None => Err(unauthorized(&AuthError::Missing.to_string())),
    }
}
