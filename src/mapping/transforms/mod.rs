//! Value transforms applied by mapping rules to JSON values.
//!
//! Every transform takes its [`Value`] by value, so a value that needs no
//! change is handed back as is, without cloning or allocating. Conventions
//! shared by all of them:
//! * `null` in → `null` out, never an error.
//! * Conversions (`country_*`, `currency_code`, `date`, `datetime`, `number`,
//!   `integer`, `round`, `boolean`) treat a blank string (empty or only
//!   whitespace) like `null`: "no value" is not a conversion failure. Chain
//!   a required-field check after them when a value must be present.
//! * Text transforms (`trim`, `upper`, `lower`, `truncate`, `max_length`,
//!   `strip_marks`) pass non-string values through unchanged.
//! * A value that cannot be converted gives a [`TransformError`] whose message
//!   reads well after a field name, e.g. `cannot convert "Narnia" to a country
//!   code`.

use std::fmt::{self, Write as _};

use serde_json::{Number, Value};

pub mod country;
pub mod currency;
pub mod datetime;

/// Why a transform could not convert a value (becomes a user-facing rule
/// violation, e.g. `cannot convert "Narnia" to a country code`).
#[derive(Debug, Clone, PartialEq)]
pub struct TransformError {
    /// Human-readable reason, without a trailing period.
    pub message: String,
}

impl TransformError {
    /// An error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        TransformError {
            message: message.into(),
        }
    }
}

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TransformError {}

/// Removes leading and trailing whitespace from text, in place.
pub fn trim(v: Value) -> Result<Value, TransformError> {
    Ok(match v {
        Value::String(s) => Value::String(trim_string(s)),
        other => other,
    })
}

/// Upper-cases text (full Unicode mapping, so `ß` → `SS`); ASCII text is
/// changed in place.
pub fn upper(v: Value) -> Result<Value, TransformError> {
    Ok(match v {
        Value::String(mut s) => {
            if s.is_ascii() {
                s.make_ascii_uppercase();
                Value::String(s)
            } else {
                Value::String(s.to_uppercase())
            }
        }
        other => other,
    })
}

/// Lower-cases text (full Unicode mapping); ASCII text is changed in place.
pub fn lower(v: Value) -> Result<Value, TransformError> {
    Ok(match v {
        Value::String(mut s) => {
            if s.is_ascii() {
                s.make_ascii_lowercase();
                Value::String(s)
            } else {
                Value::String(s.to_lowercase())
            }
        }
        other => other,
    })
}

/// Turns empty or whitespace-only text into `null`; everything else is
/// unchanged.
pub fn empty_to_null(v: Value) -> Result<Value, TransformError> {
    Ok(match v {
        Value::String(s) if s.trim().is_empty() => Value::Null,
        other => other,
    })
}

/// Cuts text to at most `max_chars` Unicode scalar values (`char`s), never
/// splitting one; shorter text and non-strings are unchanged.
pub fn truncate(v: Value, max_chars: usize) -> Result<Value, TransformError> {
    Ok(match v {
        Value::String(mut s) => {
            if s.len() > max_chars
                && let Some((cut, _)) = s.char_indices().nth(max_chars)
            {
                s.truncate(cut);
            }
            Value::String(s)
        }
        other => other,
    })
}

/// Checks that text has at most `max_chars` characters: longer text is an
/// error (`is 12 characters long; at most 10 allowed`), anything else is
/// returned unchanged.
pub fn max_length(v: Value, max_chars: usize) -> Result<Value, TransformError> {
    if let Value::String(s) = &v
        && s.len() > max_chars
    {
        let count = s.chars().count();
        if count > max_chars {
            return Err(TransformError::new(format!(
                "is {count} characters long; at most {max_chars} allowed"
            )));
        }
    }
    Ok(v)
}

/// Converts any country form [`country::find`] accepts (codes, names, aliases)
/// to the upper-case ISO 3166-1 alpha-2 code Partner Center requires. An
/// integer is read as an ISO numeric code (`840` → `"US"`).
pub fn country_code(v: Value) -> Result<Value, TransformError> {
    convert_country(v, "a country code", |c| c.alpha2)
}

/// Converts any country form [`country::find`] accepts to the country's
/// English short name (`"DE"` → `"Germany"`).
pub fn country_name(v: Value) -> Result<Value, TransformError> {
    convert_country(v, "a country name", |c| c.name)
}

/// Converts any country form [`country::find`] accepts to the upper-case ISO
/// 3166-1 alpha-3 code (`"Netherlands"` → `"NLD"`).
pub fn country_alpha3(v: Value) -> Result<Value, TransformError> {
    convert_country(v, "a country code", |c| c.alpha3)
}

/// Converts a currency code in any case, with surrounding whitespace, to the
/// upper-case active ISO 4217 code (`" eur"` → `"EUR"`); unknown codes are an
/// error.
pub fn currency_code(v: Value) -> Result<Value, TransformError> {
    match v {
        Value::String(s) => {
            if s.trim().is_empty() {
                return Ok(Value::Null);
            }
            match currency::find(&s) {
                Some(c) if s == c.code => Ok(Value::String(s)),
                Some(c) => Ok(Value::String(c.code.to_owned())),
                None => Err(cannot_convert(&Value::String(s), "a currency code")),
            }
        }
        Value::Null => Ok(Value::Null),
        other => Err(cannot_convert(&other, "a currency code")),
    }
}

