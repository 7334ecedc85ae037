//! The Partner Center client: co-sell referrals (`api.partner.microsoft.com`) and webhook
//! registration (`api.partnercenter.microsoft.com`), per partner-center-api.md §2–§3.
//!
//! Two [`Upstream`]s, because the two APIs are two services with two token audiences:
//! - **referrals** — scope `https://api.partner.microsoft.com/.default`. The API wants
//!   App+User credentials (§2.4), so when a refresh token is configured the refresh-token
//!   grant is used (with the client secret too, for a confidential app); without one,
//!   client credentials are used (app-only; the real service may refuse those, the sandbox
//!   does not). The connection's `budget:` applies here: this is where the paid
//!   connector's 10 000 calls a day are spent.
//! - **webhooks** — scope `https://api.partnercenter.microsoft.com/.default`, client
//!   credentials (app-only is documented for it), or the refresh token when no client
//!   secret is configured. It gets its own modest fixed budget ([`webhook_budget`]):
//!   registration is a handful of calls at start-up, and must neither spend nor wait for
//!   the referrals allocation.
//!
//! Every call carries a fresh `client-request-id` (referrals) or `MS-RequestId`
//! (webhooks), and an `MS-CorrelationId` shared by the calls of one logical operation (all
//! pages of a list, both steps of a co-sell create), so a support case can name them.
//!
//! Retries: the core retries what is safe. Creates are POSTs and are never repeated after
//! an ambiguous transport failure; a PATCH is retried only when it carries `If-Match` (a
//! repeat then either applies once or answers 412, never applies twice).

mod filter;
mod model;
mod patch;

use std::collections::VecDeque;

use futures_util::stream::{self, Stream, TryStreamExt as _};
use serde_json::{Value, json};

pub use filter::{Literal, ODataFilter};
pub use model::*;
pub use patch::{PatchKind, PatchOp, diff_to_patch, pointer};

use super::auth::TokenSource;
use super::http::{Reply, Request, Upstream, UpstreamOptions, http_client};
use super::{ConnectorError, Secret, SecretEnv, require_https, resolve_secret};
use crate::config::model::{Budget, PartnerCenterConnection};

/// Referrals API root.
pub const DEFAULT_BASE_URL: &str = "https://api.partner.microsoft.com";
/// Webhook registration API root.
pub const DEFAULT_WEBHOOK_BASE_URL: &str = "https://api.partnercenter.microsoft.com";
/// Entra ID authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Token scope of the referrals API.
pub const REFERRALS_SCOPE: &str = "https://api.partner.microsoft.com/.default";
/// Token scope of the webhook registration API.
pub const WEBHOOKS_SCOPE: &str = "https://api.partnercenter.microsoft.com/.default";
/// Microsoft's organization id in referrals (the co-sell target `{type:
/// BusinessProfileLocation, id: msft}`).
pub const MICROSOFT_ORGANIZATION_ID: &str = "msft";

const REFERRALS_PATH: &str = "/v1.0/engagements/referrals";
const REGISTRATION_PATH: &str = "/webhooks/v1/registration";

/// Characters escaped in an id placed in a URL path.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The webhook registration API's budget: 60 calls a minute, 2 at a time. Registration
/// and validation are a few calls at start-up and on demand; a fixed modest budget keeps
/// a misbehaving loop from hammering it without touching the referrals allocation.
pub fn webhook_budget() -> Budget {
    Budget {
        per_minute: Some(60),
        concurrent: Some(2),
        ..Budget::default()
    }
}

/// Everything the client needs, resolved (no secret references left).
#[derive(Debug, Clone)]
pub struct PartnerCenterSettings {
    /// Referrals API root ([`DEFAULT_BASE_URL`]).
    pub base_url: String,
    /// Webhook registration API root ([`DEFAULT_WEBHOOK_BASE_URL`]).
    pub webhook_base_url: String,
    /// Entra ID authority ([`DEFAULT_AUTHORITY`]); the token endpoint is
    /// `{authority}/{tenant_id}/oauth2/v2.0/token`.
    pub authority: String,
    /// Directory (tenant) id.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Client secret (redacted in `Debug`).
    pub client_secret: Option<Secret>,
    /// Refresh token of a Referral Admin/User (redacted in `Debug`).
    pub refresh_token: Option<Secret>,
    /// Budget of the referrals API (the webhook API uses [`webhook_budget`]).
    pub budget: Budget,
    /// Allow `http://` for the APIs and the authority (local sandbox only).
    pub allow_insecure_http: bool,
    /// Extra CA certificates (PEM) to trust, e.g. the sandbox CA.
    pub trusted_certificates: Vec<String>,
    /// Whole-request timeout of every API call ([`super::http::DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: std::time::Duration,
}

