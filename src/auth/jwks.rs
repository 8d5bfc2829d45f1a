//! Asymmetric signing keys (RS256, ES256, ...) from a JWKS document: Supabase's current signing
//! keys live at `https://<project>.supabase.co/auth/v1/.well-known/jwks.json`.
//!
//! # Algorithm pinning
//! Every key carries the one algorithm it verifies: its `alg` member, or, when absent, the
//! algorithm its type implies (RSA: RS256; EC P-256: ES256; EC P-384: ES384; Ed25519: EdDSA).
//! A token is verified only with a key whose algorithm equals the token's `alg`, so an RSA public
//! key can never be used as an HMAC secret (algorithm confusion), and `none` matches nothing.
//! Symmetric (`oct`) keys and encryption keys (`use: enc`) are ignored.
//!
//! # Refresh policy
//! The document is loaded at start (a failure there stops the server: a wrong URL is a
//! configuration error), then refreshed
//! * when a token names a `kid` we do not know (the provider rotated keys), at most once per
//!   cooldown (`JWT_JWKS_COOLDOWN`), so a flood of made-up `kid`s costs one fetch per cooldown;
//! * when the keys are older than [`MAX_AGE`], in the background, so a key the provider
//!   withdrew stops being accepted.
//!
//! A failed refresh keeps the keys we have and is logged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio_util::task::TaskTracker;

/// Keys older than this are refetched in the background.
pub const MAX_AGE: Duration = Duration::from_secs(600);
/// Default shortest time between two fetches caused by unknown `kid`s.
/// Where the JWKS comes from and how often an unknown `kid` may refetch it.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    pub source: JwksSource,
    pub cooldown: Duration,
}
/// A JWKS document is a few KiB; anything far larger is not one.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What is wrong with a JWKS source or document.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("'{0}' is not a URL: {1}")]
    Url(String, String),
    #[error("'{0}' is neither an http(s) URL nor a file path")]
    Scheme(String),
    #[error("not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("not a JWKS document: no \"keys\" array")]
    NoKeys,
    #[error("the JWKS document has no usable signing key")]
    NoUsableKey,
}

/// Where the JWKS document comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
}

impl JwksSource {
    /// `https://...` or `http://...` is fetched; `file:///path` or a plain path is read.
    pub fn parse(text: &str) -> Result<JwksSource, JwksError> {
        let text = text.trim();
        if text.starts_with("https://") || text.starts_with("http://") {
            reqwest::Url::parse(text)
                .map_err(|e| JwksError::Url(text.to_string(), e.to_string()))?;
            Ok(JwksSource::Url(text.to_string()))
        } else if let Some(path) = text.strip_prefix("file://") {
            Ok(JwksSource::File(PathBuf::from(path)))
        } else if text.contains("://") {
            Err(JwksError::Scheme(text.to_string()))
        } else {
            Ok(JwksSource::File(PathBuf::from(text)))
        }
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Url(url) => f.write_str(url),
            JwksSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One verification key and the algorithm it is pinned to.
#[derive(Clone)]
pub struct Key {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// The keys of one JWKS document.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`: used only for tokens without one, and only when exactly one of
    /// them has the token's algorithm.
    unnamed: Vec<Key>,
}

impl KeySet {
    /// Reads a JWKS document. Keys this server cannot use are skipped (and logged); a document
    /// with no usable key at all is an error.
    pub fn parse(document: &[u8]) -> Result<KeySet, JwksError> {
        let value: Value = serde_json::from_slice(document)?;
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeys)?;
        let mut set = KeySet::default();
        for raw in keys {
            match usable_key(raw) {
                Ok((kid, key)) => match kid {
                    Some(kid) => {
                        set.by_kid.insert(kid, key);
                    }
                    None => set.unnamed.push(key),
                },
                Err(reason) => {
                    let kid = raw.get("kid").and_then(|k| k.as_str()).unwrap_or("");
                    tracing::warn!(kid, %reason, "skipping a JWKS key")
                }
            }
        }
        if set.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for a token's `kid` (or, with none, the only unnamed key of its algorithm).
    pub fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => {
                let mut matching = self.unnamed.iter().filter(|k| k.algorithm == algorithm);
                match (matching.next(), matching.next()) {
                    (Some(key), None) => Some(key),
                    _ => None,
                }
            }
        }
    }
}

/// Why a key of a JWKS document is skipped (logged).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SkippedKey(String);

fn usable_key(raw: &Value) -> Result<(Option<String>, Key), SkippedKey> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| SkippedKey(e.to_string()))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err(SkippedKey("an encryption key (use: enc)".into()));
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err(SkippedKey("unsupported elliptic curve".into())),
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => {
            return Err(SkippedKey(
                "symmetric keys are not taken from a JWKS (use JWT_SECRET)".into(),
            ))
        }
        _ => return Err(SkippedKey("unsupported key type".into())),
    };
    let algorithm = match jwk.common.key_algorithm {
        None => implied,
        Some(KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512) => {
            return Err(SkippedKey("an HMAC algorithm on a public key".into()))
        }
        Some(alg) => {
            Algorithm::try_from(alg).map_err(|_| SkippedKey(format!("unsupported alg {alg}")))?
        }
    };
    let family_ok = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            algorithm,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        _ => algorithm == implied,
    };
    if !family_ok {
        return Err(SkippedKey(format!(
            "alg {algorithm:?} does not fit the key type"
        )));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| SkippedKey(e.to_string()))?;
    Ok((jwk.common.key_id, Key { algorithm, key }))
}

