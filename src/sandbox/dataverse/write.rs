//! Turning a request body into row changes, with Dataverse's validation: unknown
//! properties, JSON types, lengths, ranges, option values, read-only and required columns,
//! `@odata.bind` lookups, statecode/statuscode consistency.

use serde_json::{Map, Value, json};

use super::DvError;
use super::path::parse_reference;
use super::schema::{ColumnDef, ColumnType, Required, Schema, Table};
use super::store::{LOOKUP_TABLE, Store};
use crate::mapping::transforms::datetime::DateTime;

/// Whether a body creates or updates a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// POST, or an upsert that found nothing.
    Create,
    /// PATCH of an existing row.
    Update,
}

/// Validated changes: JSON property (`name`, `_parentaccountid_value`, and the lookup's
/// target annotation) → new value; `null` clears.
#[derive(Debug, Default)]
pub struct Changes {
    /// The properties to set.
    pub set: Map<String, Value>,
}

/// Options that are neither schema nor body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// Columns to drop from the body: alternate-key columns on an update addressed by
    /// that key ("alternate key values in the body are ignored on update").
    pub ignore: &'a [String],
}

/// Validates `body` against `table`.
pub fn prepare(
    schema: &Schema,
    store: &Store,
    table: &Table,
    body: &Map<String, Value>,
    mode: Mode,
    context: Context<'_>,
) -> Result<Changes, DvError> {
    let mut changes = Changes::default();
    for (key, value) in body {
        if let Some((property, annotation)) = key.split_once('@') {
            if annotation == "odata.bind" {
                bind(schema, store, table, property, value, &mut changes)?;
                continue;
            }
            if property.is_empty() {
                // Instance annotations such as `@odata.type`, `@odata.etag` or
                // `@odata.context` that clients echo back: accepted and ignored.
                if annotation == "odata.type"
                    && let Some(name) = value.as_str()
                    && name.trim_start_matches('#') != table.type_name()
                {
                    return Err(DvError::payload(
                        table,
                        &format!(
                            "A resource with type '{}' was found, but it is not assignable to the expected type '{}'. The type specified in the resource must be equal to either the expected type or a derived type.",
                            name.trim_start_matches('#'),
                            table.type_name()
                        ),
                    ));
                }
                continue;
            }
            // Property annotations (`x@OData.Community.Display.V1.FormattedValue`) echoed
            // back by clients are ignored like the service does.
            if table.by_property(property).is_some() || table.column(property).is_some() {
                continue;
            }
            return Err(DvError::payload(
                table,
                &format!(
                    "An undeclared property '{property}' which only has property annotations in the payload but no property value was found in the payload. In OData, only declared navigation properties and declared named streams can be represented as properties without values."
                ),
            ));
        }
        if context.ignore.iter().any(|c| c == key) {
            continue;
        }
        // Lookup values (`_x_value`) are read-only views of the navigation property.
        if key.starts_with('_') && table.by_property(key).is_some_and(|c| c.kind.is_lookup()) {
            return Err(DvError::bad_request(
                "0x80048d19",
                "CRM do not support direct update of Entity Reference properties, Use Navigation properties instead.",
            ));
        }
        if let Some((column, _)) = table.navigation(key) {
            // A navigation property given a value: null disassociates; anything else would
            // be a deep insert or a type error.
            match value {
                Value::Null => {
                    clear_lookup(column, &mut changes);
                    continue;
                }
                Value::Object(_) => {
                    return Err(DvError::bad_request(
                        "0x80048d19",
                        &format!(
                            "Deep insert through '{key}' is not supported by the sandbox; create the related row first and bind it with '{key}@odata.bind'."
                        ),
                    ));
                }
                _ => {
                    return Err(DvError::payload(
                        table,
                        "A 'PrimitiveValue' node with non-null value was found when trying to read the value of a navigation property; however, a 'StartArray' node, a 'StartObject' node, or a 'PrimitiveValue' node with null value was expected.",
                    ));
                }
            }
        }
        let Some(column) = table.column(key).filter(|c| !c.kind.is_lookup()) else {
            return Err(DvError::payload(
                table,
                &format!(
                    "The property '{key}' does not exist on type '{}'. Make sure to only use property names that are defined by the type or mark the type as open type.",
                    table.type_name()
                ),
            ));
        };
        if column.name == table.id() {
            if mode == Mode::Create {
                let id = check_value(table, column, value)?;
                if id.is_null() {
                    continue;
                }
                changes.set.insert(column.name.clone(), id);
            }
            // On update the URL names the row; a primary id in the body changes nothing.
            continue;
        }
        if column.read_only {
            // UNVERIFIED: the service silently ignores some read-only columns
            // (createdon) and rejects others; the sandbox rejects all, so a mapping never
            // believes it wrote something that was dropped.
            return Err(DvError::bad_request(
                "0x80040203",
                &format!(
                    "The '{}' attribute of '{}' is read-only and cannot be set.",
                    column.name,
                    table.logical()
                ),
            ));
        }
        if mode == Mode::Create && !column.valid_for_create {
            return Err(DvError::bad_request(
                "0x80040203",
                &format!(
                    "{} is not a valid attribute for create on {}. Create the row, then set {} with an update.",
                    column.name,
                    table.logical(),
                    column.name
                ),
            ));
        }
        let value = check_value(table, column, value)?;
        if value.is_null() && mode == Mode::Update && column.required == Required::System {
            return Err(required_error(table, column));
        }
        changes.set.insert(column.name.clone(), value);
    }
    Ok(changes)
}

