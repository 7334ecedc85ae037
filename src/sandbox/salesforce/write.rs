//! Creating, updating and deleting records the way Salesforce validates them: unknown and
//! read-only fields, type coercion, required fields, restricted picklists, lengths, e-mail
//! addresses, numeric ranges, lookups, unique values, and the platform behaviour the schema
//! describes (defaults, stage-derived fields, country-code sync, cascades).

use std::sync::Arc;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::{Value, json};

use super::ids;
use super::schema::{Field, FieldType, Object, OnDelete, Schema};
use super::store::{Record, Store, Val};
use crate::mapping::transforms::datetime::DateTime;

/// One Salesforce error: `errorCode` in single-record responses, `statusCode` inside
/// sObject Collections results.
#[derive(Debug, Clone, PartialEq)]
pub struct SfError {
    /// `REQUIRED_FIELD_MISSING`, …
    pub code: &'static str,
    /// Human-readable message in Salesforce's wording.
    pub message: String,
    /// Fields the error is about.
    pub fields: Vec<String>,
}

impl SfError {
    /// An error about no particular field.
    pub fn new(code: &'static str, message: impl Into<String>) -> SfError {
        SfError {
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// An error about `fields`.
    pub fn on(code: &'static str, message: impl Into<String>, fields: Vec<String>) -> SfError {
        SfError {
            code,
            message: message.into(),
            fields,
        }
    }

    /// `{"message","errorCode","fields"}` as the REST API returns it.
    pub fn rest_json(&self) -> Value {
        json!({ "message": self.message, "errorCode": self.code, "fields": self.fields })
    }

    /// `{"statusCode","message","fields"}` as sObject Collections return it.
    pub fn collection_json(&self) -> Value {
        json!({ "statusCode": self.code, "message": self.message, "fields": self.fields })
    }
}

/// A request body's members in the order they were written (serde_json's `Map` would
/// sort them, and Salesforce reports the first bad field in body order).
#[derive(Debug, Clone, Default)]
pub struct Body(pub Vec<(String, Value)>);

impl Body {
    /// The member called `name`, case-insensitively (field names are).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Body, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = Body;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
                let mut members = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    members.push((key, value));
                }
                Ok(Body(members))
            }
        }
        deserializer.deserialize_map(BodyVisitor)
    }
}

/// Parses a single-record body, with `JSON_PARSER_ERROR` for anything but a JSON object.
pub fn parse_body(raw: &[u8], object: &str) -> Result<Body, SfError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(SfError::new(
            "JSON_PARSER_ERROR",
            "The HTTP entity body is required, but this request has no entity body.",
        ));
    }
    let value: Value = serde_json::from_slice(raw).map_err(json_syntax_error)?;
    if !value.is_object() {
        let (token, shown) = token_of(&value);
        return Err(SfError::new(
            "JSON_PARSER_ERROR",
            format!(
                "Cannot deserialize instance of {object} from {token} value {shown} or request may be missing a required field at [line:1, column:1]"
            ),
        ));
    }
    serde_json::from_slice(raw).map_err(json_syntax_error)
}

/// `JSON_PARSER_ERROR` for text that is not JSON, with serde's line and column.
pub fn json_syntax_error(error: serde_json::Error) -> SfError {
    let text = error.to_string();
    let reason = text.split(" at line ").next().unwrap_or(&text);
    SfError::new(
        "JSON_PARSER_ERROR",
        format!(
            "Unexpected character ({reason}) at [line:{}, column:{}]",
            error.line(),
            error.column()
        ),
    )
}

/// Jackson's token name and shown value for a JSON value (used in type errors).
fn token_of(value: &Value) -> (&'static str, String) {
    match value {
        Value::Null => ("VALUE_NULL", "null".into()),
        Value::Bool(true) => ("VALUE_TRUE", "true".into()),
        Value::Bool(false) => ("VALUE_FALSE", "false".into()),
        Value::Number(n) if n.is_f64() => ("VALUE_NUMBER_FLOAT", n.to_string()),
        Value::Number(n) => ("VALUE_NUMBER_INT", n.to_string()),
        Value::String(s) => ("VALUE_STRING", s.clone()),
        Value::Array(_) => ("START_ARRAY", "[".into()),
        Value::Object(_) => ("START_OBJECT", "{".into()),
    }
}

