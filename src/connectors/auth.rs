//! Access tokens: acquiring, caching, refreshing.
//!
//! - Entra ID v2 (`{authority}/{tenant}/oauth2/v2.0/token`): client credentials with
//!   `<resource>/.default` (Dataverse, the webhook registration API) and the refresh-token
//!   grant for the referrals API, which needs app + user credentials (partner-center-api.md
//!   §2.4). Entra rotates refresh tokens; the newest one is kept in memory.
//! - Salesforce (`{login}/services/oauth2/token`): client credentials, refresh token, JWT
//!   bearer (RS256 assertion signed with the connected app's private key). The response's
//!   `instance_url` is where the API lives.
//!
//! A cached token is reused until 60 s before it expires; a 401 from the API invalidates it
//! (once per token, however many callers saw the 401) and the next caller fetches a new one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::ConnectorError;
use super::retry::{RetryPolicy, jitter, retry_after, retryable_status};
use crate::config::secrets::Secret;

/// An access token and what came with it.
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer token (redacted in `Debug`).
    pub access_token: Secret,
    /// When to stop using it; `None` when the service does not say (Salesforce), in which
    /// case it is used until a 401.
    pub expires_at: Option<Instant>,
    /// Salesforce: the org's API host.
    pub instance_url: Option<String>,
}

/// Which grant a [`TokenSource`] uses.
#[derive(Debug)]
enum Grant {
    EntraClientCredentials {
        scope: String,
    },
    EntraRefreshToken {
        scope: String,
    },
    SalesforceClientCredentials,
    SalesforceRefreshToken,
    SalesforceJwtBearer {
        username: String,
        private_key: Secret,
        audience: String,
    },
}

/// Fetches and caches tokens for one upstream.
#[derive(Debug)]
pub struct TokenSource {
    api: &'static str,
    token_url: String,
    client_id: String,
    client_secret: Option<Secret>,
    refresh_token: std::sync::Mutex<Option<Secret>>,
    grant: Grant,
    http: reqwest::Client,
    current: Mutex<Option<Token>>,
}

impl TokenSource {
    fn new(
        api: &'static str,
        token_url: String,
        client_id: &str,
        client_secret: Option<Secret>,
        refresh_token: Option<Secret>,
        grant: Grant,
        http: reqwest::Client,
    ) -> TokenSource {
        TokenSource {
            api,
            token_url,
            client_id: client_id.to_owned(),
            client_secret,
            refresh_token: std::sync::Mutex::new(refresh_token),
            grant,
            http,
            current: Mutex::new(None),
        }
    }

    /// Entra ID client credentials for `scope` (e.g. `https://org.crm.dynamics.com/.default`).
    pub fn entra_client_credentials(
        api: &'static str,
        authority: &str,
        tenant: &str,
        client_id: &str,
        client_secret: Secret,
        scope: &str,
        http: reqwest::Client,
    ) -> TokenSource {
        TokenSource::new(
            api,
            entra_token_url(authority, tenant),
            client_id,
            Some(client_secret),
            None,
            Grant::EntraClientCredentials {
                scope: scope.to_owned(),
            },
            http,
        )
    }

    /// Entra ID refresh-token grant (app + user) for `scope`; the client secret is sent
    /// when the app is confidential.
    #[allow(clippy::too_many_arguments)]
    pub fn entra_refresh_token(
        api: &'static str,
        authority: &str,
        tenant: &str,
        client_id: &str,
        client_secret: Option<Secret>,
        refresh_token: Secret,
        scope: &str,
        http: reqwest::Client,
    ) -> TokenSource {
        TokenSource::new(
            api,
            entra_token_url(authority, tenant),
            client_id,
            client_secret,
            Some(refresh_token),
            Grant::EntraRefreshToken {
                scope: scope.to_owned(),
            },
            http,
        )
    }

    /// Salesforce client credentials (the connected app's "Run As" user).
    pub fn salesforce_client_credentials(
        login_url: &str,
        client_id: &str,
        client_secret: Secret,
        http: reqwest::Client,
    ) -> TokenSource {
        TokenSource::new(
            "salesforce",
            salesforce_token_url(login_url),
            client_id,
            Some(client_secret),
            None,
            Grant::SalesforceClientCredentials,
            http,
        )
    }

