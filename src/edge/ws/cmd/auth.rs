//! `{"type":"auth","token":...}`: a fresh token of the same subject replaces the current one
//! (and moves the connection's deadline); subscriptions it no longer grants end with
//! `forbidden`. A token that does not verify, or is for another subject, is `unauthorized` and
//! changes nothing.

use crate::edge::ws::connection::{Flow, Io};
use crate::edge::ws::session::Session;
use crate::fanout::frames::{self, ErrorCode};

pub(super) async fn auth<S: Io>(session: &mut Session<S>, token: &str) -> Flow {
    let principal = match session.ctx.verifier.verify(token).await {
        Ok(principal) => principal,
        Err(error) => {
            let reply = frames::error(ErrorCode::Unauthorized, &error.to_string(), None);
            return session.reply(reply).await;
        }
    };
    // A connection is one identity: the per-subject connection count is kept under the
    // subject it opened with, so a token for someone else may not take it over.
    if principal.subject != session.principal.subject {
        let reply = frames::error(
            ErrorCode::Unauthorized,
            "the new token is for another subject (sub): open a new connection for it",
            None,
        );
        return session.reply(reply).await;
    }
    session.principal = principal;
    let mut lost = Vec::new();
    for negocio in session.subscriptions.negocios() {
        // An access check that cannot be made keeps the subscription: it was allowed, and the
        // token itself verified.
        if let Ok(false) = session.ctx.access.allows(&session.principal, negocio).await {
            lost.push(negocio.clone());
        }
    }
    let mut replies = vec![frames::authenticated()];
    for negocio in lost {
        session.leave(&negocio);
        replies.push(frames::error(
            ErrorCode::Forbidden,
            "the new token does not grant this negocio: subscription ended",
            Some(&frames::channel(&negocio)),
        ));
    }
    session.write(replies.into_iter()).await
}
