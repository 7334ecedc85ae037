//! Conditional request headers on sObject Rows ("Conditional Request Headers", REST API
//! guide; `shared/reference/crm-apis.md` B7), by id; reads by External ID share the GET path
//! and honour the read headers too.
//!
//! - Weak validation, every object: `If-Unmodified-Since` on PATCH and DELETE (412 when the
//!   record's `LastModifiedDate` is later), `If-Modified-Since` on GET (304 when it is not).
//!   HTTP dates have whole seconds, so the comparison drops the record's milliseconds: a
//!   record modified in the same second as the date given counts as *not* modified since.
//! - Strong validation, Account only: an `ETag` on every row response, `If-Match` (412
//!   unless a listed tag matches) and `If-None-Match` (304 on GET, 412 on writes, when a
//!   listed tag matches). On other objects Salesforce ignores both headers, and so does the
//!   emulator: that is why clients must not rely on them outside Account.
//! - An invalid `If-Match`, `If-None-Match` or `If-Unmodified-Since` on a write is a 400;
//!   an unreadable `If-Modified-Since` on a read is ignored, as HTTP says.
//!
//! UNVERIFIED wording: Salesforce documents the statuses but not the bodies. The emulator
//! answers `[{"errorCode":"PRECONDITION_FAILED","message":…}]` for 412 and
//! `[{"errorCode":"INVALID_HEADER_VALUE","message":…}]` for 400. Current docs say DELETE
//! does not support these headers, older ones (v204) list DELETE with PATCH and POST; the
//! emulator honours them on DELETE, which is the safe reading for a client that sends them.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;

use super::schema::Object;
use super::store::Record;
use super::write;
use crate::sandbox::Api;

/// The preconditions of one request, parsed up front so invalid values are refused before
/// any record is touched.
#[derive(Debug, Default)]
pub struct Conditions {
    unmodified_since: Option<i64>,
    modified_since: Option<i64>,
    if_match: Option<TagList>,
    if_none_match: Option<TagList>,
}

/// `*` or a list of entity tags (weak prefixes and the `-gzip` suffix Salesforce adds for
/// compressed responses removed, since they do not change the representation compared).
#[derive(Debug)]
enum TagList {
    Any,
    Tags(Vec<String>),
}

impl TagList {
    fn parse(value: &str) -> Option<TagList> {
        let value = value.trim();
        if value == "*" {
            return Some(TagList::Any);
        }
        let mut tags = Vec::new();
        for part in value.split(',') {
            let part = part.trim();
            let part = part.strip_prefix("W/").unwrap_or(part);
            let inner = part.strip_prefix('"')?.strip_suffix('"')?;
            if inner.contains('"') {
                return None;
            }
            tags.push(inner.strip_suffix("-gzip").unwrap_or(inner).to_owned());
        }
        (!tags.is_empty()).then_some(TagList::Tags(tags))
    }

    fn matches(&self, etag: &str) -> bool {
        match self {
            TagList::Any => true,
            TagList::Tags(tags) => tags.iter().any(|t| t == etag),
        }
    }
}

fn invalid(name: &str, value: &str) -> Response {
    Api::Salesforce.error(
        StatusCode::BAD_REQUEST,
        "INVALID_HEADER_VALUE",
        &format!("Invalid value for the {name} header: {value}"),
    )
}

fn precondition_failed(message: &str) -> Response {
    Api::Salesforce.error(
        StatusCode::PRECONDITION_FAILED,
        "PRECONDITION_FAILED",
        message,
    )
}

impl Conditions {
    /// The headers of a write (PATCH, DELETE): invalid values are a 400.
    pub fn for_write(headers: &HeaderMap, account: bool) -> Result<Conditions, Response> {
        let text = |name: header::HeaderName| -> Result<Option<String>, Response> {
            match headers.get(&name) {
                None => Ok(None),
                Some(value) => value
                    .to_str()
                    .map(|v| Some(v.to_owned()))
                    .map_err(|_| invalid(name.as_str(), "(not text)")),
            }
        };
        let mut conditions = Conditions::default();
        if let Some(value) = text(header::IF_UNMODIFIED_SINCE)? {
            conditions.unmodified_since = Some(
                parse_http_date(&value).ok_or_else(|| invalid("If-Unmodified-Since", &value))?,
            );
        }
        if account {
            if let Some(value) = text(header::IF_MATCH)? {
                conditions.if_match =
                    Some(TagList::parse(&value).ok_or_else(|| invalid("If-Match", &value))?);
            }
            if let Some(value) = text(header::IF_NONE_MATCH)? {
                conditions.if_none_match =
                    Some(TagList::parse(&value).ok_or_else(|| invalid("If-None-Match", &value))?);
            }
        }
        Ok(conditions)
    }

    /// The headers of a read (GET, HEAD): unreadable values are ignored.
    pub fn for_read(headers: &HeaderMap, account: bool) -> Conditions {
        let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        Conditions {
            unmodified_since: None,
            modified_since: text(header::IF_MODIFIED_SINCE).and_then(parse_http_date),
            if_match: None,
            if_none_match: account
                .then(|| text(header::IF_NONE_MATCH).and_then(TagList::parse))
                .flatten(),
        }
    }

