//! Lookups against the live CRM: the same [`LookupRequest`]s and the same rules as
//! [`crate::mapping::lookup::resolve_offline`] (every `match` column equal, text ignoring
//! case; then create, skip or fail as the lookup says), with a per-run cache for lookups
//! marked `cache: true` (currencies, price lists) so a backfill asks once.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::crm::Crm;
use crate::config::model::OnMissing;
use crate::connectors::ConnectorError;
use crate::mapping::lookup::{CreateFields, Outcome, substitute};
use crate::mapping::plan::{LookupRequest, Plan, TargetRecord};

/// Results of cacheable lookups: (lookup name, criteria as JSON) → id.
#[derive(Debug, Default)]
pub struct LookupCache {
    ids: HashMap<(String, String), String>,
}

impl LookupCache {
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
    cache: &mut LookupCache,
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
    cache: &mut LookupCache,
) -> Result<Outcome, ConnectorError> {
    let key = request.cache.then(|| {
        let mut probe = request.clone();
        probe.matches = criteria.clone();
        LookupCache::key(&probe)
    });
    if let Some(id) = key.as_ref().and_then(|k| cache.ids.get(k)) {
        return Ok(Outcome::Found { id: id.clone() });
    }
    if let Some(id) = crm
        .find(&request.entity, &request.id_field, criteria)
        .await?
    {
        if let Some(key) = key {
            cache.ids.insert(key, id.clone());
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
