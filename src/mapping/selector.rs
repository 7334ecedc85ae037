//! JSONPath selectors, parsed once.
//!
//! Almost every path in a mapping is a plain member chain (`$.details.dealValue`,
//! `$.customerProfile.team[0].email`); those are walked directly without touching the JSONPath
//! engine. Anything else (filters, wildcards, slices, descendants) goes through jsonpath-rust,
//! parsed at compile time. This is the only module that knows jsonpath-rust exists.

use std::borrow::Cow;

use jsonpath_rust::parser::model::JpQuery;
use serde_json::Value;

/// One step of a plain member chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// `.name` or `['name']`.
    Key(String),
    /// `[3]`; negative indices count from the end, as in JSONPath.
    Index(i64),
}

/// A compiled JSONPath.
#[derive(Debug, Clone)]
pub struct Selector {
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A plain chain: at most one result, no allocation to walk.
    Chain(Vec<Segment>),
    /// Anything else: may yield several results.
    Query(Box<JpQuery>),
}

/// Why a path does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    /// What is wrong, phrased for a mapping author.
    pub message: String,
}

impl Selector {
    /// Parses a JSONPath such as `$.details.dealValue` or `$.team[?@.email]`.
    pub fn parse(source: &str) -> Result<Selector, SelectorError> {
        let trimmed = source.trim();
        if !trimmed.starts_with('$') {
            return Err(SelectorError {
                message: format!("JSONPath `{source}` must start with `$`"),
            });
        }
        if let Some(chain) = parse_chain(trimmed) {
            return Ok(Selector {
                source: trimmed.to_string(),
                kind: Kind::Chain(chain),
            });
        }
        match jsonpath_rust::parser::parse_json_path(trimmed) {
            Ok(query) => Ok(Selector {
                source: trimmed.to_string(),
                kind: Kind::Query(Box::new(query)),
            }),
            Err(e) => Err(SelectorError {
                message: format!(
                    "invalid JSONPath `{trimmed}`: {}",
                    first_line(&e.to_string())
                ),
            }),
        }
    }

    /// The path as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The member chain, when the path is a plain one (used for static checks against the
    /// Partner Center referral schema).
    pub fn chain(&self) -> Option<&[Segment]> {
        match &self.kind {
            Kind::Chain(c) => Some(c),
            Kind::Query(_) => None,
        }
    }

    /// Whether the path can yield several values (filters, wildcards…).
    pub fn is_multi(&self) -> bool {
        matches!(self.kind, Kind::Query(_))
    }

    /// Evaluates the path. A plain chain yields the value or `None`; a query yields `None` when
    /// nothing matches, the value when exactly one matches, and an array of all matches
    /// otherwise.
    pub fn select<'a>(&self, root: &'a Value) -> Option<Cow<'a, Value>> {
        match &self.kind {
            Kind::Chain(chain) => walk(root, chain).map(Cow::Borrowed),
            Kind::Query(query) => {
                let found = jsonpath_rust::query::js_path_process(query, root).ok()?;
                match found.len() {
                    0 => None,
                    1 => found.into_iter().next().map(|r| Cow::Borrowed(r.val())),
                    _ => Some(Cow::Owned(Value::Array(
                        found.into_iter().map(|r| r.val().clone()).collect(),
                    ))),
                }
            }
        }
    }

    /// Evaluates the path as a list: every match, or the elements of the array a plain chain
    /// points at (used by `each` and `for_each`).
    pub fn select_all<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        match &self.kind {
            Kind::Chain(chain) => match walk(root, chain) {
                Some(Value::Array(items)) => items.iter().collect(),
                Some(Value::Null) | None => Vec::new(),
                Some(other) => vec![other],
            },
            Kind::Query(query) => jsonpath_rust::query::js_path_process(query, root)
                .map(|found| found.into_iter().map(|r| r.val()).collect())
                .unwrap_or_default(),
        }
    }
}

/// Walks a member chain.
pub fn walk<'a>(root: &'a Value, chain: &[Segment]) -> Option<&'a Value> {
    let mut current = root;
    for segment in chain {
        current = match (segment, current) {
            (Segment::Key(k), Value::Object(map)) => map.get(k)?,
            (Segment::Index(i), Value::Array(items)) => {
                let idx = if *i < 0 {
                    items.len().checked_sub(i.unsigned_abs() as usize)?
                } else {
                    usize::try_from(*i).ok()?
                };
                items.get(idx)?
            }
            _ => return None,
        };
    }
    Some(current)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Parses `$`, `$.a.b`, `$.a[0]`, `$['a b'].c` into segments; `None` for anything fancier.
fn parse_chain(path: &str) -> Option<Vec<Segment>> {
    let mut rest = path.strip_prefix('$')?;
    let mut chain = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let name = &after[..end];
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '@' || c == '-')
            {
                return None;
            }
            chain.push(Segment::Key(name.to_string()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inner = after[..end].trim();
            if let Ok(i) = inner.parse::<i64>() {
                chain.push(Segment::Index(i));
            } else if let Some(quoted) = inner
                .strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
            {
                if quoted.contains(['\'', '"', '\\']) {
                    return None;
                }
                chain.push(Segment::Key(quoted.to_string()));
            } else {
                return None;
            }
            rest = &after[end + 1..];
        } else {
            return None;
        }
    }
    Some(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "details": { "dealValue": 50000, "requirements": { "solutions": [ {"id": "A"}, {"id": "B"} ] } },
            "customerProfile": { "team": [ { "email": "sue@contoso.com" }, { "email": "joe@contoso.com" } ] },
            "odd key": { "x": 1 }
        })
    }

    #[test]
    fn plain_chains_take_the_fast_path() {
        let d = doc();
        for (path, expected) in [
            ("$.details.dealValue", json!(50000)),
            ("$.customerProfile.team[1].email", json!("joe@contoso.com")),
            ("$.customerProfile.team[-1].email", json!("joe@contoso.com")),
            ("$['odd key'].x", json!(1)),
            ("$", d.clone()),
        ] {
            let s = Selector::parse(path).unwrap();
            assert!(s.chain().is_some(), "{path} should be a plain chain");
            assert_eq!(s.select(&d).map(Cow::into_owned), Some(expected), "{path}");
        }
        assert_eq!(Selector::parse("$.nope.deeper").unwrap().select(&d), None);
        assert_eq!(
            Selector::parse("$.customerProfile.team[9]")
                .unwrap()
                .select(&d),
            None
        );
    }

    #[test]
    fn queries_fall_back_to_jsonpath() {
        let d = doc();
        let s = Selector::parse("$.details.requirements.solutions[*].id").unwrap();
        assert!(s.is_multi());
        assert_eq!(s.select(&d).map(Cow::into_owned), Some(json!(["A", "B"])));
        let one =
            Selector::parse("$.customerProfile.team[?@.email == 'sue@contoso.com'].email").unwrap();
        assert_eq!(
            one.select(&d).map(Cow::into_owned),
            Some(json!("sue@contoso.com"))
        );
        assert_eq!(
            Selector::parse("$.details.requirements.solutions")
                .unwrap()
                .select_all(&d)
                .len(),
            2
        );
    }

    #[test]
    fn bad_paths_are_errors_not_panics() {
        for bad in [
            "details.dealValue",
            "$.a[",
            "$..[?(",
            "$.a[?@.b ==]",
            "$[",
            "$$",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }
}
