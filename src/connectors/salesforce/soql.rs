//! Building SOQL safely: typed literals ([`SoqlValue`]) rendered with the escaping the SOQL
//! reference prescribes (`crm-apis.md` B10), checked identifiers, and a small builder
//! ([`Soql`]) so that no caller ever pastes a value into query text.
//!
//! - Strings are single-quoted; `\`, `'`, `"`, newline, carriage return, tab, backspace and
//!   form feed are backslash-escaped, so a value can never close the quote.
//! - Dates are `YYYY-MM-DD` and date-times `YYYY-MM-DDThh:mm:ssZ` (UTC), both unquoted.
//! - Numbers are plain decimals (never exponent notation, never NaN); booleans and `null`
//!   are keywords.
//! - Object and field names must look like API names (`Referral_Id__c`, `Account.Name`):
//!   they cannot be escaped, so anything else is refused.
//!
//! `%` and `_` are wildcards only inside `LIKE`; [`Soql::where_like_literal`] escapes them
//! for a "contains this exact text" filter.

use std::fmt::Write as _;

use super::super::ConnectorError;
use crate::mapping::transforms::datetime::DateTime;

/// A refused query input (a bad identifier or literal). The message names the input but
/// never echoes a value, which may be customer data.
fn invalid(message: String) -> ConnectorError {
    ConnectorError::Config {
        message: format!("salesforce: {message}"),
    }
}

/// A typed SOQL literal.
#[derive(Debug, Clone, PartialEq)]
pub struct SoqlValue(Repr);

#[derive(Debug, Clone, PartialEq)]
enum Repr {
    Null,
    Bool(bool),
    Int(i64),
    Decimal(f64),
    Text(String),
    Date(String),
    DateTime(String),
}

impl SoqlValue {
    /// `null`.
    pub fn null() -> SoqlValue {
        SoqlValue(Repr::Null)
    }

    /// A string literal.
    pub fn text(value: impl Into<String>) -> SoqlValue {
        SoqlValue(Repr::Text(value.into()))
    }

    /// `true` / `false`.
    pub fn bool(value: bool) -> SoqlValue {
        SoqlValue(Repr::Bool(value))
    }

    /// An integer.
    pub fn int(value: i64) -> SoqlValue {
        SoqlValue(Repr::Int(value))
    }

    /// A decimal; refuses NaN and infinities, which SOQL cannot express.
    pub fn decimal(value: f64) -> Result<SoqlValue, ConnectorError> {
        if value.is_finite() {
            Ok(SoqlValue(Repr::Decimal(value)))
        } else {
            Err(invalid("a SOQL number must be finite".to_owned()))
        }
    }

    /// A `date` literal from `YYYY-MM-DD`.
    pub fn date(value: &str) -> Result<SoqlValue, ConnectorError> {
        let parsed = DateTime::parse(value)
            .filter(|_| value.len() == 10)
            .ok_or_else(|| invalid("a SOQL date must be YYYY-MM-DD".to_owned()))?;
        Ok(SoqlValue(Repr::Date(parsed.date_string())))
    }

    /// A `dateTime` literal from any ISO 8601 date-time, including Salesforce's own
    /// `2024-01-31T10:00:00.000+0000`. Rendered in UTC as `YYYY-MM-DDThh:mm:ssZ`: the SOQL
    /// reference shows no fractional seconds, so they are dropped (for `>` filters that
    /// re-reads at most the same second, it never skips a record).
    pub fn datetime(value: &str) -> Result<SoqlValue, ConnectorError> {
        let parsed = parse_salesforce_datetime(value)
            .ok_or_else(|| invalid("a SOQL dateTime must be an ISO 8601 date-time".to_owned()))?
            .to_utc();
        Ok(SoqlValue(Repr::DateTime(format!(
            "{}T{:02}:{:02}:{:02}Z",
            parsed.date_string(),
            parsed.hour,
            parsed.minute,
            parsed.second
        ))))
    }