fn clear_lookup(column: &ColumnDef, changes: &mut Changes) {
    let property = column.property();
    changes
        .set
        .insert(format!("{property}{LOOKUP_TABLE}"), Value::Null);
    changes.set.insert(property, Value::Null);
}

/// `<navigation>@odata.bind`: `/accounts(<guid>)`, `accounts(<guid>)`, a full URL, or
/// `null` to disassociate.
fn bind(
    schema: &Schema,
    store: &Store,
    table: &Table,
    navigation: &str,
    value: &Value,
    changes: &mut Changes,
) -> Result<(), DvError> {
    let Some((column, target_logical)) = table.navigation(navigation) else {
        return Err(DvError::payload(
            table,
            &format!(
                "An undeclared property '{navigation}' which only has property annotations in the payload but no property value was found in the payload. In OData, only declared navigation properties and declared named streams can be represented as properties without values."
            ),
        ));
    };
    let reference = match value {
        Value::Null => {
            clear_lookup(column, changes);
            return Ok(());
        }
        Value::String(s) => s,
        _ => {
            return Err(DvError::payload(
                table,
                &format!(
                    "The value of '{navigation}@odata.bind' must be a string URL of the related record."
                ),
            ));
        }
    };
    let Some(target) = schema.table(target_logical) else {
        return Err(DvError::internal("lookup target missing from schema"));
    };
    let Some((set, locator)) = parse_reference(reference) else {
        return Err(DvError::bad_request(
            "0x80060891",
            &format!(
                "URL '{reference}' in '{navigation}@odata.bind' is not a valid reference to a record: expected '/{}(<id>)'.",
                target.set()
            ),
        ));
    };
    if set != target.set() {
        return Err(DvError::bad_request(
            "0x80060891",
            &format!(
                "The navigation property '{navigation}' expects a '{}' record ('/{}(<id>)'), not '{set}'.",
                target.type_name(),
                target.set()
            ),
        ));
    }
    let Some(id) = store.find(target, &locator) else {
        return Err(match &locator {
            super::store::Locator::Id(id) => DvError::row_not_found(target, id),
            super::store::Locator::Key(_) => DvError::key_not_found(target),
        });
    };
    let property = column.property();
    changes
        .set
        .insert(format!("{property}{LOOKUP_TABLE}"), json!(target.logical()));
    changes.set.insert(property, Value::String(id));
    Ok(())
}

