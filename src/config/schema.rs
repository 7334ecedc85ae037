//! The JSON Schema of mapping files, generated from [`Config`](super::model::Config), and the
//! translation of schema violations into diagnostics a CRM admin can act on.
//!
//! The checked-in `schemas/cosell.schema.json` is this schema; `cosell schema` prints it and a
//! test fails when the file is stale.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use super::diagnostic::{Diagnostic, did_you_mean};
use super::model::Config;
use super::yaml::{SpanIndex, escape_pointer_segment};

/// Where the schema lives in the repository, for the regeneration hint.
pub const SCHEMA_PATH: &str = "schemas/cosell.schema.json";

/// The schema as JSON (draft 2020-12).
pub fn schema() -> Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Config>();
    schema.insert(
        "$id".to_string(),
        Value::String("https://cosell.dev/schemas/cosell.schema.json".into()),
    );
    schema.to_value()
}

/// The schema as the pretty-printed text that is checked in.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}

fn validator() -> Option<&'static (Validator, Value)> {
    static VALIDATOR: OnceLock<Option<(Validator, Value)>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let s = schema();
            jsonschema::draft202012::new(&s).ok().map(|v| (v, s))
        })
        .as_ref()
}

/// Validates a loaded document against the schema; every problem becomes a located diagnostic.
pub fn check(document: &Value, spans: &SpanIndex) -> Vec<Diagnostic> {
    let Some((validator, schema)) = validator() else {
        return vec![Diagnostic::error(
            "internal",
            "the built-in schema does not compile",
        )];
    };
    let mut out = Vec::new();
    for error in validator.iter_errors(document) {
        translate(&error, document, schema, spans, &mut out);
    }
    // A misspelt required key shows up twice: as unknown ("sorce") and as missing ("source").
    // The unknown-key diagnostic already says "did you mean `source`?"; drop the other.
    let typo_fixes: Vec<(String, String)> = out
        .iter()
        .filter(|d| d.code == "unknown-key")
        .filter_map(|d| {
            let place = d.message.split_once(" in ")?.1.to_string();
            let fix = d
                .hint
                .as_deref()?
                .strip_prefix("did you mean `")?
                .strip_suffix("`?")?;
            Some((place, fix.to_string()))
        })
        .collect();
    out.retain(|d| {
        d.code != "missing-key"
            || !typo_fixes
                .iter()
                .any(|(place, fix)| d.message == format!("missing key \"{fix}\" in {place}"))
    });
    // Several anyOf branches can report the same thing; keep one of each.
    let mut seen = std::collections::HashSet::new();
    out.retain(|d| seen.insert((d.span.map(|s| (s.line, s.col)), d.message.clone())));
    out.sort_by_key(|d| d.span.map(|s| (s.line, s.col)));
    out
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    };
    if s.chars().count() > 50 {
        format!("{}…", s.chars().take(50).collect::<String>())
    } else {
        s
    }
}

/// Describes a location in the user's words: `flow "x"`, `field "name" of flow "x"`.
pub fn describe(pointer: &str) -> String {
    let segs: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        [] => "the top level".into(),
        ["flows", f] => format!("flow \"{f}\""),
        ["flows", f, "fields", k] => format!("field \"{k}\" of flow \"{f}\""),
        ["flows", f, "fields", k, ..] => format!("field \"{k}\" of flow \"{f}\""),
        ["flows", f, "require", i, ..] => format!(
            "rule {} of flow \"{f}\"",
            i.parse::<usize>().map(|n| n + 1).unwrap_or(0)
        ),
        ["flows", f, section, ..] => format!("`{section}` of flow \"{f}\""),
        ["lookups", l] => format!("lookup \"{l}\""),
        ["lookups", l, section, ..] => format!("`{section}` of lookup \"{l}\""),
        ["value_maps", m, ..] => format!("value map \"{m}\""),
        ["tests", i, ..] => format!("test {}", i.parse::<usize>().map(|n| n + 1).unwrap_or(0)),
        ["connections", rest @ ..] => format!("connections.{}", rest.join(".")),
        ["settings", "custom", k, ..] => format!("setting \"{k}\""),
        ["settings", k, ..] => format!("setting \"{k}\""),
        ["settings"] => "settings".into(),
        [first, ..] => format!("`{first}`"),
    }
}

