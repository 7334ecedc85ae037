//! JSON Patch for `PATCH /v1.0/engagements/referrals/{id}` (partner-center-api.md §2.3):
//! the API supports only `replace` and `add`, so those are the only operations this type
//! can express.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The two operations Partner Center accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchKind {
    /// Replace an existing property (the service refuses it for a missing one).
    Replace,
    /// Add a property, or append to an array with `/-`.
    Add,
}

/// One RFC 6902 operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchOp {
    /// `replace` or `add`.
    pub op: PatchKind,
    /// JSON Pointer, e.g. `/details/dealValue`; build it with [`pointer()`].
    pub path: String,
    /// The new value.
    pub value: Value,
}

impl PatchOp {
    /// `{"op":"replace","path":…,"value":…}`.
    pub fn replace(path: impl Into<String>, value: impl Into<Value>) -> PatchOp {
        PatchOp {
            op: PatchKind::Replace,
            path: path.into(),
            value: value.into(),
        }
    }

    /// `{"op":"add","path":…,"value":…}`.
    pub fn add(path: impl Into<String>, value: impl Into<Value>) -> PatchOp {
        PatchOp {
            op: PatchKind::Add,
            path: path.into(),
            value: value.into(),
        }
    }
}

/// A JSON Pointer from property names, escaping `~` and `/` (RFC 6901):
/// `pointer(&["details", "dealValue"])` is `/details/dealValue`.
pub fn pointer<S: AsRef<str>>(segments: &[S]) -> String {
    let mut out = String::new();
    for segment in segments {
        out.push('/');
        out.push_str(&escape(segment.as_ref()));
    }
    out
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The operations that turn `before` into `after`, for changed leaves only:
/// - a property present in both and different: recurse into objects, else `replace`;
/// - a property only in `after`: `add`;
/// - an array that only grew at its end: `add` at `/-` for each new element (the
///   documented way to add a team member); any other array change replaces the array,
///   since element-wise index edits would shift under concurrent changes;
/// - a property only in `before` produces nothing: the API has no `remove`. Set it to
///   `null` in `after` to clear it (a `replace` with `null`).
///
/// Unchanged input gives an empty list (send nothing: a PATCH costs budget).
pub fn diff_to_patch(before: &Value, after: &Value) -> Vec<PatchOp> {
    let mut ops = Vec::new();
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => diff_objects("", b, a, &mut ops),
        _ if before != after => ops.push(PatchOp::replace("", after.clone())),
        _ => {}
    }
    ops
}

fn diff_objects(
    path: &str,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    ops: &mut Vec<PatchOp>,
) {
    for (key, new) in after {
        let here = format!("{path}/{}", escape(key));
        match before.get(key) {
            None => ops.push(PatchOp::add(here, new.clone())),
            Some(old) if old == new => {}
            Some(Value::Object(old)) if new.is_object() => {
                if let Value::Object(new) = new {
                    diff_objects(&here, old, new, ops);
                }
            }
            Some(Value::Array(old))
                if new
                    .as_array()
                    .is_some_and(|new| new.len() > old.len() && new.starts_with(old)) =>
            {
                if let Value::Array(new) = new {
                    for item in &new[old.len()..] {
                        ops.push(PatchOp::add(format!("{here}/-"), item.clone()));
                    }
                }
            }
            Some(_) => ops.push(PatchOp::replace(here, new.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_changed_leaves_become_operations() {
        let before = json!({
            "name": "Deal", "status": "Active",
            "details": { "notes": "a", "dealValue": 5, "currency": "USD" },
            "team": [{ "email": "a@x" }],
            "target": [{ "id": "1" }, { "id": "2" }],
            "gone": 1
        });
        let after = json!({
            "name": "Deal", "status": "Closed",
            "details": { "notes": "b", "dealValue": 5, "currency": "USD", "closingDateTime": "2030-01-01T00:00:00Z" },
            "team": [{ "email": "a@x" }, { "email": "b@x" }],
            "target": [{ "id": "2" }],
            "a/b~c": true
        });
        let ops = diff_to_patch(&before, &after);
        let ops = serde_json::to_value(&ops).unwrap();
        let expected = json!([
            { "op": "add", "path": "/a~1b~0c", "value": true },
            { "op": "add", "path": "/details/closingDateTime", "value": "2030-01-01T00:00:00Z" },
            { "op": "replace", "path": "/details/notes", "value": "b" },
            { "op": "replace", "path": "/status", "value": "Closed" },
            { "op": "replace", "path": "/target", "value": [{ "id": "2" }] },
            { "op": "add", "path": "/team/-", "value": { "email": "b@x" } }
        ]);
        let mut got: Vec<Value> = ops.as_array().unwrap().clone();
        let mut want: Vec<Value> = expected.as_array().unwrap().clone();
        let key = |v: &Value| v["path"].as_str().unwrap_or_default().to_owned();
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want);
        assert!(diff_to_patch(&before, &before).is_empty());
    }

    #[test]
    fn null_and_type_changes_are_replaced() {
        let ops = diff_to_patch(
            &json!({ "externalReferenceId": null, "details": "x" }),
            &json!({ "externalReferenceId": "opp-1", "details": { "notes": "n" } }),
        );
        assert_eq!(
            ops,
            vec![
                PatchOp::replace("/details", json!({ "notes": "n" })),
                PatchOp::replace("/externalReferenceId", "opp-1"),
            ]
        );
    }

    #[test]
    fn pointers_escape() {
        assert_eq!(pointer(&["details", "dealValue"]), "/details/dealValue");
        assert_eq!(pointer(&["a/b", "c~d"]), "/a~1b/c~0d");
        assert_eq!(pointer::<&str>(&[]), "");
    }
}
