//! Lookups against the live CRM: the same [`LookupRequest`]s and the same rules as
//! [`crate::mapping::lookup::resolve_offline`] (every `match` column equal, text ignoring
//! case; then create, skip or fail as the lookup says), with a per-run cache for lookups
//! marked `cache: true` (currencies, price lists) so a backfill asks once.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::crm::{Crm, Find, Write, WriteSet};
use crate::config::model::OnMissing;
use crate::connectors::ConnectorError;
use crate::mapping::lookup::{CreateFields, Outcome, substitute};
use crate::mapping::plan::{LookupRequest, Plan, TargetRecord, placeholder_name};

/// Results of cacheable lookups: (lookup name, criteria as JSON) → id. Shared by the jobs
/// running at once, each holding the lock only to read or record an answer — never across a
/// call to the CRM, which would make every new record in the process wait for one search.
/// Two jobs missing the same entry at once both search; their answers agree.
#[derive(Debug, Default)]
pub struct LookupCache {
    ids: std::sync::Mutex<HashMap<(String, String), String>>,
}

impl LookupCache {
    fn get(&self, key: &(String, String)) -> Option<String> {
        crate::connectors::lock(&self.ids).get(key).cloned()
    }

    fn insert(&self, key: (String, String), id: String) {
        crate::connectors::lock(&self.ids).insert(key, id);
    }

    fn key(request: &LookupRequest) -> (String, String) {
        (
            request.name.clone(),
            Value::Object(request.matches.clone()).to_string(),
        )
    }
}

/// Resolves `record`'s lookups against `crm`, creating records where the lookup says so,
/// and substitutes the results into its fields. Returns each lookup's outcome by name; a
/// `Failed` outcome means the record must not be written (its message is the audit text).
pub async fn resolve_live(
    plan: &Plan,
    record: &mut TargetRecord,
    crm: &Crm,
    create: &CreateFields<'_>,
    cache: &LookupCache,
) -> Result<BTreeMap<String, Outcome>, ConnectorError> {
    let mut outcomes = BTreeMap::new();
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    for request in &record.lookups {
        // Criteria may name earlier lookups' results (a contact matched within its account).
        let mut criteria = request.matches.clone();
        substitute(&mut criteria, &results);
        let outcome = resolve_one(request, &criteria, crm, &results, create, cache).await?;
        if let Outcome::Found { id } | Outcome::Created { id, .. } = &outcome
            && let Ok(result) = plan.lookup_result(&request.name, id)
        {
            results.insert(request.name.clone(), result);
        }
        outcomes.insert(request.name.clone(), outcome);
    }
    substitute(&mut record.fields, &results);
    Ok(outcomes)
}

async fn resolve_one(
    request: &LookupRequest,
    criteria: &Map<String, Value>,
    crm: &Crm,
    earlier: &BTreeMap<String, Value>,
    create: &CreateFields<'_>,
    cache: &LookupCache,
) -> Result<Outcome, ConnectorError> {
    let key = request.cache.then(|| {
        let mut probe = request.clone();
        probe.matches = criteria.clone();
        LookupCache::key(&probe)
    });
    if let Some(id) = key.as_ref().and_then(|k| cache.get(k)) {
        return Ok(Outcome::Found { id });
    }
    if let Some(id) = crm
        .find(&request.entity, &request.id_field, criteria)
        .await?
    {
        if let Some(key) = key {
            cache.insert(key, id.clone());
        }
        return Ok(Outcome::Found { id });
    }
    Ok(match request.on_missing {
        OnMissing::Create => {
            let mut fields = match create(&request.name) {
                Ok(fields) => fields,
                Err(message) => return Ok(Outcome::Failed { message }),
            };
            substitute(&mut fields, earlier);
            let id = crm.create(&request.entity, &fields).await?;
            Outcome::Created { id, fields }
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
    })
}

/// Whether any value of `fields` (nested included) names another lookup's result.
fn depends_on_lookups(fields: &Map<String, Value>) -> bool {
    fields.values().any(|v| match v {
        _ if placeholder_name(v).is_some() => true,
        Value::Object(inner) => depends_on_lookups(inner),
        Value::Array(items) => items.iter().any(|i| match i {
            Value::Object(inner) => depends_on_lookups(inner),
            _ => false,
        }),
        _ => false,
    })
}

/// Like [`resolve_live`], in two round trips whatever the number of lookups: every search
/// (plus `extra` searches the caller needs, answered in the second value) goes out as one
/// [`Crm::find_all`], and the records to create join `set` — to be written together with
/// the record that needs them — with [`WriteSet::reference`]s standing for their ids.
///
/// Lookups whose criteria name another lookup's result cannot be searched before that one
/// is known: then the lookups resolve one by one as in [`resolve_live`] (creates included)
/// and only `extra` is batched.
pub async fn resolve_batched(
    plan: &Plan,
    record: &mut TargetRecord,
    crm: &Crm,
    create: &CreateFields<'_>,
    cache: &LookupCache,
    set: &mut WriteSet,
    extra: &[Find],
) -> Result<(BTreeMap<String, Outcome>, Vec<Option<String>>), ConnectorError> {
    if record
        .lookups
        .iter()
        .any(|r| depends_on_lookups(&r.matches))
    {
        let outcomes = resolve_live(plan, record, crm, create, cache).await?;
        let found = crm.find_all(extra).await?;
        return Ok((outcomes, found));
    }
    // Cached answers first; everything else is searched in one go.
    let mut cached: Vec<Option<String>> = Vec::with_capacity(record.lookups.len());
    let mut finds: Vec<Find> = Vec::new();
    for request in &record.lookups {
        let hit = request
            .cache
            .then(|| cache.get(&LookupCache::key(request)))
            .flatten();
        if hit.is_none() {
            finds.push(Find {
                entity: request.entity.clone(),
                id_field: request.id_field.clone(),
                criteria: request.matches.clone(),
            });
        }
        cached.push(hit);
    }
    finds.extend(extra.iter().cloned());
    let mut answers = crm.find_all(&finds).await?.into_iter();
    let mut outcomes = BTreeMap::new();
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    for (request, hit) in record.lookups.iter().zip(cached) {
        let found = match hit {
            Some(id) => Some(id),
            None => {
                let id = answers.next().flatten();
                if let (Some(id), true) = (&id, request.cache) {
                    cache.insert(LookupCache::key(request), id.clone());
                }
                id
            }
        };
        let outcome = match (found, &request.on_missing) {
            (Some(id), _) => Outcome::Found { id },
            (None, OnMissing::Create) => match create(&request.name) {
                Ok(mut fields) => {
                    substitute(&mut fields, &results);
                    let index = set.push(Write::Create {
                        entity: request.entity.clone(),
                        fields: fields.clone(),
                    });
                    Outcome::Created {
                        id: WriteSet::reference(index),
                        fields,
                    }
                }
                Err(message) => Outcome::Failed { message },
            },
            (None, OnMissing::Skip) => Outcome::Skipped,
            (None, OnMissing::Fail) => Outcome::Failed {
                message: request.message.clone().unwrap_or_else(|| {
                    format!(
                        "no {} record matches lookup `{}`",
                        request.entity, request.name
                    )
                }),
            },
        };
        if let Outcome::Found { id } | Outcome::Created { id, .. } = &outcome
            && let Ok(result) = plan.lookup_result(&request.name, id)
        {
            results.insert(request.name.clone(), result);
        }
        outcomes.insert(request.name.clone(), outcome);
    }
    substitute(&mut record.fields, &results);
    let extra_found: Vec<Option<String>> = answers.collect();
    Ok((outcomes, extra_found))
}
