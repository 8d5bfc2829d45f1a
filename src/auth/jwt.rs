//! JWT verification and the negocios a token grants.
//!
//! Tokens are signed either with HS256 and `JWT_SECRET` (Supabase's legacy JWT secret), or
//! with an asymmetric key (RS256, ES256, ...) from a JWKS document (`JWT_JWKS_URL`, see
//! [`crate::auth::jwks`]); either or both may be configured. Every token must carry `exp`; `nbf` is
//! honoured; `aud` and `iss` are checked when configured. Algorithms are pinned: HS256 tokens
//! meet only the secret, other tokens only the JWKS key their `kid` names, and only when that
//! key's algorithm is the token's; anything else (`none` included) is refused before its
//! signature is looked at.
//!
//! Grants come from the claims:
//! * `negocio_id` (a string) and `negocio_ids` (an array), at top level or inside `app_metadata`
//!   (where Supabase keeps custom claims); numbers are accepted too, as text, for bigint ids;
//! * `role: "service_role"` grants every negocio.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

use crate::auth::jwks::Jwks;
use secrecy::{ExposeSecret, SecretString};

/// Claim checks and bounds (`JWT_AUDIENCE`, `JWT_ISSUER`, `JWT_LEEWAY`, `MAX_TOKEN_BYTES`,
/// `MAX_TOKEN_NEGOCIOS`).
#[derive(Debug, Clone)]
pub struct TokenChecks {
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub leeway_secs: u64,
    /// Tokens longer than this are refused before anything is decoded.
    pub max_token_bytes: usize,
    /// Tokens whose claims name more negocios than this are refused.
    pub max_negocios: usize,
    /// Keep each principal's claims (for `CAN_SUBSCRIBE_FUNCTION`).
    pub keep_claims: bool,
}

/// Why a token was refused. The text is what the client sees in the 401 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: pass ?token=<jwt> or an Authorization: Bearer <jwt> header")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token algorithm not accepted")]
    BadAlgorithm,
    #[error("token signed by an unknown key (kid)")]
    UnknownKey,
    #[error("token has no exp claim")]
    NoExpiry,
    #[error("token audience not accepted")]
    BadAudience,
    #[error("token issuer not accepted")]
    BadIssuer,
    #[error("token lacks a required claim: {0}")]
    MissingClaim(String),
    #[error("malformed token")]
    Malformed,
    #[error("token too large: at most {0} bytes")]
    TooLarge(usize),
    #[error("token grants too many negocios: at most {0}")]
    TooManyNegocios(usize),
}

/// What a verified token may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grants {
    /// `service_role`: every negocio.
    All,
    /// Exactly these negocios (possibly none), sorted and without repeats: a compact list
    /// every connection holds, searched on subscribe only.
    Negocios(Box<[Box<str>]>),
}

impl Grants {
    /// Grants for these negocios.
    pub fn negocios(ids: impl IntoIterator<Item = String>) -> Grants {
        let mut ids: Vec<Box<str>> = ids.into_iter().map(String::into_boxed_str).collect();
        ids.sort_unstable();
        ids.dedup();
        Grants::Negocios(ids.into_boxed_slice())
    }

    pub fn allows(&self, negocio_id: &str) -> bool {
        match self {
            Grants::All => true,
            Grants::Negocios(ids) => ids.binary_search_by(|id| (**id).cmp(negocio_id)).is_ok(),
        }
    }
}

/// The verified identity behind a connection.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: Option<String>,
    pub grants: Grants,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// When a connection opened with this token must close: `exp` plus the leeway the token
    /// was accepted with (the same rule as at the upgrade), in seconds since the Unix epoch.
    pub valid_until: u64,
    /// The claims as JSON text, without those that change with every token issued (`exp`,
    /// `iat`, `nbf`, `jti`): what the optional SQL access check ([`crate::auth::access`]) is asked
    /// with and caches by. Kept only when that check is configured (else empty): text, not a
    /// parsed map, because every connection holds one.
    pub claims: Arc<str>,
}

