//! `GET /<set>`: `$select`, `$filter`, `$orderby`, `$top`, `$count`, `$expand`, and
//! server-driven paging with `Prefer: odata.maxpagesize` and an opaque `$skiptoken`.
//! Change tracking requests go to [`super::tracking`].
//!
//! Paging is keyset-based, like Dataverse's paging cookie: the token carries the sort
//! values and id of the last row served, so rows created or deleted between pages neither
//! repeat nor vanish. When both `$top` and `odata.maxpagesize` are given, `$top` is
//! ignored (crm-apis.md A5).

use std::cmp::Ordering;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

use super::read::{self, Shape};
use super::schema::Table;
use super::{Call, DvError, State, json as json_response, set_header};
use crate::sandbox::odata::{self, MatchOptions};

/// Most rows one page holds, and the `@odata.count` cap.
const MAX_PAGE: usize = 5000;

const CI: MatchOptions = MatchOptions {
    case_insensitive_strings: true,
};

/// The validated query options of a collection request.
struct Query {
    filter: Option<odata::Filter>,
    orderby: Vec<(String, bool)>,
    top: Option<usize>,
    count: bool,
    shape: Shape,
    skiptoken: Option<Cookie>,
}

/// The paging cookie: where the previous page ended.
#[derive(Debug, Clone, PartialEq)]
struct Cookie {
    page: u64,
    keys: Vec<Value>,
    id: String,
}

impl Cookie {
    fn encode(&self) -> String {
        encode_cookie(self.page, &json!({ "k": self.keys, "id": self.id }), false)
    }

    fn decode(text: &str) -> Option<Cookie> {
        let (page, state) = decode_cookie(text)?;
        Some(Cookie {
            page,
            keys: state.get("k")?.as_array()?.clone(),
            id: state.get("id")?.as_str()?.to_owned(),
        })
    }
}

/// `<cookie pagenumber="2" pagingcookie="…" istracking="False" />`, the shape of
/// Dataverse's `$skiptoken`s, with our paging state base64url-encoded inside.
pub(super) fn encode_cookie(page: u64, state: &Value, tracking: bool) -> String {
    let inner = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(state.to_string());
    let tracking = if tracking { "True" } else { "False" };
    format!("<cookie pagenumber=\"{page}\" pagingcookie=\"{inner}\" istracking=\"{tracking}\" />")
}

/// The page number and state of a cookie made by [`encode_cookie`].
pub(super) fn decode_cookie(text: &str) -> Option<(u64, Value)> {
    let page = text
        .split("pagenumber=\"")
        .nth(1)?
        .split('"')
        .next()?
        .parse()
        .ok()?;
    let inner = text.split("pagingcookie=\"").nth(1)?.split('"').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(inner)
        .ok()?;
    Some((page, serde_json::from_slice(&bytes).ok()?))
}

fn option_error(message: String) -> DvError {
    DvError::bad_request("0x80060888", &message)
}

/// Substitutes parameter aliases (`@p1`) defined in the query string into `text`.
fn substitute_aliases(text: &str, aliases: &[(String, String)]) -> String {
    let mut out = text.to_owned();
    let mut sorted: Vec<&(String, String)> = aliases.iter().collect();
    // Longest first so `@p10` is not replaced as `@p1` + "0".
    sorted.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    for (name, value) in sorted {
        out = out.replace(name.as_str(), value);
    }
    out
}

