//! Rows as the Web API returns them: `@odata.etag`, the selected columns (all of them,
//! nulls included, without `$select`), lookups as `_x_value`, optional annotations
//! (`Prefer: odata.include-annotations`) and `$expand`ed related rows.

use serde_json::{Map, Value, json};

use super::DvError;
use super::schema::{ColumnDef, ColumnType, Schema, Table};
use super::store::{LOOKUP_TABLE, Store};
use crate::mapping::transforms::datetime::DateTime;

const FORMATTED: &str = "@OData.Community.Display.V1.FormattedValue";
const ASSOCIATED: &str = "@Microsoft.Dynamics.CRM.associatednavigationproperty";

/// Which instance annotations the client asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Annotations {
    /// `OData.Community.Display.V1.FormattedValue`.
    pub formatted: bool,
    /// `Microsoft.Dynamics.CRM.lookuplogicalname` and `…associatednavigationproperty`.
    pub lookups: bool,
}

impl Annotations {
    /// Parses the `odata.include-annotations="…"` preference: a comma-separated list of
    /// names with `*` wildcards; names starting with `-` exclude.
    pub fn parse(pattern: &str) -> Annotations {
        let mut out = Annotations::default();
        for item in pattern.split(',').map(str::trim) {
            if item.starts_with('-') {
                continue;
            }
            let matches = |name: &str| match item.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => item == name,
            };
            out.formatted |= matches("OData.Community.Display.V1.FormattedValue");
            out.lookups |= matches("Microsoft.Dynamics.CRM.lookuplogicalname")
                || matches("Microsoft.Dynamics.CRM.associatednavigationproperty");
        }
        out
    }

    /// Whether any annotation is on (which also disables `304 Not Modified`).
    pub fn any(self) -> bool {
        self.formatted || self.lookups
    }
}

/// One `$expand` item.
#[derive(Debug, Clone)]
pub struct Expand {
    /// Navigation property name.
    pub name: String,
    /// Properties of the related rows to return (`None`: all).
    pub select: Option<Vec<String>>,
    /// Single-valued (lookup) or collection-valued (children).
    pub kind: ExpandKind,
}

/// What an expanded navigation property points to.
#[derive(Debug, Clone)]
pub enum ExpandKind {
    /// The row a lookup column of this row points to.
    Single {
        /// `_x_value` property of this row.
        property: String,
        /// Target table logical name.
        target: String,
    },
    /// Rows of `table` whose lookup `property` points to this row.
    Collection {
        /// Child table logical name.
        table: String,
        /// `_x_value` property of the child.
        property: String,
    },
}

/// How to shape rows for a response.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Selected properties (`None`: every column).
    pub select: Option<Vec<String>>,
    /// `$expand` items.
    pub expand: Vec<Expand>,
    /// Requested annotations.
    pub annotations: Annotations,
}

/// "Could not find a property named …": the query-option flavour of an unknown column.
pub fn unknown_property(table: &Table, name: &str) -> DvError {
    DvError::bad_request(
        "0x80060888",
        &format!(
            "Could not find a property named '{name}' on type '{}'.",
            table.type_name()
        ),
    )
}

/// Validates a `$select` list: non-lookup column names and `_x_value` lookup properties.
pub fn parse_select(table: &Table, text: &str) -> Result<Vec<String>, DvError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(DvError::bad_request(
                "0x80060888",
                &format!("Syntax error: empty item in $select '{text}'."),
            ));
        }
        if item == "*" {
            return Ok(table.columns().iter().map(ColumnDef::property).collect());
        }
        if table.by_property(item).is_none() {
            return Err(unknown_property(table, item));
        }
        if !out.iter().any(|s| s == item) {
            out.push(item.to_owned());
        }
    }
    Ok(out)
}