/// Resolves the schema node an error's schema path points at (following `$ref`s), minus
/// `strip` trailing keyword segments.
fn schema_node<'s>(schema: &'s Value, schema_path: &str, strip: usize) -> Option<&'s Value> {
    let segs: Vec<&str> = schema_path.split('/').skip(1).collect();
    let keep = segs.len().checked_sub(strip)?;
    let mut node = schema;
    for seg in &segs[..keep] {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg == "$ref" {
            let target = node.get("$ref")?.as_str()?;
            node = resolve_ref(schema, target)?;
            continue;
        }
        node = match node {
            Value::Object(m) => m.get(&seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    // A node that is only a reference stands for its target.
    while let Some(target) = node.get("$ref").and_then(Value::as_str) {
        node = resolve_ref(schema, target)?;
    }
    Some(node)
}

fn resolve_ref<'s>(schema: &'s Value, target: &str) -> Option<&'s Value> {
    let pointer = target.strip_prefix('#')?;
    schema.pointer(pointer)
}

fn translate(
    error: &ValidationError<'_>,
    document: &Value,
    schema: &Value,
    spans: &SpanIndex,
    out: &mut Vec<Diagnostic>,
) {
    let pointer = error.instance_path().as_str().to_string();
    let instance = document.pointer(&pointer).unwrap_or(&Value::Null);
    let at = spans.value_span(&pointer);
    let place = describe(&pointer);
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed: Vec<String> = schema_node(schema, error.schema_path().as_str(), 1)
                .and_then(|n| n.get("properties"))
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for key in unexpected {
                let key_ptr = format!("{pointer}/{}", escape_pointer_segment(key));
                let mut d =
                    Diagnostic::error("unknown-key", format!("unknown key \"{key}\" in {place}"))
                        .at(spans.key_span(&key_ptr))
                        .with_label("not allowed here");
                d = match did_you_mean(key, allowed.iter().map(String::as_str)) {
                    Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                    None if !allowed.is_empty() => {
                        d.with_hint(format!("allowed keys: {}", allowed.join(", ")))
                    }
                    None => d,
                };
                out.push(d);
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or("?");
            out.push(
                Diagnostic::error("missing-key", format!("missing key \"{name}\" in {place}"))
                    .at(at)
                    .with_hint(format!("add `{name}:`")),
            );
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => type_word(&t.to_string()),
                TypeKind::Multiple(set) => {
                    // `null` only means "leave it out" for optional keys; naming it confuses.
                    let words: Vec<String> = set
                        .iter()
                        .map(|t| type_word(&t.to_string()))
                        .filter(|w| w != "null")
                        .collect();
                    words.join(" or ")
                }
            };
            let mut d = Diagnostic::error(
                "wrong-type",
                format!(
                    "expected {expected} in {place}, found {} {}",
                    json_type_name(instance),
                    short(instance)
                ),
            )
            .at(at);
            if let Value::String(s) = instance
                && expected.contains("true/false")
                && matches!(
                    s.to_ascii_lowercase().as_str(),
                    "yes" | "no" | "on" | "off" | "y" | "n" | "ja" | "nee"
                )
            {
                d = d.with_hint("write `true` or `false` (YAML 1.2 reads yes/no as text)");
            } else if let Value::String(s) = instance
                && expected.contains("number")
                && s.trim().parse::<f64>().is_ok()
            {
                d = d.with_hint("remove the quotes to make it a number");
            } else if expected.contains("mapping") && !instance.is_object() {
                d = d.with_hint(
                    "check the indentation: the keys of this section must be indented under it",
                );
            }
            out.push(d);
        }
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let got = instance
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| instance.to_string());
            let mut d = Diagnostic::error(
                "not-allowed",
                format!("{} is not allowed in {place}", short(instance)),
            )
            .at(at);
            d = match did_you_mean(&got, opts.iter().map(String::as_str)) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("use one of: {}", opts.join(", "))),
            };
            out.push(d);
        }
        ValidationErrorKind::Constant { expected_value } => {
            out.push(
                Diagnostic::error(
                    "not-allowed",
                    format!(
                        "{} is not allowed in {place}; expected {}",
                        short(instance),
                        short(expected_value)
                    ),
                )
                .at(at),
            );
        }
        ValidationErrorKind::Pattern { .. } if is_secret_field(&pointer) => {
            out.push(
                Diagnostic::error("literal-secret", format!("{place} must be a secret reference, not a literal value"))
                    .at(at)
                    .with_label("literal secret")
                    .with_hint("write ${ENV_VAR}, ${ENV_VAR:-default} or ${file:/run/secrets/name}; never commit secrets to a mapping file"),
            );
        }
        ValidationErrorKind::Minimum { limit } | ValidationErrorKind::Maximum { limit } => {
            let hint = if pointer == "/version" {
                "this cosell understands `version: 1`".to_string()
            } else if matches!(error.kind(), ValidationErrorKind::Minimum { .. }) {
                format!("the smallest allowed value is {limit}")
            } else {
                format!("the largest allowed value is {limit}")
            };
            out.push(
                Diagnostic::error(
                    "out-of-range",
                    format!("{} is out of range in {place}", short(instance)),
                )
                .at(at)
                .with_hint(hint),
            );
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            translate_alternatives(context, instance, &pointer, document, schema, spans, out);
        }
        _ => {
            out.push(Diagnostic::error("schema", format!("{} in {place}", error)).at(at));
        }
    }
}