/// Converts a date or date-time text (see [`datetime`](mod@datetime)) to `YYYY-MM-DD` of its
/// UTC date: `2018-11-14T00:00:00Z` → `2018-11-14`, and
/// `2018-11-14T23:00:00-05:00` → `2018-11-15`. Non-text values are an error.
pub fn date(v: Value) -> Result<Value, TransformError> {
    convert_datetime(v, "a date", datetime::DateTime::date_string_is, |d| {
        d.date_string()
    })
}

/// Converts a date or date-time text (see [`datetime`](mod@datetime)) to RFC 3339 in UTC,
/// `YYYY-MM-DDThh:mm:ss[.fraction]Z`; a date alone becomes midnight UTC.
/// Non-text values are an error.
pub fn datetime(v: Value) -> Result<Value, TransformError> {
    convert_datetime(v, "a date-time", datetime::DateTime::utc_string_is, |d| {
        d.utc_string()
    })
}

/// Converts decimal text to a JSON number; numbers are unchanged.
///
/// Accepted text, after trimming: an optional sign, digits with an optional
/// `.` fraction, and an optional exponent (`"10000"`, `"-1.5"`, `"1e3"`,
/// `".5"`). Integral values become integer JSON numbers (`"10000"` and
/// `"1e3"` → `10000`/`1000`, not `10000.0`); large integers keep full
/// precision. Rejected: thousands separators and decimal commas (`"1,234.50"`
/// and `"1.234,50"` are ambiguous across locales), currency symbols,
/// `NaN`/`inf`, hex, overflowing values (`"1e400"`), and booleans, arrays and
/// objects.
pub fn number(v: Value) -> Result<Value, TransformError> {
    match v {
        Value::Number(_) | Value::Null => Ok(v),
        Value::String(s) => {
            if s.trim().is_empty() {
                return Ok(Value::Null);
            }
            match parse_number(s.trim()) {
                Some(n) => Ok(Value::Number(n)),
                None => Err(cannot_convert(&Value::String(s), "a number")),
            }
        }
        other => Err(cannot_convert(&other, "a number")),
    }
}

/// Converts a number, or numeric text as [`number`] reads it, to an integer,
/// rounding half away from zero (`2.5` → `3`, `-2.5` → `-3`). Values outside
/// the 64-bit range are an error.
pub fn integer(v: Value) -> Result<Value, TransformError> {
    let (n, original) = match numeric_input(v, "an integer")? {
        Numeric::Null => return Ok(Value::Null),
        Numeric::Number(n, original) => (n, original),
    };
    if n.is_i64() || n.is_u64() {
        return Ok(Value::Number(n));
    }
    let rounded = n.as_f64().map(f64::round);
    match rounded.and_then(f64_to_i64) {
        Some(i) => Ok(Value::Number(Number::from(i))),
        None => Err(TransformError::new(format!(
            "cannot convert {} to an integer: out of range",
            describe(&original)
        ))),
    }
}

/// Rounds a number, or numeric text as [`number`] reads it, to `decimals`
/// decimal places, half away from zero. Rounding works on the shortest decimal
/// form of the value, so `1.005` → `1.01` and `-2.675` → `-2.68` although
/// neither is exact in binary. An integral result becomes an integer JSON
/// number (`2.996` with 2 decimals → `3`).
pub fn round(v: Value, decimals: u32) -> Result<Value, TransformError> {
    let n = match numeric_input(v, "a number")? {
        Numeric::Null => return Ok(Value::Null),
        Numeric::Number(n, _) => n,
    };
    if n.is_i64() || n.is_u64() {
        return Ok(Value::Number(n));
    }
    match n.as_f64().map(|f| round_half_away(f, decimals)) {
        Some(f) => Ok(f64_to_number(f).map_or(Value::Number(n), Value::Number)),
        None => Ok(Value::Number(n)),
    }
}

/// Converts scalars to text: numbers as serde_json writes them (integers
/// without `.0`, e.g. `10000`, `1.5`), booleans as `"true"`/`"false"`; text is
/// unchanged; arrays and objects are an error.
pub fn string(v: Value) -> Result<Value, TransformError> {
    match v {
        Value::String(_) | Value::Null => Ok(v),
        Value::Number(n) => Ok(Value::String(n.to_string())),
        Value::Bool(b) => Ok(Value::String(bool_text(b).to_owned())),
        other => Err(cannot_convert(&other, "text")),
    }
}