/// Where the value of member `key` ends in `raw` (1-based line and column), for
/// Jackson-style `at [line:1, column:25]` locations. Best effort: the first occurrence.
fn locate(raw: &str, key: &str) -> (usize, usize) {
    let needle = format!("\"{key}\"");
    let Some(start) = raw.find(&needle) else {
        return (1, 1);
    };
    let bytes = raw.as_bytes();
    let mut i = start + needle.len();
    while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b':') {
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'"' {
        i += 1;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        i = (i + 1).min(bytes.len());
    } else if i < bytes.len() && (bytes[i] == b'{' || bytes[i] == b'[') {
        i += 1;
    } else {
        while i < bytes.len() && !b",}] \t\r\n".contains(&bytes[i]) {
            i += 1;
        }
    }
    let before = raw.get(..i).unwrap_or(raw);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Converts a JSON value to what `field` stores, leniently where Salesforce is lenient
/// (numbers and booleans as strings, `""` as null). `Err` carries Jackson's token name and
/// shown value.
fn coerce(field: &Field, value: &Value) -> Result<Val, (&'static str, String)> {
    let bad = || token_of(value);
    if value.is_null() {
        return Ok(Val::Null);
    }
    if matches!(value, Value::Object(_) | Value::Array(_)) {
        return Err(bad());
    }
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match field.kind {
        kind if kind.is_text() || kind.is_id() => {
            // UNVERIFIED: numbers and booleans sent to text fields are stored as their text,
            // which is what Salesforce's lenient JSON binding does in practice.
            Ok(if text.is_empty() {
                Val::Null
            } else {
                Val::Text(text.into())
            })
        }
        FieldType::Boolean => match value {
            Value::Bool(b) => Ok(Val::Bool(*b)),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Val::Bool(true)),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Val::Bool(false)),
            _ => Err(bad()),
        },
        kind if kind.is_number() => {
            if matches!(value, Value::Bool(_)) {
                return Err(bad());
            }
            if text.trim().is_empty() {
                return Ok(Val::Null);
            }
            let number: f64 = text.trim().parse().map_err(|_| bad())?;
            if !number.is_finite() || (kind == FieldType::Int && number.fract() != 0.0) {
                return Err(bad());
            }
            Ok(Val::Num(number))
        }
        FieldType::Date => {
            if !value.is_string() {
                return Err(bad());
            }
            if text.is_empty() {
                return Ok(Val::Null);
            }
            // UNVERIFIED: a date field also takes a date-time and keeps its UTC date.
            parse_datetime(&text)
                .map(|dt| Val::Text(dt.to_utc().date_string().into()))
                .ok_or_else(bad)
        }
        FieldType::Datetime => {
            if !value.is_string() {
                return Err(bad());
            }
            if text.is_empty() {
                return Ok(Val::Null);
            }
            parse_datetime(&text)
                .map(|dt| Val::Text(format_datetime(&dt).into()))
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// Parses an ISO date or date-time, also in Salesforce's own `+0000` offset form.
pub fn parse_datetime(text: &str) -> Option<DateTime> {
    let bytes = text.as_bytes();
    let n = bytes.len();
    // `…+0000` → `…+00:00`, so values read from Salesforce can be written back.
    if n > 10
        && text.contains('T')
        && matches!(bytes[n - 5], b'+' | b'-')
        && bytes[n - 4..].iter().all(u8::is_ascii_digit)
    {
        let fixed = format!("{}:{}", &text[..n - 2], &text[n - 2..]);
        return DateTime::parse(&fixed);
    }
    DateTime::parse(text)
}

/// `2013-05-20T20:49:32.000+0000` in UTC.
pub fn format_datetime(dt: &DateTime) -> String {
    let t = dt.to_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+0000",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.nanos / 1_000_000
    )
}

/// Whether a save creates a record or updates the record in `row`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Insert.
    Create,
    /// Update of an existing live record.
    Update(u32),
}

/// How to undo one applied change (sObject Collections with `allOrNone`).
#[derive(Debug)]
pub enum Undo {
    /// A record was appended to this object's table.
    Created(usize),
    /// A record was changed; this is how it was.
    Updated(usize, u32, Record),
}