fn is_secret_field(pointer: &str) -> bool {
    ["client_secret", "refresh_token", "private_key"]
        .iter()
        .any(|f| pointer.ends_with(&format!("/{f}")))
}

fn type_word(t: &str) -> String {
    match t {
        "object" => "a mapping".into(),
        "array" => "a list".into(),
        "string" => "text".into(),
        "boolean" => "true/false".into(),
        "integer" => "a whole number".into(),
        "number" => "a number".into(),
        "null" => "null".into(),
        other => other.to_string(),
    }
}

/// For anyOf/oneOf failures, report the errors of the alternative the user evidently meant:
/// the ones whose type matched. If none did, list what was expected.
#[allow(clippy::too_many_arguments)]
fn translate_alternatives(
    context: &[Vec<ValidationError<'static>>],
    instance: &Value,
    pointer: &str,
    document: &Value,
    schema: &Value,
    spans: &SpanIndex,
    out: &mut Vec<Diagnostic>,
) {
    let at = spans.value_span(pointer);
    let place = describe(pointer);
    let type_mismatch_here = |errs: &Vec<ValidationError<'static>>| {
        errs.iter().any(|e| {
            e.instance_path().as_str() == pointer
                && matches!(e.kind(), ValidationErrorKind::Type { .. })
        })
    };
    let candidates: Vec<&Vec<ValidationError<'static>>> = context
        .iter()
        .filter(|errs| !type_mismatch_here(errs))
        .collect();
    // Enums whose variants are documented one by one (`on:`, `target:`, `fallback:`, the
    // word transforms such as `trim`) are one `const` branch per word. Reporting the branch
    // with the fewest errors named only the first word ("expected \"trim\"" for `numbr`);
    // name them all, and the closest one.
    let mut words: Vec<String> = Vec::new();
    let only_constants =
        !candidates.is_empty()
            && candidates.iter().all(|errs| {
                errs.iter().all(|e| {
                    e.instance_path().as_str() == pointer
                        && match e.kind() {
                            ValidationErrorKind::Constant { expected_value } => {
                                words.push(
                                    expected_value
                                        .as_str()
                                        .map_or_else(|| expected_value.to_string(), str::to_string),
                                );
                                true
                            }
                            ValidationErrorKind::Enum { options } => {
                                words.extend(options.as_array().into_iter().flatten().map(|v| {
                                    v.as_str().map_or_else(|| v.to_string(), str::to_string)
                                }));
                                true
                            }
                            _ => false,
                        }
                })
            });
    if only_constants && !words.is_empty() {
        words.dedup();
        let got = instance
            .as_str()
            .map_or_else(|| instance.to_string(), str::to_string);
        let d = Diagnostic::error(
            "not-allowed",
            format!("{} is not allowed in {place}", short(instance)),
        )
        .at(at);
        out.push(match did_you_mean(&got, words.iter().map(String::as_str)) {
            Some(s) => d.with_hint(format!("did you mean `{s}`?")),
            None => d.with_hint(format!("use one of: {}", words.join(", "))),
        });
        return;
    }
    // A tagged variant whose tag is right but whose value is wrong (`truncate: -1`): its own
    // errors, not "unknown key `truncate`" from the branches that wanted another key.
    if let Some(key) = instance.as_object().and_then(|m| m.keys().next()) {
        let key_ptr = format!("{pointer}/{}", escape_pointer_segment(key));
        let matched = candidates.iter().find(|errs| {
            errs.iter().all(|e| {
                !matches!(e.kind(), ValidationErrorKind::Required { .. })
                    && !matches!(e.kind(), ValidationErrorKind::AdditionalProperties { .. })
            }) && errs
                .iter()
                .any(|e| e.instance_path().as_str().starts_with(&key_ptr))
        });
        if let Some(errs) = matched {
            for e in errs.iter() {
                translate(e, document, schema, spans, out);
            }
            return;
        }
    }
    // Externally tagged enums (transforms): several object branches, each requiring one key.
    if instance.is_object() && candidates.len() > 1 {
        let names: Vec<String> = candidates
            .iter()
            .flat_map(|errs| errs.iter())
            .filter_map(|e| match e.kind() {
                ValidationErrorKind::Required { property } => property.as_str().map(str::to_string),
                _ => None,
            })
            .collect();
        if !names.is_empty()
            && let Some(key) = instance.as_object().and_then(|m| m.keys().next())
        {
            let key_ptr = format!("{pointer}/{}", escape_pointer_segment(key));
            let mut d =
                Diagnostic::error("unknown-key", format!("unknown key \"{key}\" in {place}"))
                    .at(spans.key_span(&key_ptr));
            d = match did_you_mean(key, names.iter().map(String::as_str)) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("use one of: {}", names.join(", "))),
            };
            out.push(d);
            return;
        }
    }
    if let Some(best) = candidates.iter().min_by_key(|errs| errs.len()) {
        for e in best.iter() {
            translate(e, document, schema, spans, out);
        }
        return;
    }
    // Nothing matched even by type.
    let mut expected: Vec<String> = Vec::new();
    for errs in context {
        for e in errs {
            if let ValidationErrorKind::Type { kind } = e.kind() {
                let w = match kind {
                    TypeKind::Single(t) => type_word(&t.to_string()),
                    TypeKind::Multiple(set) => set
                        .iter()
                        .map(|t| type_word(&t.to_string()))
                        .collect::<Vec<_>>()
                        .join(" or "),
                };
                if !expected.contains(&w) {
                    expected.push(w);
                }
            }
        }
    }
    out.push(
        Diagnostic::error(
            "wrong-type",
            format!(
                "expected {} in {place}, found {} {}",
                expected.join(" or "),
                json_type_name(instance),
                short(instance)
            ),
        )
        .at(at),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_draft_2020_12_with_descriptions() {
        let s = schema();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        let flows = &s["properties"]["flows"];
        assert!(
            flows["description"]
                .as_str()
                .unwrap()
                .contains("sync flows")
        );
        assert!(validator().is_some());
    }

    #[test]
    fn pointers_are_described_in_users_words() {
        assert_eq!(
            describe("/flows/a/fields/name/path"),
            "field \"name\" of flow \"a\""
        );
        assert_eq!(describe(""), "the top level");
        assert_eq!(describe("/tests/0/expect"), "test 1");
    }
}