impl PartnerCenterSettings {
    /// Production endpoints for `tenant_id` / `client_id`, no credentials, no budget.
    pub fn new(tenant_id: impl Into<String>, client_id: impl Into<String>) -> Self {
        PartnerCenterSettings {
            base_url: DEFAULT_BASE_URL.to_owned(),
            webhook_base_url: DEFAULT_WEBHOOK_BASE_URL.to_owned(),
            authority: DEFAULT_AUTHORITY.to_owned(),
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret: None,
            refresh_token: None,
            budget: Budget::default(),
            allow_insecure_http: false,
            trusted_certificates: Vec::new(),
            request_timeout: super::http::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// What to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferralQuery {
    /// `$filter` (build it with [`ODataFilter`]).
    pub filter: Option<String>,
    /// `$orderby`: `createdDateTime` or `updatedDateTime`, optionally `desc`.
    pub orderby: Option<String>,
    /// `$top`: page size.
    pub top: Option<u32>,
}

/// The Partner Center client. Cheap to clone; clones share tokens and budgets.
#[derive(Debug, Clone)]
pub struct PartnerCenterClient {
    referrals: Upstream,
    webhooks: Upstream,
}

impl PartnerCenterClient {
    /// A client for `settings`. Refuses `http://` URLs unless `allow_insecure_http`, and
    /// settings without any credential. No network call is made here.
    pub fn new(settings: PartnerCenterSettings) -> Result<Self, ConnectorError> {
        let insecure = settings.allow_insecure_http;
        // The token endpoint receives the client secret: it must be https like the APIs.
        require_https("partner_center authority", &settings.authority, insecure)?;
        require_https("partner_center base URL", &settings.base_url, insecure)?;
        require_https(
            "partner_center webhook base URL",
            &settings.webhook_base_url,
            insecure,
        )?;
        for (what, value) in [
            ("tenant_id", &settings.tenant_id),
            ("client_id", &settings.client_id),
        ] {
            if value.trim().is_empty() {
                return Err(ConnectorError::Config {
                    message: format!("partner_center: auth.{what} is empty"),
                });
            }
        }
        if settings.client_secret.is_none() && settings.refresh_token.is_none() {
            return Err(ConnectorError::Config {
                message: "partner_center: set auth.refresh_token (the referrals API needs app + user credentials) and/or auth.client_secret".to_owned(),
            });
        }

        let mut referrals = UpstreamOptions::new("partner_center", &settings.base_url);
        referrals.allow_insecure_http = insecure;
        referrals.budget = settings.budget.clone();
        referrals.extra_root_certificates = settings.trusted_certificates.clone();
        referrals.request_timeout = settings.request_timeout;
        let mut webhooks =
            UpstreamOptions::new("partner_center_webhooks", &settings.webhook_base_url);
        webhooks.allow_insecure_http = insecure;
        webhooks.budget = webhook_budget();
        webhooks.extra_root_certificates = settings.trusted_certificates.clone();
        webhooks.request_timeout = settings.request_timeout;

        let token = |api: &'static str, scope: &str, user: bool, options: &UpstreamOptions| {
            let http = http_client(options)?;
            let source = match (&settings.refresh_token, &settings.client_secret) {
                (Some(refresh), secret) if user || secret.is_none() => {
                    TokenSource::entra_refresh_token(
                        api,
                        &settings.authority,
                        &settings.tenant_id,
                        &settings.client_id,
                        secret.clone(),
                        refresh.clone(),
                        scope,
                        http,
                    )
                }
                (_, Some(secret)) => TokenSource::entra_client_credentials(
                    api,
                    &settings.authority,
                    &settings.tenant_id,
                    &settings.client_id,
                    secret.clone(),
                    scope,
                    http,
                ),
                (_, None) => {
                    return Err(ConnectorError::Config {
                        message: format!("{api}: no credentials"),
                    });
                }
            };
            Ok::<_, ConnectorError>(source)
        };
        let referral_tokens = token("partner_center", REFERRALS_SCOPE, true, &referrals)?;
        let webhook_tokens = token("partner_center_webhooks", WEBHOOKS_SCOPE, false, &webhooks)?;
        Ok(PartnerCenterClient {
            referrals: Upstream::new(referrals, Some(referral_tokens))?,
            webhooks: Upstream::new(webhooks, Some(webhook_tokens))?,
        })
    }

    /// A client for a mapping file's `connections.partner_center`, resolving its secret
    /// references (and any `${…}` in the other values) through `env`. `trusted` are extra
    /// CA certificates (PEM).
    pub fn from_config(
        connection: &PartnerCenterConnection,
        env: SecretEnv<'_>,
        trusted: &[String],
    ) -> Result<Self, ConnectorError> {
        const FIELD: &str = "connections.partner_center";
        let text =
            |field: &str, value: &str| super::resolve_text(&format!("{FIELD}.{field}"), value, env);
        let auth = &connection.auth;
        let secret = |field: &str, reference: &Option<crate::config::model::SecretRef>| {
            reference
                .as_ref()
                .map(|reference| resolve_secret(&format!("{FIELD}.auth.{field}"), reference, env))
                .transpose()
        };
        let settings = PartnerCenterSettings {
            base_url: text(
                "base_url",
                connection.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
            )?,
            webhook_base_url: text(
                "webhook_base_url",
                connection
                    .webhook_base_url
                    .as_deref()
                    .unwrap_or(DEFAULT_WEBHOOK_BASE_URL),
            )?,
            authority: text(
                "auth.authority",
                auth.authority.as_deref().unwrap_or(DEFAULT_AUTHORITY),
            )?,
            tenant_id: text("auth.tenant_id", &auth.tenant_id)?,
            client_id: text("auth.client_id", &auth.client_id)?,
            client_secret: secret("client_secret", &auth.client_secret)?,
            refresh_token: secret("refresh_token", &auth.refresh_token)?,
            budget: connection.budget.clone(),
            allow_insecure_http: connection.allow_insecure_http,
            trusted_certificates: trusted.to_vec(),
            request_timeout: super::http::request_timeout(connection.timeout_seconds),
        };
        PartnerCenterClient::new(settings)
    }

    /// Makes sure the referrals API token is held or can be obtained, without calling the
    /// API (see [`Upstream::ensure_token`]). Only the referrals API: syncing needs nothing
    /// else, while the webhook registration API is used at set-up and on demand.
    pub async fn ensure_token(&self) -> Result<(), ConnectorError> {
        self.referrals.ensure_token().await
    }

    /// The referrals API upstream (stats, limiter).
    pub fn referrals_upstream(&self) -> &Upstream {
        &self.referrals
    }

    /// The webhook registration API upstream (stats, limiter).
    pub fn webhooks_upstream(&self) -> &Upstream {
        &self.webhooks
    }

    // ---------------------------------------------------------------------------------
    // Referrals
    // ---------------------------------------------------------------------------------

    /// All referrals matching `query`, page after page (`@odata.nextLink` followed
    /// verbatim, on the API's own origin only). Pages are fetched as the stream is read;
    /// after an error the stream ends.
    pub fn list_referrals(
        &self,
        query: ReferralQuery,
    ) -> impl Stream<Item = Result<Referral, ConnectorError>> + Send + 'static {
        let mut first = Request::get("list_referrals", REFERRALS_PATH);
        if let Some(filter) = query.filter {
            first = first.query("$filter", filter);
        }
        if let Some(orderby) = query.orderby {
            first = first.query("$orderby", orderby);
        }
        if let Some(top) = query.top {
            first = first.query("$top", top.to_string());
        }
        struct Pages {
            upstream: Upstream,
            correlation: String,
            next: Option<Request>,
            last_link: Option<String>,
            buffer: VecDeque<Referral>,
        }
        let pages = Pages {
            upstream: self.referrals.clone(),
            correlation: new_guid(),
            next: Some(first),
            last_link: None,
            buffer: VecDeque::new(),
        };
        stream::unfold(pages, |mut pages| async move {
            loop {
                if let Some(referral) = pages.buffer.pop_front() {
                    return Some((Ok(referral), pages));
                }
                let request = pages.next.take()?;
                let page = pages
                    .upstream
                    .send(stamp(request, &pages.correlation))
                    .await
                    .and_then(|reply| reply.json::<ReferralPage>());
                match page {
                    Ok(page) => {
                        if let Some(link) = &page.next_link
                            && pages.last_link.as_ref() == Some(link)
                        {
                            // The same link twice would loop forever.
                            return Some((
                                Err(ConnectorError::Decode {
                                    api: "partner_center",
                                    operation: "list_referrals",
                                    message: "the service returned the same @odata.nextLink twice"
                                        .to_owned(),
                                }),
                                pages,
                            ));
                        }
                        pages.buffer = page.value.into();
                        pages.next = page
                            .next_link
                            .as_ref()
                            .map(|link| Request::follow("list_referrals", link.clone()));
                        pages.last_link = page.next_link;
                    }
                    Err(error) => return Some((Err(error), pages)),
                }
            }
        })
    }

