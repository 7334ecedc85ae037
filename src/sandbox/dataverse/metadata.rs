//! The service document, `WhoAmI`, and the `EntityDefinitions` endpoints the Python SDK
//! (`powerplatform-dataverse-client` 1.1.0) calls: entity-set resolution
//! (`EntityDefinitions?$select=…&$filter=LogicalName eq 'x'`), a table's attributes, the
//! picklist cast with `$expand=OptionSet($select=Options)` for label → value conversion,
//! and alternate keys. Metadata ids are stable GUIDs derived from the names.

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::path::{Segment, locator};
use super::schema::{ColumnDef, ColumnType, Schema, Table};
use super::store::Locator;
use super::{Call, DvError, json as json_response};
use crate::sandbox::Rng;
use crate::sandbox::odata::{self, MatchOptions};

/// A GUID that depends only on `name` (FNV-1a into the sandbox's GUID formatter).
pub fn stable_guid(name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Rng::new(hash).guid()
}

fn label(text: &str) -> Value {
    let localized = json!({ "Label": text, "LanguageCode": 1033 });
    json!({ "LocalizedLabels": [localized.clone()], "UserLocalizedLabel": localized })
}

/// `GET /api/data/v9.2/`: the entity sets.
pub fn service_document(call: &Call<'_>, schema: &Schema) -> Response {
    let sets: Vec<Value> = schema
        .tables()
        .iter()
        .map(|t| json!({ "name": t.set(), "kind": "EntitySet", "url": t.set() }))
        .chain(std::iter::once(
            json!({ "name": "EntityDefinitions", "kind": "EntitySet", "url": "EntityDefinitions" }),
        ))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "@odata.context": format!("{}/$metadata", call.api_root()), "value": sets }),
    )
}

/// `GET WhoAmI`: the sandbox's application user, business unit and organization.
pub fn who_am_i(call: &Call<'_>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "@odata.context": format!("{}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", call.api_root()),
            "BusinessUnitId": stable_guid("sandbox business unit"),
            "UserId": stable_guid("sandbox application user"),
            "OrganizationId": stable_guid("sandbox organization"),
        }),
    )
}

fn entity(table: &Table) -> Map<String, Value> {
    let display = table
        .def
        .display_name
        .clone()
        .unwrap_or_else(|| table.logical().to_owned());
    let custom = table.logical().contains('_');
    let mut out = Map::new();
    out.insert("MetadataId".into(), json!(stable_guid(table.logical())));
    out.insert("LogicalName".into(), json!(table.logical()));
    out.insert("SchemaName".into(), json!(schema_name(table.logical())));
    out.insert("EntitySetName".into(), json!(table.set()));
    out.insert("LogicalCollectionName".into(), json!(table.set()));
    out.insert("PrimaryIdAttribute".into(), json!(table.id()));
    out.insert("PrimaryNameAttribute".into(), json!(table.def.primary_name));
    out.insert("DisplayName".into(), label(&display));
    out.insert("IsCustomEntity".into(), json!(custom));
    out.insert(
        "ChangeTrackingEnabled".into(),
        json!(table.def.change_tracking),
    );
    out.insert("IsValidForAdvancedFind".into(), json!(true));
    out
}

