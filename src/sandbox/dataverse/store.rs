//! Rows in memory: one ordered map per table, keyed by lower-case GUID, plus a unique
//! index per alternate key. Rows are kept in their wire form (`_x_value` for lookups, the
//! lookup target in the `…@Microsoft.Dynamics.CRM.lookuplogicalname` annotation), so
//! `$filter` runs on them directly and reads only pick and annotate.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value, json};

use super::DvError;
use super::schema::{Schema, Table};

/// Annotation suffix under which a row remembers which table a lookup points to.
pub const LOOKUP_TABLE: &str = "@Microsoft.Dynamics.CRM.lookuplogicalname";

/// Timestamp of the rows every organization has (currencies).
const ORG_CREATED: &str = "2020-01-01T00:00:00Z";

/// The rows of one table.
#[derive(Debug, Default, Clone)]
pub struct Rows {
    /// Row by lower-case id; iteration order is the default query order.
    pub rows: BTreeMap<String, Value>,
    /// One index per alternate key: normalized key values → row id.
    keys: Vec<HashMap<String, String>>,
    /// Tombstones of deleted rows: id → the row version the deletion got, so a change
    /// tracking delta can report deletions that happened after its token.
    pub deleted: BTreeMap<String, u64>,
    /// Equality indexes, built the first time a `$filter` asks `column eq 'text'`: column →
    /// case-folded text → ids. Without them every lookup scanned the table, and with 10 000
    /// opportunities the sandbox, not the engine, was the bound of a backfill (bench/run).
    eq: HashMap<String, HashMap<String, BTreeSet<String>>>,
}

/// Text as Dataverse's default collation compares it: case-insensitively (the same folding
/// as the `$filter` evaluator's).
fn fold(text: &str) -> String {
    text.chars().flat_map(char::to_lowercase).collect()
}

impl Rows {
    /// Adds a row's values to the equality indexes.
    fn index_eq(&mut self, id: &str, row: &Value) {
        for (column, index) in &mut self.eq {
            if let Some(text) = row.get(column).and_then(Value::as_str) {
                index.entry(fold(text)).or_default().insert(id.to_owned());
            }
        }
    }

    /// Takes a row's values out of the equality indexes.
    fn unindex_eq(&mut self, id: &str, row: &Value) {
        for (column, index) in &mut self.eq {
            if let Some(text) = row.get(column).and_then(Value::as_str) {
                let key = fold(text);
                if let Some(ids) = index.get_mut(&key) {
                    ids.remove(id);
                    if ids.is_empty() {
                        index.remove(&key);
                    }
                }
            }
        }
    }
}

/// Every table's rows and the organization-wide row version counter.
///
/// A `$batch` change set runs between [`Store::begin`] and [`Store::commit`]; when it fails,
/// [`Store::rollback`] returns rows, alternate-key indexes, tombstones and the version
/// counter to where they were, so change tracking never sees a version handed out by a
/// rolled-back write. The rollback replays a journal of the rows the change set touched: a
/// copy of the whole store per change set (what this did before) made every write O(rows),
/// and the sandbox, not the engine, the bound of a 10 000-referral backfill (bench/run).
#[derive(Debug, Clone)]
pub struct Store {
    tables: HashMap<String, Rows>,
    /// Last row version handed out (Dataverse's rowversion is database-wide).
    version: u64,
    /// What the running change set changed, oldest first; `None` outside change sets.
    journal: Option<Journal>,
}

/// The undo log of a change set.
#[derive(Debug, Clone)]
struct Journal {
    /// The version counter when the change set began.
    version: u64,
    /// (table, row id, the row before, its tombstone before), in the order of the writes.
    rows: Vec<(String, String, Option<Value>, Option<u64>)>,
}

/// How a request names a row: by primary id or by alternate-key values.
#[derive(Debug, Clone, PartialEq)]
pub enum Locator {
    /// `accounts(<guid>)`.
    Id(String),
    /// `accounts(accountnumber='A1')` — column, value pairs.
    Key(Vec<(String, Value)>),
}

/// Normalized alternate-key value: strings compare case-insensitively in Dataverse's
/// default collation, GUIDs always do.
fn key_part(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.to_lowercase()),
        other => Some(other.to_string()),
    }
}