    /// One referral.
    pub async fn get_referral(&self, id: &str) -> Result<Referral, ConnectorError> {
        let path = referral_path("get_referral", id)?;
        let reply = self
            .referrals
            .send(stamp(Request::get("get_referral", path), &new_guid()))
            .await?;
        reply.json()
    }

    /// The referral a webhook event names (its id from `ResourceUri`, never the URL).
    pub async fn get_referral_for_event(
        &self,
        event: &WebhookEvent,
    ) -> Result<Referral, ConnectorError> {
        let id = event.referral_id().ok_or_else(|| ConnectorError::Decode {
            api: "partner_center",
            operation: "get_referral",
            message: "the webhook event names no referral id".to_owned(),
        })?;
        self.get_referral(&id).await
    }

    /// Creates a referral and returns it as stored (outbound referrals land
    /// `Active/Accepted`). Not retried after an ambiguous transport failure.
    pub async fn create_referral(&self, referral: &Referral) -> Result<Referral, ConnectorError> {
        self.create("create_referral", referral, &new_guid()).await
    }

    async fn create(
        &self,
        operation: &'static str,
        referral: &Referral,
        correlation: &str,
    ) -> Result<Referral, ConnectorError> {
        let request = Request::post(operation, REFERRALS_PATH).json(referral);
        let reply = self.referrals.send(stamp(request, correlation)).await?;
        reply.json()
    }

