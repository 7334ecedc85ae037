//! The tables the emulator serves, loaded from `sandbox/schemas/dataverse.yaml` (embedded at
//! build time and parsed with cosell's own YAML loader, so no extra dependency).

use std::collections::HashMap;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The embedded schema file.
const SCHEMA_YAML: &str = include_str!("../../../sandbox/schemas/dataverse.yaml");

/// The whole schema file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    enforce_application_required: bool,
    tables: Vec<TableDef>,
}

/// A column's data type, named after the Dataverse attribute types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Single line of text (`Edm.String`).
    String,
    /// Multiple lines of text (`Edm.String`).
    Memo,
    /// Whole number (`Edm.Int32`).
    Integer,
    /// Big integer (`Edm.Int64`), e.g. `versionnumber`.
    BigInt,
    /// Currency (`Edm.Decimal`).
    Money,
    /// Decimal number (`Edm.Decimal`).
    Decimal,
    /// Floating point number (`Edm.Double`).
    Double,
    /// Yes/No (`Edm.Boolean`).
    Boolean,
    /// Date and time (`Edm.DateTimeOffset`).
    DateTime,
    /// Date only (`Edm.Date`, `YYYY-MM-DD`).
    DateOnly,
    /// Choice (`Edm.Int32` option value).
    Picklist,
    /// Lookup to one table.
    Lookup,
    /// Customer lookup (account or contact).
    Customer,
    /// `Edm.Guid`.
    UniqueIdentifier,
}

impl ColumnType {
    /// The OData primitive type name used in messages.
    pub fn edm(self) -> &'static str {
        match self {
            ColumnType::String | ColumnType::Memo => "Edm.String",
            ColumnType::Integer | ColumnType::Picklist => "Edm.Int32",
            ColumnType::BigInt => "Edm.Int64",
            ColumnType::Money | ColumnType::Decimal => "Edm.Decimal",
            ColumnType::Double => "Edm.Double",
            ColumnType::Boolean => "Edm.Boolean",
            ColumnType::DateTime => "Edm.DateTimeOffset",
            ColumnType::DateOnly => "Edm.Date",
            ColumnType::Lookup | ColumnType::Customer | ColumnType::UniqueIdentifier => "Edm.Guid",
        }
    }

    /// The `AttributeType` EntityDefinitions reports.
    pub fn attribute_type(self) -> &'static str {
        match self {
            ColumnType::String => "String",
            ColumnType::Memo => "Memo",
            ColumnType::Integer => "Integer",
            ColumnType::BigInt => "BigInt",
            ColumnType::Money => "Money",
            ColumnType::Decimal => "Decimal",
            ColumnType::Double => "Double",
            ColumnType::Boolean => "Boolean",
            ColumnType::DateTime | ColumnType::DateOnly => "DateTime",
            ColumnType::Picklist => "Picklist",
            ColumnType::Lookup => "Lookup",
            ColumnType::Customer => "Customer",
            ColumnType::UniqueIdentifier => "Uniqueidentifier",
        }
    }

    /// Lookups are stored and read as `_<name>_value`.
    pub fn is_lookup(self) -> bool {
        matches!(self, ColumnType::Lookup | ColumnType::Customer)
    }
}

/// Requirement level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Required {
    /// Optional.
    #[default]
    None,
    /// "Business required" (`ApplicationRequired`).
    Application,
    /// `SystemRequired`.
    System,
}

impl Required {
    /// The `RequiredLevel` value EntityDefinitions reports.
    pub fn level(self) -> &'static str {
        match self {
            Required::None => "None",
            Required::Application => "ApplicationRequired",
            Required::System => "SystemRequired",
        }
    }
}

/// One choice of a picklist.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionDef {
    /// Integer value.
    pub value: i64,
    /// English label.
    pub label: String,
    /// statuscode options: the statecode they belong to.
    pub state: Option<i64>,
    /// statecode options: the statuscode a row gets when moved to this state.
    pub default_status: Option<i64>,
}

/// One table a lookup can point to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDef {
    /// Logical name of the target table.
    pub table: String,
    /// Single-valued navigation property (`<navigation>@odata.bind`, `$expand`).
    pub navigation: String,
}

/// One column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    /// Logical name.
    pub name: String,
    /// Data type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// Display name.
    pub label: Option<String>,
    /// Longest text, in characters.
    pub max_length: Option<usize>,
    /// Smallest accepted number.
    pub min: Option<f64>,
    /// Largest accepted number.
    pub max: Option<f64>,
    /// Requirement level.
    #[serde(default)]
    pub required: Required,
    /// Never writable.
    #[serde(default)]
    pub read_only: bool,
    /// Whether a create may set it.
    #[serde(default = "yes")]
    pub valid_for_create: bool,
    /// Value for creates that omit the column.
    pub default: Option<Value>,
    /// Picklist choices.
    #[serde(default)]
    pub options: Vec<OptionDef>,
    /// Lookup targets.
    #[serde(default)]
    pub targets: Vec<TargetDef>,
    /// Columns joined by a space to compute this one.
    #[serde(default)]
    pub computed: Vec<String>,
}

