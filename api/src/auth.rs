//! Authentication: the admin API key or a tenant JWT, both as `Bearer` tokens.
//! The key is compared in constant time. An empty `API_KEY` means no
//! authentication (every caller is admin), as in Outpost.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::AppState;

const ISSUER: &str = "outpost";
const TOKEN_TTL_SECS: i64 = 24 * 3600;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant(String),
}

impl Principal {
    /// Admin-only routes refuse tenant tokens with an empty 403.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant(_) => Err(ApiError::Bare(StatusCode::FORBIDDEN)),
        }
    }

    /// The tenant a query is restricted to, if any.
    pub fn scope(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Tenant(t) => Some(t),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment_id: Option<String>,
}

/// Signs and checks tenant tokens (HS256 with `API_JWT_SECRET`).
pub struct Jwt {
    enc: EncodingKey,
    dec: DecodingKey,
    deployment_id: Option<String>,
}

impl Jwt {
    pub fn new(secret: &str, deployment_id: &str) -> Option<Self> {
        if secret.is_empty() {
            return None;
        }
        Some(Self {
            enc: EncodingKey::from_secret(secret.as_bytes()),
            dec: DecodingKey::from_secret(secret.as_bytes()),
            deployment_id: (!deployment_id.is_empty()).then(|| deployment_id.to_string()),
        })
    }

    pub fn issue(&self, tenant_id: &str) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: tenant_id.into(),
            iat: now,
            exp: now + TOKEN_TTL_SECS,
            deployment_id: self.deployment_id.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(|e| ApiError::Internal(format!("cannot sign token: {e}")))
    }

    /// The token's tenant and issue time (seconds), if it is valid here: HS256
    /// with our secret, our issuer, not expired, and made for this deployment
    /// (deployments that share a secret do not share tenants).
    fn verify(&self, token: &str) -> Option<(String, i64)> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        v.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.dec, &v).ok()?.claims;
        (!claims.sub.is_empty() && claims.deployment_id == self.deployment_id).then_some((claims.sub, claims.iat))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = state.engine.config.api_key.expose().as_bytes();
        if key.is_empty() {
            return Ok(Principal::Admin);
        }
        let unauthorized = || ApiError::Bare(StatusCode::UNAUTHORIZED);
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthorized)?;
        if bool::from(token.as_bytes().ct_eq(key)) {
            return Ok(Principal::Admin);
        }
        let (tenant, issued_at) = state
            .jwt
            .as_ref()
            .and_then(|j| j.verify(token))
            .ok_or_else(unauthorized)?;
        // A token for a tenant that no longer exists is stale, and so is one
        // issued before the tenant was (re)created: deleting a tenant revokes
        // its tokens even if the id is used again. `iat` has whole seconds,
        // so a token from the very second of the re-creation still passes.
        match state.engine.tenant_created_at(&tenant) {
            Some(created_ms) if issued_at >= created_ms.div_euclid(1000) => Ok(Principal::Tenant(tenant)),
            _ => Err(unauthorized()),
        }
    }
}

/// Checks access to a `/tenants/{tenant_id}/...` route.
pub fn tenant_access(p: &Principal, state: &AppState, tenant_id: &str) -> Result<(), ApiError> {
    match p {
        Principal::Admin => {
            if state.engine.tenant_exists(tenant_id) {
                Ok(())
            } else {
                Err(ApiError::not_found("tenant not found"))
            }
        }
        Principal::Tenant(t) if t == tenant_id => Ok(()),
        Principal::Tenant(_) => Err(ApiError::Bare(StatusCode::FORBIDDEN)),
    }
}