/// Converts to a boolean: booleans unchanged; the numbers `1`/`0`; text (any
/// case, trimmed) `true`/`false`, `yes`/`no`, `ja`/`nee`, `1`/`0`. Anything
/// else is an error.
pub fn boolean(v: Value) -> Result<Value, TransformError> {
    const TRUE: [&str; 4] = ["true", "yes", "ja", "1"];
    const FALSE: [&str; 4] = ["false", "no", "nee", "0"];
    match v {
        Value::Bool(_) | Value::Null => Ok(v),
        Value::String(ref s) => {
            let t = s.trim();
            if t.is_empty() {
                Ok(Value::Null)
            } else if TRUE.iter().any(|w| t.eq_ignore_ascii_case(w)) {
                Ok(Value::Bool(true))
            } else if FALSE.iter().any(|w| t.eq_ignore_ascii_case(w)) {
                Ok(Value::Bool(false))
            } else {
                Err(cannot_convert(&v, "a boolean"))
            }
        }
        Value::Number(ref n) => {
            let f = n.as_f64();
            if f == Some(1.0) {
                Ok(Value::Bool(true))
            } else if f == Some(0.0) {
                Ok(Value::Bool(false))
            } else {
                Err(cannot_convert(&v, "a boolean"))
            }
        }
        other => Err(cannot_convert(&other, "a boolean")),
    }
}

/// The first element of an array, or `null` for an empty array; non-arrays are
/// unchanged.
pub fn first(v: Value) -> Result<Value, TransformError> {
    Ok(match v {
        Value::Array(items) => items.into_iter().next().unwrap_or(Value::Null),
        other => other,
    })
}