/// Verifies tokens; built once from the configuration and shared.
#[derive(Clone)]
pub struct Verifier {
    /// HS256 with `JWT_SECRET`, when configured.
    secret: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
    /// The claim checks; `algorithms` is set per key.
    validation: Validation,
    max_token_bytes: usize,
    max_negocios: usize,
    keep_claims: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.secret.is_some())
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl Verifier {
    /// With an HS256 secret and/or JWKS keys, optional `aud`/`iss` checks and a leeway.
    pub fn with_checks(
        secret: Option<&SecretString>,
        jwks: Option<Arc<Jwks>>,
        checks: &TokenChecks,
    ) -> Result<Verifier, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        let mut required = vec!["exp"];
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        if let Some(audience) = &checks.audience {
            validation.set_audience(&[audience]);
            validation.validate_aud = true;
            required.push("aud");
        }
        if let Some(issuer) = &checks.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation.leeway = checks.leeway_secs;
        let secret = match secret {
            Some(secret) if !secret.expose_secret().is_empty() => {
                Some(DecodingKey::from_secret(secret.expose_secret().as_bytes())?)
            }
            _ => None,
        };
        Ok(Verifier {
            secret,
            jwks,
            validation,
            max_token_bytes: checks.max_token_bytes,
            max_negocios: checks.max_negocios,
            keep_claims: checks.keep_claims,
        })
    }

    /// Verifies `token` and reads its grants. Async because an unknown `kid` may make it fetch
    /// the JWKS again (see [`crate::auth::jwks`] for the refresh policy).
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge(self.max_token_bytes));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::InvalidAlgorithm => {
                AuthError::BadAlgorithm
            }
            _ => AuthError::Malformed,
        })?;
        let jwks_key;
        let key = if header.alg == Algorithm::HS256 {
            self.secret.as_ref().ok_or(AuthError::BadAlgorithm)?
        } else {
            let jwks = self.jwks.as_ref().ok_or(AuthError::BadAlgorithm)?;
            let kid = header.kid.as_deref();
            let mut keys = jwks.current();
            if keys.find(kid, header.alg).is_none() && kid.is_some() {
                keys = jwks.refresh_for_unknown_kid().await;
            }
            let found = keys.find(kid, header.alg).ok_or(AuthError::UnknownKey)?;
            // The pin: a key verifies only the algorithm it was published for.
            if found.algorithm != header.alg {
                return Err(AuthError::BadAlgorithm);
            }
            jwks_key = found.key.clone();
            &jwks_key
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data =
            jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::UnsupportedAlgorithm
                | ErrorKind::MissingAlgorithm => AuthError::BadAlgorithm,
                ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::NoExpiry,
                ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                ErrorKind::InvalidAudience => AuthError::BadAudience,
                ErrorKind::InvalidIssuer => AuthError::BadIssuer,
                _ => AuthError::Malformed,
            })?;
        let claims = data.claims;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthError::NoExpiry)?;
        let grants = grants_from_claims(&claims);
        if let Grants::Negocios(ids) = &grants {
            if ids.len() > self.max_negocios {
                return Err(AuthError::TooManyNegocios(self.max_negocios));
            }
        }
        Ok(Principal {
            subject: claims.get("sub").and_then(subject_text),
            grants,
            expires_at,
            valid_until: expires_at.saturating_add(self.validation.leeway),
            claims: if self.keep_claims {
                identity_claims(claims).into()
            } else {
                Arc::from("")
            },
        })
    }
}