/// Parses `$expand=nav1($select=a,b),nav2`.
pub fn parse_expand(schema: &Schema, table: &Table, text: &str) -> Result<Vec<Expand>, DvError> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    for item in items {
        let item = item.trim();
        let (name, options) = match item.find('(') {
            Some(open) => (
                item[..open].trim(),
                item[open + 1..].strip_suffix(')').ok_or_else(|| {
                    DvError::bad_request(
                        "0x80060888",
                        &format!("Syntax error in $expand '{text}'."),
                    )
                })?,
            ),
            None => (item, ""),
        };
        let (kind, related) = if let Some((column, target)) = table.navigation(name) {
            let related = schema
                .table(target)
                .ok_or_else(|| DvError::internal("navigation target missing"))?;
            (
                ExpandKind::Single {
                    property: column.property(),
                    target: target.to_owned(),
                },
                related,
            )
        } else if let Some(collection) = table.collection(name) {
            let related = schema
                .table(&collection.table)
                .ok_or_else(|| DvError::internal("collection table missing"))?;
            (
                ExpandKind::Collection {
                    table: collection.table.clone(),
                    property: format!("_{}_value", collection.lookup),
                },
                related,
            )
        } else {
            return Err(unknown_property(table, name));
        };
        let mut select = None;
        for option in options.split(';').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            match key {
                "$select" => select = Some(parse_select(related, value)?),
                other => {
                    return Err(DvError::bad_request(
                        "0x80060888",
                        &format!(
                            "The query option '{other}' inside $expand is not supported by the sandbox; only $select is."
                        ),
                    ));
                }
            }
        }
        out.push(Expand {
            name: name.to_owned(),
            select,
            kind,
        });
    }
    Ok(out)
}

/// `W/"<versionnumber>"`.
pub fn etag(row: &Value) -> String {
    format!(
        "W/\"{}\"",
        row.get("versionnumber")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    )
}

