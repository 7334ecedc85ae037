//! Records in memory: one [`Table`] per emulated object, values stored densely in schema
//! field order as the compact [`Val`] (24 bytes), so 100k records stay in the tens of
//! megabytes. Dates and date-times are kept as their canonical Salesforce strings
//! (`2024-01-31`, `2024-01-31T10:00:00.000+0000`, always UTC), which sort correctly as
//! text.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Number, Value};

use super::ids;
use super::schema::{FieldType, Object, Schema};

/// One stored field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// Empty (Salesforce stores `""` as null too).
    Null,
    /// Checkbox.
    Bool(bool),
    /// Any number type.
    Num(f64),
    /// Text, picklist, id, date and date-time values. Shared: a record's three
    /// timestamps, the owner id and picklist values point at one allocation each.
    Text(Arc<str>),
}

impl Val {
    /// Text of a text-like value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the value is null.
    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    /// The JSON Salesforce returns for a field of `kind` holding this value: integers as
    /// integers, other numbers as JSON numbers, null for empty.
    pub fn to_json(&self, kind: FieldType) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => {
                if kind == FieldType::Int && n.fract() == 0.0 && n.abs() < 9.0e15 {
                    Value::from(*n as i64)
                } else {
                    Number::from_f64(*n).map_or(Value::Null, Value::Number)
                }
            }
            Val::Text(s) => Value::String(s.to_string()),
        }
    }

    /// Parses a snapshot value written by [`Val::to_json`].
    fn from_json(value: &Value) -> Val {
        match value {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(n.as_f64().unwrap_or(0.0)),
            Value::String(s) => Val::Text(s.as_str().into()),
            other => Val::Text(other.to_string().into()),
        }
    }
}

/// One record; deleted records stay (for `queryAll`, `ENTITY_IS_DELETED` and `/deleted`).
#[derive(Debug, Clone)]
pub struct Record {
    /// Values in schema field order.
    pub values: Box<[Val]>,
    /// When it was deleted, in Salesforce format.
    pub deleted_at: Option<Box<str>>,
}

impl Record {
    /// The 18-character id.
    pub fn id<'a>(&'a self, object: &Object) -> &'a str {
        self.values[object.id_field].as_text().unwrap_or("")
    }
}

/// One change to a table, recorded while a transaction is open so it can be undone.
#[derive(Debug)]
enum Change {
    /// A record was appended.
    Pushed,
    /// The record in this row was replaced; this is how it was.
    Replaced(u32, Record),
    /// The last record was removed; this is it.
    Popped(Record),
}

/// The records of one object with their id and external-id indexes.
#[derive(Debug, Default)]
pub struct Table {
    /// All records in creation order (creation order is also the default query order).
    pub records: Vec<Record>,
    by_id: HashMap<Arc<str>, u32>,
    /// Lower-cased values of External ID and unique fields → live rows holding them.
    keys: HashMap<usize, HashMap<String, Vec<u32>>>,
    /// Changes since [`Store::begin`], oldest first; `None` outside a transaction. Kept
    /// here, at the only three places records change, so every write path (creates,
    /// updates, cascades, timestamps) is covered without each having to log its own undo.
    journal: Option<Vec<Change>>,
}

impl Table {
    /// The row of a canonical 18-character id.
    pub fn row(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// Live rows whose External ID or unique `field` equals `value` case-insensitively.
    pub fn rows_with(&self, field: usize, value: &str) -> &[u32] {
        self.keys
            .get(&field)
            .and_then(|index| index.get(&value.to_lowercase()))
            .map_or(&[], Vec::as_slice)
    }

    /// Adds a record, indexing it.
    pub fn push(&mut self, object: &Object, record: Record) -> u32 {
        let row = u32::try_from(self.records.len()).unwrap_or(u32::MAX);
        if let Val::Text(id) = &record.values[object.id_field] {
            self.by_id.insert(Arc::clone(id), row);
        }
        self.records.push(record);
        self.index(object, row, true);
        if let Some(journal) = &mut self.journal {
            journal.push(Change::Pushed);
        }
        row
    }

    /// Removes the last record (rolling back a create).
    pub fn pop(&mut self, object: &Object) {
        let Some(last) = self.records.len().checked_sub(1) else {
            return;
        };
        let row = u32::try_from(last).unwrap_or(u32::MAX);
        self.index(object, row, false);
        if let Some(record) = self.records.pop() {
            self.by_id.remove(record.id(object));
            if let Some(journal) = &mut self.journal {
                journal.push(Change::Popped(record));
            }
        }
    }

    /// Replaces a record's values and deletion mark, keeping the indexes right.
    pub fn replace(&mut self, object: &Object, row: u32, record: Record) {
        self.index(object, row, false);
        if let Some(slot) = self.records.get_mut(row as usize) {
            let previous = std::mem::replace(slot, record);
            if let Some(journal) = &mut self.journal {
                journal.push(Change::Replaced(row, previous));
            }
        }
        self.index(object, row, true);
    }

    /// Undoes the journal, newest change first, and closes it.
    fn undo(&mut self, object: &Object) {
        // Taken first so the undoing itself is not journaled.
        let Some(journal) = self.journal.take() else {
            return;
        };
        for change in journal.into_iter().rev() {
            match change {
                Change::Pushed => self.pop(object),
                Change::Replaced(row, previous) => self.replace(object, row, previous),
                Change::Popped(record) => {
                    self.push(object, record);
                }
            }
        }
    }

    /// Adds (`add`) or removes a live row's key values to or from the indexes.
    fn index(&mut self, object: &Object, row: u32, add: bool) {
        let Some(record) = self.records.get(row as usize) else {
            return;
        };
        if record.deleted_at.is_some() {
            return;
        }
        for (i, field) in object.fields.iter().enumerate() {
            if !(field.external_id || field.unique) {
                continue;
            }
            let Some(text) = record.values[i].as_text() else {
                continue;
            };
            let key = text.to_lowercase();
            let index = self.keys.entry(i).or_default();
            if add {
                index.entry(key).or_default().push(row);
            } else if let Some(rows) = index.get_mut(&key) {
                rows.retain(|r| *r != row);
                if rows.is_empty() {
                    index.remove(&key);
                }
            }
        }
    }
}

/// Every object's table.
#[derive(Debug, Default)]
pub struct Store {
    /// One table per schema object, same order.
    pub tables: Vec<Table>,
}

impl Store {
    /// Empty tables for `schema`.
    pub fn new(schema: &Schema) -> Store {
        Store {
            tables: schema.objects.iter().map(|_| Table::default()).collect(),
        }
    }

