//! Resolving lookups offline, against CRM records given as data (inline tests, `cosell map
//! --records`). The engine resolves the same [`LookupRequest`]s against a live CRM; the
//! matching rule is the same: every `match` column equal, text compared ignoring case and
//! surrounding whitespace.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::plan::{LookupRequest, Plan, TargetRecord, placeholder_name};
use crate::config::model::OnMissing;

/// What happened to one lookup.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// A record matched.
    Found {
        /// Its id.
        id: String,
    },
    /// No record matched; one would be created with these fields.
    Created {
        /// The id given to the would-be record.
        id: String,
        /// Its fields, placeholders of earlier lookups resolved.
        fields: Map<String, Value>,
    },
    /// No record matched and the lookup says to leave the field out.
    Skipped,
    /// No record matched and the lookup says to fail.
    Failed {
        /// The lookup's message.
        message: String,
    },
}

/// Computes the fields of the record a lookup creates, by lookup name (see
/// `Plan::lookup_create_text`); `Err` is the user-facing reason it cannot.
pub type CreateFields<'a> = dyn Fn(&str) -> Result<Map<String, Value>, String> + Sync + 'a;

/// Whether two values are equal for lookup purposes.
pub fn values_match(wanted: &Value, actual: &Value) -> bool {
    match (wanted, actual) {
        (Value::String(a), Value::String(b)) => a.trim().to_lowercase() == b.trim().to_lowercase(),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::Number(b)) | (Value::Number(b), Value::String(a)) => {
            a.trim().parse::<f64>().ok() == b.as_f64()
        }
        (a, b) => a == b,
    }
}

/// Resolves a record's lookups against `records` (table → rows) and substitutes the results
/// into its fields. Returns the outcome of each lookup by name; a `Failed` outcome means the
/// record must not be written.
/// `create` computes the fields of the record a lookup creates (see `Plan::lookup_create`).
pub fn resolve_offline(
    plan: &Plan,
    record: &mut TargetRecord,
    records: &BTreeMap<String, Vec<Value>>,
    create: &CreateFields<'_>,
) -> BTreeMap<String, Outcome> {
    let mut outcomes = BTreeMap::new();
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    for request in &record.lookups {
        let outcome = resolve_one(request, records, &results, create);
        let result = match &outcome {
            Outcome::Found { id } | Outcome::Created { id, .. } => {
                plan.lookup_result(&request.name, id).ok()
            }
            _ => None,
        };
        if let Some(r) = result {
            results.insert(request.name.clone(), r);
        }
        outcomes.insert(request.name.clone(), outcome);
    }
    substitute(&mut record.fields, &results);
    outcomes
}

fn resolve_one(
    request: &LookupRequest,
    records: &BTreeMap<String, Vec<Value>>,
    earlier: &BTreeMap<String, Value>,
    create: &CreateFields<'_>,
) -> Outcome {
    let rows = records
        .get(&request.entity)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let found = rows.iter().find(|row| {
        request.matches.iter().all(|(col, wanted)| {
            row.get(col)
                .is_some_and(|actual| values_match(wanted, actual))
        })
    });
    if let Some(row) = found {
        let id = match row.get(&request.id_field) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => format!("<{} without {}>", request.entity, request.id_field),
        };
        return Outcome::Found { id };
    }
    match request.on_missing {
        OnMissing::Create => {
            let mut fields = match create(&request.name) {
                Ok(f) => f,
                Err(message) => return Outcome::Failed { message },
            };
            substitute(&mut fields, earlier);
            Outcome::Created {
                id: format!("new-{}", request.name),
                fields,
            }
        }
        OnMissing::Skip => Outcome::Skipped,
        OnMissing::Fail => Outcome::Failed {
            message: request.message.clone().unwrap_or_else(|| {
                format!(
                    "no {} record matches lookup `{}`",
                    request.entity, request.name
                )
            }),
        },
    }
}

/// Replaces lookup placeholders by results; placeholders without a result are removed (the
/// field is left out, as `on_missing: skip` says).
pub fn substitute(fields: &mut Map<String, Value>, results: &BTreeMap<String, Value>) {
    let keys: Vec<String> = fields.keys().cloned().collect();
    for k in keys {
        let Some(v) = fields.get_mut(&k) else {
            continue;
        };
        if let Some(name) = placeholder_name(v) {
            match results.get(name) {
                Some(r) => *v = r.clone(),
                None => {
                    fields.remove(&k);
                }
            }
        } else if let Value::Object(inner) = v {
            substitute(inner, results);
        } else if let Value::Array(items) = v {
            for item in items.iter_mut() {
                if let Value::Object(inner) = item {
                    substitute(inner, results);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matching_ignores_case_and_number_formatting() {
        assert!(values_match(
            &json!("Contoso Customer Inc"),
            &json!(" contoso customer inc ")
        ));
        assert!(values_match(&json!("98052"), &json!(98052)));
        assert!(!values_match(&json!("98052"), &json!("98053")));
    }
}
