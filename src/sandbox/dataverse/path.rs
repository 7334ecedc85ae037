//! OData resource paths: `accounts`, `accounts(<guid>)`, `accounts(accountnumber='A''1')`,
//! `accounts(<guid>)/name`, `accounts(<guid>)/primarycontactid/$ref`,
//! `EntityDefinitions(LogicalName='account')/Attributes`, …

use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use super::store::Locator;

/// One path segment: a name and, when present, the text inside its parentheses.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// The name before `(`.
    pub name: String,
    /// The text between `(` and the matching `)`, percent-decoded.
    pub key: Option<String>,
}

/// Splits the part of the path after `/api/data/vX.Y/` into segments. Slashes inside
/// quotes or parentheses belong to the key; each segment is percent-decoded after
/// splitting so an encoded `/` in a key value stays in the value. `None` for unbalanced
/// parentheses or quotes, or text after a key's `)`.
pub fn segments(path: &str) -> Option<Vec<Segment>> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut in_quote = false;
    let mut start = 0;
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'\'' => in_quote = !in_quote,
            b'(' if !in_quote => depth += 1,
            b')' if !in_quote => depth = depth.checked_sub(1)?,
            b'/' if !in_quote && depth == 0 => {
                parts.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quote || depth != 0 {
        return None;
    }
    parts.push(&path[start..]);
    let mut out = Vec::new();
    for raw in parts {
        let decoded = percent_decode_str(raw).decode_utf8().ok()?.into_owned();
        let segment = match decoded.find('(') {
            Some(open) => {
                let inner = decoded[open + 1..].strip_suffix(')')?;
                Segment {
                    name: decoded[..open].to_owned(),
                    key: Some(inner.to_owned()),
                }
            }
            None => Segment {
                name: decoded,
                key: None,
            },
        };
        out.push(segment);
    }
    Some(out)
}

/// A key value in a URL: `'text'` (quote doubled inside), a GUID, a number, `true`,
/// `false` or `null`.
fn key_value(text: &str) -> Option<Value> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            // Single quotes inside must come in pairs.
            if c == '\'' && chars.next() != Some('\'') {
                return None;
            }
            out.push(c);
        }
        return Some(Value::String(out));
    }
    match text {
        "true" => return Some(json!(true)),
        "false" => return Some(json!(false)),
        "null" => return Some(Value::Null),
        _ => {}
    }
    if is_guid(text) {
        return Some(json!(text.to_ascii_lowercase()));
    }
    if let Ok(n) = text.parse::<i64>() {
        return Some(json!(n));
    }
    text.parse::<f64>().ok().map(|n| json!(n))
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Splits `a='x,y',b=2` at top-level commas.
fn split_pairs(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_quote = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '\'' => in_quote = !in_quote,
            ',' if !in_quote => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// Parses the inside of `set(...)`: a bare GUID, or `name=value` pairs. Lookup key columns
/// may be written `_x_value=` or `x=`; the `_x_value` form is normalized to `x`.
pub fn locator(key: &str) -> Option<Locator> {
    let key = key.trim();
    if is_guid(key) {
        return Some(Locator::Id(key.to_ascii_lowercase()));
    }
    let mut pairs = Vec::new();
    for pair in split_pairs(key) {
        let (name, value) = pair.split_once('=')?;
        let name = name.trim();
        let name = name
            .strip_prefix('_')
            .and_then(|n| n.strip_suffix("_value"))
            .unwrap_or(name);
        if name.is_empty() {
            return None;
        }
        pairs.push((name.to_owned(), key_value(value)?));
    }
    Some(Locator::Key(pairs))
}

/// An `@odata.bind` / `@odata.id` reference: `/accounts(<guid>)`, `accounts(<guid>)` or
/// an absolute URL ending in `/api/data/vX.Y/accounts(<guid>)`.
pub fn parse_reference(text: &str) -> Option<(String, Locator)> {
    let text = text.trim();
    let relative = match text.find("/api/data/") {
        Some(at) => {
            let rest = &text[at + "/api/data/".len()..];
            rest.split_once('/')?.1
        }
        None => text.trim_start_matches('/'),
    };
    let segments = segments(relative)?;
    let [segment] = segments.as_slice() else {
        return None;
    };
    let key = segment.key.as_deref()?;
    Some((segment.name.clone(), locator(key)?))
}

/// A locator as it appears in URLs (`OData-EntityId`): the GUID, or the key pairs.
pub fn format_locator(locator: &Locator) -> String {
    match locator {
        Locator::Id(id) => id.clone(),
        Locator::Key(pairs) => pairs
            .iter()
            .map(|(name, value)| match value {
                Value::String(s) => format!("{name}='{}'", s.replace('\'', "''")),
                other => format!("{name}={other}"),
            })
            .collect::<Vec<_>>()
            .join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_segments_and_keys() {
        assert!(segments("accounts(name='a/b(c)'),x/$ref").is_none());
        let s = segments("accounts(name='a/b(c)')/$ref").unwrap();
        assert_eq!(s[0].key.as_deref(), Some("name='a/b(c)'"));
        let s = segments("accounts(00000000-0000-0000-0000-000000000001)/primarycontactid/$ref")
            .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "accounts");
        assert_eq!(s[2].name, "$ref");
        let s = segments("opportunities(cosell_referralid='a%2Fb''c')").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            locator(s[0].key.as_deref().unwrap()),
            Some(Locator::Key(vec![(
                "cosell_referralid".into(),
                json!("a/b'c")
            )]))
        );
        assert!(segments("accounts(").is_none());
    }

    #[test]
    fn composite_keys_and_references() {
        assert_eq!(
            locator("k1='a,b',_cosell_opportunityid_value=00000000-0000-0000-0000-00000000000A"),
            Some(Locator::Key(vec![
                ("k1".into(), json!("a,b")),
                (
                    "cosell_opportunityid".into(),
                    json!("00000000-0000-0000-0000-00000000000a")
                )
            ]))
        );
        assert_eq!(
            locator("k='it''s'"),
            Some(Locator::Key(vec![("k".into(), json!("it's"))]))
        );
        assert_eq!(locator("k='bad'quote'"), None);
        assert_eq!(
            locator("k2=2"),
            Some(Locator::Key(vec![("k2".into(), json!(2))]))
        );
        let id = "00000000-0000-0000-0000-000000000001";
        for text in [
            format!("/accounts({id})"),
            format!("accounts({id})"),
            format!("https://org.crm.dynamics.com/api/data/v9.2/accounts({id})"),
        ] {
            assert_eq!(
                parse_reference(&text),
                Some(("accounts".to_owned(), Locator::Id(id.to_owned())))
            );
        }
        assert_eq!(parse_reference("/accounts"), None);
    }
}
