//! The CRM as the engine sees it: one port over the Dataverse and Salesforce clients, so
//! flows never branch on the CRM (the mapping file already names tables and fields).

use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value};

use crate::connectors::ConnectorError;
use crate::connectors::dataverse::{AlternateKey, DataverseClient, QueryOptions, odata_string};
use crate::connectors::salesforce::SalesforceClient;
use crate::connectors::salesforce::soql::{Order, Soql, SoqlValue};

/// A connected CRM.
#[derive(Debug, Clone)]
pub enum Crm {
    /// Dynamics 365 / Dataverse: entities are entity sets (`accounts`).
    Dataverse(DataverseClient),
    /// Salesforce: entities are sObjects (`Account`).
    Salesforce(SalesforceClient),
}

impl Crm {
    /// The id of a record of `entity` whose every `criteria` field equals the given value
    /// (text compared ignoring case, as both CRMs' default collations do), or `None`. When
    /// several match, the first by id is taken so the choice is stable across runs.
    pub async fn find(
        &self,
        entity: &str,
        id_field: &str,
        criteria: &Map<String, Value>,
    ) -> Result<Option<String>, ConnectorError> {
        match self {
            Crm::Dataverse(client) => {
                let mut conditions = Vec::new();
                for (field, value) in criteria {
                    conditions.push(format!("{field} eq {}", odata_literal(field, value)?));
                }
                let options = QueryOptions {
                    select: vec![id_field.to_owned()],
                    filter: (!conditions.is_empty()).then(|| conditions.join(" and ")),
                    orderby: Some(format!("{id_field} asc")),
                    top: Some(1),
                    page_size: Some(1),
                    expand: None,
                };
                let mut rows = Box::pin(client.query(entity, options));
                match rows.next().await {
                    Some(row) => {
                        let row = row?;
                        Ok(row
                            .fields
                            .get(id_field)
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .or(row.id))
                    }
                    None => Ok(None),
                }
            }
            Crm::Salesforce(client) => {
                let mut soql = Soql::select(&[id_field]).from(entity);
                for (field, value) in criteria {
                    soql = soql.where_eq(field, soql_literal(field, value)?);
                }
                let query = soql.order_by(id_field, Order::Asc).limit(1).build()?;
                let mut records = Box::pin(client.query(&query));
                match records.next().await {
                    Some(record) => Ok(record?
                        .get(id_field)
                        .and_then(Value::as_str)
                        .map(str::to_owned)),
                    None => Ok(None),
                }
            }
        }
    }

    /// A record with the given fields (all fields when empty), and the version to pass to
    /// [`Crm::update`] for a conditional write; `None` when it does not exist (or was deleted).
    pub async fn get(
        &self,
        entity: &str,
        id: &str,
        fields: &[&str],
    ) -> Result<Option<Versioned>, ConnectorError> {
        match self {
            Crm::Dataverse(client) => {
                Ok(client
                    .retrieve(entity, id, fields)
                    .await?
                    .map(|row| Versioned {
                        version: row.etag.clone(),
                        fields: row.fields,
                    }))
            }
            Crm::Salesforce(client) => {
                let mut wanted: Vec<&str> = fields.to_vec();
                if !wanted.is_empty() && !wanted.contains(&"LastModifiedDate") {
                    wanted.push("LastModifiedDate");
                }
                match client.get(entity, id, &wanted).await {
                    Ok(record) => Ok(record.map(|fields| Versioned {
                        version: fields
                            .get("LastModifiedDate")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        fields,
                    })),
                    Err(error) if crate::connectors::salesforce::is_entity_deleted(&error) => {
                        Ok(None)
                    }
                    Err(error) => Err(error),
                }
            }
        }
    }

    /// Writes `fields` to an existing record. With `version` (from [`Crm::get`]) the write
    /// only happens if nobody changed the record since — Dataverse by eTag (`If-Match`),
    /// Salesforce by `If-Unmodified-Since` — else [`ConnectorError::PreconditionFailed`].
    pub async fn update(
        &self,
        entity: &str,
        id: &str,
        fields: &Map<String, Value>,
        version: Option<&str>,
    ) -> Result<(), ConnectorError> {
        match (self, version) {
            (Crm::Dataverse(client), version) => client.update(entity, id, fields, version).await,
            (Crm::Salesforce(client), Some(since)) => {
                client.update_if_unmodified(entity, id, fields, since).await
            }
            (Crm::Salesforce(client), None) => client.update(entity, id, fields).await,
        }
    }