/// Rolls changes back, newest first.
pub fn roll_back(schema: &Schema, store: &mut Store, undo: Vec<Undo>) {
    for step in undo.into_iter().rev() {
        match step {
            Undo::Created(object) => store.tables[object].pop(&schema.objects[object]),
            Undo::Updated(object, row, previous) => {
                store.tables[object].replace(&schema.objects[object], row, previous);
            }
        }
    }
}

/// A record body and the request text it came from (for error locations).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The parsed members.
    pub body: &'a Body,
    /// The raw JSON text.
    pub raw: &'a str,
}

/// Validates `input` for a create or update of `object` and applies it. Returns the row.
pub fn save(
    schema: &Schema,
    store: &mut Store,
    object: usize,
    input: Input<'_>,
    target: Target,
    now: &str,
    undo: &mut Vec<Undo>,
) -> Result<u32, SfError> {
    let obj = &schema.objects[object];
    let creating = target == Target::Create;
    let Input { body, raw } = input;

    // 1. Deserialize: unknown fields, the Id, types — in body order, first error wins.
    let mut given: Vec<(usize, Val)> = Vec::new();
    for (key, value) in &body.0 {
        if key == "attributes" {
            continue;
        }
        let Some(index) = obj.field(key) else {
            return Err(SfError::new(
                "INVALID_FIELD",
                format!("No such column '{key}' on sobject of type {}", obj.name),
            ));
        };
        if index == obj.id_field {
            // UNVERIFIED: an update may repeat its own Id in the body; anything else is
            // the documented create error.
            let same = match target {
                Target::Update(row) => value
                    .as_str()
                    .and_then(ids::normalize)
                    .is_some_and(|id| id == store.tables[object].records[row as usize].id(obj)),
                Target::Create => false,
            };
            if same {
                continue;
            }
            return Err(SfError::new(
                "INVALID_FIELD",
                "The Id field should not be specified in the sobject data.",
            ));
        }
        let field = &obj.fields[index];
        let val = coerce(field, value).map_err(|(token, shown)| {
            let (line, column) = locate(raw, key);
            SfError::new(
                "JSON_PARSER_ERROR",
                format!(
                    "Cannot deserialize instance of {} from {token} value {shown} or request may be missing a required field at [line:{line}, column:{column}]",
                    field.kind.soap_name()
                ),
            )
        })?;
        given.retain(|(f, _)| *f != index);
        given.push((index, val));
    }

    // 2. Field-level security: read-only fields.
    let denied: Vec<String> = given
        .iter()
        .map(|(f, _)| &obj.fields[*f])
        .filter(|f| {
            if creating {
                !f.createable
            } else {
                !f.updateable
            }
        })
        .map(|f| f.name.clone())
        .collect();
    if !denied.is_empty() {
        return Err(SfError::on(
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            format!(
                "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                denied.join(", ")
            ),
            denied,
        ));
    }

    // 3. The new values.
    let mut values: Vec<Val> = match target {
        Target::Create => obj
            .fields
            .iter()
            .map(|f| match (&f.default, f.kind) {
                (Some(default), _) => coerce(f, default).unwrap_or(Val::Null),
                (None, FieldType::Boolean) => Val::Bool(false),
                _ => Val::Null,
            })
            .collect(),
        Target::Update(row) => store.tables[object].records[row as usize].values.to_vec(),
    };
    for (index, val) in &given {
        values[*index] = match (val, obj.fields[*index].kind) {
            // Checkboxes are never null; null unchecks them.
            (Val::Null, FieldType::Boolean) => Val::Bool(false),
            _ => val.clone(),
        };
    }

    // 4. Required fields.
    let missing: Vec<String> = obj
        .fields
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            !f.nillable
                && !f.computed
                && f.kind != FieldType::Boolean
                && values[*i].is_null()
                && if creating {
                    f.createable
                } else {
                    given.iter().any(|(g, _)| g == i)
                }
        })
        .map(|(_, f)| f.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(SfError::on(
            "REQUIRED_FIELD_MISSING",
            format!("Required fields are missing: [{}]", missing.join(", ")),
            missing,
        ));
    }

    // 5. Per-field checks on the values written.
    for (index, _) in &given {
        check_value(schema, store, &obj.fields[*index], &mut values[*index])?;
    }

    // 6. Platform behaviour.
    sync_countries(obj, &given, &mut values)?;
    derive_stage(obj, &given, creating, &mut values);
    for (i, field) in obj.fields.iter().enumerate() {
        if field.computed {
            values[i] = full_name(obj, &values);
        }
    }

    // 7. Unique values.
    let own_row = match target {
        Target::Update(row) => Some(row),
        Target::Create => None,
    };
    for (i, field) in obj.fields.iter().enumerate() {
        if !field.unique {
            continue;
        }
        let Some(text) = values[i].as_text() else {
            continue;
        };
        if let Some(other) = store.tables[object]
            .rows_with(i, text)
            .iter()
            .find(|r| Some(**r) != own_row)
        {
            let other_id = store.tables[object].records[*other as usize].id(obj);
            return Err(SfError::on(
                "DUPLICATE_VALUE",
                format!(
                    "duplicate value found: {} duplicates value on record with id: {other_id}",
                    field.name
                ),
                vec![field.name.clone()],
            ));
        }
    }

    // 8. System fields, then store.
    for (field, value) in obj.fields.iter().zip(values.iter_mut()) {
        intern(schema, field, value);
    }
    let user = Val::Text(Arc::clone(&schema.user_id));
    let stamp = Val::Text(now.into());
    values[obj.must("LastModifiedDate")] = stamp.clone();
    values[obj.must("SystemModstamp")] = stamp.clone();
    if let Some(i) = obj.field("LastModifiedById") {
        values[i] = user.clone();
    }
    match target {
        Target::Create => {
            let id = store.next_id(schema, object);
            values[obj.id_field] = Val::Text(id.into());
            values[obj.must("CreatedDate")] = stamp;
            values[obj.must("IsDeleted")] = Val::Bool(false);
            if let Some(i) = obj.field("CreatedById") {
                values[i] = user;
            }
            let row = store.tables[object].push(
                obj,
                Record {
                    values: values.into_boxed_slice(),
                    deleted_at: None,
                },
            );
            undo.push(Undo::Created(object));
            Ok(row)
        }
        Target::Update(row) => {
            let previous = store.tables[object].records[row as usize].clone();
            store.tables[object].replace(
                obj,
                row,
                Record {
                    values: values.into_boxed_slice(),
                    deleted_at: None,
                },
            );
            undo.push(Undo::Updated(object, row, previous));
            Ok(row)
        }
    }
}