/// `sub` as text: a string, or a number (some issuers use numeric ids); an empty string or any
/// other value is no subject.
fn subject_text(sub: &Value) -> Option<String> {
    match sub {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The claims without `exp`, `iat`, `nbf` and `jti`, as JSON text.
fn identity_claims(claims: Value) -> String {
    match claims {
        Value::Object(mut map) => {
            for volatile in ["exp", "iat", "nbf", "jti"] {
                map.remove(volatile);
            }
            Value::Object(map).to_string()
        }
        other => other.to_string(),
    }
}

/// Reads the grants a token's claims carry (see the module documentation).
pub fn grants_from_claims(claims: &Value) -> Grants {
    let role = |v: &Value| v.get("role").and_then(Value::as_str) == Some("service_role");
    let app_metadata = claims.get("app_metadata").filter(|m| m.is_object());
    if role(claims) || app_metadata.is_some_and(role) {
        return Grants::All;
    }
    let mut ids = Vec::new();
    for scope in [Some(claims), app_metadata].into_iter().flatten() {
        if let Some(id) = scope.get("negocio_id").and_then(id_text) {
            ids.push(id);
        }
        if let Some(list) = scope.get("negocio_ids").and_then(Value::as_array) {
            ids.extend(list.iter().filter_map(id_text));
        }
    }
    Grants::negocios(ids)
}

/// Integers beyond this lose digits in JavaScript and many JSON parsers (RFC 7493): such ids
/// must come as strings.
pub(crate) const MAX_EXACT_INTEGER: i64 = (1 << 53) - 1;

/// An id given as a non-empty string without NUL, or an integer that every JSON reader holds
/// exactly (bigint ids; at most 2^53 - 1 in magnitude), as text. Floats (`1.0`, `1e29`) are
/// not ids: their text is not the number the sender meant.
pub(crate) fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() && !s.contains('\0') => Some(s.clone()),
        Value::Number(n) => n
            .as_i64()
            .filter(|i| i.abs() <= MAX_EXACT_INTEGER)
            .map(|i| i.to_string()),
        _ => None,
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs `claims` (plus `iat` and `exp = now + ttl`) with HS256: for the demo, the tests and
/// development. Production tokens come from the app's auth provider.
pub fn mint_token(
    secret: &SecretString,
    mut claims: Value,
    ttl: Duration,
) -> anyhow::Result<String> {
    let now = now_secs();
    if let Value::Object(map) = &mut claims {
        map.entry("iat").or_insert(now.into());
        map.entry("exp").or_insert((now + ttl.as_secs()).into());
    } else {
        anyhow::bail!("claims must be a JSON object");
    }
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes())?,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(ids: &[&str]) -> Grants {
        Grants::negocios(ids.iter().map(|s| s.to_string()))
    }

    #[test]
    fn every_claim_form_grants() {
        assert_eq!(grants_from_claims(&json!({"negocio_id": "a"})), set(&["a"]));
        assert_eq!(
            grants_from_claims(&json!({"negocio_ids": ["a", "b", 7]})),
            set(&["a", "b", "7"])
        );
        assert_eq!(
            grants_from_claims(&json!({"app_metadata": {"negocio_id": "c", "negocio_ids": ["d"]}})),
            set(&["c", "d"])
        );
        assert_eq!(
            grants_from_claims(&json!({"role": "service_role"})),
            Grants::All
        );
        assert_eq!(
            grants_from_claims(&json!({"role": "authenticated"})),
            set(&[])
        );
        assert_eq!(
            grants_from_claims(&json!({"negocio_id": "", "negocio_ids": "x"})),
            set(&[])
        );
    }

    #[tokio::test]
    async fn verify_round_trip_and_refusals() {
        let secret = SecretString::from("a-test-secret-that-is-long-enough");
        let checks = TokenChecks {
            audience: None,
            issuer: None,
            leeway_secs: 30,
            max_token_bytes: 16 * 1024,
            max_negocios: 1000,
            keep_claims: true,
        };
        let v = Verifier::with_checks(Some(&secret), None, &checks).unwrap();
        let ok = mint_token(
            &secret,
            json!({"sub": "u", "negocio_id": "a"}),
            Duration::from_secs(60),
        )
        .unwrap();
        let p = v.verify(&ok).await.unwrap();
        assert_eq!(p.subject.as_deref(), Some("u"));
        assert!(p.grants.allows("a") && !p.grants.allows("b"));

        let other = mint_token(
            &SecretString::from("another-secret"),
            json!({}),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(v.verify(&other).await.unwrap_err(), AuthError::BadSignature);
        let expired =
            mint_token(&secret, json!({"exp": now_secs() - 3600}), Duration::ZERO).unwrap();
        assert_eq!(v.verify(&expired).await.unwrap_err(), AuthError::Expired);
        assert_eq!(
            v.verify("not.a.jwt").await.unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(v.verify("").await.unwrap_err(), AuthError::Missing);
    }
}