    /// Creates or updates the record whose key column (the referral id: Dataverse alternate
    /// key `cosell_referralid`, Salesforce External ID `Referral_Id__c`) holds `value`. This
    /// is what makes a crash between "write the CRM" and "remember the link" harmless: the
    /// retry updates the record it created instead of creating a second one.
    pub async fn upsert_by_key(
        &self,
        entity: &str,
        key_field: &str,
        value: &str,
        fields: &Map<String, Value>,
    ) -> Result<Upserted, ConnectorError> {
        match self {
            Crm::Dataverse(client) => {
                let outcome = client
                    .upsert(entity, &AlternateKey::new(key_field, value), fields)
                    .await?;
                Ok(Upserted {
                    id: outcome.id,
                    created: outcome.created,
                })
            }
            Crm::Salesforce(client) => {
                let outcome = client.upsert(entity, key_field, value, fields).await?;
                Ok(Upserted {
                    id: Some(outcome.id),
                    created: Some(outcome.created),
                })
            }
        }
    }

    /// Records of `entity` changed after `since` (an RFC 3339 time), oldest change first —
    /// Dataverse by `modifiedon`, Salesforce by `SystemModstamp`. Both have whole-second
    /// precision: keep the watermark a little behind and skip versions already synced.
    pub fn changed_since(
        &self,
        entity: &str,
        fields: &[&str],
        since: &str,
    ) -> Result<Changes, ConnectorError> {
        match self {
            Crm::Dataverse(client) => Ok(client
                .changes_since(entity, since, fields)
                .map(|row| row.map(|row| row.fields))
                .boxed()),
            Crm::Salesforce(client) => Ok(client.changed_since(entity, fields, since)?.boxed()),
        }
    }

    /// Creates a record of `entity` and returns its id.
    pub async fn create(
        &self,
        entity: &str,
        fields: &Map<String, Value>,
    ) -> Result<String, ConnectorError> {
        match self {
            Crm::Dataverse(client) => client.create(entity, fields).await,
            Crm::Salesforce(client) => client.create(entity, fields).await,
        }
    }
}

/// Changed records, oldest change first (see [`Crm::changed_since`]).
pub type Changes = BoxStream<'static, Result<Map<String, Value>, ConnectorError>>;

/// A record as read, with the version a conditional update compares against.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// Dataverse: the `@odata.etag`; Salesforce: `LastModifiedDate`.
    pub version: Option<String>,
    /// The fields (Dataverse lookups as `_x_value`).
    pub fields: Map<String, Value>,
}

/// What an upsert by key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upserted {
    /// The record's id, when the service said (Dataverse's plain upsert usually does not).
    pub id: Option<String>,
    /// Created rather than updated, when the service said.
    pub created: Option<bool>,
}

fn unsupported(field: &str, value: &Value) -> ConnectorError {
    ConnectorError::Config {
        message: format!(
            "lookup criterion `{field}` has a value that cannot be matched: {value} (use text, a number or a boolean)"
        ),
    }
}

/// A criterion value as an OData literal. Text is quoted (a GUID stays text: Dataverse
/// compares `_x_value` columns with quoted GUIDs too).
fn odata_literal(field: &str, value: &Value) -> Result<String, ConnectorError> {
    Ok(match value {
        Value::String(text) => odata_string(text.trim()),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "null".to_owned(),
        other => return Err(unsupported(field, other)),
    })
}

fn soql_literal(field: &str, value: &Value) -> Result<SoqlValue, ConnectorError> {
    Ok(match value {
        Value::String(text) => SoqlValue::text(text.trim()),
        Value::Number(number) => match number.as_i64() {
            Some(int) => SoqlValue::int(int),
            None => SoqlValue::decimal(number.as_f64().unwrap_or_default())?,
        },
        Value::Bool(flag) => SoqlValue::bool(*flag),
        Value::Null => SoqlValue::null(),
        other => return Err(unsupported(field, other)),
    })
}