/// Picklists, lengths, e-mail addresses, numeric ranges and lookups of one written value;
/// normalizes ids and rounds numbers to their scale.
fn check_value(
    schema: &Schema,
    store: &Store,
    field: &Field,
    value: &mut Val,
) -> Result<(), SfError> {
    let on =
        |code: &'static str, message: String| SfError::on(code, message, vec![field.name.clone()]);
    match value {
        Val::Null | Val::Bool(_) => Ok(()),
        Val::Num(n) => {
            let scale = field
                .scale
                .unwrap_or(if field.kind == FieldType::Int { 0 } else { 2 });
            if let Some(precision) = field.precision {
                let limit = 10f64.powi(i32::try_from(precision.saturating_sub(scale)).unwrap_or(0));
                if n.abs() >= limit {
                    return Err(on(
                        "NUMBER_OUTSIDE_VALID_RANGE",
                        format!(
                            "{}: value outside of valid range on numeric field: {n}",
                            field.label
                        ),
                    ));
                }
            }
            let factor = 10f64.powi(i32::try_from(scale).unwrap_or(2));
            *n = (*n * factor).round() / factor;
            Ok(())
        }
        Val::Text(text) => {
            if field.kind == FieldType::Picklist
                && field.restricted
                && !field.picklist.iter().any(|p| p.value == **text)
            {
                return Err(on(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    format!(
                        "{}: bad value for restricted picklist field: {text}",
                        field.name
                    ),
                ));
            }
            if let Some(max) = field.length
                && (field.kind.is_text())
                && text.chars().count() > max
            {
                return Err(on(
                    "STRING_TOO_LONG",
                    format!(
                        "{}: data value too large: {text} (max length={max})",
                        field.name
                    ),
                ));
            }
            if field.kind == FieldType::Email && !valid_email(text) {
                return Err(on(
                    "INVALID_EMAIL_ADDRESS",
                    format!("{}: invalid email address: {text}", field.name),
                ));
            }
            if field.kind == FieldType::Reference {
                let id = check_reference(schema, store, field, text)?;
                *value = Val::Text(id.into());
            }
            Ok(())
        }
    }
}

