//! The CRM as the engine sees it: one port over the Dataverse and Salesforce clients, so
//! flows never branch on the CRM (the mapping file already names tables and fields).

use futures_util::StreamExt as _;
use serde_json::{Map, Value};

use crate::connectors::ConnectorError;
use crate::connectors::dataverse::{DataverseClient, QueryOptions, odata_string};
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