fn yes() -> bool {
    true
}

impl ColumnDef {
    /// The property name in JSON: `_<name>_value` for lookups, the name otherwise.
    pub fn property(&self) -> String {
        if self.kind.is_lookup() {
            format!("_{}_value", self.name)
        } else {
            self.name.clone()
        }
    }

    /// The option with this value.
    pub fn option(&self, value: i64) -> Option<&OptionDef> {
        self.options.iter().find(|o| o.value == value)
    }

    fn system(name: &str, kind: ColumnType, label: &str) -> ColumnDef {
        ColumnDef {
            name: name.to_owned(),
            kind,
            label: Some(label.to_owned()),
            max_length: None,
            min: None,
            max: None,
            required: Required::None,
            read_only: true,
            valid_for_create: false,
            default: None,
            options: Vec::new(),
            targets: Vec::new(),
            computed: Vec::new(),
        }
    }
}

/// An alternate key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDef {
    /// Key name (EntityDefinitions `Keys`).
    pub name: String,
    /// Its columns, in order.
    pub columns: Vec<String>,
}

/// A one-to-many relationship seen from the "one" side, for `$expand`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionDef {
    /// Collection-valued navigation property name.
    pub name: String,
    /// The child table.
    pub table: String,
    /// The child's lookup column pointing here.
    pub lookup: String,
}

/// One table as written in the schema file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    /// Logical name (`opportunity`).
    pub logical_name: String,
    /// Entity set name (`opportunities`).
    pub entity_set: String,
    /// Primary id column (`opportunityid`).
    pub primary_id: String,
    /// Primary name column (`name`).
    pub primary_name: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Whether change tracking is enabled (`ChangeTrackingEnabled`): only then does
    /// `Prefer: odata.track-changes` return a delta link.
    #[serde(default)]
    pub change_tracking: bool,
    /// Alternate keys.
    #[serde(default)]
    pub alternate_keys: Vec<KeyDef>,
    /// One-to-many navigation properties.
    #[serde(default)]
    pub collections: Vec<CollectionDef>,
    /// Columns (system columns are added by the loader).
    pub columns: Vec<ColumnDef>,
    /// Rows every organization has.
    #[serde(default)]
    pub rows: Vec<Map<String, Value>>,
}

/// A table ready for use: its definition plus lookup indexes.
#[derive(Debug)]
pub struct Table {
    /// The definition, with system columns added.
    pub def: TableDef,
    by_name: HashMap<String, usize>,
    by_property: HashMap<String, usize>,
    /// Navigation property → (column index, target table logical name).
    navigations: HashMap<String, (usize, String)>,
}

impl Table {
    /// Logical name.
    pub fn logical(&self) -> &str {
        &self.def.logical_name
    }

    /// Entity set name.
    pub fn set(&self) -> &str {
        &self.def.entity_set
    }

    /// Primary id column.
    pub fn id(&self) -> &str {
        &self.def.primary_id
    }

    /// All columns.
    pub fn columns(&self) -> &[ColumnDef] {
        &self.def.columns
    }

    /// A column by logical name.
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.by_name.get(name).map(|i| &self.def.columns[*i])
    }

    /// A column by JSON property name (`name`, `_parentaccountid_value`).
    pub fn by_property(&self, property: &str) -> Option<&ColumnDef> {
        self.by_property
            .get(property)
            .map(|i| &self.def.columns[*i])
    }

    /// A single-valued navigation property: the lookup column and the target table.
    pub fn navigation(&self, name: &str) -> Option<(&ColumnDef, &str)> {
        self.navigations
            .get(name)
            .map(|(i, target)| (&self.def.columns[*i], target.as_str()))
    }

    /// A collection-valued navigation property.
    pub fn collection(&self, name: &str) -> Option<&CollectionDef> {
        self.def.collections.iter().find(|c| c.name == name)
    }

    /// The `Microsoft.Dynamics.CRM.<logical>` type name used in messages.
    pub fn type_name(&self) -> String {
        format!("Microsoft.Dynamics.CRM.{}", self.def.logical_name)
    }
}

/// Every table.
#[derive(Debug)]
pub struct Schema {
    tables: Vec<Table>,
    by_set: HashMap<String, usize>,
    by_logical: HashMap<String, usize>,
    /// Enforce ApplicationRequired columns on create (see the schema file).
    pub enforce_application_required: bool,
}

impl Schema {
    /// Parses and checks the embedded schema file.
    pub fn load() -> anyhow::Result<Schema> {
        Schema::parse(SCHEMA_YAML)
    }