    /// The two-step co-sell creation (§2.7): first `referral` (type `Shared` when unset;
    /// it should target the partner's `SolutionProfile`), then Microsoft's referral on the
    /// same `engagementId`, targeting `[{type: BusinessProfileLocation, id: msft}]`.
    /// `microsoft` is the body of that second referral; `None` reuses `referral`'s
    /// content. Returns (partner's referral, Microsoft-targeted referral).
    ///
    /// If step 2 fails, the error (same kind, so retry decisions still hold) says that the
    /// first referral exists and names its id and engagement, so nothing is orphaned
    /// silently; finish with [`PartnerCenterClient::create_microsoft_referral`].
    pub async fn create_cosell_referral(
        &self,
        referral: &Referral,
        microsoft: Option<&Referral>,
    ) -> Result<(Referral, Referral), ConnectorError> {
        let correlation = new_guid();
        let mut first = referral.clone();
        first.referral_type.get_or_insert(ReferralType::Shared);
        let created = self
            .create("create_cosell_referral", &first, &correlation)
            .await?;
        let id = created.id.clone().unwrap_or_default();
        let Some(engagement) = created.engagement_id.clone().filter(|e| !e.is_empty()) else {
            return Err(ConnectorError::Decode {
                api: "partner_center",
                operation: "create_cosell_referral",
                message: format!(
                    "referral {id} was created but the response has no engagementId, so Microsoft's referral was not created"
                ),
            });
        };
        let second = self
            .create_microsoft_referral_with(
                &engagement,
                microsoft.unwrap_or(referral),
                &correlation,
            )
            .await
            .map_err(|error| {
                annotate(
                    error,
                    &format!(
                        "step 2 of 2 failed: the partner referral {id} (engagement {engagement}) was created, but Microsoft's referral was not; finish with create_microsoft_referral"
                    ),
                )
            })?;
        Ok((created, second))
    }