    /// Salesforce refresh-token grant.
    pub fn salesforce_refresh_token(
        login_url: &str,
        client_id: &str,
        client_secret: Option<Secret>,
        refresh_token: Secret,
        http: reqwest::Client,
    ) -> TokenSource {
        TokenSource::new(
            "salesforce",
            salesforce_token_url(login_url),
            client_id,
            client_secret,
            Some(refresh_token),
            Grant::SalesforceRefreshToken,
            http,
        )
    }

    /// Salesforce JWT bearer: an RS256 assertion signed with `private_key` (PEM, PKCS#8 or
    /// PKCS#1) for `username`. The audience is the login host (`https://login.salesforce.com`,
    /// `https://test.salesforce.com`, or the login URL given).
    pub fn salesforce_jwt_bearer(
        login_url: &str,
        client_id: &str,
        username: &str,
        private_key: Secret,
        http: reqwest::Client,
    ) -> Result<TokenSource, ConnectorError> {
        // Fail at start-up on an unusable key, not at the first sync.
        signing_key(&private_key)?;
        Ok(TokenSource::new(
            "salesforce",
            salesforce_token_url(login_url),
            client_id,
            None,
            None,
            Grant::SalesforceJwtBearer {
                username: username.to_owned(),
                private_key,
                audience: jwt_audience(login_url),
            },
            http,
        ))
    }

    /// Where tokens come from (checked for https by [`super::http::Upstream::new`]).
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// A valid token, from the cache or freshly fetched.
    pub async fn token(&self) -> Result<Token, ConnectorError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref()
            && token
                .expires_at
                .is_none_or(|at| at > Instant::now() + Duration::from_secs(60))
        {
            return Ok(token.clone());
        }
        let token = self.fetch().await?;
        *current = Some(token.clone());
        Ok(token)
    }

    /// Drops the cached token if it is still `stale` (the API answered 401 to it); callers
    /// that raced on the same 401 invalidate only once.
    pub async fn invalidate(&self, stale: &Secret) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|t| t.access_token.expose() == stale.expose())
        {
            *current = None;
        }
    }

    fn form(&self) -> Result<Vec<(&'static str, String)>, ConnectorError> {
        let mut form: Vec<(&'static str, String)> = Vec::new();
        let refresh = || {
            super::lock(&self.refresh_token)
                .as_ref()
                .map(|s| s.expose().to_owned())
                .ok_or_else(|| ConnectorError::Auth {
                    api: self.api,
                    message: "no refresh token configured".to_owned(),
                })
        };
        match &self.grant {
            Grant::EntraClientCredentials { scope } => {
                form.push(("grant_type", "client_credentials".into()));
                form.push(("scope", scope.clone()));
            }
            Grant::EntraRefreshToken { scope } => {
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", refresh()?));
                form.push(("scope", format!("{scope} offline_access")));
            }
            Grant::SalesforceClientCredentials => {
                form.push(("grant_type", "client_credentials".into()));
            }
            Grant::SalesforceRefreshToken => {
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", refresh()?));
            }
            Grant::SalesforceJwtBearer {
                username,
                private_key,
                audience,
            } => {
                form.push((
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                ));
                form.push((
                    "assertion",
                    jwt_assertion(&self.client_id, username, audience, private_key)?,
                ));
                return Ok(form);
            }
        }
        form.push(("client_id", self.client_id.clone()));
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.expose().to_owned()));
        }
        Ok(form)
    }

    async fn fetch(&self) -> Result<Token, ConnectorError> {
        let policy = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let form = self.form()?;
            let sent = self.http.post(&self.token_url).form(&form).send().await;
            let response = match sent {
                Ok(response) => response,
                Err(error) if attempt < policy.max_attempts => {
                    tracing::debug!(
                        api = self.api,
                        "token endpoint unreachable: {}",
                        super::describe_transport(&error)
                    );
                    tokio::time::sleep(policy.delay(attempt, None, jitter())).await;
                    continue;
                }
                Err(error) => {
                    return Err(ConnectorError::Auth {
                        api: self.api,
                        message: format!(
                            "token endpoint unreachable: {}",
                            super::describe_transport(&error)
                        ),
                    });
                }
            };
            let status = response.status();
            let wait = retry_after(response.headers());
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return self.accept(&body);
            }
            if retryable_status(status) && attempt < policy.max_attempts {
                tokio::time::sleep(policy.delay(attempt, wait, jitter())).await;
                continue;
            }
            // The OAuth error and description never echo the request, so no secret leaks.
            let error = body.get("error").and_then(Value::as_str).unwrap_or("error");
            let description = body
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(ConnectorError::Auth {
                api: self.api,
                message: format!("token endpoint answered {status}: {error} {description}")
                    .trim_end()
                    .to_owned(),
            });
        }
    }

    fn accept(&self, body: &Value) -> Result<Token, ConnectorError> {
        let access = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ConnectorError::Auth {
                api: self.api,
                message: "token response has no access_token".to_owned(),
            })?;
        if let Some(rotated) = body.get("refresh_token").and_then(Value::as_str) {
            *super::lock(&self.refresh_token) = Some(Secret::new(rotated));
        }
        let expires_at = body
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .map(|seconds| Instant::now() + Duration::from_secs(seconds));
        Ok(Token {
            access_token: Secret::new(access),
            expires_at,
            instance_url: body
                .get("instance_url")
                .and_then(Value::as_str)
                .map(|u| u.trim_end_matches('/').to_owned()),
        })
    }
}