fn cannot_convert(table: &Table, column: &ColumnDef, value: &Value) -> DvError {
    let literal = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    DvError::payload(
        table,
        &format!(
            "Cannot convert the literal '{literal}' to the expected type '{}'.",
            column.kind.edm()
        ),
    )
}

fn out_of_range(table: &Table, column: &ColumnDef, number: f64) -> DvError {
    let bound = |b: Option<f64>| b.map_or_else(|| "unbounded".to_owned(), |b| b.to_string());
    DvError::bad_request(
        "0x80044331",
        &format!(
            "A validation error occurred. The value {number} of '{}' on record of type '{}' is outside the valid range. Accepted range: {} to {}",
            column.name,
            table.logical(),
            bound(column.min),
            bound(column.max)
        ),
    )
}

fn check_range(table: &Table, column: &ColumnDef, number: f64) -> Result<(), DvError> {
    if column.min.is_some_and(|min| number < min) || column.max.is_some_and(|max| number > max) {
        return Err(out_of_range(table, column, number));
    }
    Ok(())
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// A body value checked and normalized for a non-lookup column.
pub fn check_value(table: &Table, column: &ColumnDef, value: &Value) -> Result<Value, DvError> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let bad = || cannot_convert(table, column, value);
    Ok(match column.kind {
        ColumnType::String | ColumnType::Memo => {
            let Value::String(text) = value else {
                return Err(bad());
            };
            if let Some(max) = column.max_length
                && text.chars().count() > max
            {
                return Err(DvError::bad_request(
                    "0x80044331",
                    &format!(
                        "A validation error occurred. The length of the '{}' attribute of the '{}' entity exceeded the maximum allowed length of '{max}'.",
                        column.name,
                        table.logical()
                    ),
                ));
            }
            value.clone()
        }
        ColumnType::Integer | ColumnType::BigInt => {
            let Some(n) = value.as_i64() else {
                return Err(bad());
            };
            if column.kind == ColumnType::Integer && i32::try_from(n).is_err() {
                return Err(bad());
            }
            check_range(table, column, n as f64)?;
            value.clone()
        }
        ColumnType::Money | ColumnType::Decimal | ColumnType::Double => {
            let Some(n) = value.as_f64().filter(|n| n.is_finite()) else {
                return Err(bad());
            };
            check_range(table, column, n)?;
            value.clone()
        }
        ColumnType::Boolean => {
            if !value.is_boolean() {
                return Err(bad());
            }
            value.clone()
        }
        ColumnType::DateTime => {
            let Some(parsed) = value.as_str().and_then(DateTime::parse) else {
                return Err(bad());
            };
            // Dataverse keeps whole seconds, in UTC.
            let mut utc = parsed.to_utc();
            utc.nanos = 0;
            json!(utc.utc_string())
        }
        ColumnType::DateOnly => {
            // Edm.Date: exactly YYYY-MM-DD; a date-time is a type error.
            let Some(text) = value.as_str() else {
                return Err(bad());
            };
            if text.len() != 10 || DateTime::parse(text).is_none() {
                return Err(bad());
            }
            value.clone()
        }
        ColumnType::Picklist => {
            let Some(n) = value.as_i64() else {
                return Err(bad());
            };
            if column.option(n).is_none() {
                let accepted: Vec<String> =
                    column.options.iter().map(|o| o.value.to_string()).collect();
                return Err(DvError::bad_request(
                    "0x8004431a",
                    &format!(
                        "A validation error occurred. The value {n} of '{}' on record of type '{}' is outside the valid range. Accepted Values: {}",
                        column.name,
                        table.logical(),
                        accepted.join(",")
                    ),
                ));
            }
            value.clone()
        }
        ColumnType::UniqueIdentifier => {
            let Some(text) = value.as_str().filter(|s| is_guid(s)) else {
                return Err(bad());
            };
            json!(text.to_ascii_lowercase())
        }
        ColumnType::Lookup | ColumnType::Customer => return Err(bad()),
    })
}