fn thousands(integer: u64) -> String {
    let digits = integer.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn format_money(amount: f64, symbol: &str, precision: usize) -> String {
    let negative = amount < 0.0;
    let text = format!("{:.*}", precision, amount.abs());
    let (integer, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let integer = thousands(integer.parse().unwrap_or(0));
    let sign = if negative { "-" } else { "" };
    if fraction.is_empty() {
        format!("{sign}{symbol}{integer}")
    } else {
        format!("{sign}{symbol}{integer}.{fraction}")
    }
}

/// The label Dataverse would show for a value (`FormattedValue` annotation).
fn formatted(
    schema: &Schema,
    store: &Store,
    column: &ColumnDef,
    row: &Value,
    value: &Value,
) -> Option<String> {
    match column.kind {
        ColumnType::Picklist => value
            .as_i64()
            .and_then(|v| column.option(v))
            .map(|o| o.label.clone()),
        ColumnType::Boolean => value
            .as_bool()
            .map(|b| if b { "Yes" } else { "No" }.to_owned()),
        ColumnType::Lookup | ColumnType::Customer => {
            let target = row
                .get(format!("{}{LOOKUP_TABLE}", column.property()))
                .and_then(Value::as_str)
                .and_then(|t| schema.table(t))?;
            let related = store.get(target, value.as_str()?)?;
            related
                .get(&target.def.primary_name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        }
        ColumnType::Money => {
            let currency = row
                .get("_transactioncurrencyid_value")
                .and_then(Value::as_str)
                .and_then(|id| store.get(schema.table("transactioncurrency")?, id));
            let symbol = currency
                .and_then(|c| c.get("currencysymbol"))
                .and_then(Value::as_str)
                .unwrap_or("$");
            let precision = currency
                .and_then(|c| c.get("currencyprecision"))
                .and_then(Value::as_u64)
                .unwrap_or(2);
            value
                .as_f64()
                .map(|v| format_money(v, symbol, usize::try_from(precision).unwrap_or(2)))
        }
        ColumnType::Integer | ColumnType::BigInt => value.as_i64().map(|v| {
            format!(
                "{}{}",
                if v < 0 { "-" } else { "" },
                thousands(v.unsigned_abs())
            )
        }),
        ColumnType::DateOnly | ColumnType::DateTime => {
            let t = DateTime::parse(value.as_str()?)?;
            if column.kind == ColumnType::DateOnly {
                Some(format!("{}/{}/{}", t.month, t.day, t.year))
            } else {
                let (hour, meridiem) = match t.hour {
                    0 => (12, "AM"),
                    h @ 1..=11 => (h, "AM"),
                    12 => (12, "PM"),
                    h => (h - 12, "PM"),
                };
                Some(format!(
                    "{}/{}/{} {}:{:02} {}",
                    t.month, t.day, t.year, hour, t.minute, meridiem
                ))
            }
        }
        _ => None,
    }
}

/// A row shaped for a response.
pub fn shape_row(
    schema: &Schema,
    store: &Store,
    table: &Table,
    row: &Value,
    shape: &Shape,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("@odata.etag".into(), json!(etag(row)));
    let selected: Vec<&ColumnDef> = match &shape.select {
        Some(select) => select.iter().filter_map(|p| table.by_property(p)).collect(),
        None => table.columns().iter().collect(),
    };
    for column in selected {
        let property = column.property();
        let value = row.get(&property).cloned().unwrap_or(Value::Null);
        if !value.is_null() {
            if shape.annotations.formatted
                && let Some(text) = formatted(schema, store, column, row, &value)
            {
                out.insert(format!("{property}{FORMATTED}"), json!(text));
            }
            if shape.annotations.lookups && column.kind.is_lookup() {
                let target = row.get(format!("{property}{LOOKUP_TABLE}")).cloned();
                if let Some(Value::String(target)) = target {
                    if let Some(t) = column.targets.iter().find(|t| t.table == target) {
                        out.insert(format!("{property}{ASSOCIATED}"), json!(t.navigation));
                    }
                    out.insert(format!("{property}{LOOKUP_TABLE}"), json!(target));
                }
            }
        }
        out.insert(property, value);
    }
    // The primary id is always returned, selected or not.
    out.insert(
        table.id().to_owned(),
        row.get(table.id()).cloned().unwrap_or(Value::Null),
    );
    for expand in &shape.expand {
        let inner = Shape {
            select: expand.select.clone(),
            expand: Vec::new(),
            annotations: shape.annotations,
        };
        let value = match &expand.kind {
            ExpandKind::Single { property, target } => {
                let related_table = row
                    .get(format!("{property}{LOOKUP_TABLE}"))
                    .and_then(Value::as_str)
                    .unwrap_or(target);
                match (
                    schema.table(related_table),
                    row.get(property).and_then(Value::as_str),
                ) {
                    (Some(t), Some(id)) if related_table == target => {
                        store.get(t, id).map_or(Value::Null, |r| {
                            Value::Object(shape_row(schema, store, t, r, &inner))
                        })
                    }
                    _ => Value::Null,
                }
            }
            ExpandKind::Collection {
                table: child,
                property,
            } => {
                let own_id = row.get(table.id()).and_then(Value::as_str).unwrap_or("");
                match (schema.table(child), store.rows_of(child)) {
                    (Some(t), Some(rows)) => Value::Array(
                        rows.rows
                            .values()
                            .filter(|r| r.get(property).and_then(Value::as_str) == Some(own_id))
                            .map(|r| Value::Object(shape_row(schema, store, t, r, &inner)))
                            .collect(),
                    ),
                    _ => Value::Array(Vec::new()),
                }
            }
        };
        out.insert(expand.name.clone(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_patterns() {
        assert_eq!(
            Annotations::parse("*"),
            Annotations {
                formatted: true,
                lookups: true
            }
        );
        let f = Annotations::parse("OData.Community.Display.V1.FormattedValue");
        assert!(f.formatted && !f.lookups);
        let l = Annotations::parse("Microsoft.Dynamics.CRM.*");
        assert!(!l.formatted && l.lookups);
    }

    #[test]
    fn money_format() {
        assert_eq!(format_money(1234567.5, "$", 2), "$1,234,567.50");
        assert_eq!(format_money(-5.0, "€", 2), "-€5.00");
        assert_eq!(format_money(1000.0, "¥", 0), "¥1,000");
    }
}
