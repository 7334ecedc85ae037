//! The emulated objects and their fields, loaded from `sandbox/schemas/salesforce.json`.
//!
//! The file is JSON (read with `serde_json`, embedded with `include_str!`) rather than YAML so
//! the sandbox needs no YAML deserializer beyond the event parser the mapping loader uses.
//! Field attributes use the describe call's names (`type`, `length`, `nillable`,
//! `createable`, …) so the file reads like a trimmed describe result; a few emulator-only
//! attributes (`default`, `onDelete`, `countryNameField`, `computed`, stage metadata) drive
//! the behaviour Salesforce implements in the platform rather than in metadata.
//!
//! Child relationships are not declared per parent: a lookup names its own
//! (`childRelationshipName`, as a lookup field's definition does in Setup), and the parent's
//! [`Object::child_relationships`] are derived from the lookups pointing at it — so the
//! describe's `childRelationships` and the lookup fields cannot disagree.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

/// The schema file, embedded at build time.
const SCHEMA: &str = include_str!("../../../sandbox/schemas/salesforce.json");

/// A Salesforce field type, named as describe names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// The record id.
    Id,
    /// Text up to `length`.
    String,
    /// Text area (long or rich text areas are also `textarea`).
    Textarea,
    /// Single-select picklist.
    Picklist,
    /// Currency amount.
    Currency,
    /// Floating-point number.
    Double,
    /// Percentage (a number 0–100 by convention).
    Percent,
    /// Integer.
    Int,
    /// Checkbox.
    Boolean,
    /// Calendar date.
    Date,
    /// Date and time (stored in UTC).
    Datetime,
    /// Lookup to another object.
    Reference,
    /// E-mail address.
    Email,
    /// Phone number (free text).
    Phone,
    /// URL (free text).
    Url,
}

impl FieldType {
    /// Text-like types: compared case-insensitively, accept LIKE, have a length.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            FieldType::String
                | FieldType::Textarea
                | FieldType::Picklist
                | FieldType::Email
                | FieldType::Phone
                | FieldType::Url
        )
    }

    /// Numeric types.
    pub fn is_number(self) -> bool {
        matches!(
            self,
            FieldType::Currency | FieldType::Double | FieldType::Percent | FieldType::Int
        )
    }

    /// Id-valued types.
    pub fn is_id(self) -> bool {
        matches!(self, FieldType::Id | FieldType::Reference)
    }

    /// The name describe and SOQL error messages use.
    pub fn soap_name(self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::String => "string",
            FieldType::Textarea => "textarea",
            FieldType::Picklist => "picklist",
            FieldType::Currency => "currency",
            FieldType::Double => "double",
            FieldType::Percent => "percent",
            FieldType::Int => "int",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::Datetime => "datetime",
            FieldType::Reference => "reference",
            FieldType::Email => "email",
            FieldType::Phone => "phone",
            FieldType::Url => "url",
        }
    }
}

/// What happens to a referencing record when the referenced one is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnDelete {
    /// Delete the referencing record too (Account → its Contacts and Opportunities).
    Cascade,
    /// Clear the lookup (plain lookup relationships).
    SetNull,
}

