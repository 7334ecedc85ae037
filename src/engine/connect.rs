//! Building the engine's clients: from a mapping file's `connections:` (production), or
//! pointed at a sandbox (every API on one base URL, the sandbox's well-known credentials).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use serde_json::{Map, Value, json};

use super::crm::Crm;
use crate::config::model::{Budget, Config, CrmKind};
use crate::connectors::dataverse::{DataverseClient, DataverseSettings};
use crate::connectors::http::{DEFAULT_REQUEST_TIMEOUT, request_timeout};
use crate::connectors::partner_center::{PartnerCenterClient, PartnerCenterSettings};
use crate::connectors::salesforce::{SalesforceAuth, SalesforceClient, SalesforceSettings};
use crate::connectors::{Secret, SecretEnv};
use crate::server::verify::{WebhookTrust, WebhookVerifier, parse_certificates};

/// The sandbox's client id and secret (see `cosell sandbox --help`).
pub const SANDBOX_CLIENT_ID: &str = "cosell-sandbox";
const SANDBOX_SECRET: &str = "sandbox-secret";
const SANDBOX_REFRESH_TOKEN: &str = "sandbox-refresh-token";

/// Per-call timeouts of the clients: the mapping's `timeout_seconds`, also honoured
/// against a sandbox (so a fault-injection run can make a hung call time out quickly).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Partner Center (referrals and webhook registration).
    pub partner_center: Duration,
    /// The CRM.
    pub crm: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            partner_center: DEFAULT_REQUEST_TIMEOUT,
            crm: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl Timeouts {
    /// The timeouts `config`'s connections set.
    pub fn of(config: &Config) -> Timeouts {
        let connections = &config.connections;
        Timeouts {
            partner_center: request_timeout(
                connections
                    .partner_center
                    .as_ref()
                    .and_then(|c| c.timeout_seconds),
            ),
            crm: request_timeout(connections.crm.as_ref().and_then(|c| c.timeout_seconds)),
        }
    }
}

/// Partner Center and CRM clients for a sandbox at `base_url` (`ca_pem`: its CA, for
/// `https://` sandboxes).
pub fn sandbox_clients(
    crm: CrmKind,
    base_url: &str,
    ca_pem: Option<&str>,
) -> anyhow::Result<(PartnerCenterClient, Crm)> {
    sandbox_clients_with(crm, base_url, ca_pem, Timeouts::default())
}

/// [`sandbox_clients`] with the per-call timeouts of a mapping.
pub fn sandbox_clients_with(
    crm: CrmKind,
    base_url: &str,
    ca_pem: Option<&str>,
    timeouts: Timeouts,
) -> anyhow::Result<(PartnerCenterClient, Crm)> {
    let trusted: Vec<String> = ca_pem.map(str::to_owned).into_iter().collect();
    let pc = PartnerCenterClient::new(PartnerCenterSettings {
        base_url: base_url.to_owned(),
        webhook_base_url: base_url.to_owned(),
        authority: base_url.to_owned(),
        tenant_id: "contoso.onmicrosoft.com".to_owned(),
        client_id: SANDBOX_CLIENT_ID.to_owned(),
        client_secret: Some(Secret::new(SANDBOX_SECRET)),
        refresh_token: Some(Secret::new(SANDBOX_REFRESH_TOKEN)),
        budget: Budget {
            concurrent: Some(8),
            ..Budget::default()
        },
        allow_insecure_http: true,
        trusted_certificates: trusted.clone(),
        request_timeout: timeouts.partner_center,
    })?;
    let crm = match crm {
        CrmKind::Dynamics365 => {
            let mut settings = DataverseSettings::new(
                base_url,
                "contoso",
                SANDBOX_CLIENT_ID,
                Secret::new(SANDBOX_SECRET),
            );
            settings.authority = base_url.to_owned();
            settings.allow_insecure_http = true;
            settings.trusted_certificates = trusted;
            settings.budget = Budget {
                concurrent: Some(16),
                ..Budget::default()
            };
            settings.request_timeout = timeouts.crm;
            Crm::Dataverse(DataverseClient::new(settings)?)
        }
        CrmKind::Salesforce => {
            let mut settings = SalesforceSettings::new(
                base_url,
                SalesforceAuth::ClientCredentials {
                    client_id: SANDBOX_CLIENT_ID.into(),
                    client_secret: Secret::new(SANDBOX_SECRET),
                },
            );
            settings.allow_insecure_http = true;
            settings.trusted_certificates = trusted;
            settings.budget = Budget {
                concurrent: Some(8),
                ..Budget::default()
            };
            settings.request_timeout = timeouts.crm;
            Crm::Salesforce(SalesforceClient::new(settings)?)
        }
    };
    Ok((pc, crm))
}