fn parse_query(call: &Call<'_>, state: &State, table: &Table) -> Result<Query, DvError> {
    let options = call.options();
    let aliases: Vec<(String, String)> = options
        .iter()
        .filter(|(k, _)| k.starts_with('@'))
        .cloned()
        .collect();
    let mut seen: Vec<&str> = Vec::new();
    for (name, _) in &options {
        if !name.starts_with('$') {
            if matches!(
                name.as_str(),
                "fetchXml" | "savedQuery" | "userQuery" | "sql"
            ) {
                return Err(option_error(format!(
                    "The query parameter '{name}' is not supported by the sandbox; use OData query options."
                )));
            }
            continue;
        }
        match name.as_str() {
            "$select" | "$filter" | "$orderby" | "$top" | "$count" | "$expand" | "$skiptoken" => {}
            "$skip" | "$search" | "$format" => {
                return Err(option_error(format!(
                    "The query parameter {name} is not supported"
                )));
            }
            "$apply" | "$deltatoken" => {
                return Err(option_error(format!(
                    "The query parameter {name} is not supported by the sandbox"
                )));
            }
            other => {
                return Err(option_error(format!(
                    "The query parameter '{other}' is not supported. Query option names are case-sensitive: use $select, $filter, $orderby, $top, $count or $expand."
                )));
            }
        }
        if seen.contains(&name.as_str()) {
            return Err(option_error(format!(
                "Query option '{name}' was specified more than once, but it must be specified at most once."
            )));
        }
        seen.push(name);
    }
    let get = |name: &str| {
        options
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let filter = match get("$filter") {
        Some(text) => {
            let text = substitute_aliases(&text, &aliases);
            let filter = odata::parse_filter(&text).map_err(|e| option_error(e.to_string()))?;
            for property in filter.properties() {
                if table.by_property(&property).is_some() {
                    continue;
                }
                if table.navigation(&property).is_some() || table.collection(&property).is_some() {
                    return Err(option_error(format!(
                        "Filtering through the navigation property '{property}' is not supported by the sandbox; filter on '_{property}_value' or query the related table."
                    )));
                }
                return Err(read::unknown_property(table, &property));
            }
            Some(filter)
        }
        None => None,
    };
    let orderby = match get("$orderby") {
        Some(text) => {
            let text = substitute_aliases(&text, &aliases);
            let keys = odata::parse_orderby(&text).map_err(|e| option_error(e.to_string()))?;
            for (property, _) in &keys {
                if table.by_property(property).is_none() {
                    return Err(read::unknown_property(table, property));
                }
            }
            keys
        }
        None => Vec::new(),
    };
    let top = match get("$top") {
        Some(text) => Some(text.trim().parse::<usize>().map_err(|_| {
            option_error(format!(
                "Invalid value '{text}' for $top query option found. The $top query option requires a non-negative integer value."
            ))
        })?),
        None => None,
    };
    let count = match get("$count").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(option_error(format!(
                "'{other}' is not a valid count option."
            )));
        }
    };
    let select = get("$select")
        .map(|s| read::parse_select(table, &s))
        .transpose()?;
    let expand = get("$expand")
        .map(|e| read::parse_expand(&state.schema, table, &e))
        .transpose()?
        .unwrap_or_default();
    let skiptoken = match get("$skiptoken") {
        Some(text) => Some(Cookie::decode(&text).filter(|c| c.keys.len() == orderby.len()).ok_or_else(
            || option_error("The $skiptoken is not valid for this query. Replay @odata.nextLink exactly as returned.".to_owned()),
        )?),
        None => None,
    };
    Ok(Query {
        filter,
        orderby,
        top,
        count,
        shape: Shape {
            select,
            expand,
            annotations: call.prefer.annotations(),
        },
        skiptoken,
    })
}