    /// Whether a write to `record` may go ahead; the 412 when it may not.
    pub fn check_write(&self, object: &Object, record: &Record) -> Result<(), Response> {
        if let Some(since) = self.unmodified_since
            && last_modified(object, record).is_some_and(|modified| modified > since)
        {
            return Err(precondition_failed(&format!(
                "The requested resource has been modified since {} (If-Unmodified-Since)",
                format_http_date(since)
            )));
        }
        let etag = || etag(object, record);
        if let Some(tags) = &self.if_match
            && !tags.matches(&etag())
        {
            return Err(precondition_failed(
                "The requested resource does not match the If-Match entity tag",
            ));
        }
        if let Some(tags) = &self.if_none_match
            && tags.matches(&etag())
        {
            return Err(precondition_failed(
                "The requested resource matches the If-None-Match entity tag",
            ));
        }
        Ok(())
    }

    /// Whether a read of `record` is answered 304 Not Modified.
    pub fn not_modified(&self, object: &Object, record: &Record) -> bool {
        if let Some(tags) = &self.if_none_match {
            // With If-None-Match present, If-Modified-Since is ignored (RFC 9110 13.2.2).
            return tags.matches(&etag(object, record));
        }
        self.modified_since.is_some_and(|since| {
            last_modified(object, record).is_some_and(|modified| modified <= since)
        })
    }
}

/// A 304 for a row (with its ETag on Account).
pub fn not_modified(object: &Object, record: &Record, account: bool) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    if account {
        add_etag(&mut response, object, record);
    }
    response
}

/// Adds the row's `ETag`.
pub fn add_etag(response: &mut Response, object: &Object, record: &Record) {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{}\"", etag(object, record))) {
        response.headers_mut().insert(header::ETAG, value);
    }
}

/// A hash of the record's content: base64 SHA-1 over every field value, like the
/// `U5iWijwWbQD18jeiXwsqxeGpZQk=` Salesforce shows. Independent of `?fields=` and of the
/// API version, so a tag read through any GET works for a PATCH.
pub fn etag(object: &Object, record: &Record) -> String {
    let values: Vec<Value> = object
        .fields
        .iter()
        .zip(record.values.iter())
        .map(|(field, value)| value.to_json(field.kind))
        .collect();
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        Value::Array(values).to_string().as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// `LastModifiedDate` in whole Unix seconds.
fn last_modified(object: &Object, record: &Record) -> Option<i64> {
    let field = object.field("LastModifiedDate")?;
    let text = record.values[field].as_text()?;
    Some(write::parse_datetime(text)?.unix_seconds())
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// Unix seconds of an HTTP date in any of the three forms HTTP recipients must accept:
/// IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT`
/// and asctime `Sun Nov  6 08:49:37 1994`.
pub fn parse_http_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (day, month, year, time) = match parts.as_slice() {
        [weekday, day, month, year, time, "GMT"] if weekday.ends_with(',') => {
            (*day, *month, (*year).to_owned(), *time)
        }
        [weekday, date, time, "GMT"] if weekday.ends_with(',') => {
            let mut pieces = date.split('-');
            let (Some(day), Some(month), Some(year), None) =
                (pieces.next(), pieces.next(), pieces.next(), pieces.next())
            else {
                return None;
            };
            let short: u32 = year.parse().ok().filter(|_| year.len() == 2)?;
            // RFC 9110: a two-digit year more than 50 years ahead is in the past century.
            let full = if short < 70 {
                2000 + short
            } else {
                1900 + short
            };
            (day, month, full.to_string(), *time)
        }
        [_, month, day, time, year] => (*day, *month, (*year).to_owned(), *time),
        _ => return None,
    };
    let month = MONTHS.iter().position(|m| *m == month)? + 1;
    if day.is_empty() || day.len() > 2 || year.len() != 4 || time.len() != 8 {
        return None;
    }
    let text = format!("{year}-{month:02}-{day:0>2}T{time}Z");
    Some(crate::mapping::transforms::datetime::DateTime::parse(&text)?.unix_seconds())
}

/// IMF-fixdate of Unix seconds.
pub fn format_http_date(seconds: i64) -> String {
    let t = crate::mapping::transforms::datetime::DateTime::from_unix(seconds, 0);
    let weekday = WEEKDAYS[usize::try_from(seconds.div_euclid(86_400).rem_euclid(7)).unwrap_or(0)];
    format!(
        "{weekday}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        t.day,
        MONTHS[usize::from(t.month.saturating_sub(1)).min(11)],
        t.year,
        t.hour,
        t.minute,
        t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_in_all_three_forms() {
        let expected = 784_111_777;
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(expected)
        );
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(expected)
        );
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(expected));
        assert_eq!(format_http_date(expected), "Sun, 06 Nov 1994 08:49:37 GMT");
        for bad in [
            "",
            "yesterday",
            "2024-01-01T00:00:00Z",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn entity_tag_lists() {
        assert!(matches!(TagList::parse("*"), Some(TagList::Any)));
        let list = TagList::parse(r#""abc=-gzip", W/"def""#).unwrap();
        assert!(list.matches("abc=") && list.matches("def") && !list.matches("xyz"));
        assert!(TagList::parse("abc").is_none());
        assert!(TagList::parse(r#""a"b""#).is_none());
        assert!(TagList::parse("").is_none());
    }
}
