//! A small OData `$filter` builder with correct literal escaping, for the referral list
//! (partner-center-api.md §2.2): `engagementId eq '…'`, `status eq 'New' and direction eq
//! 'Incoming'`, `team/any(t:t/email eq '…')`.
//!
//! Values always go through [`Literal`], so a customer name such as `O'Brien` becomes
//! `'O''Brien'` and can never end the literal early and inject filter syntax. Property
//! paths are the caller's code, not data, and are written as given.

use std::fmt;

/// A `$filter` literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `'text'`, with `'` doubled.
    String(String),
    /// A number.
    Number(f64),
    /// An integer.
    Integer(i64),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An unquoted ISO 8601 date-time (`2024-01-01T00:00:00Z`), as OData v4 writes them.
    /// Characters outside ISO 8601 are dropped so it cannot carry filter syntax.
    DateTime(String),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::String(text) => write!(f, "'{}'", text.replace('\'', "''")),
            Literal::Number(number) if number.is_finite() => write!(f, "{number}"),
            // NaN and infinity have no OData literal; null matches nothing a number would.
            Literal::Number(_) | Literal::Null => f.write_str("null"),
            Literal::Integer(number) => write!(f, "{number}"),
            Literal::Bool(flag) => write!(f, "{flag}"),
            Literal::DateTime(text) => {
                let clean: String = text
                    .chars()
                    .filter(|c| {
                        c.is_ascii_digit() || matches!(c, '-' | ':' | 'T' | 'Z' | '.' | '+')
                    })
                    .collect();
                f.write_str(&clean)
            }
        }
    }
}

impl From<&str> for Literal {
    fn from(value: &str) -> Self {
        Literal::String(value.to_owned())
    }
}

impl From<String> for Literal {
    fn from(value: String) -> Self {
        Literal::String(value)
    }
}

impl From<&String> for Literal {
    fn from(value: &String) -> Self {
        Literal::String(value.clone())
    }
}

impl From<bool> for Literal {
    fn from(value: bool) -> Self {
        Literal::Bool(value)
    }
}

impl From<i64> for Literal {
    fn from(value: i64) -> Self {
        Literal::Integer(value)
    }
}

impl From<f64> for Literal {
    fn from(value: f64) -> Self {
        Literal::Number(value)
    }
}

/// A `$filter` expression. Combinators parenthesize their operands, so precedence never
/// surprises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ODataFilter(String);

impl ODataFilter {
    fn compare(property: &str, operator: &str, value: impl Into<Literal>) -> ODataFilter {
        ODataFilter(format!("{property} {operator} {}", value.into()))
    }

    /// `property eq value`.
    pub fn eq(property: &str, value: impl Into<Literal>) -> ODataFilter {
        ODataFilter::compare(property, "eq", value)
    }

    /// `property ne value`.
    pub fn ne(property: &str, value: impl Into<Literal>) -> ODataFilter {
        ODataFilter::compare(property, "ne", value)
    }

    /// `property gt value`.
    pub fn gt(property: &str, value: impl Into<Literal>) -> ODataFilter {
        ODataFilter::compare(property, "gt", value)
    }

    /// `property ge value`.
    pub fn ge(property: &str, value: impl Into<Literal>) -> ODataFilter {
        ODataFilter::compare(property, "ge", value)
    }

    /// `property lt value`.
    pub fn lt(property: &str, value: impl Into<Literal>) -> ODataFilter {
        ODataFilter::compare(property, "lt", value)
    }

    /// `property le value`.
    pub fn le(property: &str, value: impl Into<Literal>) -> ODataFilter {
        ODataFilter::compare(property, "le", value)
    }

    /// `(self) and (other)`.
    pub fn and(self, other: ODataFilter) -> ODataFilter {
        ODataFilter(format!("({}) and ({})", self.0, other.0))
    }

    /// `(self) or (other)`.
    pub fn or(self, other: ODataFilter) -> ODataFilter {
        ODataFilter(format!("({}) or ({})", self.0, other.0))
    }

    /// `collection/any(t:condition)`, where `condition` names members through `t/`:
    /// `ODataFilter::any("team", ODataFilter::eq("t/email", "a@b.c"))`.
    pub fn any(collection: &str, condition: ODataFilter) -> ODataFilter {
        ODataFilter(format!("{collection}/any(t:{})", condition.0))
    }

    /// The expression text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ODataFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `!filter` is `not (filter)`.
impl std::ops::Not for ODataFilter {
    type Output = ODataFilter;

    fn not(self) -> ODataFilter {
        ODataFilter(format!("not ({})", self.0))
    }
}

impl From<ODataFilter> for String {
    fn from(filter: ODataFilter) -> Self {
        filter.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped() {
        assert_eq!(
            ODataFilter::eq("engagementId", "65edc0b5").as_str(),
            "engagementId eq '65edc0b5'"
        );
        assert_eq!(
            ODataFilter::eq("name", "O'Brien's ' or 1 eq 1").as_str(),
            "name eq 'O''Brien''s '' or 1 eq 1'"
        );
        assert_eq!(ODataFilter::eq("isSpam", false).as_str(), "isSpam eq false");
        assert_eq!(
            ODataFilter::gt("details/dealValue", 10i64).as_str(),
            "details/dealValue gt 10"
        );
        assert_eq!(ODataFilter::eq("x", f64::NAN).as_str(), "x eq null");
        assert_eq!(
            ODataFilter::gt(
                "updatedDateTime",
                Literal::DateTime("2024-01-01T00:00:00Z') or (1 eq 1".into())
            )
            .as_str(),
            "updatedDateTime gt 2024-01-01T00:00:00Z11"
        );
    }

    #[test]
    fn combinators_parenthesize() {
        let filter = ODataFilter::eq("status", "New")
            .and(ODataFilter::eq("direction", "Incoming").or(ODataFilter::eq("type", "Shared")))
            .and(!ODataFilter::any(
                "team",
                ODataFilter::eq("t/email", "r2d2@contoso.com"),
            ));
        assert_eq!(
            filter.to_string(),
            "((status eq 'New') and ((direction eq 'Incoming') or (type eq 'Shared'))) and (not (team/any(t:t/email eq 'r2d2@contoso.com')))"
        );
    }
}