    /// Step 2 of the co-sell creation on its own: Microsoft's referral in `engagement_id`
    /// (type `Shared`, target `[{type: BusinessProfileLocation, id: msft}]`).
    pub async fn create_microsoft_referral(
        &self,
        engagement_id: &str,
        referral: &Referral,
    ) -> Result<Referral, ConnectorError> {
        self.create_microsoft_referral_with(engagement_id, referral, &new_guid())
            .await
    }

    async fn create_microsoft_referral_with(
        &self,
        engagement_id: &str,
        referral: &Referral,
        correlation: &str,
    ) -> Result<Referral, ConnectorError> {
        let mut body = referral.clone();
        body.engagement_id = Some(engagement_id.to_owned());
        body.referral_type = Some(ReferralType::Shared);
        body.target = Some(vec![Target {
            id: Some(MICROSOFT_ORGANIZATION_ID.to_owned()),
            target_type: Some(TargetType::BusinessProfileLocation),
            ..Target::default()
        }]);
        // Server-assigned identity of a template referral must not leak into the create.
        body.id = None;
        body.e_tag = None;
        body.links = None;
        body.odata_context = None;
        for key in ["id", "eTag", "links", "@odata.context"] {
            body.extra.remove(key);
        }
        self.create("create_microsoft_referral", &body, correlation)
            .await
    }