/// The index entry of `row` for `columns`, `None` when a key column is empty (such rows
/// are not indexed, like a filtered unique index).
fn key_of(table: &Table, row: &Value, columns: &[String]) -> Option<String> {
    let mut parts = Vec::with_capacity(columns.len());
    for column in columns {
        let property = table.column(column)?.property();
        parts.push(key_part(row.get(&property)?)?);
    }
    Some(parts.join("\u{1f}"))
}

impl Store {
    /// An organization with only its built-in rows.
    pub fn new(schema: &Schema) -> Store {
        let mut store = Store {
            tables: HashMap::new(),
            version: 1_000_000,
            journal: None,
        };
        for table in schema.tables() {
            store
                .tables
                .insert(table.logical().to_owned(), Rows::default());
            for row in &table.def.rows {
                let mut row = row.clone();
                row.insert("createdon".into(), json!(ORG_CREATED));
                row.insert("modifiedon".into(), json!(ORG_CREATED));
                for column in table.columns() {
                    if !row.contains_key(&column.name)
                        && let Some(default) = &column.default
                    {
                        row.insert(column.name.clone(), default.clone());
                    }
                }
                if table.column("statuscode").is_some() && !row.contains_key("statuscode") {
                    row.insert("statuscode".into(), json!(1));
                }
                let version = store.next_version();
                row.insert("versionnumber".into(), json!(version));
                // Built-in rows are checked by the schema tests; a bad one is skipped
                // rather than taking the sandbox down.
                let _ = store.insert(table, Value::Object(row));
            }
        }
        store
    }

    /// Starts a change set: every write until [`Store::commit`] can be undone.
    pub fn begin(&mut self) {
        self.journal = Some(Journal {
            version: self.version,
            rows: Vec::new(),
        });
    }

    /// Ends a change set, keeping its writes.
    pub fn commit(&mut self) {
        self.journal = None;
    }