    /// The literal as it goes into query text.
    pub fn literal(&self) -> String {
        match &self.0 {
            Repr::Null => "null".to_owned(),
            Repr::Bool(b) => b.to_string(),
            Repr::Int(n) => n.to_string(),
            // Rust's `Display` for f64 never uses exponent notation.
            Repr::Decimal(n) => n.to_string(),
            Repr::Text(s) => quote(s),
            Repr::Date(s) | Repr::DateTime(s) => s.clone(),
        }
    }
}

impl From<&str> for SoqlValue {
    fn from(value: &str) -> SoqlValue {
        SoqlValue::text(value)
    }
}

impl From<String> for SoqlValue {
    fn from(value: String) -> SoqlValue {
        SoqlValue::text(value)
    }
}

impl From<&String> for SoqlValue {
    fn from(value: &String) -> SoqlValue {
        SoqlValue::text(value.as_str())
    }
}

impl From<bool> for SoqlValue {
    fn from(value: bool) -> SoqlValue {
        SoqlValue::bool(value)
    }
}

impl From<i64> for SoqlValue {
    fn from(value: i64) -> SoqlValue {
        SoqlValue::int(value)
    }
}

impl From<i32> for SoqlValue {
    fn from(value: i32) -> SoqlValue {
        SoqlValue::int(i64::from(value))
    }
}

impl From<u32> for SoqlValue {
    fn from(value: u32) -> SoqlValue {
        SoqlValue::int(i64::from(value))
    }
}

/// Parses ISO 8601 date-times, also with Salesforce's `+0000` offset form.
pub(crate) fn parse_salesforce_datetime(text: &str) -> Option<DateTime> {
    let text = text.trim();
    let bytes = text.as_bytes();
    let n = bytes.len();
    if n > 10
        && text.contains('T')
        && matches!(bytes[n - 5], b'+' | b'-')
        && bytes[n - 4..].iter().all(u8::is_ascii_digit)
    {
        return DateTime::parse(&format!("{}:{}", &text[..n - 2], &text[n - 2..]));
    }
    DateTime::parse(text).filter(|_| text.contains(['T', 't', ' ']))
}

/// `'…'` with every character that could end or confuse the literal escaped.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            other => out.push(other),
        }
    }
    out.push('\'');
    out
}

/// [`quote`] for a `LIKE` pattern matching `text` literally (`%` and `_` escaped too).
pub fn quote_like_literal(text: &str) -> String {
    let quoted = quote(text);
    let mut out = String::with_capacity(quoted.len() + 4);
    for c in quoted.chars() {
        match c {
            '%' => out.push_str("\\%"),
            '_' => out.push_str("\\_"),
            other => out.push(other),
        }
    }
    out
}