/// One picklist entry; `probability` … `won` only on Opportunity stages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PicklistValue {
    /// API value.
    pub value: String,
    /// Display label (for country codes: the country name).
    pub label: String,
    /// Default probability of a stage.
    #[serde(default)]
    pub probability: Option<f64>,
    /// Default forecast category of a stage.
    #[serde(default)]
    pub forecast_category: Option<String>,
    /// Whether the stage closes the opportunity.
    #[serde(default)]
    pub closed: Option<bool>,
    /// Whether the stage wins it.
    #[serde(default)]
    pub won: Option<bool>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawField {
    name: String,
    label: String,
    #[serde(rename = "type")]
    kind: FieldType,
    #[serde(default)]
    length: Option<usize>,
    #[serde(default)]
    precision: Option<u32>,
    #[serde(default)]
    scale: Option<u32>,
    #[serde(default = "yes")]
    nillable: bool,
    #[serde(default = "yes")]
    createable: bool,
    #[serde(default = "yes")]
    updateable: bool,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    external_id: bool,
    #[serde(default)]
    unique: bool,
    #[serde(default)]
    picklist_values: Vec<PicklistValue>,
    #[serde(default)]
    value_set: Option<String>,
    #[serde(default)]
    restricted_picklist: bool,
    #[serde(default)]
    reference_to: Option<String>,
    #[serde(default)]
    relationship_name: Option<String>,
    #[serde(default)]
    child_relationship_name: Option<String>,
    #[serde(default)]
    on_delete: Option<OnDelete>,
    #[serde(default)]
    country_name_field: Option<String>,
    #[serde(default)]
    computed: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawObject {
    name: String,
    label: String,
    label_plural: String,
    key_prefix: String,
    fields: Vec<RawField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawUser {
    id: String,
    name: String,
    username: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    #[serde(rename = "$comment")]
    _comment: Option<String>,
    user: RawUser,
    #[serde(rename = "valueSets")]
    value_sets: HashMap<String, Vec<PicklistValue>>,
    objects: Vec<RawObject>,
}

/// A field of an emulated object.
#[derive(Debug)]
pub struct Field {
    /// API name, canonical case.
    pub name: String,
    /// Label, used in some error messages ("Account ID: id value of incorrect type").
    pub label: String,
    /// Type.
    pub kind: FieldType,
    /// Maximum length of text values.
    pub length: Option<usize>,
    /// Total digits of numbers.
    pub precision: Option<u32>,
    /// Digits after the decimal point of numbers.
    pub scale: Option<u32>,
    /// Whether the field may be null.
    pub nillable: bool,
    /// Whether a create may set it.
    pub createable: bool,
    /// Whether an update may set it.
    pub updateable: bool,
    /// Value when a create omits it (`"$user"` resolved to the sandbox user).
    pub default: Option<Value>,
    /// Marked External ID (upsert and get-by-external-id key).
    pub external_id: bool,
    /// Unique (case-insensitively).
    pub unique: bool,
    /// Picklist entries.
    pub picklist: Vec<PicklistValue>,
    /// The entries' values, shared by every record holding them.
    pub interned: Vec<Arc<str>>,
    /// Whether only the entries are accepted.
    pub restricted: bool,
    /// Target object of a reference (`User` is the sandbox user, not an emulated object).
    pub reference_to: Option<String>,
    /// Relationship name for SOQL paths (`Account`, `Opportunity__r`).
    pub relationship_name: Option<String>,
    /// Name of the reverse relationship on the referenced object (`Contacts`,
    /// `Microsoft_Solutions__r`): the FROM of a child subquery. Not part of the field's
    /// describe; the parent's describe lists it under `childRelationships`.
    pub child_relationship_name: Option<String>,
    /// Behaviour when the referenced record is deleted.
    pub on_delete: Option<OnDelete>,
    /// The text field an ISO country-code picklist keeps in sync.
    pub country_name_field: Option<usize>,
    /// Whether the value is computed (`Name` of Contact and Lead).
    pub computed: bool,
}

impl Field {
    /// Required on create: not nillable, createable and without a default — what
    /// Salesforce reports as "Required fields are missing".
    pub fn required(&self) -> bool {
        !self.nillable && self.createable && self.default.is_none()
    }

    /// Custom fields end in `__c`.
    pub fn custom(&self) -> bool {
        self.name.ends_with("__c")
    }

    /// The field as the describe call lists it.
    pub fn describe(&self) -> Value {
        let picklist: Vec<Value> = self
            .picklist
            .iter()
            .map(|entry| {
                json!({
                    "active": true,
                    "defaultValue": self.default.as_ref().and_then(Value::as_str) == Some(entry.value.as_str()),
                    "label": entry.label,
                    "validFor": null,
                    "value": entry.value,
                })
            })
            .collect();
        let length = match self.kind {
            kind if kind.is_text() || kind.is_id() => self.length.unwrap_or(255),
            _ => 0,
        };
        json!({
            "name": self.name,
            "label": self.label,
            "type": self.kind.soap_name(),
            "length": length,
            "precision": self.precision.unwrap_or(0),
            "scale": self.scale.unwrap_or(0),
            "digits": if self.kind == FieldType::Int { self.precision.unwrap_or(9) } else { 0 },
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "defaultedOnCreate": self.default.is_some() || self.kind == FieldType::Boolean || !self.createable,
            "defaultValue": self.default.as_ref().filter(|v| v.as_str() != Some("$user")),
            "externalId": self.external_id,
            "idLookup": self.external_id || self.kind == FieldType::Id,
            "unique": self.unique,
            "caseSensitive": false,
            "custom": self.custom(),
            "calculated": self.computed,
            "filterable": true,
            "sortable": self.kind != FieldType::Textarea,
            "groupable": self.kind != FieldType::Textarea,
            "picklistValues": picklist,
            "restrictedPicklist": self.restricted,
            "referenceTo": self.reference_to.iter().collect::<Vec<_>>(),
            "relationshipName": self.relationship_name,
            "cascadeDelete": self.on_delete == Some(OnDelete::Cascade),
            "soapType": soap_type(self.kind),
        })
    }
}

fn soap_type(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Id | FieldType::Reference => "tns:ID",
        FieldType::Currency | FieldType::Double | FieldType::Percent => "xsd:double",
        FieldType::Int => "xsd:int",
        FieldType::Boolean => "xsd:boolean",
        FieldType::Date => "xsd:date",
        FieldType::Datetime => "xsd:dateTime",
        _ => "xsd:string",
    }
}

/// A relationship from an object to the records whose lookup points at it, as the
/// parent's describe lists it under `childRelationships`.
#[derive(Debug, Clone)]
pub struct ChildRelationship {
    /// The relationship name (`Contacts`), `None` when the lookup declares none: Salesforce
    /// still lists such a relationship, but it cannot be queried.
    pub name: Option<String>,
    /// Index of the child object.
    pub child: usize,
    /// Index of the lookup field on the child object.
    pub field: usize,
    /// Whether deleting the parent deletes the children.
    pub cascade_delete: bool,
}

impl ChildRelationship {
    /// The entry as the describe call lists it.
    pub fn describe(&self, schema: &Schema) -> Value {
        let child = &schema.objects[self.child];
        json!({
            "cascadeDelete": self.cascade_delete,
            "childSObject": child.name,
            "deprecatedAndHidden": false,
            "field": child.fields[self.field].name,
            "junctionIdListNames": [],
            "junctionReferenceTo": [],
            "relationshipName": self.name,
            "restrictedDelete": false,
        })
    }
}

/// An emulated object.
#[derive(Debug)]
pub struct Object {
    /// API name (`Opportunity`, `Microsoft_Solution__c`).
    pub name: String,
    /// Singular label.
    pub label: String,
    /// Plural label.
    pub label_plural: String,
    /// First three characters of its ids.
    pub key_prefix: String,
    /// Fields in describe order.
    pub fields: Vec<Field>,
    by_name: HashMap<String, usize>,
    by_relationship: HashMap<String, usize>,
    /// Index of the `Id` field.
    pub id_field: usize,
    /// Lookups of emulated objects pointing at this one, in schema order (child object,
    /// then field).
    pub child_relationships: Vec<ChildRelationship>,
    by_child: HashMap<String, usize>,
}

impl Object {
    /// The field called `name`, case-insensitively (Salesforce field names are).
    pub fn field(&self, name: &str) -> Option<usize> {
        self.by_name.get(&name.to_ascii_lowercase()).copied()
    }

    /// The reference field whose relationship is called `name`, case-insensitively.
    pub fn relationship(&self, name: &str) -> Option<usize> {
        self.by_relationship
            .get(&name.to_ascii_lowercase())
            .copied()
    }

    /// The named child relationship called `name`, case-insensitively, as an index into
    /// [`Object::child_relationships`].
    pub fn child_relationship(&self, name: &str) -> Option<usize> {
        self.by_child.get(&name.to_ascii_lowercase()).copied()
    }

    /// Index of a field that the schema guarantees (system fields).
    pub fn must(&self, name: &str) -> usize {
        self.field(name).unwrap_or(self.id_field)
    }

    /// Custom objects end in `__c`.
    pub fn custom(&self) -> bool {
        self.name.ends_with("__c")
    }
}

/// The sandbox user every record is owned by.
#[derive(Debug)]
pub struct User {
    /// 18-character id (prefix 005).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Login name.
    pub username: String,
}

/// All emulated objects.
#[derive(Debug)]
pub struct Schema {
    /// Objects in file order.
    pub objects: Vec<Object>,
    by_name: HashMap<String, usize>,
    /// The sandbox user.
    pub user: User,
    /// The user's id, shared by every record's owner and audit fields.
    pub user_id: Arc<str>,
}

impl Schema {
    /// Parses and checks the embedded schema file.
    pub fn load() -> anyhow::Result<Schema> {
        Schema::parse(SCHEMA)
    }

    /// Parses and checks a schema document.
    pub fn parse(text: &str) -> anyhow::Result<Schema> {
        let raw: RawSchema = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("sandbox/schemas/salesforce.json: {e}"))?;
        let mut objects = Vec::new();
        for raw_object in raw.objects {
            objects.push(build_object(raw_object, &raw.value_sets, &raw.user.id)?);
        }
        let by_name = objects
            .iter()
            .enumerate()
            .map(|(i, o)| (o.name.to_ascii_lowercase(), i))
            .collect::<HashMap<_, _>>();
        let mut children: Vec<Vec<ChildRelationship>> = vec![Vec::new(); objects.len()];
        for (child, object) in objects.iter().enumerate() {
            for (index, field) in object.fields.iter().enumerate() {
                let Some(target) = &field.reference_to else {
                    if field.child_relationship_name.is_some() {
                        anyhow::bail!(
                            "salesforce schema: {}.{}: childRelationshipName on a non-lookup",
                            object.name,
                            field.name
                        );
                    }
                    continue;
                };
                let parent = by_name.get(&target.to_ascii_lowercase()).copied();
                match parent {
                    Some(parent) => children[parent].push(ChildRelationship {
                        name: field.child_relationship_name.clone(),
                        child,
                        field: index,
                        cascade_delete: field.on_delete == Some(OnDelete::Cascade),
                    }),
                    // The sandbox user is not an emulated object, so it has no describe to
                    // list a child relationship in.
                    None if target == "User" && field.child_relationship_name.is_none() => {}
                    None => anyhow::bail!(
                        "salesforce schema: {}.{} references unknown object {target}",
                        object.name,
                        field.name
                    ),
                }
            }
        }
        for (object, relationships) in objects.iter_mut().zip(children) {
            for (i, relationship) in relationships.iter().enumerate() {
                let Some(name) = &relationship.name else {
                    continue;
                };
                // Salesforce keeps child relationship names unique per parent: the name
                // alone picks the child object of a subquery.
                if object
                    .by_child
                    .insert(name.to_ascii_lowercase(), i)
                    .is_some()
                {
                    anyhow::bail!(
                        "salesforce schema: {}: duplicate child relationship {name}",
                        object.name
                    );
                }
            }
            object.child_relationships = relationships;
        }
        Ok(Schema {
            objects,
            by_name,
            user_id: Arc::from(raw.user.id.as_str()),
            user: User {
                id: raw.user.id,
                name: raw.user.name,
                username: raw.user.username,
            },
        })
    }

    /// The object called `name`, case-insensitively.
    pub fn object(&self, name: &str) -> Option<usize> {
        self.by_name.get(&name.to_ascii_lowercase()).copied()
    }

    /// The object whose ids start with `prefix`.
    pub fn object_by_prefix(&self, prefix: &str) -> Option<usize> {
        self.objects.iter().position(|o| o.key_prefix == prefix)
    }
}