/// The keys, kept fresh from their source. Shared by every verification.
pub struct Jwks {
    source: JwksSource,
    cooldown: Duration,
    http: reqwest::Client,
    state: RwLock<State>,
    /// One fetch at a time; whoever waits for it then reads the fresh keys.
    fetching: tokio::sync::Mutex<()>,
    /// Background refreshes are the server's tasks: shutdown waits for them.
    tasks: TaskTracker,
}

struct State {
    keys: Arc<KeySet>,
    fetched_at: Instant,
    /// When an unknown `kid` last caused a fetch.
    last_forced: Option<Instant>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwks({})", self.source)
    }
}

impl Jwks {
    /// Loads the document once; an error names what is wrong with it.
    pub async fn load(settings: &JwksSettings, tasks: TaskTracker) -> anyhow::Result<Arc<Jwks>> {
        let (source, cooldown) = (settings.source.clone(), settings.cooldown);
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("citas-realtime/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let keys = fetch(&http, &source).await?;
        tracing::info!(source = %source, keys = keys.len(), "JWKS loaded");
        Ok(Arc::new(Jwks {
            source,
            cooldown,
            http,
            state: RwLock::new(State {
                keys: Arc::new(keys),
                fetched_at: Instant::now(),
                last_forced: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
            tasks,
        }))
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The keys as they are now; starts a background refresh when they are old.
    pub fn current(self: &Arc<Self>) -> Arc<KeySet> {
        let (keys, stale) = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            (state.keys.clone(), state.fetched_at.elapsed() > MAX_AGE)
        };
        if stale {
            let this = self.clone();
            self.tasks.spawn(async move {
                if let Ok(_guard) = this.fetching.try_lock() {
                    this.refresh().await;
                }
            });
        }
        keys
    }

    /// A token named a `kid` we do not have: fetch again, unless an unknown `kid` already did
    /// within the cooldown. Returns the keys to look in.
    pub async fn refresh_for_unknown_kid(&self) -> Arc<KeySet> {
        let _guard = self.fetching.lock().await;
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let cooling = state
                .last_forced
                .is_some_and(|at| at.elapsed() < self.cooldown);
            if cooling {
                return state.keys.clone();
            }
            state.last_forced = Some(Instant::now());
        }
        self.refresh().await
    }

    async fn refresh(&self) -> Arc<KeySet> {
        match fetch(&self.http, &self.source).await {
            Ok(keys) => {
                tracing::info!(source = %self.source, keys = keys.len(), "JWKS refreshed");
                let keys = Arc::new(keys);
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                state.keys = keys.clone();
                state.fetched_at = Instant::now();
                keys
            }
            Err(error) => {
                tracing::warn!(source = %self.source, error = format!("{error:#}"), "JWKS refresh failed; keeping the keys we have");
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                // Try again after MAX_AGE, not on every request.
                state.fetched_at = Instant::now();
                state.keys.clone()
            }
        }
    }
}

async fn fetch(http: &reqwest::Client, source: &JwksSource) -> anyhow::Result<KeySet> {
    use anyhow::Context;
    let document = match source {
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?,
        JwksSource::Url(url) => {
            let mut response = http
                .get(url)
                .send()
                .await
                .with_context(|| format!("cannot fetch {url}"))?;
            if !response.status().is_success() {
                anyhow::bail!("{url} answered HTTP {}", response.status());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .with_context(|| format!("cannot read {url}"))?
            {
                if body.len() + chunk.len() > MAX_DOCUMENT {
                    anyhow::bail!("{url} sent more than {MAX_DOCUMENT} bytes: not a JWKS");
                }
                body.extend_from_slice(&chunk);
            }
            body
        }
    };
    KeySet::parse(&document).map_err(|reason| anyhow::anyhow!("{source}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            JwksSource::parse("https://x.supabase.co/auth/v1/.well-known/jwks.json").ok(),
            Some(JwksSource::Url(
                "https://x.supabase.co/auth/v1/.well-known/jwks.json".into()
            ))
        );
        assert_eq!(
            JwksSource::parse("file:///etc/jwks.json").ok(),
            Some(JwksSource::File("/etc/jwks.json".into()))
        );
        assert_eq!(
            JwksSource::parse("./jwks.json").ok(),
            Some(JwksSource::File("./jwks.json".into()))
        );
        assert!(JwksSource::parse("ftp://x/jwks.json").is_err());
    }

    #[test]
    fn unusable_keys_are_skipped() {
        // An HMAC key, an encryption key, and a key claiming HS256: none usable.
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"a"},
            {"kty":"EC","crv":"P-256","use":"enc","kid":"b",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","alg":"HS256","kid":"c",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        assert!(KeySet::parse(doc).is_err());
        let doc = br#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"d",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let set = KeySet::parse(doc).unwrap();
        assert_eq!(
            set.find(Some("d"), Algorithm::ES256).map(|k| k.algorithm),
            Some(Algorithm::ES256)
        );
        assert!(set.find(None, Algorithm::ES256).is_none());
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(b"not json").is_err());
    }
}