/// The `aud` Salesforce expects in a JWT bearer assertion: `https://login.salesforce.com`
/// for production (also when logging in through a My Domain), `https://test.salesforce.com`
/// for sandbox orgs, and the login URL itself for anything else (an Experience Cloud site,
/// the local sandbox).
fn jwt_audience(login_url: &str) -> String {
    let trimmed = login_url.trim_end_matches('/');
    let host = trimmed
        .split_once("://")
        .map_or(trimmed, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if host == "test.salesforce.com" || host.ends_with(".sandbox.my.salesforce.com") {
        "https://test.salesforce.com".to_owned()
    } else if host == "login.salesforce.com" || host.ends_with(".my.salesforce.com") {
        "https://login.salesforce.com".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn entra_token_url(authority: &str, tenant: &str) -> String {
    format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.trim_end_matches('/')
    )
}

fn salesforce_token_url(login_url: &str) -> String {
    format!("{}/services/oauth2/token", login_url.trim_end_matches('/'))
}

/// The RSA key inside a PEM (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
fn signing_key(pem: &Secret) -> Result<aws_lc_rs::signature::RsaKeyPair, ConnectorError> {
    let invalid = |why: &str| ConnectorError::Config {
        message: format!("the Salesforce private_key is not usable: {why}"),
    };
    let text = pem.expose();
    let pkcs1 = text.contains("BEGIN RSA PRIVATE KEY");
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| invalid("not a PEM document"))?;
    let key = if pkcs1 {
        aws_lc_rs::signature::RsaKeyPair::from_der(&der)
    } else {
        aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der)
    };
    key.map_err(|_| invalid("not an RSA private key"))
}

/// `header.claims.signature` for the Salesforce JWT bearer flow; valid for 3 minutes.
fn jwt_assertion(
    client_id: &str,
    username: &str,
    audience: &str,
    private_key: &Secret,
) -> Result<String, ConnectorError> {
    let key = signing_key(private_key)?;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + 180;
    let claims =
        serde_json::json!({ "iss": client_id, "sub": username, "aud": audience, "exp": exp });
    let signing_input = format!(
        "{}.{}",
        engine.encode(br#"{"alg":"RS256"}"#),
        engine.encode(claims.to_string())
    );
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| ConnectorError::Config {
        message: "the Salesforce private_key could not sign the JWT assertion".to_owned(),
    })?;
    Ok(format!("{signing_input}.{}", engine.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_audience_follows_the_org_kind() {
        for (login, audience) in [
            (
                "https://login.salesforce.com",
                "https://login.salesforce.com",
            ),
            (
                "https://contoso.my.salesforce.com/",
                "https://login.salesforce.com",
            ),
            (
                "https://contoso--uat.sandbox.my.salesforce.com",
                "https://test.salesforce.com",
            ),
            ("https://test.salesforce.com", "https://test.salesforce.com"),
            (
                "https://partners.contoso.com/portal",
                "https://partners.contoso.com/portal",
            ),
            ("http://127.0.0.1:8787", "http://127.0.0.1:8787"),
        ] {
            assert_eq!(jwt_audience(login), audience, "{login}");
        }
    }
}