/// `cosell_solution` → `cosell_Solution`, `account` → `Account`: the usual casing.
fn schema_name(logical: &str) -> String {
    match logical.split_once('_') {
        Some((prefix, rest)) => format!("{prefix}_{}", capitalize(rest)),
        None => capitalize(logical),
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The metadata type of a column, as the `@odata.type` of attribute metadata.
fn attribute_type(column: &ColumnDef) -> &'static str {
    match (column.kind, column.name.as_str()) {
        (ColumnType::Picklist, "statecode") => "StateAttributeMetadata",
        (ColumnType::Picklist, "statuscode") => "StatusAttributeMetadata",
        (ColumnType::Picklist, _) => "PicklistAttributeMetadata",
        (ColumnType::String, _) => "StringAttributeMetadata",
        (ColumnType::Memo, _) => "MemoAttributeMetadata",
        (ColumnType::Integer, _) => "IntegerAttributeMetadata",
        (ColumnType::BigInt, _) => "BigIntAttributeMetadata",
        (ColumnType::Money, _) => "MoneyAttributeMetadata",
        (ColumnType::Decimal, _) => "DecimalAttributeMetadata",
        (ColumnType::Double, _) => "DoubleAttributeMetadata",
        (ColumnType::Boolean, _) => "BooleanAttributeMetadata",
        (ColumnType::DateTime | ColumnType::DateOnly, _) => "DateTimeAttributeMetadata",
        (ColumnType::Lookup | ColumnType::Customer, _) => "LookupAttributeMetadata",
        (ColumnType::UniqueIdentifier, _) => "UniqueIdentifierAttributeMetadata",
    }
}

fn attribute(table: &Table, column: &ColumnDef, with_options: bool) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "@odata.type".into(),
        json!(format!(
            "#Microsoft.Dynamics.CRM.{}",
            attribute_type(column)
        )),
    );
    out.insert(
        "MetadataId".into(),
        json!(stable_guid(&format!("{}.{}", table.logical(), column.name))),
    );
    out.insert("LogicalName".into(), json!(column.name));
    out.insert("SchemaName".into(), json!(schema_name(&column.name)));
    out.insert("EntityLogicalName".into(), json!(table.logical()));
    out.insert("AttributeType".into(), json!(column.kind.attribute_type()));
    out.insert(
        "DisplayName".into(),
        label(column.label.as_deref().unwrap_or(&column.name)),
    );
    out.insert(
        "RequiredLevel".into(),
        json!({ "Value": column.required.level(), "CanBeChanged": true, "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings" }),
    );
    out.insert("IsPrimaryId".into(), json!(column.name == table.id()));
    out.insert(
        "IsPrimaryName".into(),
        json!(column.name == table.def.primary_name),
    );
    out.insert(
        "IsValidForCreate".into(),
        json!(!column.read_only && column.valid_for_create),
    );
    out.insert("IsValidForUpdate".into(), json!(!column.read_only));
    out.insert("IsValidForRead".into(), json!(true));
    out.insert(
        "IsCustomAttribute".into(),
        json!(
            column.name.contains('_')
                && !column.name.starts_with("address1_")
                && !column.name.starts_with("msdyn_")
        ),
    );
    if let Some(max) = column.max_length {
        out.insert("MaxLength".into(), json!(max));
    }
    if let Some(min) = column.min {
        out.insert("MinValue".into(), json!(min));
    }
    if let Some(max) = column.max {
        out.insert("MaxValue".into(), json!(max));
    }
    if column.kind == ColumnType::DateOnly {
        out.insert("Format".into(), json!("DateOnly"));
        out.insert("DateTimeBehavior".into(), json!({ "Value": "DateOnly" }));
    }
    if column.kind.is_lookup() {
        out.insert(
            "Targets".into(),
            json!(
                column
                    .targets
                    .iter()
                    .map(|t| t.table.clone())
                    .collect::<Vec<_>>()
            ),
        );
    }
    if with_options && column.kind == ColumnType::Picklist {
        let options: Vec<Value> = column
            .options
            .iter()
            .map(|o| {
                let mut option = json!({ "Value": o.value, "Label": label(&o.label) });
                if let Some(state) = o.state {
                    option["State"] = json!(state);
                }
                if let Some(status) = o.default_status {
                    option["DefaultStatus"] = json!(status);
                }
                option
            })
            .collect();
        out.insert(
            "OptionSet".into(),
            json!({
                "MetadataId": stable_guid(&format!("{}.{}.options", table.logical(), column.name)),
                "Name": format!("{}_{}", table.logical(), column.name),
                "OptionSetType": if column.name == "statecode" { "State" } else if column.name == "statuscode" { "Status" } else { "Picklist" },
                "Options": options,
            }),
        );
    }
    out
}

/// Applies `$select` (keeping `MetadataId` and `@odata.type`, as the service does) and
/// `$filter` to metadata objects.
fn query_metadata(call: &Call<'_>, items: Vec<Map<String, Value>>) -> Result<Vec<Value>, DvError> {
    let filter = match call.option("$filter") {
        Some(text) => Some(
            odata::parse_filter(&text)
                .map_err(|e| DvError::bad_request("0x80060888", &e.to_string()))?,
        ),
        None => None,
    };
    let select: Option<Vec<String>> = call
        .option("$select")
        .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
    let options = MatchOptions {
        case_insensitive_strings: true,
    };
    let mut out = Vec::new();
    for item in items {
        let value = Value::Object(item);
        if filter
            .as_ref()
            .is_some_and(|f| !f.matches(&value, &options))
        {
            continue;
        }
        let Value::Object(mut item) = value else {
            continue;
        };
        if let Some(select) = &select {
            item.retain(|k, _| {
                k == "MetadataId" || k == "@odata.type" || k == "OptionSet" || select.contains(k)
            });
        }
        out.push(Value::Object(item));
    }
    Ok(out)
}

fn find_table<'s>(schema: &'s Schema, key: &str) -> Result<&'s Table, DvError> {
    let table = match locator(key) {
        Some(Locator::Key(pairs)) => match pairs.as_slice() {
            [(name, Value::String(logical))] if name == "LogicalName" => schema.table(logical),
            _ => None,
        },
        Some(Locator::Id(id)) => schema
            .tables()
            .iter()
            .find(|t| stable_guid(t.logical()) == id),
        None => None,
    };
    table.ok_or_else(|| {
        DvError::new(
            StatusCode::NOT_FOUND,
            "0x80040217",
            &format!("Could not find an entity with key '{key}' in the metadata cache."),
        )
    })
}