    /// Applies `ops` (JSON Patch, `replace`/`add`). With `if_match` (the referral's
    /// `eTag`, verbatim) a concurrent change answers [`ConnectorError::PreconditionFailed`]
    /// and the call is safe to retry; without it the last writer wins and an ambiguous
    /// transport failure is not retried. No ops, no call.
    pub async fn patch_referral(
        &self,
        id: &str,
        ops: &[PatchOp],
        if_match: Option<&str>,
    ) -> Result<(), ConnectorError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.send_patch("patch_referral", id, ops, if_match, false)
            .await
            .map(|_| ())
    }

    /// [`PartnerCenterClient::patch_referral`] with `Prefer: return=representation`: the
    /// updated referral (new eTag included). No ops reads the referral instead.
    pub async fn patch_referral_returning(
        &self,
        id: &str,
        ops: &[PatchOp],
        if_match: Option<&str>,
    ) -> Result<Referral, ConnectorError> {
        if ops.is_empty() {
            return self.get_referral(id).await;
        }
        let reply = self
            .send_patch("patch_referral", id, ops, if_match, true)
            .await?;
        if reply.body.iter().all(u8::is_ascii_whitespace) {
            // The preference is a request; a service may still answer 204.
            return self.get_referral(id).await;
        }
        reply.json()
    }

    async fn send_patch(
        &self,
        operation: &'static str,
        id: &str,
        ops: &[PatchOp],
        if_match: Option<&str>,
        representation: bool,
    ) -> Result<Reply, ConnectorError> {
        let path = referral_path(operation, id)?;
        let mut request = Request::patch(operation, path).json(&ops);
        if let Some(etag) = if_match {
            request = request.header("if-match", etag).idempotent(true);
        }
        if representation {
            request = request.header("prefer", "return=representation");
        }
        self.referrals.send(stamp(request, &new_guid())).await
    }

    /// Every referral of an engagement (the partner's, Microsoft's, …): the
    /// `links.relatedReferrals` query, `$filter=engagementId eq '…'`.
    pub async fn related_referrals(
        &self,
        engagement_id: &str,
    ) -> Result<Vec<Referral>, ConnectorError> {
        let query = ReferralQuery {
            filter: Some(ODataFilter::eq("engagementId", engagement_id).into()),
            ..ReferralQuery::default()
        };
        self.list_referrals(query).try_collect().await
    }

    // ---------------------------------------------------------------------------------
    // Webhooks
    // ---------------------------------------------------------------------------------

    fn webhook_request(&self, request: Request) -> Request {
        request
            .header("ms-requestid", new_guid())
            .header("ms-correlationid", new_guid())
    }

    /// The event names one can register for.
    pub async fn webhook_events(&self) -> Result<Vec<String>, ConnectorError> {
        let request = Request::get("webhook_events", format!("{REGISTRATION_PATH}/events"));
        self.webhooks
            .send(self.webhook_request(request))
            .await?
            .json()
    }

    /// The current registration, `None` when there is none.
    pub async fn get_registration(&self) -> Result<Option<WebhookRegistration>, ConnectorError> {
        let request = Request::get("get_registration", REGISTRATION_PATH);
        match self.webhooks.send(self.webhook_request(request)).await {
            Ok(reply) => read_registration(&reply).map(Some),
            Err(ConnectorError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Registers `url` for `events` (POST). When a registration exists the service answers
    /// 409; with `overwrite` (the connector's "overwrite existing trigger endpoints"
    /// option) it is then replaced with PUT, otherwise the 409 is returned.
    /// `signature_in_ms_header` sends the signature in `x-ms-signature` instead of
    /// `Authorization`.
    pub async fn register<S: AsRef<str>>(
        &self,
        url: &str,
        events: &[S],
        signature_in_ms_header: bool,
        overwrite: bool,
    ) -> Result<WebhookRegistration, ConnectorError> {
        let body = registration_body(url, events, signature_in_ms_header);
        let request = Request::post("register_webhook", REGISTRATION_PATH).json(&body);
        match self.webhooks.send(self.webhook_request(request)).await {
            Ok(reply) => read_registration(&reply),
            Err(ConnectorError::Status { status: 409, .. }) if overwrite => {
                tracing::info!("a webhook registration exists; overwriting it");
                self.update_registration(url, events, signature_in_ms_header)
                    .await
            }
            Err(error) => Err(error),
        }
    }

    /// Replaces (or creates) the registration (PUT).
    pub async fn update_registration<S: AsRef<str>>(
        &self,
        url: &str,
        events: &[S],
        signature_in_ms_header: bool,
    ) -> Result<WebhookRegistration, ConnectorError> {
        let body = registration_body(url, events, signature_in_ms_header);
        let request = Request::put("update_webhook_registration", REGISTRATION_PATH).json(&body);
        let reply = self.webhooks.send(self.webhook_request(request)).await?;
        read_registration(&reply)
    }

    /// Asks Partner Center to send a `test-created` event to the registered URL (the
    /// registration must include `test-created`; 2 a minute) and returns its correlation
    /// id for [`PartnerCenterClient::validation_status`].
    pub async fn send_validation_event(&self) -> Result<String, ConnectorError> {
        let request = Request::post(
            "send_validation_event",
            format!("{REGISTRATION_PATH}/validationEvents"),
        );
        let reply = self.webhooks.send(self.webhook_request(request)).await?;
        // The docs show `{"correlationId": …}`, the swagger a bare string.
        let value: Value = reply.json()?;
        let id = match &value {
            Value::String(id) => Some(id.clone()),
            Value::Object(map) => map
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case("correlationId"))
                .and_then(|(_, id)| id.as_str())
                .map(str::to_owned),
            _ => None,
        };
        id.filter(|id| !id.is_empty())
            .ok_or_else(|| ConnectorError::Decode {
                api: "partner_center_webhooks",
                operation: "send_validation_event",
                message: "the answer has no correlationId".to_owned(),
            })
    }

    /// The delivery status of a validation event.
    pub async fn validation_status(
        &self,
        correlation_id: &str,
    ) -> Result<ValidationStatus, ConnectorError> {
        let encoded = percent_encoding::utf8_percent_encode(correlation_id, SEGMENT);
        let request = Request::get(
            "validation_status",
            format!("{REGISTRATION_PATH}/validationEvents/{encoded}"),
        );
        self.webhooks
            .send(self.webhook_request(request))
            .await?
            .json()
    }
}

fn registration_body<S: AsRef<str>>(
    url: &str,
    events: &[S],
    signature_in_ms_header: bool,
) -> Value {
    let events: Vec<&str> = events.iter().map(AsRef::as_ref).collect();
    json!({
        "WebhookUrl": url,
        "WebhookEvents": events,
        "SignatureTokenToMsSignatureHeader": signature_in_ms_header,
    })
}

fn read_registration(reply: &Reply) -> Result<WebhookRegistration, ConnectorError> {
    let map: serde_json::Map<String, Value> = reply.json()?;
    let map = model::canonicalize_keys(map, WebhookRegistration::PROPERTIES);
    serde_json::from_value(Value::Object(map)).map_err(|error| ConnectorError::Decode {
        api: "partner_center_webhooks",
        operation: "webhook_registration",
        message: error.to_string(),
    })
}

/// `/v1.0/engagements/referrals/{id}`, the id percent-encoded. An empty id would address
/// the collection instead, so it is refused.
fn referral_path(operation: &'static str, id: &str) -> Result<String, ConnectorError> {
    if id.trim().is_empty() {
        return Err(ConnectorError::Decode {
            api: "partner_center",
            operation,
            message: "empty referral id".to_owned(),
        });
    }
    Ok(format!(
        "{REFERRALS_PATH}/{}",
        percent_encoding::utf8_percent_encode(id, SEGMENT)
    ))
}

/// The per-call headers of the referrals API (§2.5).
fn stamp(request: Request, correlation: &str) -> Request {
    request
        .header("client-request-id", new_guid())
        .header("ms-correlationid", correlation)
}

/// Prefixes `note` to the error's message, keeping its kind (so `is_transient` and
/// `retry_after` still answer for the underlying failure).
fn annotate(error: ConnectorError, note: &str) -> ConnectorError {
    match error {
        ConnectorError::Status {
            api,
            operation,
            status,
            code,
            message,
        } => ConnectorError::Status {
            api,
            operation,
            status,
            code,
            message: format!("{note}: {message}"),
        },
        ConnectorError::NotFound {
            api,
            operation,
            code,
            message,
        } => ConnectorError::NotFound {
            api,
            operation,
            code,
            message: format!("{note}: {message}"),
        },
        ConnectorError::PreconditionFailed { api, operation } => ConnectorError::Status {
            api,
            operation,
            status: 412,
            code: Some("preconditionFailed".to_owned()),
            message: note.to_owned(),
        },
        ConnectorError::BudgetExhausted {
            api,
            operation,
            message,
        } => ConnectorError::BudgetExhausted {
            api,
            operation,
            message: format!("{note}: {message}"),
        },
        ConnectorError::RetriesExhausted {
            api,
            operation,
            attempts,
            last,
        } => ConnectorError::RetriesExhausted {
            api,
            operation,
            attempts,
            last: format!("{note}: {last}"),
        },
        ConnectorError::Transport {
            api,
            operation,
            message,
        } => ConnectorError::Transport {
            api,
            operation,
            message: format!("{note}: {message}"),
        },
        ConnectorError::Auth { api, message } => ConnectorError::Auth {
            api,
            message: format!("{note}: {message}"),
        },
        ConnectorError::Config { message } => ConnectorError::Config {
            message: format!("{note}: {message}"),
        },
        ConnectorError::Decode {
            api,
            operation,
            message,
        } => ConnectorError::Decode {
            api,
            operation,
            message: format!("{note}: {message}"),
        },
    }
}

/// The referral id of a webhook event's `ResourceUri`: its last non-empty path segment
/// (query and fragment stripped, percent-decoded), if it looks like an id — non-empty,
/// ASCII letters, digits, `-`, `_` or `.` only, not `.`/`..`, and not the collection name
/// `referrals`. The URL itself is never called: its documented host and path differ from
/// the REST API's (§3.1).
pub fn referral_id_from_resource_uri(uri: &str) -> Option<String> {
    let uri = uri.trim();
    let uri = uri.split(['?', '#']).next().unwrap_or_default();
    let path = match uri.split_once("://") {
        Some((_, rest)) => &rest[rest.find('/')?..],
        None => uri,
    };
    let segment = path.split('/').rev().find(|s| !s.is_empty())?;
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()?;
    let looks_like_id = !decoded.is_empty()
        && decoded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && decoded != "."
        && decoded != ".."
        && !decoded.eq_ignore_ascii_case("referrals");
    looks_like_id.then(|| decoded.into_owned())
}

/// A random (version 4) GUID for `client-request-id` and `MS-CorrelationId`.
pub fn new_guid() -> String {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // The system RNG failing is near impossible; a per-process random hasher over the
        // time and a counter still gives unique request ids (they are not secrets).
        use std::hash::{BuildHasher as _, Hasher as _};
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let state = std::collections::hash_map::RandomState::new();
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut hasher = state.build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            hasher.write_usize(i);
            chunk.copy_from_slice(&hasher.finish().to_le_bytes());
        }
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referral_ids_come_from_the_last_segment() {
        let id = "c5fbb3b6-be74-4795-9fb5-4324c73fed37";
        for uri in [
            format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{id}"),
            format!("https://api.partner.microsoft.com/v1.0/engagements/referrals/{id}/"),
            format!("http://127.0.0.1:8080/engagements/v1/referrals/{id}?x=1#frag"),
            format!("/engagements/v1/referrals/{id}"),
            format!("  https://evil.example/anything/{id}  "),
        ] {
            assert_eq!(
                referral_id_from_resource_uri(&uri).as_deref(),
                Some(id),
                "{uri}"
            );
        }
        assert_eq!(
            referral_id_from_resource_uri("https://h/referrals/abc%2Ddef").as_deref(),
            Some("abc-def")
        );
        for odd in [
            "",
            "https://api.partnercenter.microsoft.com",
            "https://api.partnercenter.microsoft.com/",
            "https://h/engagements/v1/referrals/",
            "https://h/engagements/v1/referrals/?id=abc",
            "https://h/referrals/has%20space",
            "https://h/referrals/a b",
            "https://h/referrals/..",
            "https://h/referrals/%FF",
            "https://h/referrals/x'or'1",
        ] {
            assert_eq!(referral_id_from_resource_uri(odd), None, "{odd}");
        }
    }

    #[test]
    fn guids_are_fresh_version_4() {
        let a = new_guid();
        let b = new_guid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert!(a.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
    }

    #[test]
    fn settings_never_show_secrets() {
        let mut settings = PartnerCenterSettings::new("t", "c");
        settings.client_secret = Some(Secret::new("canary-secret"));
        settings.refresh_token = Some(Secret::new("canary-refresh"));
        let debug = format!("{settings:?}");
        assert!(!debug.contains("canary"), "{debug}");
        let client = PartnerCenterClient::new(settings).unwrap();
        assert!(!format!("{client:?}").contains("canary"));
    }

    #[test]
    fn unusable_settings_are_config_errors() {
        let mut settings = PartnerCenterSettings::new("t", "c");
        assert!(matches!(
            PartnerCenterClient::new(settings.clone()),
            Err(ConnectorError::Config { .. })
        ));
        settings.client_secret = Some(Secret::new("s"));
        settings.authority = "http://login.example".into();
        let error = PartnerCenterClient::new(settings.clone()).unwrap_err();
        assert!(error.to_string().contains("authority"), "{error}");
        settings.authority = DEFAULT_AUTHORITY.into();
        settings.tenant_id = " ".into();
        assert!(matches!(
            PartnerCenterClient::new(settings),
            Err(ConnectorError::Config { .. })
        ));
    }

    #[test]
    fn annotations_keep_the_kind() {
        let error = annotate(
            ConnectorError::RetriesExhausted {
                api: "partner_center",
                operation: "x",
                attempts: 8,
                last: "HTTP 503".into(),
            },
            "step 2 of 2 failed: the partner referral r1",
        );
        assert!(error.is_transient());
        assert!(error.to_string().contains("r1"));
        let error = annotate(
            ConnectorError::PreconditionFailed {
                api: "partner_center",
                operation: "x",
            },
            "note r2",
        );
        assert_eq!(error.status(), Some(412));
        assert!(error.to_string().contains("r2"));
    }
}