/// Whether `name` is an API name or a dotted relationship path (`Account.Owner.Name`).
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// `name` if it is an identifier, else an error naming `what`.
pub(crate) fn identifier<'a>(what: &str, name: &'a str) -> Result<&'a str, ConnectorError> {
    if is_identifier(name) {
        Ok(name)
    } else {
        Err(invalid(format!(
            "{what} `{}` is not a valid API name",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `ASC`
    Asc,
    /// `DESC`
    Desc,
}

/// A `SELECT … FROM … [WHERE … AND …] [ORDER BY …] [LIMIT n]` under construction. Every
/// identifier is checked and every value is a [`SoqlValue`], so the text [`Soql::build`]
/// returns cannot be steered by data.
#[derive(Debug, Clone, Default)]
pub struct Soql {
    fields: Vec<String>,
    object: String,
    conditions: Vec<String>,
    order: Vec<String>,
    limit: Option<u32>,
    error: Option<String>,
}

impl Soql {
    /// `SELECT fields`.
    pub fn select(fields: &[&str]) -> Soql {
        let mut soql = Soql::default();
        for field in fields {
            soql.check("field", field);
            soql.fields.push((*field).to_owned());
        }
        soql
    }

    /// `FROM object`.
    pub fn from(mut self, object: &str) -> Soql {
        self.check("object", object);
        object.clone_into(&mut self.object);
        self
    }

    /// `AND field <op> value`.
    pub fn filter(mut self, field: &str, op: Op, value: impl Into<SoqlValue>) -> Soql {
        self.check("field", field);
        let literal = value.into().literal();
        self.conditions
            .push(format!("{field} {} {literal}", op.text()));
        self
    }

    /// `AND field = value`.
    pub fn where_eq(self, field: &str, value: impl Into<SoqlValue>) -> Soql {
        self.filter(field, Op::Eq, value)
    }

    /// `AND field != value`.
    pub fn where_ne(self, field: &str, value: impl Into<SoqlValue>) -> Soql {
        self.filter(field, Op::Ne, value)
    }

    /// `AND field > value`.
    pub fn where_gt(self, field: &str, value: impl Into<SoqlValue>) -> Soql {
        self.filter(field, Op::Gt, value)
    }

    /// `AND field IN (values)`; an empty list matches nothing, so it is refused rather
    /// than sent as the invalid `IN ()`.
    pub fn where_in<V: Into<SoqlValue>>(
        mut self,
        field: &str,
        values: impl IntoIterator<Item = V>,
    ) -> Soql {
        self.check("field", field);
        let literals: Vec<String> = values.into_iter().map(|v| v.into().literal()).collect();
        if literals.is_empty() && self.error.is_none() {
            self.error = Some(format!("IN on `{field}` needs at least one value"));
        }
        self.conditions
            .push(format!("{field} IN ({})", literals.join(", ")));
        self
    }

    /// `AND field LIKE '%text%'` with `text` matched literally (its `%` and `_` escaped).
    pub fn where_like_literal(mut self, field: &str, text: &str) -> Soql {
        self.check("field", field);
        let quoted = quote_like_literal(text);
        let inner = &quoted[1..quoted.len() - 1];
        self.conditions.push(format!("{field} LIKE '%{inner}%'"));
        self
    }

    /// `ORDER BY field dir` (call again for further keys).
    pub fn order_by(mut self, field: &str, order: Order) -> Soql {
        self.check("field", field);
        let dir = match order {
            Order::Asc => "ASC",
            Order::Desc => "DESC",
        };
        self.order.push(format!("{field} {dir}"));
        self
    }

    /// `LIMIT n`.
    pub fn limit(mut self, n: u32) -> Soql {
        self.limit = Some(n);
        self
    }

    fn check(&mut self, what: &str, name: &str) {
        if self.error.is_none()
            && let Err(ConnectorError::Config { message }) = identifier(what, name)
        {
            self.error = Some(message);
        }
    }

    /// The query text, or the first problem found while building it.
    pub fn build(&self) -> Result<String, ConnectorError> {
        if let Some(error) = &self.error {
            return Err(ConnectorError::Config {
                message: error.clone(),
            });
        }
        if self.fields.is_empty() {
            return Err(invalid("a SOQL query needs at least one field".to_owned()));
        }
        if self.object.is_empty() {
            return Err(invalid("a SOQL query needs FROM".to_owned()));
        }
        let mut text = format!("SELECT {} FROM {}", self.fields.join(", "), self.object);
        if !self.conditions.is_empty() {
            let _ = write!(text, " WHERE {}", self.conditions.join(" AND "));
        }
        if !self.order.is_empty() {
            let _ = write!(text, " ORDER BY {}", self.order.join(", "));
        }
        if let Some(limit) = self.limit {
            let _ = write!(text, " LIMIT {limit}");
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_and_escaped() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("O'Brien"), r"'O\'Brien'");
        assert_eq!(quote(r"back\slash"), r"'back\\slash'");
        assert_eq!(quote("a\nb\rc\td\"e"), r#"'a\nb\rc\td\"e'"#);
        assert_eq!(
            quote("100%_"),
            "'100%_'",
            "wildcards are literal outside LIKE"
        );
        assert_eq!(quote_like_literal("100%_'"), r"'100\%\_\''");
    }

    /// Whatever the value, the rendered literal is one token: scanning it the way SOQL does
    /// ends exactly at its last character.
    fn literal_end(literal: &str) -> Option<usize> {
        let bytes = literal.as_bytes();
        if bytes.first() != Some(&b'\'') {
            return None;
        }
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'\'' => return Some(i),
                _ => i += 1,
            }
        }
        None
    }

    #[test]
    fn injection_attempts_stay_inside_the_literal() {
        for attempt in [
            "x' OR Name != '",
            "x\\' OR Name != '",
            "x\\\\' OR Id != null OR Name = '",
            "'; DELETE FROM Account; --",
            "\\",
            "'",
            "\u{0}'\n",
        ] {
            let literal = SoqlValue::text(attempt).literal();
            assert_eq!(
                literal_end(&literal),
                Some(literal.len() - 1),
                "{attempt:?} → {literal}"
            );
        }
        let soql = Soql::select(&["Id"])
            .from("Opportunity")
            .where_eq("Name", "x' OR Name != '")
            .build()
            .unwrap();
        assert_eq!(
            soql,
            r"SELECT Id FROM Opportunity WHERE Name = 'x\' OR Name != \''"
        );
    }

    #[test]
    fn typed_literals() {
        assert_eq!(SoqlValue::null().literal(), "null");
        assert_eq!(SoqlValue::from(true).literal(), "true");
        assert_eq!(SoqlValue::from(-42).literal(), "-42");
        assert_eq!(
            SoqlValue::decimal(1e20).unwrap().literal(),
            "100000000000000000000"
        );
        assert_eq!(SoqlValue::decimal(12.5).unwrap().literal(), "12.5");
        assert!(SoqlValue::decimal(f64::NAN).is_err());
        assert_eq!(
            SoqlValue::date("2024-02-29").unwrap().literal(),
            "2024-02-29"
        );
        assert!(SoqlValue::date("2023-02-29").is_err());
        assert!(SoqlValue::date("2024-02-01T00:00:00Z").is_err());
        assert_eq!(
            SoqlValue::datetime("2024-01-31T10:00:00.123+0000")
                .unwrap()
                .literal(),
            "2024-01-31T10:00:00Z"
        );
        assert_eq!(
            SoqlValue::datetime("2024-01-31T23:30:00-01:00")
                .unwrap()
                .literal(),
            "2024-02-01T00:30:00Z"
        );
        assert!(SoqlValue::datetime("2024-01-31").is_err());
        assert!(SoqlValue::datetime("yesterday' OR '").is_err());
    }

    #[test]
    fn the_builder_checks_identifiers() {
        let soql = Soql::select(&["Id", "Account.Name", "SystemModstamp"])
            .from("Opportunity")
            .where_gt(
                "SystemModstamp",
                SoqlValue::datetime("2024-01-01T00:00:00Z").unwrap(),
            )
            .where_in("StageName", ["Prospecting", "Closed Won"])
            .where_like_literal("Name", "50%")
            .order_by("SystemModstamp", Order::Asc)
            .order_by("Id", Order::Asc)
            .limit(10)
            .build()
            .unwrap();
        assert_eq!(
            soql,
            "SELECT Id, Account.Name, SystemModstamp FROM Opportunity WHERE SystemModstamp > 2024-01-01T00:00:00Z AND StageName IN ('Prospecting', 'Closed Won') AND Name LIKE '%50\\%%' ORDER BY SystemModstamp ASC, Id ASC LIMIT 10"
        );
        for bad in [
            "Name, Id",
            "Name FROM Account --",
            "",
            "1abc",
            "a..b",
            "Id)",
        ] {
            assert!(
                Soql::select(&[bad]).from("Account").build().is_err(),
                "{bad:?}"
            );
            assert!(Soql::select(&["Id"]).from(bad).build().is_err(), "{bad:?}");
        }
        assert!(
            Soql::select(&["Id"])
                .from("Account")
                .where_in("Id", Vec::<String>::new())
                .build()
                .is_err()
        );
    }
}
