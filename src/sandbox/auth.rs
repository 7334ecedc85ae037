//! Token endpoints and bearer-token checks.
//!
//! - Entra ID: `POST /{tenant}/oauth2/v2.0/token` with `client_credentials`, `password`
//!   or `refresh_token`. The token's audience comes from the scope's resource
//!   (`https://api.partner.microsoft.com/.default` → Partner Center referrals,
//!   `https://api.partnercenter.microsoft.com/.default` → webhook registration, any other
//!   `https://host/.default` → Dataverse), and each API only accepts its own audience,
//!   like the real services.
//! - Salesforce: `POST /services/oauth2/token` with `client_credentials`, `password`,
//!   `refresh_token` or `urn:ietf:params:oauth:grant-type:jwt-bearer`.
//!
//! The sandbox's credentials are fixed and public (they protect nothing but fidelity):
//! [`CLIENT_ID`] / [`CLIENT_SECRET`], user [`USERNAME`] / [`PASSWORD`], and the
//! long-lived refresh token [`REFRESH_TOKEN`]. Wrong ones are refused with the real
//! services' errors. Tokens live `--token-ttl` seconds on the sandbox clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Api, Sandbox, json_response, lock};

/// Client (application) id the sandbox accepts, for Entra ID and Salesforce alike.
pub const CLIENT_ID: &str = "cosell-sandbox";
/// The matching client secret.
pub const CLIENT_SECRET: &str = "sandbox-secret";
/// User name for the `password` grant (Partner Center needs App+User tokens).
pub const USERNAME: &str = "admin@sandbox.cosell.dev";
/// The matching password (Salesforce: password and security token concatenated).
pub const PASSWORD: &str = "sandbox-password";
/// A refresh token that is always valid, as if an admin had consented once.
pub const REFRESH_TOKEN: &str = "sandbox-refresh-token";

const PARTNER_API: &str = "https://api.partner.microsoft.com";
const PARTNER_CENTER_API: &str = "https://api.partnercenter.microsoft.com";

/// Who a token was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// `https://api.partner.microsoft.com` — referrals.
    PartnerApi,
    /// `https://api.partnercenter.microsoft.com` — webhook registration.
    PartnerCenterApi,
    /// A Dataverse environment URL.
    Dataverse(String),
    /// Salesforce.
    Salesforce,
}

impl Audience {
    fn accepted_by(&self, api: Api) -> bool {
        matches!(
            (self, api),
            (Audience::PartnerApi, Api::PartnerCenter)
                | (Audience::PartnerCenterApi, Api::PartnerCenterWebhooks)
                | (Audience::Dataverse(_), Api::Dataverse)
                | (Audience::Salesforce, Api::Salesforce)
        )
    }
}

#[derive(Debug, Clone)]
struct Issued {
    audience: Audience,
    expires_at: SystemTime,
}

/// Issued tokens.
#[derive(Debug)]
pub struct Tokens {
    ttl: Mutex<Duration>,
    issued: Mutex<HashMap<String, Issued>>,
    refresh_tokens: Mutex<HashMap<String, Audience>>,
}

