//! Who a client is and what it may see: JWT verification (HS256 and JWKS keys) and access to
//! negocios (the token's grants, then an optional SQL hook).

pub mod access;
pub(crate) mod jwks;
pub mod jwt;

/// A secret that never prints (`JWT_SECRET`).
pub use secrecy::SecretString;