/// Joins an array of scalars into text with `sep` between elements: text as
/// is, numbers as [`string`] writes them, booleans as `true`/`false`; `null`
/// elements are skipped; an empty array gives `""`. Non-arrays are unchanged;
/// an array holding an array or object is an error.
pub fn join(v: Value, sep: &str) -> Result<Value, TransformError> {
    let Value::Array(items) = v else {
        return Ok(v);
    };
    let mut out = String::new();
    let mut any = false;
    for item in &items {
        if let Value::Array(_) | Value::Object(_) = item {
            return Err(TransformError::new(format!(
                "cannot join a list containing {}",
                describe(item)
            )));
        }
        if item.is_null() {
            continue;
        }
        if any {
            out.push_str(sep);
        }
        any = true;
        match item {
            Value::String(s) => out.push_str(s),
            Value::Number(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Bool(b) => out.push_str(bool_text(*b)),
            _ => {}
        }
    }
    Ok(Value::String(out))
}

/// Removes trailing check/cross marks (`✔` `✓` `✘` `✗`, with or without an
/// emoji variation selector), repeatedly and with any whitespace before them,
/// then trims the end: `"Deal ✔ ✘ "` → `"Deal"`. Non-strings are unchanged.
pub fn strip_marks(v: Value) -> Result<Value, TransformError> {
    const MARKS: [char; 4] = ['\u{2714}', '\u{2713}', '\u{2718}', '\u{2717}'];
    Ok(match v {
        Value::String(mut s) => {
            let mut rest = s.trim_end();
            loop {
                let bare = rest.strip_suffix('\u{FE0F}').unwrap_or(rest);
                match bare.strip_suffix(MARKS) {
                    Some(before) => rest = before.trim_end(),
                    None => break,
                }
            }
            let keep = rest.len();
            s.truncate(keep);
            Value::String(s)
        }
        other => other,
    })
}

// ---------------------------------------------------------------------------
// Helpers

fn trim_string(mut s: String) -> String {
    let end = s.trim_end().len();
    s.truncate(end);
    let start = s.len() - s.trim_start().len();
    if start > 0 {
        s.drain(..start);
    }
    s
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn cannot_convert(v: &Value, target: &str) -> TransformError {
    TransformError::new(format!("cannot convert {} to {target}", describe(v)))
}

/// A short rendering of a value for messages: text quoted (cut after 60
/// characters), numbers and booleans as JSON, containers by kind only.
fn describe(v: &Value) -> String {
    const MAX: usize = 60;
    match v {
        Value::String(s) => match s.char_indices().nth(MAX) {
            Some((cut, _)) => {
                let head = s.get(..cut).unwrap_or_default();
                Value::String(format!("{head}…")).to_string()
            }
            None => v.to_string(),
        },
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        other => other.to_string(),
    }
}

fn convert_country(
    v: Value,
    target: &str,
    pick: fn(&'static country::Country) -> &'static str,
) -> Result<Value, TransformError> {
    match v {
        Value::String(s) => {
            if s.trim().is_empty() {
                return Ok(Value::Null);
            }
            match country::find(&s) {
                Some(c) if s == pick(c) => Ok(Value::String(s)),
                Some(c) => Ok(Value::String(pick(c).to_owned())),
                None => Err(cannot_convert(&Value::String(s), target)),
            }
        }
        Value::Number(ref n) => {
            let found = n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .and_then(country::by_numeric);
            match found {
                Some(c) => Ok(Value::String(pick(c).to_owned())),
                None => Err(cannot_convert(&v, target)),
            }
        }
        Value::Null => Ok(Value::Null),
        other => Err(cannot_convert(&other, target)),
    }
}

fn convert_datetime(
    v: Value,
    target: &str,
    is_canonical: fn(&datetime::DateTime, &str) -> bool,
    format: fn(&datetime::DateTime) -> String,
) -> Result<Value, TransformError> {
    match v {
        Value::String(s) => {
            if s.trim().is_empty() {
                return Ok(Value::Null);
            }
            match datetime::parse(&s) {
                Some(d) if is_canonical(&d, &s) => Ok(Value::String(s)),
                Some(d) => Ok(Value::String(format(&d))),
                None => Err(cannot_convert(&Value::String(s), target)),
            }
        }
        Value::Null => Ok(Value::Null),
        other => Err(cannot_convert(&other, target)),
    }
}

enum Numeric {
    Null,
    /// The number and the value it was read from (for messages).
    Number(Number, Value),
}

/// Reads a number or numeric text for [`integer`] and [`round`].
fn numeric_input(v: Value, target: &str) -> Result<Numeric, TransformError> {
    match v {
        Value::Null => Ok(Numeric::Null),
        Value::Number(ref n) => Ok(Numeric::Number(n.clone(), v)),
        Value::String(ref s) => {
            let t = s.trim();
            if t.is_empty() {
                return Ok(Numeric::Null);
            }
            match parse_number(t) {
                Some(n) => Ok(Numeric::Number(n, v)),
                None => Err(cannot_convert(&v, target)),
            }
        }
        other => Err(cannot_convert(&other, target)),
    }
}

/// Parses decimal text as documented on [`number`].
fn parse_number(t: &str) -> Option<Number> {
    let has_fraction_or_exponent = decimal_literal_shape(t)?;
    if !has_fraction_or_exponent {
        if let Ok(i) = t.parse::<i64>() {
            return Some(Number::from(i));
        }
        if let Ok(u) = t.parse::<u64>() {
            return Some(Number::from(u));
        }
    }
    f64_to_number(t.parse::<f64>().ok()?)
}

/// `Some(has_fraction_or_exponent)` when `t` is
/// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`.
fn decimal_literal_shape(t: &str) -> Option<bool> {
    let b = t.as_bytes();
    let digits_from = |i: usize| {
        b.get(i..)
            .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int_digits = digits_from(i);
    i += int_digits;
    let mut fancy = false;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        fancy = true;
        frac_digits = digits_from(i + 1);
        i += 1 + frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        fancy = true;
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_digits = digits_from(i);
        if exp_digits == 0 {
            return None;
        }
        i += exp_digits;
    }
    (i == b.len()).then_some(fancy)
}

/// A finite float as a JSON number: an integer when integral and within the
/// `i64` range, else a float. `None` for NaN and infinities.
fn f64_to_number(f: f64) -> Option<Number> {
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0
        && let Some(i) = f64_to_i64(f)
    {
        return Some(Number::from(i));
    }
    Number::from_f64(f)
}

/// An integral float as `i64`, or `None` when out of range or not finite.
fn f64_to_i64(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; every float below it in magnitude fits.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.is_finite() && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

/// Rounds `x` half away from zero to `decimals` places, working on the
/// shortest decimal digits that represent `x` (so `1.005` → `1.01`).
fn round_half_away(x: f64, decimals: u32) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let sci = format!("{:e}", x.abs());
    let Some((mantissa, exponent)) = sci.split_once('e') else {
        return x;
    };
    let Ok(mut exponent) = exponent.parse::<i64>() else {
        return x;
    };
    let mut digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    // Significant digits to keep: those left of the decimal point plus `decimals`.
    let keep = exponent + 1 + i64::from(decimals);
    let Ok(keep) = usize::try_from(keep) else {
        return 0.0; // even the first digit is beyond half a unit of the last place
    };
    if keep >= digits.len() {
        return x;
    }
    let round_up = digits.get(keep).is_some_and(|d| *d >= b'5');
    digits.truncate(keep);
    if round_up {
        let mut carry = true;
        for d in digits.iter_mut().rev() {
            if *d == b'9' {
                *d = b'0';
            } else {
                *d += 1;
                carry = false;
                break;
            }
        }
        if carry {
            digits.insert(0, b'1');
            exponent += 1;
        }
    }
    let Some((head, tail)) = digits.split_first() else {
        return 0.0;
    };
    let mut text = String::with_capacity(digits.len() + 8);
    if x < 0.0 {
        text.push('-');
    }
    text.push(char::from(*head));
    if !tail.is_empty() {
        text.push('.');
        text.extend(tail.iter().map(|d| char::from(*d)));
    }
    let _ = write!(text, "e{exponent}");
    text.parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Counts heap allocations made by the current thread, so the fast paths
    /// can be shown not to allocate.
    pub(super) mod alloc_counter {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
        }

        struct Counting;

        fn bump() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }

        // SAFETY: every call is forwarded unchanged to the system allocator.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                bump();
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { System.alloc(layout) }
            }

            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                bump();
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { System.alloc_zeroed(layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                bump();
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { System.realloc(ptr, layout, new_size) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        #[global_allocator]
        static GLOBAL: Counting = Counting;

        /// Allocations made by this thread so far.
        pub fn count() -> usize {
            ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
        }
    }

    fn err(message: &str) -> Result<Value, TransformError> {
        Err(TransformError::new(message))
    }

    #[test]
    fn trim_upper_lower_empty_to_null() {
        assert_eq!(trim(json!("  a b \t")), Ok(json!("a b")));
        assert_eq!(trim(json!("abc")), Ok(json!("abc")));
        assert_eq!(trim(json!("\u{3000}x\u{a0}")), Ok(json!("x")));
        assert_eq!(trim(json!("   ")), Ok(json!("")));
        assert_eq!(trim(json!(5)), Ok(json!(5)));
        assert_eq!(trim(Value::Null), Ok(Value::Null));
        assert_eq!(upper(json!("abc1")), Ok(json!("ABC1")));
        assert_eq!(upper(json!("straße")), Ok(json!("STRASSE")));
        assert_eq!(upper(json!(true)), Ok(json!(true)));
        assert_eq!(lower(json!("ÉCOLE Ab")), Ok(json!("école ab")));
        assert_eq!(lower(json!("ABC")), Ok(json!("abc")));
        assert_eq!(lower(Value::Null), Ok(Value::Null));
        assert_eq!(empty_to_null(json!("")), Ok(Value::Null));
        assert_eq!(empty_to_null(json!(" \n ")), Ok(Value::Null));
        assert_eq!(empty_to_null(json!(" a ")), Ok(json!(" a ")));
        assert_eq!(empty_to_null(json!(0)), Ok(json!(0)));
        assert_eq!(empty_to_null(json!([])), Ok(json!([])));
    }

    #[test]
    fn truncate_and_max_length_count_chars() {
        assert_eq!(truncate(json!("héllo"), 2), Ok(json!("hé")));
        assert_eq!(truncate(json!("abc"), 5), Ok(json!("abc")));
        assert_eq!(truncate(json!("abc"), 3), Ok(json!("abc")));
        assert_eq!(truncate(json!("abc"), 0), Ok(json!("")));
        assert_eq!(truncate(json!("👍👍"), 1), Ok(json!("👍")));
        assert_eq!(truncate(json!("ééé"), 3), Ok(json!("ééé")));
        assert_eq!(truncate(json!(12345), 2), Ok(json!(12345)));
        assert_eq!(truncate(Value::Null, 2), Ok(Value::Null));
        assert_eq!(max_length(json!("héllo"), 5), Ok(json!("héllo")));
        assert_eq!(max_length(json!("ééé"), 3), Ok(json!("ééé")));
        assert_eq!(
            max_length(json!("héllo"), 4),
            err("is 5 characters long; at most 4 allowed")
        );
        assert_eq!(
            max_length(json!("x"), 0),
            err("is 1 characters long; at most 0 allowed")
        );
        assert_eq!(max_length(json!(123456), 2), Ok(json!(123456)));
        assert_eq!(max_length(Value::Null, 0), Ok(Value::Null));
    }

    #[test]
    fn country_transforms() {
        assert_eq!(country_code(json!("Netherlands")), Ok(json!("NL")));
        assert_eq!(country_code(json!("NL")), Ok(json!("NL")));
        assert_eq!(country_code(json!(" nl ")), Ok(json!("NL")));
        assert_eq!(country_code(json!("Côte d'Ivoire")), Ok(json!("CI")));
        assert_eq!(country_code(json!("UK")), Ok(json!("GB")));
        assert_eq!(country_code(json!("Deutschland")), Ok(json!("DE")));
        assert_eq!(country_code(json!(840)), Ok(json!("US")));
        assert_eq!(country_code(Value::Null), Ok(Value::Null));
        assert_eq!(country_code(json!("  ")), Ok(Value::Null));
        assert_eq!(
            country_code(json!("Narnia")),
            err(r#"cannot convert "Narnia" to a country code"#)
        );
        assert_eq!(
            country_code(json!(840.5)),
            err("cannot convert 840.5 to a country code")
        );
        assert_eq!(
            country_code(json!(true)),
            err("cannot convert true to a country code")
        );
        assert_eq!(
            country_code(json!(["US"])),
            err("cannot convert a list to a country code")
        );
        assert_eq!(country_name(json!("DE")), Ok(json!("Germany")));
        assert_eq!(country_name(json!("Turkey")), Ok(json!("Türkiye")));
        assert_eq!(
            country_name(json!("Korea, Republic of")),
            Ok(json!("South Korea"))
        );
        assert_eq!(country_name(json!("Germany")), Ok(json!("Germany")));
        assert_eq!(
            country_name(json!("Narnia")),
            err(r#"cannot convert "Narnia" to a country name"#)
        );
        assert_eq!(country_alpha3(json!("Netherlands")), Ok(json!("NLD")));
        assert_eq!(country_alpha3(json!("usa")), Ok(json!("USA")));
        assert_eq!(country_alpha3(Value::Null), Ok(Value::Null));
    }

    #[test]
    fn currency_transform() {
        assert_eq!(currency_code(json!(" eur")), Ok(json!("EUR")));
        assert_eq!(currency_code(json!("USD")), Ok(json!("USD")));
        assert_eq!(currency_code(json!("")), Ok(Value::Null));
        assert_eq!(currency_code(Value::Null), Ok(Value::Null));
        assert_eq!(
            currency_code(json!("EURO")),
            err(r#"cannot convert "EURO" to a currency code"#)
        );
        assert_eq!(
            currency_code(json!(978)),
            err("cannot convert 978 to a currency code")
        );
    }

    #[test]
    fn date_transforms() {
        assert_eq!(date(json!("2018-11-14T00:00:00Z")), Ok(json!("2018-11-14")));
        assert_eq!(date(json!("2018-11-14")), Ok(json!("2018-11-14")));
        assert_eq!(date(json!(" 2018-11-14 ")), Ok(json!("2018-11-14")));
        assert_eq!(
            date(json!("2018-11-14T23:00:00-05:00")),
            Ok(json!("2018-11-15"))
        );
        assert_eq!(
            date(json!("14-11-2018")),
            err(r#"cannot convert "14-11-2018" to a date"#)
        );
        assert_eq!(
            date(json!("2023-02-29")),
            err(r#"cannot convert "2023-02-29" to a date"#)
        );
        assert_eq!(
            date(json!(1_542_153_600)),
            err("cannot convert 1542153600 to a date")
        );
        assert_eq!(date(Value::Null), Ok(Value::Null));
        assert_eq!(date(json!("")), Ok(Value::Null));
        assert_eq!(
            datetime(json!("2019-02-23T02:05:23.2931817Z")),
            Ok(json!("2019-02-23T02:05:23.2931817Z"))
        );
        assert_eq!(
            datetime(json!("2017-11-16T16:19:06.3520276+00:00")),
            Ok(json!("2017-11-16T16:19:06.3520276Z"))
        );
        assert_eq!(
            datetime(json!("2019-12-31T23:30:00-01:00")),
            Ok(json!("2020-01-01T00:30:00Z"))
        );
        assert_eq!(
            datetime(json!("2020-01-01")),
            Ok(json!("2020-01-01T00:00:00Z"))
        );
        assert_eq!(
            datetime(json!("2020-01-01T10:00:00.500Z")),
            Ok(json!("2020-01-01T10:00:00.5Z"))
        );
        assert_eq!(
            datetime(json!("yesterday")),
            err(r#"cannot convert "yesterday" to a date-time"#)
        );
        assert_eq!(
            datetime(json!({})),
            err("cannot convert an object to a date-time")
        );
    }

    fn is_int(v: &Result<Value, TransformError>) -> bool {
        matches!(v, Ok(Value::Number(n)) if n.is_i64() || n.is_u64())
    }

    #[test]
    fn number_parses_decimal_text() {
        for (input, expected) in [
            ("10000", json!(10000)),
            (" 42 ", json!(42)),
            ("+7", json!(7)),
            ("-3", json!(-3)),
            ("-0", json!(0)),
            ("1e3", json!(1000)),
            ("1E+3", json!(1000)),
            ("10000.0", json!(10000)),
            ("2.50", json!(2.5)),
            ("1.5", json!(1.5)),
            (".5", json!(0.5)),
            ("5.", json!(5)),
            ("-1.25e-2", json!(-0.0125)),
            ("1e-400", json!(0)),
            ("9223372036854775807", json!(i64::MAX)),
            ("-9223372036854775808", json!(i64::MIN)),
            ("18446744073709551615", json!(u64::MAX)),
            ("1e20", json!(1e20)),
        ] {
            let got = number(json!(input));
            assert_eq!(got, Ok(expected.clone()), "{input:?}");
            assert_eq!(
                is_int(&got),
                expected.is_i64() || expected.is_u64(),
                "{input:?}"
            );
        }
        assert!(is_int(&number(json!("10000"))));
        assert!(!is_int(&number(json!("1.5"))));
        assert_eq!(number(json!(5)), Ok(json!(5)));
        assert_eq!(number(json!(2.5)), Ok(json!(2.5)));
        assert_eq!(number(Value::Null), Ok(Value::Null));
        assert_eq!(number(json!("")), Ok(Value::Null));
        for bad in [
            "1,234.50", "1.234,50", "1 000", "$5", "5€", "0x10", "1_000", "NaN", "nan", "inf",
            "-inf", "Infinity", "1e400", "-1e400", ".", "e5", "1e", "1e+", "+", "-", "--1",
            "1.2.3", "1..2", "+-1", "１２", "12abc", "\u{0}",
        ] {
            assert_eq!(
                number(json!(bad)),
                Err(TransformError::new(format!(
                    "cannot convert {} to a number",
                    json!(bad)
                ))),
                "{bad:?}"
            );
        }
        assert_eq!(number(json!(true)), err("cannot convert true to a number"));
        assert_eq!(number(json!([1])), err("cannot convert a list to a number"));
    }

    #[test]
    fn integer_rounds_half_away_from_zero() {
        assert_eq!(integer(json!(2.5)), Ok(json!(3)));
        assert_eq!(integer(json!(-2.5)), Ok(json!(-3)));
        assert_eq!(integer(json!(2.4999)), Ok(json!(2)));
        assert_eq!(integer(json!(-0.4)), Ok(json!(0)));
        assert_eq!(integer(json!("2.5")), Ok(json!(3)));
        assert_eq!(integer(json!(" 17 ")), Ok(json!(17)));
        assert_eq!(integer(json!(42)), Ok(json!(42)));
        assert_eq!(integer(json!(u64::MAX)), Ok(json!(u64::MAX)));
        assert_eq!(
            integer(json!(-9.2e18)),
            Ok(json!(-9_200_000_000_000_000_000i64))
        );
        assert!(is_int(&integer(json!(1e3))));
        assert_eq!(
            integer(json!(1e19)),
            err("cannot convert 1e+19 to an integer: out of range")
        );
        assert_eq!(
            integer(json!("9.3e18")),
            err(r#"cannot convert "9.3e18" to an integer: out of range"#)
        );
        assert_eq!(
            integer(json!("abc")),
            err(r#"cannot convert "abc" to an integer"#)
        );
        assert_eq!(
            integer(json!(false)),
            err("cannot convert false to an integer")
        );
        assert_eq!(integer(Value::Null), Ok(Value::Null));
        assert_eq!(integer(json!(" ")), Ok(Value::Null));
    }

    #[test]
    fn round_works_on_decimal_digits() {
        for (input, decimals, expected) in [
            (json!(1.005), 2, json!(1.01)),
            (json!(-2.675), 2, json!(-2.68)),
            (json!(2.996), 2, json!(3)),
            (json!(9.995), 2, json!(10)),
            (json!(1.234), 0, json!(1)),
            (json!(0.5), 0, json!(1)),
            (json!(-0.5), 0, json!(-1)),
            (json!(1.45), 1, json!(1.5)),
            (json!(0.004), 2, json!(0)),
            (json!(0.005), 2, json!(0.01)),
            (json!(123.456), 1, json!(123.5)),
            (json!(12345.678), 0, json!(12346)),
            (json!(0.1 + 0.2), 2, json!(0.3)),
            (json!(1e-20), 2, json!(0)),
            (json!(1.5e300), 2, json!(1.5e300)),
            (json!(1.23456789), 20, json!(1.23456789)),
            (json!(1.23456789), u32::MAX, json!(1.23456789)),
            (json!(5e-324), 400, json!(5e-324)),
            (json!(42), 3, json!(42)),
            (json!(-7), 0, json!(-7)),
            (json!("1.005"), 2, json!(1.01)),
            (json!("10"), 2, json!(10)),
        ] {
            assert_eq!(
                round(input.clone(), decimals),
                Ok(expected),
                "{input} {decimals}"
            );
        }
        assert!(is_int(&round(json!(2.996), 2)));
        assert_eq!(round(Value::Null, 2), Ok(Value::Null));
        assert_eq!(
            round(json!("x"), 2),
            err(r#"cannot convert "x" to a number"#)
        );
        assert_eq!(
            round(json!(true), 2),
            err("cannot convert true to a number")
        );
    }

    #[test]
    fn string_writes_scalars() {
        assert_eq!(string(json!(10000)), Ok(json!("10000")));
        assert_eq!(string(json!(-3)), Ok(json!("-3")));
        assert_eq!(string(json!(1.5)), Ok(json!("1.5")));
        assert_eq!(string(json!(10000.0)), Ok(json!("10000.0")));
        assert_eq!(string(json!(u64::MAX)), Ok(json!("18446744073709551615")));
        assert_eq!(string(json!(true)), Ok(json!("true")));
        assert_eq!(string(json!(false)), Ok(json!("false")));
        assert_eq!(string(json!("x")), Ok(json!("x")));
        assert_eq!(string(Value::Null), Ok(Value::Null));
        assert_eq!(string(json!([1])), err("cannot convert a list to text"));
        assert_eq!(
            string(json!({"a": 1})),
            err("cannot convert an object to text")
        );
    }

    #[test]
    fn boolean_accepts_common_words() {
        for t in ["true", "TRUE", " Yes ", "ja", "JA", "1"] {
            assert_eq!(boolean(json!(t)), Ok(json!(true)), "{t:?}");
        }
        for f in ["false", "False", "no", "NO", "nee", "Nee", "0"] {
            assert_eq!(boolean(json!(f)), Ok(json!(false)), "{f:?}");
        }
        assert_eq!(boolean(json!(true)), Ok(json!(true)));
        assert_eq!(boolean(json!(1)), Ok(json!(true)));
        assert_eq!(boolean(json!(0)), Ok(json!(false)));
        assert_eq!(boolean(json!(1.0)), Ok(json!(true)));
        assert_eq!(boolean(Value::Null), Ok(Value::Null));
        assert_eq!(boolean(json!("")), Ok(Value::Null));
        assert_eq!(boolean(json!(2)), err("cannot convert 2 to a boolean"));
        assert_eq!(
            boolean(json!("maybe")),
            err(r#"cannot convert "maybe" to a boolean"#)
        );
        assert_eq!(
            boolean(json!("yess")),
            err(r#"cannot convert "yess" to a boolean"#)
        );
        assert_eq!(
            boolean(json!([])),
            err("cannot convert a list to a boolean")
        );
    }

    #[test]
    fn first_and_join() {
        assert_eq!(first(json!([1, 2])), Ok(json!(1)));
        assert_eq!(first(json!([])), Ok(Value::Null));
        assert_eq!(first(json!([[1], 2])), Ok(json!([1])));
        assert_eq!(first(json!("x")), Ok(json!("x")));
        assert_eq!(first(Value::Null), Ok(Value::Null));
        assert_eq!(
            join(json!(["a", 1, true, null, 2.5]), ", "),
            Ok(json!("a, 1, true, 2.5"))
        );
        assert_eq!(join(json!([null, "a", null, "b"]), ";"), Ok(json!("a;b")));
        assert_eq!(join(json!([]), ", "), Ok(json!("")));
        assert_eq!(join(json!(["only"]), ", "), Ok(json!("only")));
        assert_eq!(join(json!("x"), ", "), Ok(json!("x")));
        assert_eq!(join(Value::Null, ", "), Ok(Value::Null));
        assert_eq!(
            join(json!(["a", [1]]), ", "),
            err("cannot join a list containing a list")
        );
        assert_eq!(
            join(json!([{"a": 1}]), ", "),
            err("cannot join a list containing an object")
        );
    }

    #[test]
    fn strip_marks_removes_trailing_checks_and_crosses() {
        for (input, expected) in [
            ("Deal ✔", "Deal"),
            ("Deal ✘", "Deal"),
            ("Deal✔", "Deal"),
            ("Deal ✓", "Deal"),
            ("Deal ✗", "Deal"),
            ("Deal ✔ ✘ ✓✗  ", "Deal"),
            ("Deal ✔\u{fe0f}", "Deal"),
            ("Deal  ", "Deal"),
            ("  Deal", "  Deal"),
            ("✔ Deal", "✔ Deal"),
            ("Deal ✔ x", "Deal ✔ x"),
            ("✔", ""),
            ("", ""),
            ("\u{fe0f}", "\u{fe0f}"),
        ] {
            assert_eq!(strip_marks(json!(input)), Ok(json!(expected)), "{input:?}");
        }
        assert_eq!(strip_marks(json!(5)), Ok(json!(5)));
        assert_eq!(strip_marks(Value::Null), Ok(Value::Null));
    }

    #[test]
    fn error_messages_are_short_and_displayable() {
        let long = "x".repeat(100);
        let e = country_code(json!(long)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot convert \"{}…\" to a country code", "x".repeat(60))
        );
        let quoted = country_code(json!("say \"hi\"")).unwrap_err();
        assert_eq!(
            quoted.message,
            r#"cannot convert "say \"hi\"" to a country code"#
        );
        let boxed: Box<dyn std::error::Error> = Box::new(TransformError::new("boom"));
        assert_eq!(boxed.to_string(), "boom");
    }

    #[test]
    fn no_transform_panics_on_odd_input() {
        let inputs = [
            Value::Null,
            json!(true),
            json!(0),
            json!(-1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(f64::MAX),
            json!(f64::MIN_POSITIVE),
            json!(-0.0),
            json!(""),
            json!(" "),
            json!("\u{0}"),
            json!("é"),
            json!("👍🏽‍"),
            json!("\u{fe0f}\u{fe0f}✔"),
            json!("9".repeat(400)),
            json!(format!("1e{}", "9".repeat(30))),
            json!("ÅÅ".repeat(1000)),
            json!("2020-02-30T25:61:61.1234567890+99:99"),
            json!([]),
            json!([null, [], {}]),
            json!({"a": [1]}),
        ];
        for v in inputs {
            let _ = trim(v.clone());
            let _ = upper(v.clone());
            let _ = lower(v.clone());
            let _ = empty_to_null(v.clone());
            let _ = truncate(v.clone(), 0);
            let _ = truncate(v.clone(), 1);
            let _ = max_length(v.clone(), 0);
            let _ = country_code(v.clone());
            let _ = country_name(v.clone());
            let _ = country_alpha3(v.clone());
            let _ = currency_code(v.clone());
            let _ = date(v.clone());
            let _ = datetime(v.clone());
            let _ = number(v.clone());
            let _ = integer(v.clone());
            let _ = round(v.clone(), 0);
            let _ = round(v.clone(), u32::MAX);
            let _ = string(v.clone());
            let _ = boolean(v.clone());
            let _ = first(v.clone());
            let _ = join(v.clone(), "");
            let _ = strip_marks(v);
        }
    }

    #[test]
    fn already_normalized_values_are_returned_without_allocating() {
        // Warm up lazily built indexes.
        let _ = country_name(json!("Germany"));
        type Transform = fn(Value) -> Result<Value, TransformError>;
        let cases: [(Transform, Value); 12] = [
            (trim, json!("abc")),
            (upper, json!("ABC")),
            (lower, json!("abc")),
            (country_code, json!("NL")),
            (country_name, json!("Germany")),
            (country_alpha3, json!("NLD")),
            (currency_code, json!("EUR")),
            (date, json!("2018-11-14")),
            (datetime, json!("2019-02-23T02:05:23.2931817Z")),
            (number, json!(10000)),
            (string, json!("x")),
            (strip_marks, json!("Deal")),
        ];
        for (transform, input) in cases {
            let expected = input.clone();
            let before = alloc_counter::count();
            let output = transform(input);
            let allocations = alloc_counter::count() - before;
            assert_eq!(output, Ok(expected.clone()));
            assert_eq!(allocations, 0, "{expected} allocated");
        }
    }
}
