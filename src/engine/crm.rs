//! The CRM as the engine sees it: one port over the Dataverse and Salesforce clients, so
//! flows never branch on the CRM (the mapping file already names tables and fields).

use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value};

use crate::connectors::ConnectorError;
use crate::connectors::dataverse::{
    self, AlternateKey, BatchPart, BatchRequest, DataverseClient, QueryOptions, batch_failure,
    odata_string,
};
use crate::connectors::salesforce::soql::{self, Order, Soql, SoqlValue};
use crate::connectors::salesforce::{self, CompositeRequest, SalesforceClient, composite_failure};

/// A connected CRM.
#[derive(Debug, Clone)]
pub enum Crm {
    /// Dynamics 365 / Dataverse: entities are entity sets (`accounts`).
    Dataverse(DataverseClient),
    /// Salesforce: entities are sObjects (`Account`).
    Salesforce(SalesforceClient),
}

impl Crm {
    /// The connector's upstream (budget, counters, token).
    pub fn upstream(&self) -> &crate::connectors::http::Upstream {
        match self {
            Crm::Dataverse(client) => client.upstream(),
            Crm::Salesforce(client) => client.upstream(),
        }
    }

    /// Makes sure the CRM's access token is held or can be obtained, without calling the
    /// API (see [`crate::connectors::http::Upstream::ensure_token`]).
    pub async fn ensure_token(&self) -> Result<(), ConnectorError> {
        self.upstream().ensure_token().await
    }

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
                let options = find_options(id_field, criteria)?;
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
                let query = find_soql(entity, id_field, criteria)?;
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
            // The row's eTag goes along: `modifiedon` has whole seconds, so two changes in
            // one second share it, and only the eTag (the row version) tells them apart.
            Crm::Dataverse(client) => Ok(client
                .changes_since(entity, since, fields)
                .map(|row| {
                    row.map(|row| {
                        let mut fields = row.fields;
                        if let Some(etag) = row.etag {
                            fields.insert("@odata.etag".into(), Value::String(etag));
                        }
                        fields
                    })
                })
                .boxed()),
            Crm::Salesforce(client) => Ok(client.changed_since(entity, fields, since)?.boxed()),
        }
    }

    /// Like [`Crm::upsert_by_key`], but always says whether the record was created and
    /// returns its id (Dataverse: `Prefer: return=representation` selecting only the id), in
    /// the same single call.
    pub async fn upsert_by_key_returning(
        &self,
        entity: &str,
        id_field: &str,
        key_field: &str,
        value: &str,
        fields: &Map<String, Value>,
    ) -> Result<Upserted, ConnectorError> {
        match self {
            Crm::Dataverse(client) => {
                let outcome = client
                    .upsert_returning(
                        entity,
                        &AlternateKey::new(key_field, value),
                        fields,
                        &[id_field],
                    )
                    .await?;
                let id = outcome.id.or_else(|| {
                    outcome
                        .row
                        .as_ref()
                        .and_then(|row| row.fields.get(id_field))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
                Ok(Upserted {
                    id,
                    created: outcome.created,
                })
            }
            Crm::Salesforce(_) => self.upsert_by_key(entity, key_field, value, fields).await,
        }
    }

    /// The column holding a record's last-modified time (`modifiedon` /
    /// `LastModifiedDate`), for newest-wins conflict resolution and change polling.
    pub fn modified_field(&self) -> &'static str {
        match self {
            Crm::Dataverse(_) => "modifiedon",
            Crm::Salesforce(_) => "SystemModstamp",
        }
    }

    /// One record with its related records nested the way the mapping reads them: each
    /// `expand` entry (relationship → columns) becomes `$expand` on Dataverse; on
    /// Salesforce a parent relationship becomes `Rel.Column` fields and a child relationship
    /// (per `child_relationships`) a sub-query, so `$.Microsoft_Solutions__r.records` works
    /// as in Salesforce's own answers. `fields` lists the record's own columns (Salesforce
    /// has no `SELECT *`; Dataverse reads all columns when empty). `None`: no such record.
    pub async fn read_expanded(
        &self,
        entity: &str,
        id_field: &str,
        id: &str,
        fields: &[String],
        expand: &std::collections::BTreeMap<String, Vec<String>>,
        child_relationships: &[String],
    ) -> Result<Option<Versioned>, ConnectorError> {
        match self {
            Crm::Dataverse(client) => {
                let expand = expand
                    .iter()
                    .map(|(relationship, columns)| {
                        if columns.is_empty() {
                            relationship.clone()
                        } else {
                            format!("{relationship}($select={})", columns.join(","))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                // A GUID literal is unquoted in OData; anything else is refused before it
                // reaches the filter.
                if !is_guid(id) {
                    return Ok(None);
                }
                let options = QueryOptions {
                    select: fields.to_vec(),
                    filter: Some(format!("{id_field} eq {id}")),
                    orderby: None,
                    top: Some(1),
                    page_size: Some(1),
                    expand: (!expand.is_empty()).then_some(expand),
                };
                let mut rows = Box::pin(client.query(entity, options));
                match rows.next().await {
                    Some(row) => {
                        let row = row?;
                        let mut fields = row.fields;
                        if let Some(id) = row.id {
                            fields
                                .entry(id_field.to_owned())
                                .or_insert(Value::String(id));
                        }
                        Ok(Some(Versioned {
                            version: row.etag,
                            fields,
                        }))
                    }
                    None => Ok(None),
                }
            }
            Crm::Salesforce(client) => {
                let mut select: Vec<String> = Vec::new();
                let push = |name: String, select: &mut Vec<String>| {
                    if !select.iter().any(|s| s.eq_ignore_ascii_case(&name)) {
                        select.push(name);
                    }
                };
                push(id_field.to_owned(), &mut select);
                for field in fields {
                    push(field.clone(), &mut select);
                }
                for (relationship, columns) in expand {
                    if child_relationships.iter().any(|c| c == relationship) {
                        let mut inner = vec!["Id".to_owned()];
                        for column in columns {
                            if !inner.iter().any(|s| s.eq_ignore_ascii_case(column)) {
                                inner.push(column.clone());
                            }
                        }
                        push(
                            format!("(SELECT {} FROM {relationship})", inner.join(", ")),
                            &mut select,
                        );
                    } else {
                        for column in columns {
                            push(format!("{relationship}.{column}"), &mut select);
                        }
                    }
                }
                for name in &select {
                    if !name.starts_with('(') && !name.split('.').all(soql::is_identifier) {
                        return Err(ConnectorError::Config {
                            message: format!("`{name}` is not a Salesforce field name"),
                        });
                    }
                }
                let query = format!(
                    "SELECT {} FROM {entity} WHERE {id_field} = {} LIMIT 1",
                    select.join(", "),
                    soql::quote(id)
                );
                if !soql::is_identifier(entity) || !soql::is_identifier(id_field) {
                    return Err(ConnectorError::Config {
                        message: format!("`{entity}.{id_field}` is not a Salesforce name"),
                    });
                }
                let mut records = Box::pin(client.query(&query));
                match records.next().await {
                    Some(record) => {
                        let mut record = record?;
                        record.remove("attributes");
                        Ok(Some(Versioned {
                            version: record
                                .get("LastModifiedDate")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                            fields: record,
                        }))
                    }
                    None => Ok(None),
                }
            }
        }
    }

    /// Deletes a record; one that is already gone counts as deleted.
    pub async fn delete(&self, entity: &str, id: &str) -> Result<(), ConnectorError> {
        match self {
            Crm::Dataverse(client) => client.delete(entity, id, None).await.map(drop),
            Crm::Salesforce(client) => client.delete(entity, id).await,
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

/// Whether `text` is a GUID (8-4-4-4-12 hex digits).
pub fn is_guid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(part, len)| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ---------------------------------------------------------------------------------------------
// Several lookups in one round trip; several writes as one unit
// ---------------------------------------------------------------------------------------------

/// One search of [`Crm::find_all`]: the id of the first record of `entity` whose columns
/// equal `criteria` (as [`Crm::find`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Find {
    /// Table / object.
    pub entity: String,
    /// Its primary key column.
    pub id_field: String,
    /// Column → value; all must match.
    pub criteria: Map<String, Value>,
}

/// One write of a [`WriteSet`].
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new record.
    Create {
        /// Table / object.
        entity: String,
        /// Its fields.
        fields: Map<String, Value>,
    },
    /// Create or update the record whose key column holds `key` (see [`Crm::upsert_by_key`]).
    Upsert {
        /// Table / object.
        entity: String,
        /// Its primary key column (the id is returned).
        id_field: String,
        /// The alternate key / External ID column.
        key_field: String,
        /// Its value.
        key: String,
        /// The fields to write.
        fields: Map<String, Value>,
    },
}

impl Write {
    /// The table / object written.
    pub fn entity(&self) -> &str {
        let (Write::Create { entity, .. } | Write::Upsert { entity, .. }) = self;
        entity
    }

    /// The fields written (references unresolved).
    pub fn fields(&self) -> &Map<String, Value> {
        let (Write::Create { fields, .. } | Write::Upsert { fields, .. }) = self;
        fields
    }

    /// Whether a value holds `@{`, which a Salesforce Composite call would take for a
    /// reference to another subrequest: such a set is written one call at a time.
    fn mentions_composite_reference(&self) -> bool {
        fn mentions(value: &Value) -> bool {
            match value {
                Value::String(text) => text.contains("@{"),
                Value::Array(items) => items.iter().any(mentions),
                Value::Object(map) => map.values().any(mentions),
                _ => false,
            }
        }
        let (Write::Create { fields, .. } | Write::Upsert { fields, .. }) = self;
        fields.values().any(mentions)
            || matches!(self, Write::Upsert { key, .. } if key.contains("@{"))
    }

    fn fields_mut(&mut self) -> &mut Map<String, Value> {
        match self {
            Write::Create { fields, .. } | Write::Upsert { fields, .. } => fields,
        }
    }
}

/// Writes that belong together — a referral's new account and contact, its opportunity,
/// the opportunity's solutions — sent as one unit. A field value may name the id of an
/// earlier write of the same set through [`WriteSet::reference`] (inside any text, e.g. a
/// Dataverse bind `/accounts(…)`), since that id does not exist before the set runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteSet {
    writes: Vec<Write>,
}

/// The outcome of one write of a [`WriteSet`], in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The record's id.
    pub id: String,
    /// Created rather than updated.
    pub created: bool,
}

/// Marks a reference in a field value: `\u{1}cosell-write-N\u{1}`. Control characters
/// cannot come from a referral's text through the mapping (they are not valid in CRM
/// text fields the mapping writes), so the marker is unambiguous.
const REFERENCE_MARK: char = '\u{1}';

impl WriteSet {
    /// Adds a write; its index, for [`WriteSet::reference`].
    pub fn push(&mut self, write: Write) -> usize {
        self.writes.push(write);
        self.writes.len() - 1
    }

    /// The text standing for the id of write `index` until the set runs.
    pub fn reference(index: usize) -> String {
        format!("{REFERENCE_MARK}cosell-write-{index}{REFERENCE_MARK}")
    }

    /// Whether no write was added.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The writes, in order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Replaces the references in `fields` with the ids the writes got (for audit
    /// entries and snapshots after [`Crm::apply`]).
    pub fn resolve(fields: &mut Map<String, Value>, applied: &[Applied]) {
        for value in fields.values_mut() {
            Self::replace_references(value, &|i| applied.get(i).map(|a| a.id.clone()));
        }
    }

    /// Replaces every reference in `value` with `resolve(index)`.
    fn replace_references(value: &mut Value, resolve: &dyn Fn(usize) -> Option<String>) {
        match value {
            Value::String(text) if text.contains(REFERENCE_MARK) => {
                let mut out = String::with_capacity(text.len());
                let mut rest = text.as_str();
                while let Some(start) = rest.find(REFERENCE_MARK) {
                    out.push_str(&rest[..start]);
                    let after = &rest[start + REFERENCE_MARK.len_utf8()..];
                    let Some(end) = after.find(REFERENCE_MARK) else {
                        out.push_str(&rest[start..]);
                        rest = "";
                        break;
                    };
                    let token = &after[..end];
                    match token
                        .strip_prefix("cosell-write-")
                        .and_then(|n| n.parse::<usize>().ok())
                        .and_then(resolve)
                    {
                        Some(id) => out.push_str(&id),
                        None => {
                            out.push_str(&rest[start..start + end + 2 * REFERENCE_MARK.len_utf8()])
                        }
                    }
                    rest = &after[end + REFERENCE_MARK.len_utf8()..];
                }
                out.push_str(rest);
                *text = out;
            }
            Value::Array(items) => {
                for item in items {
                    Self::replace_references(item, resolve);
                }
            }
            Value::Object(map) => {
                for item in map.values_mut() {
                    Self::replace_references(item, resolve);
                }
            }
            _ => {}
        }
    }
}

impl Crm {
    /// Several [`Crm::find`]s in as few round trips as the CRM allows (Salesforce: one
    /// Composite call per 5 queries; Dataverse: one `$batch`); the ids in the same order.
    pub async fn find_all(&self, finds: &[Find]) -> Result<Vec<Option<String>>, ConnectorError> {
        match self {
            Crm::Salesforce(client) if finds.len() > 1 => {
                let mut out = Vec::with_capacity(finds.len());
                for chunk in finds.chunks(salesforce::composite::MAX_QUERIES) {
                    let mut requests = Vec::with_capacity(chunk.len());
                    for (i, find) in chunk.iter().enumerate() {
                        let soql = find_soql(&find.entity, &find.id_field, &find.criteria)?;
                        requests.push(CompositeRequest::query(format!("find{i}"), &soql));
                    }
                    let replies = client.composite(false, &requests).await?;
                    if let Some(error) = composite_failure(&replies, "find") {
                        return Err(error);
                    }
                    for (find, reply) in chunk.iter().zip(&replies) {
                        out.push(
                            reply
                                .records()
                                .first()
                                .and_then(|r| r.get(&find.id_field))
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                        );
                    }
                }
                Ok(out)
            }
            Crm::Dataverse(client) if finds.len() > 1 => {
                let mut parts = Vec::with_capacity(finds.len());
                for find in finds {
                    parts.push(BatchPart::query(
                        &find.entity,
                        find_options(&find.id_field, &find.criteria)?,
                    ));
                }
                let responses = client.batch(parts).await?;
                if let Some(error) = batch_failure(&responses) {
                    return Err(error);
                }
                Ok(finds
                    .iter()
                    .zip(&responses)
                    .map(|(find, response)| {
                        response.rows.first().and_then(|row| {
                            row.fields
                                .get(&find.id_field)
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                                .or_else(|| row.id.clone())
                        })
                    })
                    .collect())
            }
            _ => {
                let mut out = Vec::with_capacity(finds.len());
                for find in finds {
                    out.push(
                        self.find(&find.entity, &find.id_field, &find.criteria)
                            .await?,
                    );
                }
                Ok(out)
            }
        }
    }

    /// Runs the writes of `set` in order, references resolved; their outcomes in order.
    /// Salesforce: one all-or-none Composite call; Dataverse: one `$batch` change set — so
    /// a set is written whole or not at all.
    pub async fn apply(&self, set: &WriteSet) -> Result<Vec<Applied>, ConnectorError> {
        if let Crm::Salesforce(client) = self
            && set.writes.len() > 1
            && set.writes.len() <= salesforce::composite::MAX_SUBREQUESTS
            && !set.writes.iter().any(Write::mentions_composite_reference)
        {
            return apply_composite(client, set).await;
        }
        if let Crm::Dataverse(client) = self
            && set.writes.len() > 1
            && set.writes.len() <= dataverse::MAX_BATCH_REQUESTS
            && let Some(change_set) = change_set(set)
        {
            return apply_change_set(client, set, change_set).await;
        }
        self.apply_one_by_one(set).await
    }

    async fn apply_one_by_one(&self, set: &WriteSet) -> Result<Vec<Applied>, ConnectorError> {
        let mut applied: Vec<Applied> = Vec::with_capacity(set.writes.len());
        for write in &set.writes {
            let mut write = write.clone();
            for value in write.fields_mut().values_mut() {
                WriteSet::replace_references(value, &|i| applied.get(i).map(|a| a.id.clone()));
            }
            let outcome = match write {
                Write::Create { entity, fields } => Applied {
                    id: self.create(&entity, &fields).await?,
                    created: true,
                },
                Write::Upsert {
                    entity,
                    id_field,
                    key_field,
                    key,
                    fields,
                } => {
                    let upserted = self
                        .upsert_by_key_returning(&entity, &id_field, &key_field, &key, &fields)
                        .await?;
                    let id = match upserted.id {
                        Some(id) => id,
                        None => {
                            let mut criteria = Map::new();
                            criteria.insert(key_field.clone(), Value::String(key.clone()));
                            self.find(&entity, &id_field, &criteria).await?.ok_or_else(|| {
                                ConnectorError::Decode {
                                    api: self.api(),
                                    operation: "upsert",
                                    message: format!(
                                        "the upserted {entity} with {key_field} = {key} cannot be found"
                                    ),
                                }
                            })?
                        }
                    };
                    Applied {
                        id,
                        created: upserted.created.unwrap_or(true),
                    }
                }
            };
            applied.push(outcome);
        }
        Ok(applied)
    }

    fn api(&self) -> &'static str {
        match self {
            Crm::Dataverse(_) => "dataverse",
            Crm::Salesforce(_) => "salesforce",
        }
    }
}

/// The SOQL of [`Crm::find`] on Salesforce.
fn find_soql(
    entity: &str,
    id_field: &str,
    criteria: &Map<String, Value>,
) -> Result<String, ConnectorError> {
    let mut soql = Soql::select(&[id_field]).from(entity);
    for (field, value) in criteria {
        soql = soql.where_eq(field, soql_literal(field, value)?);
    }
    soql.order_by(id_field, Order::Asc).limit(1).build()
}

/// A [`WriteSet`] as one all-or-none Composite call: write `i` is subrequest `w{i}`, and a
/// reference to it becomes `@{w{i}.id}`.
async fn apply_composite(
    client: &SalesforceClient,
    set: &WriteSet,
) -> Result<Vec<Applied>, ConnectorError> {
    let mut requests = Vec::with_capacity(set.writes.len());
    for (i, write) in set.writes.iter().enumerate() {
        let mut write = write.clone();
        for value in write.fields_mut().values_mut() {
            WriteSet::replace_references(value, &|n| (n < i).then(|| format!("@{{w{n}.id}}")));
        }
        requests.push(match &write {
            Write::Create { entity, fields } => {
                CompositeRequest::create(format!("w{i}"), entity, fields)?
            }
            Write::Upsert {
                entity,
                key_field,
                key,
                fields,
                ..
            } => CompositeRequest::upsert(format!("w{i}"), entity, key_field, key, fields)?,
        });
    }
    let replies = client.composite(true, &requests).await?;
    if let Some(error) = composite_failure(&replies, "apply") {
        return Err(error);
    }
    set.writes
        .iter()
        .zip(&replies)
        .map(|(write, reply)| {
            let id = reply
                .id()
                .map(str::to_owned)
                .ok_or_else(|| ConnectorError::Decode {
                    api: "salesforce",
                    operation: "apply",
                    message: format!("no id in the answer for {}", reply.reference_id),
                })?;
            Ok(Applied {
                id,
                created: matches!(write, Write::Create { .. }) || reply.created(),
            })
        })
        .collect()
}

/// The query of [`Crm::find`] on Dataverse.
fn find_options(
    id_field: &str,
    criteria: &Map<String, Value>,
) -> Result<QueryOptions, ConnectorError> {
    let mut conditions = Vec::new();
    for (field, value) in criteria {
        conditions.push(format!("{field} eq {}", odata_literal(field, value)?));
    }
    Ok(QueryOptions {
        select: vec![id_field.to_owned()],
        filter: (!conditions.is_empty()).then(|| conditions.join(" and ")),
        orderby: Some(format!("{id_field} asc")),
        top: Some(1),
        page_size: Some(1),
        expand: None,
    })
}

/// A [`WriteSet`] as the requests of one `$batch` change set: write `i` has Content-ID
/// `i + 1`, and a bind to it (`"parentaccountid@odata.bind": "/accounts(<ref>)"`) becomes
/// `"$<i + 1>"`. `None` when a reference sits anywhere but a whole bind value, which a
/// change set cannot express: the set is then written one request at a time.
fn change_set(set: &WriteSet) -> Option<Vec<BatchRequest>> {
    let mut requests = Vec::with_capacity(set.writes.len());
    for (i, write) in set.writes.iter().enumerate() {
        let mut write = write.clone();
        for (field, value) in write.fields_mut().iter_mut() {
            let Value::String(text) = value else {
                if value.to_string().contains(REFERENCE_MARK) {
                    return None;
                }
                continue;
            };
            if !text.contains(REFERENCE_MARK) {
                continue;
            }
            if !field.ends_with("@odata.bind") {
                return None;
            }
            // "/accounts(<ref>)" or "<ref>" alone.
            let inner = match text.find('(') {
                Some(open) if text.starts_with('/') && text.ends_with(')') => {
                    &text[open + 1..text.len() - 1]
                }
                _ => text.as_str(),
            };
            let index = inner
                .strip_prefix(REFERENCE_MARK)
                .and_then(|t| t.strip_suffix(REFERENCE_MARK))
                .and_then(|t| t.strip_prefix("cosell-write-"))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n < i)?;
            *value = Value::String(dataverse::batch_ref(u32::try_from(index + 1).ok()?));
        }
        let content_id = u32::try_from(i + 1).ok()?;
        requests.push(match write {
            Write::Create { entity, fields } => {
                BatchRequest::create(&entity, fields).content_id(content_id)
            }
            Write::Upsert {
                entity,
                id_field,
                key_field,
                key,
                fields,
            } => BatchRequest::upsert(
                &entity,
                &AlternateKey::new(&key_field, key.as_str()),
                fields,
            )
            .content_id(content_id)
            // An upsert by key answers with the key's URL; the row gives the GUID.
            .return_representation(&[id_field.as_str()]),
        });
    }
    Some(requests)
}