/// Swaps a picklist value or the user id for the shared copy, so 100k records holding
/// "USD" or the owner id hold one string between them.
fn intern(schema: &Schema, field: &Field, value: &mut Val) {
    let Val::Text(text) = value else {
        return;
    };
    if field.kind == FieldType::Picklist {
        if let Some(index) = field.picklist.iter().position(|p| p.value == **text) {
            *value = Val::Text(Arc::clone(&field.interned[index]));
        }
    } else if field.kind == FieldType::Reference && **text == *schema.user_id {
        *value = Val::Text(Arc::clone(&schema.user_id));
    }
}

fn valid_email(text: &str) -> bool {
    let mut parts = text.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text.chars().any(char::is_whitespace)
}

/// A lookup value: well-formed (`MALFORMED_ID`), of the right object
/// (`FIELD_INTEGRITY_EXCEPTION`), existing (`INVALID_CROSS_REFERENCE_KEY`) and not deleted
/// (`ENTITY_IS_DELETED`). Returns the canonical 18-character id.
fn check_reference(
    schema: &Schema,
    store: &Store,
    field: &Field,
    text: &str,
) -> Result<String, SfError> {
    let on =
        |code: &'static str, message: String| SfError::on(code, message, vec![field.name.clone()]);
    let Some(id) = ids::normalize(text) else {
        return Err(on(
            "MALFORMED_ID",
            format!("{}: id value of incorrect type: {text}", field.label),
        ));
    };
    let target = field.reference_to.as_deref().unwrap_or("");
    if target == "User" {
        if id.starts_with("005") {
            return if id == schema.user.id {
                Ok(id)
            } else {
                Err(on(
                    "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id".into(),
                ))
            };
        }
    } else if let Some(object) = schema.object(target)
        && id.starts_with(&schema.objects[object].key_prefix)
    {
        return match store.tables[object].row(&id) {
            None => Err(on(
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id".into(),
            )),
            Some(row)
                if store.tables[object].records[row as usize]
                    .deleted_at
                    .is_some() =>
            {
                Err(on("ENTITY_IS_DELETED", "entity is deleted".into()))
            }
            Some(_) => Ok(id),
        };
    }
    Err(on(
        "FIELD_INTEGRITY_EXCEPTION",
        format!("{}: id value of incorrect type: {text}", field.label),
    ))
}

/// Keeps an ISO country-code picklist and its text field in step, as orgs with State and
/// Country/Territory Picklists do: setting either fills the other; a country name that is
/// not in the list, or a pair that disagrees, is a `FIELD_INTEGRITY_EXCEPTION`.
fn sync_countries(obj: &Object, given: &[(usize, Val)], values: &mut [Val]) -> Result<(), SfError> {
    for (code_index, field) in obj.fields.iter().enumerate() {
        let Some(name_index) = field.country_name_field else {
            continue;
        };
        let code_given = given.iter().any(|(i, _)| *i == code_index);
        let name_given = given.iter().any(|(i, _)| *i == name_index);
        let problem = || {
            SfError::on(
                "FIELD_INTEGRITY_EXCEPTION",
                "There's a problem with this country, even though it may appear correct. Please select a country/territory from the list of valid countries.",
                vec![obj.fields[name_index].name.clone()],
            )
        };
        let find = |text: &str| {
            field
                .picklist
                .iter()
                .find(|p| p.label.eq_ignore_ascii_case(text) || p.value.eq_ignore_ascii_case(text))
        };
        if name_given {
            match values[name_index].as_text().map(&find) {
                None => {
                    if !code_given {
                        values[code_index] = Val::Null;
                    }
                }
                Some(None) => return Err(problem()),
                Some(Some(entry)) => {
                    if code_given
                        && let Some(code) = values[code_index].as_text()
                        && code != entry.value
                    {
                        return Err(problem());
                    }
                    values[code_index] = Val::Text(entry.value.as_str().into());
                    values[name_index] = Val::Text(entry.label.as_str().into());
                }
            }
        } else if code_given {
            values[name_index] = match values[code_index].as_text().and_then(find) {
                Some(entry) => Val::Text(entry.label.as_str().into()),
                None => Val::Null,
            };
        }
    }
    Ok(())
}

