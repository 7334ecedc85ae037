//! The front door: a mapping file's bytes in, either diagnostics or a compiled [`Plan`] out.
//!
//! Order of checks: YAML syntax (and duplicate keys, limits, encoding) → JSON Schema (unknown
//! keys, types, enums) → the typed model → settings overrides → compilation (JSONPath,
//! templates, expressions, references between maps / lookups / flows, stage-map coverage,
//! types). Each stage reports *all* its problems; a later stage runs only when the earlier ones
//! found none, so one mistake never causes a cascade of confusing follow-ups.

use std::path::Path;

use serde_json::Value;

use crate::config::diagnostic::{Diagnostic, SourceFile};
use crate::config::model::Config;
use crate::config::settings::{self, Override};
use crate::config::yaml::{self, SpanIndex};
use crate::config::{schema, secrets};
use crate::mapping::{Plan, PlanError};

/// A checked mapping file.
pub struct Checked {
    /// The path as the user gave it.
    pub path: String,
    /// The file's text (lossless when it was valid UTF-8).
    pub text: String,
    /// Every problem found.
    pub diagnostics: Vec<Diagnostic>,
    /// The typed config, when it got that far.
    pub config: Option<Config>,
    /// The compiled plan, when there were no errors.
    pub plan: Option<Plan>,
    /// Positions of every node, for tests that point back at the file.
    pub spans: SpanIndex,
}

impl Checked {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == crate::config::diagnostic::Severity::Error)
    }

    /// The source, for rendering diagnostics.
    pub fn source(&self) -> SourceFile<'_> {
        SourceFile {
            path: &self.path,
            text: &self.text,
        }
    }
}

/// Reads and checks a file. `Err` means it could not be read at all (a usage error).
pub fn check_file(path: &Path, overrides: &[Override]) -> Result<Checked, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(check_bytes(&path.display().to_string(), &bytes, overrides))
}

/// Checks a mapping file's content.
pub fn check_bytes(path: &str, bytes: &[u8], overrides: &[Override]) -> Checked {
    let mut checked = Checked {
        path: path.to_string(),
        text: String::from_utf8_lossy(bytes).into_owned(),
        diagnostics: Vec::new(),
        config: None,
        plan: None,
        spans: SpanIndex::default(),
    };
    let (text, doc) = match yaml::parse_bytes(bytes) {
        Ok(ok) => ok,
        Err(errors) => {
            checked.diagnostics = errors.into_iter().map(Diagnostic::from).collect();
            return checked;
        }
    };
    checked.text = text;
    checked.spans = doc.spans;
    if doc.value.is_null() {
        checked.diagnostics.push(
            Diagnostic::error("empty-file", "the file is empty")
                .with_hint("start from mappings/dynamics365.yaml or mappings/salesforce.yaml"),
        );
        return checked;
    }
    checked.diagnostics = schema::check(&doc.value, &checked.spans);
    if !checked.diagnostics.is_empty() {
        return checked;
    }
    let config: Config = match serde_path_to_error::deserialize(&doc.value) {
        Ok(c) => c,
        Err(e) => {
            let pointer = path_to_pointer(e.path());
            checked.diagnostics.push(
                Diagnostic::error("invalid", e.inner().to_string())
                    .at(checked.spans.value_span(&pointer)),
            );
            return checked;
        }
    };
    checked
        .diagnostics
        .extend(check_connections(&doc.value, &checked.spans));
    let settings = match settings::resolve(&config.settings, config.crm, overrides) {
        Ok(s) => Some(s),
        Err(errors) => {
            checked.diagnostics.extend(
                errors
                    .into_iter()
                    .map(|m| Diagnostic::error("bad-setting-override", m)),
            );
            None
        }
    };
    if let Some(settings) = settings {
        match Plan::compile(&config, settings) {
            Ok(plan) if checked.diagnostics.is_empty() => checked.plan = Some(plan),
            Ok(_) => {}
            Err(errors) => {
                checked.diagnostics.extend(
                    errors
                        .into_iter()
                        .map(|e| plan_diagnostic(e, &checked.spans)),
                );
            }
        }
    }
    checked
        .diagnostics
        .sort_by_key(|d| d.span.map(|s| (s.line, s.col)));
    // YAML merge keys (`<<: *fields`) make one line of the file part of several flows; report
    // each problem at that line once.
    let mut seen = std::collections::HashSet::new();
    checked
        .diagnostics
        .retain(|d| seen.insert((d.span.map(|s| (s.line, s.col)), d.message.clone())));
    checked.config = Some(config);
    checked
}

/// Turns a compile problem into a located diagnostic.
pub fn plan_diagnostic(e: PlanError, spans: &SpanIndex) -> Diagnostic {
    let span = if e.at_key {
        spans.key_span(&e.pointer)
    } else {
        spans.value_span(&e.pointer)
    };
    let mut d = Diagnostic::error(e.code, e.message).at(span);
    d.hint = e.hint;
    d
}

/// Connection values may use `${…}` references anywhere; a malformed one is an error now, not
/// when the engine first connects.
fn check_connections(doc: &Value, spans: &SpanIndex) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut stack = vec![("/connections".to_string(), doc.get("connections"))];
    while let Some((ptr, node)) = stack.pop() {
        match node {
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    stack.push((
                        format!("{ptr}/{}", yaml::escape_pointer_segment(k)),
                        Some(v),
                    ));
                }
            }
            Some(Value::String(s)) => match secrets::parse(s) {
                Err(e) => out.push(
                    Diagnostic::error("bad-reference", e.to_string()).at(spans.value_span(&ptr)),
                ),
                Ok(parts) if is_url_key(&ptr) => {
                    if let Some(d) = check_url(&parts) {
                        out.push(d.at(spans.value_span(&ptr)));
                    }
                }
                Ok(_) => {}
            },
            _ => {}
        }
    }
    out
}

/// Connection keys that hold a URL (`base_url`, `webhook_base_url`, `authority`,
/// `public_url`).
fn is_url_key(pointer: &str) -> bool {
    let key = pointer.rsplit('/').next().unwrap_or_default();
    key.ends_with("_url") || key == "authority"
}

/// A URL written in the file (`base_url: crm.contoso.com`, `"not a url"`) used to pass
/// validation and fail only when the engine first connected. Checked now, with each `${…}`
/// reference standing in as a plain host label, so `https://${ORG}.crm.dynamics.com` and
/// `"${DATAVERSE_URL}"` pass.
fn check_url(parts: &[secrets::Part<'_>]) -> Option<Diagnostic> {
    let mut text = String::new();
    for part in parts {
        match part {
            secrets::Part::Text(t) => text.push_str(t),
            secrets::Part::Env { .. } | secrets::Part::File(_) => text.push('x'),
        }
    }
    // Only references: whatever they resolve to is checked when the engine connects.
    if parts.iter().all(|p| !matches!(p, secrets::Part::Text(_))) {
        return None;
    }
    let ok = reqwest::Url::parse(&text)
        .is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some());
    (!ok).then(|| {
        Diagnostic::error("bad-url", format!("`{text}` is not an http(s) URL"))
            .with_hint("write the whole URL, e.g. `https://contoso.crm.dynamics.com`, or a reference such as `${DATAVERSE_URL}`")
    })
}

fn path_to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        out.push('/');
        match seg {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push_str(&yaml::escape_pointer_segment(key))
            }
            Segment::Unknown => out.push('?'),
        }
    }
    out
}