/// Sends a change set made by [`change_set`]: all of it is written, or none of it.
async fn apply_change_set(
    client: &DataverseClient,
    set: &WriteSet,
    requests: Vec<BatchRequest>,
) -> Result<Vec<Applied>, ConnectorError> {
    let responses = client.batch(vec![BatchPart::ChangeSet(requests)]).await?;
    if let Some(error) = batch_failure(&responses) {
        return Err(error);
    }
    set.writes
        .iter()
        .zip(&responses)
        .map(|(write, response)| {
            let id = match write {
                Write::Upsert { id_field, .. } => response
                    .row
                    .as_ref()
                    .and_then(|row| row.fields.get(id_field))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| response.entity_id.clone()),
                Write::Create { .. } => response.entity_id.clone(),
            };
            let id = id.ok_or_else(|| ConnectorError::Decode {
                api: "dataverse",
                operation: response.operation(),
                message: format!(
                    "no id in the answer to {} of the change set",
                    response.operation()
                ),
            })?;
            Ok(Applied {
                id,
                created: match write {
                    Write::Create { .. } => true,
                    Write::Upsert { .. } => response.status.as_u16() == 201,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod write_set_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_replaced_inside_text() {
        let mut value = json!({
            "bind": format!("/accounts({})", WriteSet::reference(0)),
            "plain": WriteSet::reference(1),
            "list": [WriteSet::reference(0)],
            "untouched": "no marks",
            "unknown": WriteSet::reference(7),
        });
        let ids = ["A-1".to_owned(), "B-2".to_owned()];
        WriteSet::replace_references(&mut value, &|i| ids.get(i).cloned());
        assert_eq!(value["bind"], json!("/accounts(A-1)"));
        assert_eq!(value["plain"], json!("B-2"));
        assert_eq!(value["list"][0], json!("A-1"));
        assert_eq!(value["untouched"], json!("no marks"));
        assert_eq!(
            value["unknown"],
            json!(WriteSet::reference(7)),
            "left as is"
        );
    }
}