/// Opportunity stages carry IsClosed, IsWon and default Probability and Forecast
/// Category; a stage change resets the latter two unless the same request sets them.
fn derive_stage(obj: &Object, given: &[(usize, Val)], creating: bool, values: &mut [Val]) {
    let Some(stage_index) = obj.field("StageName") else {
        return;
    };
    if !creating && !given.iter().any(|(i, _)| *i == stage_index) {
        return;
    }
    let Some(stage) = values[stage_index].as_text() else {
        return;
    };
    let Some(entry) = obj.fields[stage_index]
        .picklist
        .iter()
        .find(|p| p.value == stage)
        .cloned()
    else {
        return;
    };
    let set_by_request = |name: &str| {
        obj.field(name)
            .is_some_and(|i| given.iter().any(|(g, _)| *g == i))
    };
    if let Some(i) = obj.field("IsClosed") {
        values[i] = Val::Bool(entry.closed.unwrap_or(false));
    }
    if let Some(i) = obj.field("IsWon") {
        values[i] = Val::Bool(entry.won.unwrap_or(false));
    }
    if let (Some(i), Some(p)) = (obj.field("Probability"), entry.probability)
        && !set_by_request("Probability")
    {
        values[i] = Val::Num(p);
    }
    if let (Some(i), Some(f)) = (obj.field("ForecastCategoryName"), &entry.forecast_category)
        && !set_by_request("ForecastCategoryName")
    {
        values[i] = Val::Text(f.as_str().into());
    }
}

fn full_name(obj: &Object, values: &[Val]) -> Val {
    let part = |name: &str| {
        obj.field(name)
            .and_then(|i| values[i].as_text())
            .unwrap_or("")
    };
    let name = format!("{} {}", part("FirstName"), part("LastName"));
    let name = name.trim();
    if name.is_empty() {
        Val::Null
    } else {
        Val::Text(name.into())
    }
}

/// Deletes a live record, then cascades: deletes records whose cascading lookups point at
/// it and clears plain lookups.
pub fn delete(schema: &Schema, store: &mut Store, object: usize, row: u32, now: &str) {
    let obj = &schema.objects[object];
    let Some(record) = store.tables[object].records.get(row as usize) else {
        return;
    };
    if record.deleted_at.is_some() {
        return;
    }
    let id = record.id(obj).to_owned();
    let mut deleted = record.clone();
    deleted.deleted_at = Some(now.into());
    deleted.values[obj.must("IsDeleted")] = Val::Bool(true);
    deleted.values[obj.must("SystemModstamp")] = Val::Text(now.into());
    store.tables[object].replace(obj, row, deleted);

    for (child_index, child) in schema.objects.iter().enumerate() {
        for (field_index, field) in child.fields.iter().enumerate() {
            let Some(on_delete) = field.on_delete else {
                continue;
            };
            if field.reference_to.as_deref() != Some(obj.name.as_str()) {
                continue;
            }
            let rows: Vec<u32> = store.tables[child_index]
                .records
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.deleted_at.is_none() && r.values[field_index].as_text() == Some(id.as_str())
                })
                .filter_map(|(i, _)| u32::try_from(i).ok())
                .collect();
            for child_row in rows {
                match on_delete {
                    OnDelete::Cascade => delete(schema, store, child_index, child_row, now),
                    OnDelete::SetNull => {
                        let mut record =
                            store.tables[child_index].records[child_row as usize].clone();
                        record.values[field_index] = Val::Null;
                        record.values[child.must("SystemModstamp")] = Val::Text(now.into());
                        store.tables[child_index].replace(child, child_row, record);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_points_after_the_value() {
        let raw = "{\"Name\":\"x\",\n \"CloseDate\": \"abc\"}";
        assert_eq!(locate(raw, "CloseDate"), (2, 20));
    }

    #[test]
    fn salesforce_offsets_without_colon_parse() {
        let dt = parse_datetime("2013-05-20T20:49:32.000+0000").unwrap();
        assert_eq!(format_datetime(&dt), "2013-05-20T20:49:32.000+0000");
        let dt = parse_datetime("2024-01-01T00:00:00-05:00").unwrap();
        assert_eq!(format_datetime(&dt), "2024-01-01T05:00:00.000+0000");
    }

    #[test]
    fn body_keeps_member_order() {
        let body: Body = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
        assert_eq!(body.0[0].0, "b");
    }
}