fn build_object(
    raw: RawObject,
    value_sets: &HashMap<String, Vec<PicklistValue>>,
    user_id: &str,
) -> anyhow::Result<Object> {
    if raw.key_prefix.len() != 3 || !raw.key_prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
        anyhow::bail!("salesforce schema: {}: bad keyPrefix", raw.name);
    }
    let by_name: HashMap<String, usize> = raw
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.to_ascii_lowercase(), i))
        .collect();
    if by_name.len() != raw.fields.len() {
        anyhow::bail!("salesforce schema: {}: duplicate field names", raw.name);
    }
    let mut fields = Vec::new();
    for f in raw.fields {
        let mut picklist = f.picklist_values;
        if let Some(set) = &f.value_set {
            let values = value_sets.get(set).ok_or_else(|| {
                anyhow::anyhow!(
                    "salesforce schema: {}.{}: unknown valueSet {set}",
                    raw.name,
                    f.name
                )
            })?;
            picklist.extend(values.iter().cloned());
        }
        let country_name_field = match &f.country_name_field {
            Some(name) => Some(*by_name.get(&name.to_ascii_lowercase()).ok_or_else(|| {
                anyhow::anyhow!(
                    "salesforce schema: {}.{}: unknown countryNameField",
                    raw.name,
                    f.name
                )
            })?),
            None => None,
        };
        if f.kind == FieldType::Reference && f.reference_to.is_none() {
            anyhow::bail!(
                "salesforce schema: {}.{}: reference without referenceTo",
                raw.name,
                f.name
            );
        }
        let default = match f.default {
            Some(Value::String(s)) if s == "$user" => Some(Value::String(user_id.to_owned())),
            other => other,
        };
        fields.push(Field {
            name: f.name,
            label: f.label,
            kind: f.kind,
            length: f.length,
            precision: f.precision,
            scale: f.scale,
            nillable: f.nillable,
            createable: f.createable,
            updateable: f.updateable,
            default,
            external_id: f.external_id,
            unique: f.unique,
            interned: picklist
                .iter()
                .map(|p| Arc::from(p.value.as_str()))
                .collect(),
            picklist,
            restricted: f.restricted_picklist,
            reference_to: f.reference_to,
            relationship_name: f.relationship_name,
            child_relationship_name: f.child_relationship_name,
            on_delete: f.on_delete,
            country_name_field,
            computed: f.computed.is_some(),
        });
    }
    let by_relationship = fields
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            f.relationship_name
                .as_ref()
                .map(|r| (r.to_ascii_lowercase(), i))
        })
        .collect();
    let id_field = *by_name
        .get("id")
        .ok_or_else(|| anyhow::anyhow!("salesforce schema: {}: no Id field", raw.name))?;
    for required in [
        "isdeleted",
        "createddate",
        "lastmodifieddate",
        "systemmodstamp",
    ] {
        if !by_name.contains_key(required) {
            anyhow::bail!(
                "salesforce schema: {}: missing system field {required}",
                raw.name
            );
        }
    }
    Ok(Object {
        name: raw.name,
        label: raw.label,
        label_plural: raw.label_plural,
        key_prefix: raw.key_prefix,
        fields,
        by_name,
        by_relationship,
        id_field,
        child_relationships: Vec::new(),
        by_child: HashMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schema_loads_with_the_connector_fields() {
        let schema = Schema::load().unwrap();
        let opportunity = &schema.objects[schema.object("opportunity").unwrap()];
        assert_eq!(opportunity.key_prefix, "006");
        let referral = &opportunity.fields[opportunity.field("REFERRAL_ID__C").unwrap()];
        assert!(referral.external_id && referral.unique);
        let stage = &opportunity.fields[opportunity.field("StageName").unwrap()];
        assert!(stage.required() && stage.restricted);
        assert!(stage.picklist.iter().any(|v| v.value == "On Hold"));
        let sync = &opportunity.fields[opportunity.field("Sync_With_Partner_Center__c").unwrap()];
        assert!(!sync.required(), "checkboxes default to false");
        let solution = &schema.objects[schema.object("Microsoft_Solution__c").unwrap()];
        assert_eq!(
            solution.relationship("opportunity__r"),
            solution.field("Opportunity__c")
        );
    }

    #[test]
    fn child_relationships_come_from_the_lookups() {
        let schema = Schema::load().unwrap();
        let account = &schema.objects[schema.object("Account").unwrap()];
        let names: Vec<_> = account
            .child_relationships
            .iter()
            .map(|r| r.name.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(names, ["Contacts", "Opportunities"]);
        let contacts =
            &account.child_relationships[account.child_relationship("contacts").unwrap()];
        assert_eq!(schema.objects[contacts.child].name, "Contact");
        assert!(contacts.cascade_delete);
        let opportunity = &schema.objects[schema.object("Opportunity").unwrap()];
        let solutions = &opportunity.child_relationships[opportunity
            .child_relationship("MICROSOFT_SOLUTIONS__R")
            .unwrap()];
        let solution = &schema.objects[solutions.child];
        assert_eq!(solution.fields[solutions.field].name, "Opportunity__c");
        assert!(!solutions.cascade_delete);
        let contact = &schema.objects[schema.object("Contact").unwrap()];
        assert!(contact.child_relationship("Opportunities").is_some());
    }

    #[test]
    fn duplicate_child_relationship_names_are_rejected() {
        let text = SCHEMA.replace(
            "\"childRelationshipName\": \"Contacts\"",
            "\"childRelationshipName\": \"Opportunities\"",
        );
        assert!(Schema::parse(&text).is_err());
    }

    #[test]
    fn unknown_reference_targets_are_rejected() {
        let text = SCHEMA.replace("\"referenceTo\": \"Account\"", "\"referenceTo\": \"Nope\"");
        assert!(Schema::parse(&text).is_err());
    }
}