fn required_error(table: &Table, column: &ColumnDef) -> DvError {
    // The message names the attribute and its requirement level, like the platform's
    // "Attribute … cannot be NULL" family; the exact service wording is UNVERIFIED.
    DvError::bad_request(
        "0x80040200",
        &format!(
            "Required field '{}' is missing: the '{}' attribute of '{}' is {} and needs a value.",
            column.name,
            column.name,
            table.logical(),
            column.required.level()
        ),
    )
}

/// Applies `changes` to `base` (an empty object for a create), then does what the
/// platform does on save: defaults (create), computed columns, statecode/statuscode,
/// required columns (create).
pub fn apply(
    schema: &Schema,
    table: &Table,
    base: &Value,
    changes: Changes,
    mode: Mode,
) -> Result<Value, DvError> {
    let mut row = base.as_object().cloned().unwrap_or_default();
    let status_given = changes.set.get("statuscode").is_some_and(|v| !v.is_null());
    let state_given = changes.set.contains_key("statecode");
    for (key, value) in changes.set {
        if value.is_null() {
            row.remove(&key);
        } else {
            row.insert(key, value);
        }
    }
    if mode == Mode::Create {
        for column in table.columns() {
            let property = column.property();
            if row.contains_key(&property) {
                continue;
            }
            if let Some(default) = &column.default {
                if column.kind.is_lookup() {
                    if let (Some(id), Some(target)) = (default.as_str(), column.targets.first()) {
                        row.insert(property.clone(), json!(id));
                        row.insert(format!("{property}{LOOKUP_TABLE}"), json!(target.table));
                    }
                } else {
                    row.insert(property, default.clone());
                }
            }
        }
    }
    for column in table.columns().iter().filter(|c| !c.computed.is_empty()) {
        let parts: Vec<&str> = column
            .computed
            .iter()
            .filter_map(|c| row.get(c).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            row.remove(&column.name);
        } else {
            row.insert(column.name.clone(), json!(parts.join(" ")));
        }
    }
    state_and_status(table, &mut row, state_given, status_given)?;
    if mode == Mode::Create {
        for column in table.columns() {
            let enforced = match column.required {
                Required::System => true,
                Required::Application => schema.enforce_application_required,
                Required::None => false,
            };
            if enforced
                && !column.read_only
                && column.name != table.id()
                && row.get(&column.property()).is_none_or(Value::is_null)
            {
                return Err(required_error(table, column));
            }
        }
    }
    Ok(Value::Object(row))
}

/// Keeps statecode and statuscode consistent: a new state without a status gets the
/// state's default status; a status alone moves the row to the status's state; both must
/// agree.
fn state_and_status(
    table: &Table,
    row: &mut Map<String, Value>,
    state_given: bool,
    status_given: bool,
) -> Result<(), DvError> {
    let (Some(state_column), Some(status_column)) =
        (table.column("statecode"), table.column("statuscode"))
    else {
        return Ok(());
    };
    let state = row.get("statecode").and_then(Value::as_i64);
    let status = row.get("statuscode").and_then(Value::as_i64);
    let status_state = status
        .and_then(|s| status_column.option(s))
        .and_then(|o| o.state);
    match (state, status) {
        (Some(state), Some(status))
            if status_given && state_given && status_state.is_some_and(|s| s != state) =>
        {
            let state_label = state_column.option(state).map_or("", |o| o.label.as_str());
            return Err(DvError::bad_request(
                "0x8004431a",
                &format!(
                    "{status} is not a valid status code for state code {}State.{} on {} with Id {}.",
                    table.logical(),
                    state_label.replace(' ', ""),
                    table.logical(),
                    row.get(table.id()).and_then(Value::as_str).unwrap_or("")
                ),
            ));
        }
        (Some(_), Some(_)) if status_given && state_given => {}
        (_, Some(_)) if status_given => {
            if let Some(s) = status_state {
                row.insert("statecode".into(), json!(s));
            }
        }
        (Some(state), _) => {
            if status_state != Some(state)
                && let Some(default) = state_column.option(state).and_then(|o| o.default_status)
            {
                row.insert("statuscode".into(), json!(default));
            }
        }
        _ => {}
    }
    Ok(())
}