    fn parse(source: &str) -> anyhow::Result<Schema> {
        let document = crate::config::yaml::parse(source).map_err(|errors| {
            let first = errors
                .first()
                .map(|e| format!("line {}: {}", e.span.line, e.message))
                .unwrap_or_default();
            anyhow::anyhow!("sandbox/schemas/dataverse.yaml: {first}")
        })?;
        let file: SchemaFile = serde_json::from_value(document.value)
            .context("sandbox/schemas/dataverse.yaml does not match the schema format")?;
        let mut schema = Schema {
            tables: Vec::new(),
            by_set: HashMap::new(),
            by_logical: HashMap::new(),
            enforce_application_required: file.enforce_application_required,
        };
        for mut def in file.tables {
            let mut system = vec![ColumnDef::system(
                &def.primary_id,
                ColumnType::UniqueIdentifier,
                &def.display_name
                    .clone()
                    .unwrap_or_else(|| def.logical_name.clone()),
            )];
            // The primary id may be supplied on create (Dataverse allows it).
            system[0].read_only = false;
            system[0].valid_for_create = true;
            system.push(ColumnDef::system(
                "createdon",
                ColumnType::DateTime,
                "Created On",
            ));
            system.push(ColumnDef::system(
                "modifiedon",
                ColumnType::DateTime,
                "Modified On",
            ));
            system.push(ColumnDef::system(
                "versionnumber",
                ColumnType::BigInt,
                "Version Number",
            ));
            system.append(&mut def.columns);
            def.columns = system;
            let mut by_name = HashMap::new();
            let mut by_property = HashMap::new();
            let mut navigations = HashMap::new();
            for (i, column) in def.columns.iter().enumerate() {
                anyhow::ensure!(
                    by_name.insert(column.name.clone(), i).is_none(),
                    "table {}: column {} defined twice",
                    def.logical_name,
                    column.name
                );
                by_property.insert(column.property(), i);
                anyhow::ensure!(
                    column.kind.is_lookup() != column.targets.is_empty(),
                    "table {}: column {}: lookups, and only lookups, need targets",
                    def.logical_name,
                    column.name
                );
                anyhow::ensure!(
                    (column.kind == ColumnType::Picklist) != column.options.is_empty(),
                    "table {}: column {}: picklists, and only picklists, need options",
                    def.logical_name,
                    column.name
                );
                for target in &column.targets {
                    navigations.insert(target.navigation.clone(), (i, target.table.clone()));
                }
            }
            for key in &def.alternate_keys {
                for column in &key.columns {
                    anyhow::ensure!(
                        by_name.contains_key(column),
                        "table {}: key {} names unknown column {column}",
                        def.logical_name,
                        key.name
                    );
                }
            }
            let index = schema.tables.len();
            schema.by_set.insert(def.entity_set.clone(), index);
            schema.by_logical.insert(def.logical_name.clone(), index);
            schema.tables.push(Table {
                def,
                by_name,
                by_property,
                navigations,
            });
        }
        // Every lookup target and collection must name a known table.
        for table in &schema.tables {
            for column in table.columns() {
                for target in &column.targets {
                    anyhow::ensure!(
                        schema.by_logical.contains_key(&target.table),
                        "table {}: column {} targets unknown table {}",
                        table.logical(),
                        column.name,
                        target.table
                    );
                }
            }
            for collection in &table.def.collections {
                let child = schema.table(&collection.table).with_context(|| {
                    format!("collection {} names an unknown table", collection.name)
                })?;
                anyhow::ensure!(
                    child
                        .column(&collection.lookup)
                        .is_some_and(|c| c.kind.is_lookup()),
                    "collection {}: {} is not a lookup of {}",
                    collection.name,
                    collection.lookup,
                    collection.table
                );
            }
        }
        Ok(schema)
    }

    /// All tables, in file order.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// A table by logical name.
    pub fn table(&self, logical: &str) -> Option<&Table> {
        self.by_logical.get(logical).map(|i| &self.tables[*i])
    }

    /// A table by entity set name (case-sensitive, as Dataverse resource segments are).
    pub fn by_set(&self, set: &str) -> Option<&Table> {
        self.by_set.get(set).map(|i| &self.tables[*i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schema_loads() {
        let schema = Schema::load().unwrap();
        let opportunity = schema.by_set("opportunities").unwrap();
        assert_eq!(opportunity.id(), "opportunityid");
        assert!(opportunity.column("cosell_referralid").is_some());
        assert_eq!(
            opportunity
                .navigation("customerid_account")
                .map(|(c, t)| (c.name.as_str(), t)),
            Some(("customerid", "account"))
        );
        assert!(opportunity.by_property("_parentaccountid_value").is_some());
        assert!(opportunity.def.change_tracking);
        assert!(
            !schema
                .by_set("transactioncurrencies")
                .unwrap()
                .def
                .change_tracking
        );
        assert_eq!(
            schema.table("transactioncurrency").unwrap().def.rows.len(),
            7
        );
    }

    #[test]
    fn schema_errors_are_reported() {
        let bad = "enforce_application_required: true\ntables:\n  - logical_name: x\n    entity_set: xs\n    primary_id: xid\n    primary_name: n\n    columns:\n      - { name: l, type: lookup }\n";
        let error = Schema::parse(bad).unwrap_err().to_string();
        assert!(error.contains("need targets"), "{error}");
    }
}