    /// The next id for `object` (a counter per object: records are never purged, so the
    /// table length is the number of records ever made).
    pub fn next_id(&self, schema: &Schema, object: usize) -> String {
        let table = &self.tables[object];
        let mut number = table.records.len() as u64 + 1;
        loop {
            let id = ids::generate(&schema.objects[object].key_prefix, number);
            if table.row(&id).is_none() {
                return id;
            }
            // Restored records with ids the sandbox did not make can occupy a number.
            number += 1;
        }
    }

    /// Opens a transaction: from now on every change is journaled until
    /// [`Store::commit`] keeps or [`Store::roll_back`] undoes them. Callers hold the data
    /// lock or the composite gate for its whole length: nothing else may write meanwhile,
    /// or rolling back would also undo that.
    pub fn begin(&mut self) {
        for table in &mut self.tables {
            table.journal = Some(Vec::new());
        }
    }

    /// Keeps the changes since [`Store::begin`] and closes the transaction.
    pub fn commit(&mut self) {
        for table in &mut self.tables {
            table.journal = None;
        }
    }

    /// Undoes every change since [`Store::begin`] (records, indexes, timestamps — the
    /// tables are as they were) and closes the transaction. Without an open transaction
    /// (e.g. the store was replaced by a reset meanwhile) it does nothing.
    pub fn roll_back(&mut self, schema: &Schema) {
        for (object, table) in schema.objects.iter().zip(&mut self.tables) {
            table.undo(object);
        }
    }

    /// Every record as `{"Opportunity": [{"Id": …, …, "_deletedAt": …}], …}`.
    pub fn snapshot(&self, schema: &Schema) -> Value {
        let mut out = Map::new();
        for (object, table) in schema.objects.iter().zip(&self.tables) {
            let rows: Vec<Value> = table
                .records
                .iter()
                .map(|record| {
                    let mut map = Map::new();
                    for (field, value) in object.fields.iter().zip(record.values.iter()) {
                        if !value.is_null() {
                            map.insert(field.name.clone(), value.to_json(field.kind));
                        }
                    }
                    if let Some(at) = &record.deleted_at {
                        map.insert("_deletedAt".into(), Value::String(at.to_string()));
                    }
                    Value::Object(map)
                })
                .collect();
            out.insert(object.name.clone(), Value::Array(rows));
        }
        Value::Object(out)
    }

    /// Inverse of [`Store::snapshot`]; `Null` gives empty tables.
    pub fn restore(schema: &Schema, value: &Value) -> anyhow::Result<Store> {
        let mut store = Store::new(schema);
        let Some(objects) = value.as_object() else {
            if value.is_null() {
                return Ok(store);
            }
            anyhow::bail!("expected an object of record lists");
        };
        for (name, rows) in objects {
            let index = schema
                .object(name)
                .ok_or_else(|| anyhow::anyhow!("unknown object {name}"))?;
            let object = &schema.objects[index];
            let rows = rows
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("{name}: expected a list of records"))?;
            let mut loaded: Vec<Record> = Vec::with_capacity(rows.len());
            for row in rows {
                let map = row
                    .as_object()
                    .ok_or_else(|| anyhow::anyhow!("{name}: expected records to be objects"))?;
                let mut values = vec![Val::Null; object.fields.len()];
                let mut deleted_at = None;
                for (key, value) in map {
                    if key == "_deletedAt" {
                        deleted_at = value.as_str().map(Into::into);
                        continue;
                    }
                    let field = object
                        .field(key)
                        .ok_or_else(|| anyhow::anyhow!("{name}: unknown field {key}"))?;
                    values[field] = Val::from_json(value);
                }
                let id = values[object.id_field]
                    .as_text()
                    .and_then(ids::normalize)
                    .ok_or_else(|| anyhow::anyhow!("{name}: record without a valid Id"))?;
                values[object.id_field] = Val::Text(id.into());
                loaded.push(Record {
                    values: values.into_boxed_slice(),
                    deleted_at,
                });
            }
            // Keep creation order (ids encode it) so the id counter stays ahead of them.
            loaded.sort_by_key(|r| ids::number(r.id(object)).unwrap_or(0));
            for record in loaded {
                store.tables[index].push(object, record);
            }
        }
        Ok(store)
    }
}