/// Every `EntityDefinitions…` call; returns the stats template and the response.
pub fn entity_definitions(
    call: &Call<'_>,
    schema: &Schema,
    segments: &[Segment],
) -> (String, Result<Response, DvError>) {
    let template = match segments.len() {
        1 if segments[0].key.is_none() => "EntityDefinitions".to_owned(),
        1 => "EntityDefinitions({key})".to_owned(),
        _ => format!(
            "EntityDefinitions({{key}})/{}",
            segments[1..]
                .iter()
                .map(|s| if s.key.is_some() {
                    format!("{}({{key}})", s.name)
                } else {
                    s.name.clone()
                })
                .collect::<Vec<_>>()
                .join("/")
        ),
    };
    if call.method != Method::GET {
        // Table and column creation are outside what a sync needs.
        return (
            template,
            Err(DvError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "0x80060888",
                "The sandbox's metadata is read-only: tables and columns come from sandbox/schemas/dataverse.yaml.",
            )),
        );
    }
    let root = call.api_root();
    let result = (|| {
        let first = &segments[0];
        let Some(key) = &first.key else {
            if segments.len() > 1 {
                return Err(DvError::no_segment(&segments[1].name));
            }
            let items = query_metadata(call, schema.tables().iter().map(entity).collect())?;
            return Ok(json_response(
                StatusCode::OK,
                &json!({ "@odata.context": format!("{root}/$metadata#EntityDefinitions"), "value": items }),
            ));
        };
        let table = find_table(schema, key)?;
        match segments.get(1).map(|s| (s.name.as_str(), s.key.as_deref())) {
            None => {
                let mut item = entity(table);
                if let Some(select) = call.option("$select") {
                    let select: Vec<&str> = select.split(',').map(str::trim).collect();
                    item.retain(|k, _| k == "MetadataId" || select.contains(&k.as_str()));
                }
                item.insert(
                    "@odata.context".into(),
                    json!(format!("{root}/$metadata#EntityDefinitions/$entity")),
                );
                Ok(json_response(StatusCode::OK, &Value::Object(item)))
            }
            Some(("Attributes", None)) => {
                let cast = segments.get(2).map(|s| s.name.as_str());
                let with_options = call
                    .option("$expand")
                    .is_some_and(|e| e.contains("OptionSet"));
                let wanted = match cast {
                    None => None,
                    Some(name) => match name.strip_prefix("Microsoft.Dynamics.CRM.") {
                        Some(kind) => Some(kind.to_owned()),
                        None => return Err(DvError::no_segment(name)),
                    },
                };
                let items: Vec<Map<String, Value>> = table
                    .columns()
                    .iter()
                    .filter(|c| wanted.as_deref().is_none_or(|w| attribute_type(c) == w))
                    .map(|c| attribute(table, c, with_options))
                    .collect();
                let items = query_metadata(call, items)?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "@odata.context": format!("{root}/$metadata#EntityDefinitions({})/Attributes", stable_guid(table.logical())),
                        "value": items,
                    }),
                ))
            }
            Some(("Attributes", Some(attribute_key))) => {
                let column = match locator(attribute_key) {
                    Some(Locator::Key(pairs)) => match pairs.as_slice() {
                        [(name, Value::String(logical))] if name == "LogicalName" => {
                            table.column(logical)
                        }
                        _ => None,
                    },
                    Some(Locator::Id(id)) => table
                        .columns()
                        .iter()
                        .find(|c| stable_guid(&format!("{}.{}", table.logical(), c.name)) == id),
                    None => None,
                };
                let Some(column) = column else {
                    return Err(DvError::new(
                        StatusCode::NOT_FOUND,
                        "0x80040217",
                        &format!(
                            "Could not find an attribute with key '{attribute_key}' on entity {}.",
                            table.logical()
                        ),
                    ));
                };
                let mut item = attribute(table, column, true);
                item.insert(
                    "@odata.context".into(),
                    json!(format!(
                        "{root}/$metadata#EntityDefinitions({})/Attributes/$entity",
                        stable_guid(table.logical())
                    )),
                );
                Ok(json_response(StatusCode::OK, &Value::Object(item)))
            }
            Some(("Keys", None)) => {
                let keys: Vec<Value> = table
                    .def
                    .alternate_keys
                    .iter()
                    .map(|k| {
                        json!({
                            "MetadataId": stable_guid(&format!("{}.key.{}", table.logical(), k.name)),
                            "LogicalName": k.name,
                            "SchemaName": k.name,
                            "EntityLogicalName": table.logical(),
                            "KeyAttributes": k.columns,
                            "EntityKeyIndexStatus": "Active",
                            "DisplayName": label(&k.name),
                        })
                    })
                    .collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "@odata.context": format!("{root}/$metadata#EntityDefinitions({})/Keys", stable_guid(table.logical())),
                        "value": keys,
                    }),
                ))
            }
            Some((name, _)) => Err(DvError::no_segment(name)),
        }
    })();
    (template, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_guids_and_names() {
        assert_eq!(stable_guid("account"), stable_guid("account"));
        assert_ne!(stable_guid("account"), stable_guid("contact"));
        assert_eq!(schema_name("cosell_solution"), "cosell_Solution");
        assert_eq!(schema_name("account"), "Account");
    }
}