/// Partner Center and CRM clients from a mapping file's `connections:`.
pub fn configured_clients(
    config: &Config,
    env: SecretEnv<'_>,
) -> anyhow::Result<(PartnerCenterClient, Crm)> {
    let pc_conn = config.connections.partner_center.as_ref().ok_or_else(|| {
        anyhow!(
            "the mapping has no `connections.partner_center`; add one (README: \"Connecting to production\") or use --sandbox"
        )
    })?;
    let crm_conn = config.connections.crm.as_ref().ok_or_else(|| {
        anyhow!(
            "the mapping has no `connections.crm`; add one (README: \"Connecting to production\") or use --sandbox"
        )
    })?;
    let pc = PartnerCenterClient::from_config(pc_conn, env, &[])
        .context("connections.partner_center")?;
    let crm = match config.crm {
        CrmKind::Dynamics365 => Crm::Dataverse(
            DataverseClient::from_config(crm_conn, env, &[]).context("connections.crm")?,
        ),
        CrmKind::Salesforce => Crm::Salesforce(
            SalesforceClient::from_config(crm_conn, env, &[]).context("connections.crm")?,
        ),
    };
    Ok((pc, crm))
}

/// A webhook verifier trusting the sandbox CA for certificates the sandbox serves over
/// plain HTTP on loopback — what `run --sandbox` uses. Production trust comes from
/// `connections.webhooks` instead.
pub fn sandbox_verifier(base_url: &str, ca_pem: &str) -> anyhow::Result<Arc<WebhookVerifier>> {
    let anchors = parse_certificates(ca_pem.as_bytes()).map_err(|e| anyhow!("sandbox CA: {e}"))?;
    // The sandbox's own host:port is the only place its certificate may come from.
    let host = base_url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    let mut trust = WebhookTrust::new(anchors, vec![host]);
    trust.allow_insecure_certificate_url = true;
    Ok(Arc::new(WebhookVerifier::new(trust)?))
}

/// Marks `count` of the sandbox CRM's seeded opportunities as a seller would for co-sell:
/// sync flag on, Microsoft's help requested, a solution attached — so `run --sandbox` has
/// CRM → Partner Center work too. Uses the connector's default column names, which the
/// sandbox schemas carry.
pub async fn flag_sandbox_opportunities(crm: &Crm, count: usize) -> anyhow::Result<usize> {
    use futures_util::TryStreamExt as _;
    let mut flagged = 0;
    match crm {
        Crm::Dataverse(client) => {
            let options = crate::connectors::dataverse::QueryOptions {
                select: vec!["opportunityid".into(), "name".into()],
                filter: Some(
                    "cosell_referralid eq null and cosell_synctopartnercenter ne true".into(),
                ),
                orderby: Some("opportunityid asc".into()),
                top: Some(u32::try_from(count).unwrap_or(3)),
                page_size: None,
                expand: None,
            };
            let rows: Vec<_> = client.query("opportunities", options).try_collect().await?;
            for (index, row) in rows.iter().enumerate() {
                let Some(id) = row.id.clone() else { continue };
                let solution = object(json!({
                    "cosell_name": "Contoso Cloud Migration",
                    "cosell_pcsolutionid": "SOL-34104-EBB",
                    "cosell_opportunityid@odata.bind": format!("/opportunities({id})"),
                }));
                client.create("cosell_solutions", &solution).await?;
                let update = object(json!({
                    "cosell_synctopartnercenter": true,
                    "cosell_microsofthelp": 100_000_000 + (index % 3),
                }));
                client.update("opportunities", &id, &update, None).await?;
                flagged += 1;
            }
        }
        Crm::Salesforce(client) => {
            let query = format!(
                "SELECT Id FROM Opportunity WHERE Referral_Id__c = null AND Sync_With_Partner_Center__c = false AND IsClosed = false AND ContactId != null LIMIT {count}"
            );
            let rows: Vec<_> = client.query(&query).try_collect().await?;
            for row in rows {
                let Some(id) = row.get("Id").and_then(Value::as_str) else {
                    continue;
                };
                let solution = object(json!({
                    "Name": "Contoso Cloud Migration",
                    "Solution_Id__c": "SOL-34104-EBB",
                    "Opportunity__c": id,
                }));
                client.create("Microsoft_Solution__c", &solution).await?;
                let update = object(json!({
                    "Sync_With_Partner_Center__c": true,
                    "Microsoft_Help__c": "GeneralOrOther",
                    "StageName": "Prospecting",
                }));
                client.update("Opportunity", id, &update).await?;
                flagged += 1;
            }
        }
    }
    Ok(flagged)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