    /// Ends a change set, undoing its writes: each row it touched goes back to its state
    /// before the first write, newest write first.
    pub fn rollback(&mut self, schema: &Schema) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        for (logical, id, row, tombstone) in journal.rows.into_iter().rev() {
            let Some(table) = schema.table(&logical) else {
                continue;
            };
            self.remove(table, &id);
            let rows = self.tables.entry(logical).or_default();
            if let Some(row) = row {
                let entries: Vec<(usize, String)> = table
                    .def
                    .alternate_keys
                    .iter()
                    .enumerate()
                    .filter_map(|(i, key)| Some((i, key_of(table, &row, &key.columns)?)))
                    .collect();
                Self::index(rows, entries, &id);
                rows.index_eq(&id, &row);
                rows.rows.insert(id.clone(), row);
            }
            match tombstone {
                Some(version) => rows.deleted.insert(id, version),
                None => rows.deleted.remove(&id),
            };
        }
        self.version = journal.version;
    }

    /// Notes the state of a row about to be written, inside a change set.
    fn record(&mut self, logical: &str, id: &str) {
        if let Some(journal) = self.journal.as_mut() {
            let rows = self.tables.get(logical);
            journal.rows.push((
                logical.to_owned(),
                id.to_owned(),
                rows.and_then(|r| r.rows.get(id)).cloned(),
                rows.and_then(|r| r.deleted.get(id)).copied(),
            ));
        }
    }

    /// Ids (in the table's order) of the rows whose `column` holds `text`, compared
    /// case-insensitively, through the column's equality index (built on first use, then
    /// kept up to date by every write).
    pub fn ids_where_eq(&mut self, table: &Table, column: &str, text: &str) -> Vec<String> {
        let Some(rows) = self.tables.get_mut(table.logical()) else {
            return Vec::new();
        };
        if !rows.eq.contains_key(column) {
            let mut index: HashMap<String, BTreeSet<String>> = HashMap::new();
            for (id, row) in &rows.rows {
                if let Some(value) = row.get(column).and_then(Value::as_str) {
                    index.entry(fold(value)).or_default().insert(id.clone());
                }
            }
            rows.eq.insert(column.to_owned(), index);
        }
        rows.eq
            .get(column)
            .and_then(|index| index.get(&fold(text)))
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A new row version.
    pub fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// The last row version handed out: everything up to it has happened (the
    /// watermark of a change tracking token).
    pub fn current_version(&self) -> u64 {
        self.version
    }

    /// The rows of a table.
    pub fn rows(&self, table: &Table) -> Option<&Rows> {
        self.tables.get(table.logical())
    }

    /// The rows of a table by logical name.
    pub fn rows_of(&self, logical: &str) -> Option<&Rows> {
        self.tables.get(logical)
    }

    /// Every row that has a lookup pointing at `id`: (table logical name, row id, property).
    pub fn referencing(&self, schema: &Schema, id: &str) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for table in schema.tables() {
            let lookups: Vec<String> = table
                .columns()
                .iter()
                .filter(|c| c.kind.is_lookup())
                .map(super::schema::ColumnDef::property)
                .collect();
            let Some(rows) = self.tables.get(table.logical()) else {
                continue;
            };
            for (row_id, row) in &rows.rows {
                for property in &lookups {
                    if row.get(property).and_then(Value::as_str) == Some(id) {
                        out.push((table.logical().to_owned(), row_id.clone(), property.clone()));
                    }
                }
            }
        }
        out
    }

    /// A row by id.
    pub fn get(&self, table: &Table, id: &str) -> Option<&Value> {
        self.rows(table)?.rows.get(&id.to_ascii_lowercase())
    }

    /// The id of the row a locator names, if it exists.
    pub fn find(&self, table: &Table, locator: &Locator) -> Option<String> {
        let rows = self.rows(table)?;
        match locator {
            Locator::Id(id) => {
                let id = id.to_ascii_lowercase();
                rows.rows.contains_key(&id).then_some(id)
            }
            Locator::Key(pairs) => {
                let index = table.def.alternate_keys.iter().position(|key| {
                    key.columns.len() == pairs.len()
                        && key
                            .columns
                            .iter()
                            .all(|c| pairs.iter().any(|(name, _)| name == c))
                })?;
                let columns = &table.def.alternate_keys[index].columns;
                let mut parts = Vec::with_capacity(columns.len());
                for column in columns {
                    let value = pairs.iter().find(|(name, _)| name == column)?;
                    parts.push(key_part(&value.1)?);
                }
                rows.keys.get(index)?.get(&parts.join("\u{1f}")).cloned()
            }
        }
    }

    /// Adds a new row; 412 DuplicateRecord when its id or an alternate key is taken.
    pub fn insert(&mut self, table: &Table, row: Value) -> Result<String, DvError> {
        let id = row
            .get(table.id())
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| DvError::internal("row without a primary id"))?;
        self.record(table.logical(), &id);
        let rows = self.tables.entry(table.logical().to_owned()).or_default();
        if rows.rows.contains_key(&id) {
            return Err(DvError::duplicate("Cannot insert duplicate key."));
        }
        let entries = Self::check_keys(table, rows, &row, None)?;
        Self::index(rows, entries, &id);
        // A row created again under a deleted id is no longer deleted.
        rows.deleted.remove(&id);
        rows.index_eq(&id, &row);
        rows.rows.insert(id.clone(), row);
        Ok(id)
    }

    /// Replaces an existing row (same id); 412 when the new alternate-key values belong to
    /// another row.
    pub fn replace(&mut self, table: &Table, id: &str, row: Value) -> Result<(), DvError> {
        self.record(table.logical(), id);
        let rows = self.tables.entry(table.logical().to_owned()).or_default();
        let entries = Self::check_keys(table, rows, &row, Some(id))?;
        if let Some(old) = rows.rows.remove(id) {
            for (i, key) in table.def.alternate_keys.iter().enumerate() {
                if let Some(entry) = key_of(table, &old, &key.columns)
                    && let Some(index) = rows.keys.get_mut(i)
                {
                    index.remove(&entry);
                }
            }
            rows.unindex_eq(id, &old);
        }
        Self::index(rows, entries, id);
        rows.index_eq(id, &row);
        rows.rows.insert(id.to_owned(), row);
        Ok(())
    }

    /// Deletes a row the way a `DELETE` does: removes it and leaves a tombstone with a
    /// new row version for change tracking. Returns the row.
    pub fn delete(&mut self, table: &Table, id: &str) -> Option<Value> {
        self.record(table.logical(), id);
        let row = self.remove(table, id)?;
        let version = self.next_version();
        if let Some(rows) = self.tables.get_mut(table.logical()) {
            rows.deleted.insert(id.to_owned(), version);
        }
        Some(row)
    }

    /// Takes a row out without a tombstone (undoing a create that never became visible);
    /// returns it.
    pub fn remove(&mut self, table: &Table, id: &str) -> Option<Value> {
        self.record(table.logical(), id);
        let rows = self.tables.get_mut(table.logical())?;
        let row = rows.rows.remove(id)?;
        for (i, key) in table.def.alternate_keys.iter().enumerate() {
            if let Some(entry) = key_of(table, &row, &key.columns)
                && let Some(index) = rows.keys.get_mut(i)
            {
                index.remove(&entry);
            }
        }
        rows.unindex_eq(id, &row);
        Some(row)
    }

    fn check_keys(
        table: &Table,
        rows: &Rows,
        row: &Value,
        own_id: Option<&str>,
    ) -> Result<Vec<(usize, String)>, DvError> {
        let mut entries = Vec::new();
        for (i, key) in table.def.alternate_keys.iter().enumerate() {
            let Some(entry) = key_of(table, row, &key.columns) else {
                continue;
            };
            if let Some(holder) = rows.keys.get(i).and_then(|index| index.get(&entry))
                && Some(holder.as_str()) != own_id
            {
                return Err(DvError::duplicate(
                    "A record with matching key values already exists.",
                ));
            }
            entries.push((i, entry));
        }
        Ok(entries)
    }

    fn index(rows: &mut Rows, entries: Vec<(usize, String)>, id: &str) {
        for (i, entry) in entries {
            while rows.keys.len() <= i {
                rows.keys.push(HashMap::new());
            }
            rows.keys[i].insert(entry, id.to_owned());
        }
    }

    /// Every row, per table, for `--data`.
    pub fn snapshot(&self) -> Value {
        let tables: Map<String, Value> = self
            .tables
            .iter()
            .map(|(name, rows)| {
                (
                    name.clone(),
                    Value::Array(rows.rows.values().cloned().collect()),
                )
            })
            .collect();
        let deleted: Map<String, Value> = self
            .tables
            .iter()
            .filter(|(_, rows)| !rows.deleted.is_empty())
            .map(|(name, rows)| (name.clone(), json!(rows.deleted)))
            .collect();
        json!({ "version": self.version, "tables": tables, "deleted": deleted })
    }

    /// The inverse of [`Store::snapshot`].
    pub fn restore(schema: &Schema, value: &Value) -> anyhow::Result<Store> {
        let mut store = Store {
            tables: HashMap::new(),
            journal: None,
            version: value
                .get("version")
                .and_then(Value::as_u64)
                .unwrap_or(1_000_000),
        };
        let empty = Map::new();
        let tables = value
            .get("tables")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        for table in schema.tables() {
            store
                .tables
                .insert(table.logical().to_owned(), Rows::default());
            // Tombstones are optional: snapshots written before change tracking have none.
            if let Some(deleted) = value
                .get("deleted")
                .and_then(|d| d.get(table.logical()))
                .and_then(Value::as_object)
                && let Some(rows) = store.tables.get_mut(table.logical())
            {
                for (id, version) in deleted {
                    let version = version.as_u64().ok_or_else(|| {
                        anyhow::anyhow!("{}: tombstone {id} has no version", table.logical())
                    })?;
                    rows.deleted.insert(id.clone(), version);
                }
            }
            let Some(rows) = tables.get(table.logical()).and_then(Value::as_array) else {
                continue;
            };
            for row in rows {
                anyhow::ensure!(
                    row.is_object(),
                    "{}: a row is not an object",
                    table.logical()
                );
                store
                    .insert(table, row.clone())
                    .map_err(|e| anyhow::anyhow!("{}: {}", table.logical(), e.message))?;
            }
        }
        Ok(store)
    }
}