impl Tokens {
    /// No tokens yet; new ones live `ttl`.
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl: Mutex::new(ttl),
            issued: Mutex::new(HashMap::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_ttl(&self, ttl: Duration) {
        *lock(&self.ttl) = ttl;
    }

    /// The lifetime of new tokens.
    pub fn ttl(&self) -> Duration {
        *lock(&self.ttl)
    }

    /// Makes every issued access token expired (refresh tokens stay valid), so clients
    /// must go through their refresh path.
    pub fn expire_all(&self) {
        for issued in lock(&self.issued).values_mut() {
            issued.expires_at = UNIX_EPOCH;
        }
    }

    fn issue(&self, sandbox: &Sandbox, audience: Audience, token: String) -> (String, u64) {
        let ttl = self.ttl();
        let mut issued = lock(&self.issued);
        // Forget long-expired tokens so a long-running sandbox does not grow forever.
        let now = sandbox.now();
        issued.retain(|_, t| now.duration_since(t.expires_at).unwrap_or_default() < ttl + ttl);
        issued.insert(
            token.clone(),
            Issued {
                audience,
                expires_at: now + ttl,
            },
        );
        (token, ttl.as_secs())
    }

    /// Checks the `Authorization: Bearer` header of a call to `api`; the error is the
    /// response that API gives.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, sandbox: &Sandbox, api: Api, headers: &HeaderMap) -> Result<(), Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                // Salesforce also takes the legacy `OAuth` scheme.
                (scheme.eq_ignore_ascii_case("bearer")
                    || (api == Api::Salesforce && scheme.eq_ignore_ascii_case("oauth")))
                .then(|| token.trim())
            });
        let Some(token) = token else {
            return Err(unauthorized(api, Problem::Missing));
        };
        let issued = lock(&self.issued).get(token).cloned();
        match issued {
            None => Err(unauthorized(api, Problem::Invalid)),
            Some(issued) if !issued.audience.accepted_by(api) => {
                Err(unauthorized(api, Problem::WrongAudience))
            }
            Some(issued) if issued.expires_at <= sandbox.now() => {
                Err(unauthorized(api, Problem::Expired))
            }
            Some(_) => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Problem {
    Missing,
    Invalid,
    Expired,
    WrongAudience,
}

/// 401 in the API's own shape, with the `WWW-Authenticate` header each service sends.
fn unauthorized(api: Api, problem: Problem) -> Response {
    let mut response = match api {
        Api::Salesforce => api.error(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        ),
        Api::Dataverse => {
            // Dataverse answers 401 with an empty body and a WWW-Authenticate challenge.
            let mut response = Response::new(axum::body::Body::empty());
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
        _ => {
            let message = match problem {
                Problem::Missing => "Authorization header missing or not a Bearer token.",
                Problem::Invalid => "The access token is invalid.",
                Problem::Expired => "The access token has expired.",
                Problem::WrongAudience => "The access token was issued for another audience.",
            };
            api.error(StatusCode::UNAUTHORIZED, "unauthenticated", message)
        }
    };
    let challenge = match api {
        Api::Salesforce => "Token".to_owned(),
        _ => {
            let error = match problem {
                Problem::Missing => String::new(),
                Problem::Expired => {
                    ", error=\"invalid_token\", error_description=\"The access token is expired\""
                        .to_owned()
                }
                Problem::Invalid | Problem::WrongAudience => ", error=\"invalid_token\"".to_owned(),
            };
            format!(
                "Bearer authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\"{error}"
            )
        }
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The token endpoints.
pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
        .route("/services/oauth2/token", post(salesforce_token))
}

/// Form fields, plus HTTP Basic client credentials when present.
fn form(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let mut fields: HashMap<String, String> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some((id, secret)) = basic_credentials(headers) {
        fields.entry("client_id".to_owned()).or_insert(id);
        fields.entry("client_secret".to_owned()).or_insert(secret);
    }
    fields
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    Some((unescape(id), unescape(secret)))
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// An Entra ID error: `{"error","error_description","error_codes",…}` with the AADSTS
/// number leading the description, as Entra sends it.
fn entra_error(
    sandbox: &Sandbox,
    status: StatusCode,
    error: &str,
    aadsts: u32,
    text: &str,
) -> Response {
    let trace = sandbox.new_guid();
    let correlation = sandbox.new_guid();
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{aadsts}: {text} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {}", sandbox.now_dataverse()),
            "error_codes": [aadsts],
            "timestamp": sandbox.now_dataverse(),
            "trace_id": trace,
            "correlation_id": correlation,
        }),
    )
}

/// The resource a v2.0 scope names: `https://x/.default` or `https://x/user_impersonation`
/// → `https://x`. OpenID scopes (`offline_access`, `openid`, `profile`) are skipped.
fn scope_resource(scope: &str) -> Option<String> {
    scope
        .split_whitespace()
        .find(|s| !matches!(*s, "offline_access" | "openid" | "profile" | "email"))
        .and_then(|s| {
            let (resource, permission) = s.rsplit_once('/')?;
            let valid = (resource.starts_with("https://") || resource.starts_with("http://"))
                && resource.len() > "https://".len()
                && !permission.is_empty();
            valid.then(|| resource.trim_end_matches('/').to_owned())
        })
}

fn entra_audience(resource: &str) -> Audience {
    match resource.to_ascii_lowercase().as_str() {
        PARTNER_API => Audience::PartnerApi,
        PARTNER_CENTER_API => Audience::PartnerCenterApi,
        other => Audience::Dataverse(other.to_owned()),
    }
}

async fn entra_token(
    State(sandbox): State<Arc<Sandbox>>,
    Path(_tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let sb = &sandbox;
    if !is_form(&headers) {
        return entra_error(
            sb,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900_144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    }
    let fields = form(&headers, &body);
    let get = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let Some(grant_type) = get("grant_type") else {
        return entra_error(
            sb,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900_144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    };
    if !matches!(
        grant_type,
        "client_credentials" | "password" | "refresh_token"
    ) {
        return entra_error(
            sb,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70_003,
            &format!("The app requested an unsupported grant type '{grant_type}'."),
        );
    }
    let Some(client_id) = get("client_id") else {
        return entra_error(
            sb,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900_144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    if client_id != CLIENT_ID {
        return entra_error(
            sb,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700_016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory 'sandbox'."
            ),
        );
    }
    match get("client_secret") {
        None if grant_type == "client_credentials" => {
            return entra_error(
                sb,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7_000_218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
        Some(secret) if secret != CLIENT_SECRET => {
            return entra_error(
                sb,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7_000_215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app 'cosell-sandbox'.",
            );
        }
        _ => {}
    }
    let scope = get("scope").unwrap_or_default();
    let resource = scope_resource(scope);
    let wants_refresh = scope.split_whitespace().any(|s| s == "offline_access");
    let (audience, refresh) = match grant_type {
        "client_credentials" => {
            // Client credentials must ask for `<resource>/.default`.
            let Some(resource) = resource.filter(|_| scope.trim_end().ends_with("/.default"))
            else {
                return entra_error(
                    sb,
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    1_002_012,
                    &format!(
                        "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                    ),
                );
            };
            (entra_audience(&resource), false)
        }
        "password" => {
            if get("username") != Some(USERNAME) || get("password") != Some(PASSWORD) {
                return entra_error(
                    sb,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    50_126,
                    "Error validating credentials due to invalid username or password.",
                );
            }
            let Some(resource) = resource else {
                return invalid_scope(sb, scope);
            };
            (entra_audience(&resource), wants_refresh)
        }
        _ => {
            let Some(token) = get("refresh_token") else {
                return entra_error(
                    sb,
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    900_144,
                    "The request body must contain the following parameter: 'refresh_token'.",
                );
            };
            let known = token == REFRESH_TOKEN || lock(&sb.auth.refresh_tokens).contains_key(token);
            if !known {
                return entra_error(
                    sb,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    9_002_313,
                    "Invalid request. Request is malformed or invalid.",
                );
            }
            let Some(resource) = resource else {
                return invalid_scope(sb, scope);
            };
            // Entra rotates refresh tokens on every use.
            (entra_audience(&resource), true)
        }
    };
    let access = format!(
        "eyJ0eXAiOiJKV1Qi.sbx.{}",
        sb.rng().string_from(TOKEN_ALPHABET, 40)
    );
    let (access, expires_in) = sb.auth.issue(sb, audience.clone(), access);
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access,
    });
    if refresh {
        let token = format!("0.sbx-refresh.{}", sb.rng().string_from(TOKEN_ALPHABET, 40));
        lock(&sb.auth.refresh_tokens).insert(token.clone(), audience);
        body["refresh_token"] = Value::String(token);
    }
    json_response(StatusCode::OK, &body)
}

fn invalid_scope(sandbox: &Sandbox, scope: &str) -> Response {
    entra_error(
        sandbox,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
        70_011,
        &format!(
            "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid: '{scope}'."
        ),
    )
}

const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

fn sf_error(error: &str, description: &str) -> Response {
    Api::SalesforceAuth.error(StatusCode::BAD_REQUEST, error, description)
}

async fn salesforce_token(
    State(sandbox): State<Arc<Sandbox>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let sb = &sandbox;
    let fields = form(&headers, &body);
    let get = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let Some(grant_type) = get("grant_type") else {
        return sf_error("unsupported_grant_type", "grant type not supported");
    };
    let mut scope = None;
    match grant_type {
        "client_credentials" | "password" | "refresh_token" => {
            match get("client_id") {
                None => return sf_error("invalid_client_id", "client identifier invalid"),
                Some(id) if id != CLIENT_ID => {
                    return sf_error("invalid_client_id", "client identifier invalid");
                }
                Some(_) => {}
            }
            let secret = get("client_secret");
            // The refresh flow may skip the secret when "Require Secret" is off; the
            // other two always need it.
            if (grant_type != "refresh_token" || secret.is_some()) && secret != Some(CLIENT_SECRET)
            {
                return sf_error("invalid_client", "invalid client credentials");
            }
            match grant_type {
                "password" => {
                    if get("username") != Some(USERNAME) || get("password") != Some(PASSWORD) {
                        return sf_error("invalid_grant", "authentication failure");
                    }
                }
                "refresh_token" => {
                    if get("refresh_token") != Some(REFRESH_TOKEN) {
                        return sf_error("invalid_grant", "expired access/refresh token");
                    }
                }
                _ => {}
            }
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let Some(assertion) = get("assertion") else {
                return sf_error("invalid_request", "assertion is missing");
            };
            if let Err(description) = check_jwt(sb, assertion) {
                return sf_error("invalid_grant", description);
            }
            scope = Some("api");
        }
        _ => return sf_error("unsupported_grant_type", "grant type not supported"),
    }
    let org = "00D5g00000SBXORG";
    let user = "0055g00000SBXUSR";
    let access = format!(
        "{org}!AR8AQ{}",
        sb.rng().string_from(&TOKEN_ALPHABET[..62], 48)
    );
    let (access, _) = sb.auth.issue(sb, Audience::Salesforce, access);
    let issued_at = sb
        .now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string();
    let mut body = json!({
        "access_token": access,
        "instance_url": sb.base_url,
        "id": format!("{}/id/{org}/{user}", sb.base_url),
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": base64::engine::general_purpose::STANDARD.encode(sb.rng().next_u64().to_be_bytes()),
    });
    if let Some(scope) = scope {
        body["scope"] = Value::String(scope.to_owned());
    }
    json_response(StatusCode::OK, &body)
}

/// Checks a JWT bearer assertion the way Salesforce does: RS256, `iss` = the connected
/// app's consumer key, `sub` = a known user, `aud` = a login host, `exp` in the future.
///
/// The signature itself is not verified: the real service checks it against the
/// certificate uploaded to the connected app, and the sandbox has no such upload.
fn check_jwt(sandbox: &Sandbox, assertion: &str) -> Result<(), &'static str> {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = assertion.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("invalid assertion");
    };
    let decode = |part: &str| -> Option<Value> {
        let bytes = engine.decode(part.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let (Some(header), Some(claims)) = (decode(header), decode(claims)) else {
        return Err("invalid assertion");
    };
    if header.get("alg").and_then(Value::as_str) != Some("RS256") || signature.is_empty() {
        return Err("invalid assertion");
    }
    if claims.get("iss").and_then(Value::as_str) != Some(CLIENT_ID) {
        return Err("invalid_client_id");
    }
    if claims.get("sub").and_then(Value::as_str) != Some(USERNAME) {
        return Err("user hasn't approved this consumer");
    }
    let audience_ok = claims
        .get("aud")
        .and_then(Value::as_str)
        .is_some_and(|aud| {
            let aud = aud.trim_end_matches('/');
            aud == "https://login.salesforce.com"
                || aud == "https://test.salesforce.com"
                || aud == sandbox.base_url
        });
    if !audience_ok {
        return Err("audience is invalid");
    }
    let now = sandbox
        .now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > now => Ok(()),
        _ => Err("expired authorization code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_resource_takes_the_first_resource_scope() {
        assert_eq!(
            scope_resource("https://api.partner.microsoft.com/.default").as_deref(),
            Some("https://api.partner.microsoft.com")
        );
        assert_eq!(
            scope_resource("offline_access https://org.crm.dynamics.com/user_impersonation")
                .as_deref(),
            Some("https://org.crm.dynamics.com")
        );
        assert_eq!(scope_resource("offline_access"), None);
        assert_eq!(scope_resource("not-a-url/.default"), None);
    }
}