/// Orders two rows by the `$orderby` keys, then by id (the default order).
fn compare_rows(a: &Value, b: &Value, orderby: &[(String, bool)], id: &str) -> Ordering {
    for (property, descending) in orderby {
        let x = a.get(property).unwrap_or(&Value::Null);
        let y = b.get(property).unwrap_or(&Value::Null);
        let ordering = odata::compare_values(x, y, &CI);
        let ordering = if *descending {
            ordering.reverse()
        } else {
            ordering
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    let x = a.get(id).and_then(Value::as_str).unwrap_or("");
    let y = b.get(id).and_then(Value::as_str).unwrap_or("");
    x.cmp(y)
}

/// Where a row stands relative to the cookie.
fn after_cookie(row: &Value, cookie: &Cookie, orderby: &[(String, bool)], id: &str) -> bool {
    for ((property, descending), key) in orderby.iter().zip(&cookie.keys) {
        let value = row.get(property).unwrap_or(&Value::Null);
        let ordering = odata::compare_values(value, key, &CI);
        let ordering = if *descending {
            ordering.reverse()
        } else {
            ordering
        };
        match ordering {
            Ordering::Greater => return true,
            Ordering::Less => return false,
            Ordering::Equal => {}
        }
    }
    row.get(id).and_then(Value::as_str).unwrap_or("") > cookie.id.as_str()
}

/// The query string without `$skiptoken`, as the client sent it (still encoded), so the
/// next link replays every other option verbatim.
fn query_without_skiptoken(raw: Option<&str>) -> Vec<String> {
    raw.unwrap_or("")
        .split('&')
        .filter(|part| !part.is_empty())
        .filter(|part| {
            let name = part.split('=').next().unwrap_or("");
            let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            decoded != "$skiptoken"
        })
        .map(str::to_owned)
        .collect()
}

fn context(call: &Call<'_>, table: &Table, shape: &Shape) -> String {
    let mut columns: Vec<String> = shape.select.clone().unwrap_or_default();
    for expand in &shape.expand {
        columns.push(format!(
            "{}({})",
            expand.name,
            expand.select.clone().unwrap_or_default().join(",")
        ));
    }
    if columns.is_empty() {
        format!("{}/$metadata#{}", call.api_root(), table.set())
    } else {
        format!(
            "{}/$metadata#{}({})",
            call.api_root(),
            table.set(),
            columns.join(",")
        )
    }
}

/// `GET /<set>`.
pub fn list(call: &Call<'_>, state: &State, table: &Table) -> Result<Response, DvError> {
    if super::tracking::applies(call) {
        return super::tracking::list(call, state, table);
    }
    let query = parse_query(call, state, table)?;
    let mut store = call.store();
    // An equality the filter requires narrows the rows to test through an index (the full
    // filter still decides), in the table's order as a scan would give them.
    let candidates = query
        .filter
        .as_ref()
        .and_then(|f| f.required_equality())
        .map(|(column, text)| store.ids_where_eq(table, column, text));
    let Some(rows) = store.rows(table) else {
        return Err(DvError::internal("table without storage"));
    };
    let keep = |row: &&Value| query.filter.as_ref().is_none_or(|f| f.matches(row, &CI));
    let mut matched: Vec<&Value> = match &candidates {
        Some(ids) => ids
            .iter()
            .filter_map(|id| rows.rows.get(id))
            .filter(keep)
            .collect(),
        None => rows.rows.values().filter(keep).collect(),
    };
    if !query.orderby.is_empty() {
        matched.sort_by(|a, b| compare_rows(a, b, &query.orderby, table.id()));
    }
    let total = matched.len();
    let start = match &query.skiptoken {
        Some(cookie) => {
            matched.partition_point(|row| !after_cookie(row, cookie, &query.orderby, table.id()))
        }
        None => 0,
    };
    let paged = call.prefer.max_page_size.is_some();
    let page_size = match (call.prefer.max_page_size, query.top) {
        (Some(size), _) => size.min(MAX_PAGE),
        (None, Some(top)) => top.min(MAX_PAGE),
        (None, None) => MAX_PAGE,
    };
    let end = (start + page_size).min(matched.len());
    let page = &matched[start.min(end)..end];
    // $top without paging ends the result; otherwise more rows mean a next link.
    let more = end < matched.len() && (paged || query.top.is_none_or(|top| top > MAX_PAGE));

    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(context(call, table, &query.shape)),
    );
    if query.count {
        body.insert("@odata.count".into(), json!(total.min(MAX_PAGE)));
    }
    body.insert(
        "value".into(),
        Value::Array(
            page.iter()
                .map(|row| {
                    Value::Object(read::shape_row(
                        &state.schema,
                        &store,
                        table,
                        row,
                        &query.shape,
                    ))
                })
                .collect(),
        ),
    );
    if more && let Some(last) = page.last() {
        let cookie = Cookie {
            page: query.skiptoken.as_ref().map_or(2, |c| c.page + 1),
            keys: query
                .orderby
                .iter()
                .map(|(p, _)| last.get(p).cloned().unwrap_or(Value::Null))
                .collect(),
            id: last
                .get(table.id())
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        };
        let mut parts = query_without_skiptoken(call.query.as_deref());
        parts.push(format!(
            "$skiptoken={}",
            utf8_percent_encode(&cookie.encode(), NON_ALPHANUMERIC)
        ));
        body.insert(
            "@odata.nextLink".into(),
            json!(format!(
                "{}/{}?{}",
                call.api_root(),
                table.set(),
                parts.join("&")
            )),
        );
    }
    let mut response = json_response(StatusCode::OK, &Value::Object(body));
    let mut applied = Vec::new();
    if let Some(size) = call.prefer.max_page_size {
        applied.push(format!("odata.maxpagesize={}", size.min(MAX_PAGE)));
    }
    if let Some((_, raw)) = &call.prefer.annotations {
        applied.push(format!("odata.include-annotations=\"{raw}\""));
    }
    if !applied.is_empty() {
        set_header(&mut response, "preference-applied", &applied.join(","));
    }
    Ok(response)
}

/// `GET /<set>/$count`: the number of rows (capped at 5,000), as plain text.
pub fn count(call: &Call<'_>, table: &Table) -> Result<Response, DvError> {
    if call.option("$deltatoken").is_some() {
        return super::tracking::count(call, table);
    }
    let filter = match call.option("$filter") {
        Some(text) => Some(odata::parse_filter(&text).map_err(|e| option_error(e.to_string()))?),
        None => None,
    };
    let store = call.store();
    let n = store.rows(table).map_or(0, |rows| {
        rows.rows
            .values()
            .filter(|row| filter.as_ref().is_none_or(|f| f.matches(row, &CI)))
            .count()
    });
    let mut response = Response::new(axum::body::Body::from(n.min(MAX_PAGE).to_string()));
    set_header(&mut response, "content-type", "text/plain");
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trip() {
        let cookie = Cookie {
            page: 3,
            keys: vec![json!("Contoso"), json!(null), json!(5)],
            id: "00000000-0000-0000-0000-000000000001".into(),
        };
        assert_eq!(Cookie::decode(&cookie.encode()), Some(cookie));
        assert_eq!(Cookie::decode("garbage"), None);
    }

    #[test]
    fn skiptoken_is_dropped_from_replayed_query() {
        assert_eq!(
            query_without_skiptoken(Some("$select=name&%24skiptoken=abc&$count=true")),
            vec!["$select=name", "$count=true"]
        );
    }

    #[test]
    fn aliases_longest_first() {
        let aliases = vec![
            ("@p1".to_owned(), "'a'".to_owned()),
            ("@p10".to_owned(), "'b'".to_owned()),
        ];
        assert_eq!(
            substitute_aliases("x eq @p10 or x eq @p1", &aliases),
            "x eq 'b' or x eq 'a'"
        );
    }
}
