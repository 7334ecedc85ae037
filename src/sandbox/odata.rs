//! OData v4 `$filter` and `$orderby`, parsed and evaluated over [`serde_json::Value`]
//! records. Shared by the Dataverse emulator (`accounts?$filter=contains(name,'contoso')`)
//! and the Partner Center emulator (`status eq 'New' and team/any(t:t/email eq 'x@y.com')`).
//!
//! Supported `$filter` grammar, with precedence `not` > `and` > `or`:
//! - comparisons `eq ne gt ge lt le`, and `in` (`status in ('New','Active')`);
//! - `and`, `or`, `not`, parentheses;
//! - member paths `a/b/c` and lambdas `team/any(t:t/email eq 'x')`, `tags/all(t:t ne 'x')`,
//!   `team/any()` (non-empty);
//! - literals: `'text'` (a quote inside is doubled: `'O''Bryan'`), numbers, `true`, `false`,
//!   `null`, GUIDs (unquoted `7d3e…`, or `guid'…'`), dates and date-times unquoted ISO 8601
//!   (`2024-01-01`, `2024-01-01T00:00:00Z`);
//! - functions `contains`, `startswith`, `endswith`, `tolower`, `toupper`, `trim`, `length`;
//! - Dataverse query functions `Microsoft.Dynamics.CRM.In`, `NotIn`, `Between`, `NotBetween`,
//!   `Null`, `NotNull` with named parameters (`PropertyName='x',PropertyValues=['a','b']`).
//!
//! Evaluation follows what the services do rather than strict OData typing: a missing
//! property is `null`; two strings that both parse as ISO 8601 dates compare
//! chronologically; string comparisons are case-insensitive when
//! [`MatchOptions::case_insensitive_strings`] is set (Dataverse's default collation);
//! comparing values of different types is simply false. Arithmetic operators (`add`, `sub`,
//! …) are rejected with a syntax error: neither emulated service's clients use them.
//!
//! Errors carry a 0-based character position and read like the OData library's own
//! messages, e.g. `There is an unterminated literal at position 8 in 'name eq 'x'.`

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

use crate::mapping::transforms::datetime::DateTime;

/// A `$filter` or `$orderby` syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ODataError {
    /// 0-based character position in [`ODataError::text`] where the problem was found.
    pub position: usize,
    /// What is wrong, without the position (e.g. `')' or operator expected`).
    pub message: String,
    /// The whole expression that was being parsed.
    pub text: String,
}

impl fmt::Display for ODataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at position {} in '{}'.",
            self.message, self.position, self.text
        )
    }
}

impl std::error::Error for ODataError {}

/// How to evaluate a [`Filter`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MatchOptions {
    /// Compare strings ignoring case (`eq`, `contains`, ordering…), as Dataverse does.
    pub case_insensitive_strings: bool,
}

/// A parsed `$filter` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// Built-in functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Contains,
    StartsWith,
    EndsWith,
    ToLower,
    ToUpper,
    Trim,
    Length,
}

impl Func {
    fn from_name(name: &str) -> Option<(Func, usize)> {
        Some(match name {
            "contains" => (Func::Contains, 2),
            "startswith" => (Func::StartsWith, 2),
            "endswith" => (Func::EndsWith, 2),
            "tolower" => (Func::ToLower, 1),
            "toupper" => (Func::ToUpper, 1),
            "trim" => (Func::Trim, 1),
            "length" => (Func::Length, 1),
            _ => return None,
        })
    }
}

/// Dataverse query functions (`Microsoft.Dynamics.CRM.<name>(PropertyName=…,…)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrmFunc {
    In,
    NotIn,
    Between,
    NotBetween,
    Null,
    NotNull,
}

impl CrmFunc {
    fn from_name(name: &str) -> Option<CrmFunc> {
        Some(match name {
            "In" => CrmFunc::In,
            "NotIn" => CrmFunc::NotIn,
            "Between" => CrmFunc::Between,
            "NotBetween" => CrmFunc::NotBetween,
            "Null" => CrmFunc::Null,
            "NotNull" => CrmFunc::NotNull,
            _ => return None,
        })
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Guid(String),
    /// Unquoted date or date-time, kept as parsed.
    DateTime(DateTime),
}

/// Expression tree: boolean and value expressions share one type, as in OData.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Or(Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Compare(CmpOp, Box<Node>, Box<Node>),
    In(Box<Node>, Vec<Node>),
    Call(Func, Vec<Node>),
    Crm {
        func: CrmFunc,
        property: String,
        values: Vec<Literal>,
    },
    Literal(Literal),
    /// A member path; the first segment may be a lambda variable or `$it`.
    Path(Vec<String>),
    Lambda {
        collection: Vec<String>,
        all: bool,
        variable: Option<String>,
        body: Option<Box<Node>>,
    },
}

/// Parses a `$filter` expression.
pub fn parse_filter(text: &str) -> Result<Filter, ODataError> {
    let mut parser = Parser::new(text)?;
    if parser.peek().kind == Tok::End {
        return Err(parser.error_at(0, "Expression expected"));
    }
    let root = parser.or_expr()?;
    let next = parser.peek();
    if next.kind != Tok::End {
        return Err(parser.error_at(next.position, "Syntax error"));
    }
    Ok(Filter { root })
}

/// Parses `$orderby`: comma-separated member paths, each optionally followed by `asc` or
/// `desc`. Returns `(path, descending)` pairs; paths are `/`-joined (`address/city`).
pub fn parse_orderby(text: &str) -> Result<Vec<(String, bool)>, ODataError> {
    let mut parser = Parser::new(text)?;
    let mut out = Vec::new();
    loop {
        let token = parser.next();
        let Tok::Ident(first) = token.kind else {
            return Err(parser.error_at(token.position, "Expression expected"));
        };
        let mut path = first;
        while parser.peek().kind == Tok::Slash {
            parser.next();
            let token = parser.next();
            let Tok::Ident(segment) = token.kind else {
                return Err(parser.error_at(token.position, "Expression expected"));
            };
            path.push('/');
            path.push_str(&segment);
        }
        let mut descending = false;
        if let Tok::Ident(direction) = &parser.peek().kind {
            match direction.as_str() {
                "asc" => {}
                "desc" => descending = true,
                _ => {
                    let position = parser.peek().position;
                    return Err(parser.error_at(position, "Syntax error"));
                }
            }
            parser.next();
        }
        out.push((path, descending));
        let token = parser.next();
        match token.kind {
            Tok::End => return Ok(out),
            Tok::Comma => {}
            _ => return Err(parser.error_at(token.position, "Syntax error")),
        }
    }
}

/// Orders two JSON values the way a `$orderby` does: null (and missing) first, then
/// numbers numerically, strings (chronologically when both are ISO 8601 dates, otherwise
/// lexically, ignoring case when asked), booleans `false` before `true`. Values of
/// different types order by type so the result is a total order.
pub fn compare_values(a: &Value, b: &Value, options: &MatchOptions) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Value::String(x), Value::String(y)) => compare_strings(x, y, options),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn compare_strings(x: &str, y: &str, options: &MatchOptions) -> Ordering {
    if looks_like_date(x)
        && looks_like_date(y)
        && let (Some(dx), Some(dy)) = (DateTime::parse(x), DateTime::parse(y))
    {
        return compare_datetimes(&dx, &dy);
    }
    if options.case_insensitive_strings {
        let ordering = x
            .chars()
            .flat_map(char::to_lowercase)
            .cmp(y.chars().flat_map(char::to_lowercase));
        return ordering;
    }
    x.cmp(y)
}

/// Cheap pre-check before trying a full date parse: `dddd-dd-dd…`.
fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[8..10].iter().all(u8::is_ascii_digit)
}

fn compare_datetimes(a: &DateTime, b: &DateTime) -> Ordering {
    (a.unix_seconds(), a.nanos).cmp(&(b.unix_seconds(), b.nanos))
}

impl Filter {
    /// Whether `record` satisfies the filter.
    /// A `property eq 'text'` (or GUID) test the whole filter requires — the filter itself
    /// or one of its top-level `and` terms — as (property, text), so a caller can narrow the
    /// rows to test through an index. `None` for date-like text, which compares as a date.
    pub fn required_equality(&self) -> Option<(&str, &str)> {
        fn find(node: &Node) -> Option<(&str, &str)> {
            match node {
                Node::And(a, b) => find(a).or_else(|| find(b)),
                Node::Compare(CmpOp::Eq, left, right) => match (&**left, &**right) {
                    (
                        Node::Path(path),
                        Node::Literal(Literal::String(text) | Literal::Guid(text)),
                    )
                    | (
                        Node::Literal(Literal::String(text) | Literal::Guid(text)),
                        Node::Path(path),
                    ) if path.len() == 1 && !path[0].starts_with('$') && !looks_like_date(text) => {
                        Some((path[0].as_str(), text.as_str()))
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        find(&self.root)
    }

    pub fn matches(&self, record: &Value, options: &MatchOptions) -> bool {
        let scope = Scope {
            root: record,
            variables: Vec::new(),
            options,
        };
        truthy(&eval(&self.root, &scope))
    }

    /// The top-level property names the filter reads from the record (the first segment of
    /// every member path that is not a lambda variable, and Dataverse functions'
    /// `PropertyName`), sorted and without duplicates — for "unknown column" checks.
    pub fn properties(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_properties(&self.root, &mut Vec::new(), &mut out);
        out.sort();
        out.dedup();
        out
    }
}

fn collect_properties(node: &Node, bound: &mut Vec<String>, out: &mut Vec<String>) {
    match node {
        Node::Or(a, b) | Node::And(a, b) | Node::Compare(_, a, b) => {
            collect_properties(a, bound, out);
            collect_properties(b, bound, out);
        }
        Node::Not(a) => collect_properties(a, bound, out),
        Node::In(a, list) => {
            collect_properties(a, bound, out);
            for item in list {
                collect_properties(item, bound, out);
            }
        }
        Node::Call(_, args) => {
            for arg in args {
                collect_properties(arg, bound, out);
            }
        }
        Node::Crm { property, .. } => out.push(property.clone()),
        Node::Literal(_) => {}
        Node::Path(path) => {
            if let Some(first) = path.first()
                && first != "$it"
                && !bound.contains(first)
            {
                out.push(first.clone());
            }
        }
        Node::Lambda {
            collection,
            variable,
            body,
            ..
        } => {
            if let Some(first) = collection.first()
                && first != "$it"
                && !bound.contains(first)
            {
                out.push(first.clone());
            }
            if let Some(body) = body {
                if let Some(variable) = variable {
                    bound.push(variable.clone());
                    collect_properties(body, bound, out);
                    bound.pop();
                } else {
                    collect_properties(body, bound, out);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation

struct Scope<'a> {
    root: &'a Value,
    variables: Vec<(&'a str, &'a Value)>,
    options: &'a MatchOptions,
}

/// The result of evaluating a node.
#[derive(Debug, Clone)]
enum Val<'a> {
    Null,
    Bool(bool),
    Number(f64),
    Str(std::borrow::Cow<'a, str>),
    Guid(&'a str),
    DateTime(DateTime),
    /// Arrays and objects: only usable by lambdas and `eq null`.
    Other(&'a Value),
}

fn truthy(v: &Val<'_>) -> bool {
    matches!(v, Val::Bool(true))
}

fn from_json(v: &Value) -> Val<'_> {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => Val::Number(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Val::Str(std::borrow::Cow::Borrowed(s)),
        other => Val::Other(other),
    }
}

fn from_literal(l: &Literal) -> Val<'_> {
    match l {
        Literal::Null => Val::Null,
        Literal::Bool(b) => Val::Bool(*b),
        Literal::Number(n) => Val::Number(*n),
        Literal::String(s) => Val::Str(std::borrow::Cow::Borrowed(s)),
        Literal::Guid(g) => Val::Guid(g),
        Literal::DateTime(d) => Val::DateTime(*d),
    }
}

fn resolve<'a>(path: &[String], scope: &Scope<'a>) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut current = if first == "$it" {
        scope.root
    } else if let Some((_, value)) = scope.variables.iter().rev().find(|(n, _)| n == first) {
        value
    } else {
        scope.root.get(first)?
    };
    for segment in rest {
        current = current.get(segment)?;
    }
    Some(current)
}

fn eval<'a>(node: &'a Node, scope: &Scope<'a>) -> Val<'a> {
    match node {
        Node::Or(a, b) => Val::Bool(truthy(&eval(a, scope)) || truthy(&eval(b, scope))),
        Node::And(a, b) => Val::Bool(truthy(&eval(a, scope)) && truthy(&eval(b, scope))),
        Node::Not(a) => match eval(a, scope) {
            Val::Bool(b) => Val::Bool(!b),
            // `not` of a non-boolean (null, comparison across types…) is false, like SQL's
            // three-valued logic collapsing unknown to "not matched".
            _ => Val::Bool(false),
        },
        Node::Compare(op, a, b) => {
            let (a, b) = (eval(a, scope), eval(b, scope));
            Val::Bool(compare(*op, &a, &b, scope.options))
        }
        Node::In(a, list) => {
            let a = eval(a, scope);
            Val::Bool(
                list.iter()
                    .any(|item| compare(CmpOp::Eq, &a, &eval(item, scope), scope.options)),
            )
        }
        Node::Call(func, args) => call(*func, args, scope),
        Node::Crm {
            func,
            property,
            values,
        } => {
            let value = scope.root.get(property).map_or(Val::Null, from_json);
            let eq = |l: &Literal| compare(CmpOp::Eq, &value, &from_literal(l), scope.options);
            let between = || match values.as_slice() {
                [low, high] => {
                    compare(CmpOp::Ge, &value, &from_literal(low), scope.options)
                        && compare(CmpOp::Le, &value, &from_literal(high), scope.options)
                }
                _ => false,
            };
            Val::Bool(match func {
                CrmFunc::In => values.iter().any(eq),
                CrmFunc::NotIn => !matches!(value, Val::Null) && !values.iter().any(eq),
                CrmFunc::Between => between(),
                CrmFunc::NotBetween => !matches!(value, Val::Null) && !between(),
                CrmFunc::Null => matches!(value, Val::Null),
                CrmFunc::NotNull => !matches!(value, Val::Null),
            })
        }
        Node::Literal(l) => from_literal(l),
        Node::Path(path) => resolve(path, scope).map_or(Val::Null, from_json),
        Node::Lambda {
            collection,
            all,
            variable,
            body,
        } => {
            let Some(Value::Array(items)) = resolve(collection, scope) else {
                // A missing or non-array collection: `any` finds nothing, `all` holds
                // vacuously only for an empty collection, which this is not — false both.
                return Val::Bool(false);
            };
            let Some(body) = body else {
                return Val::Bool(if *all { true } else { !items.is_empty() });
            };
            let test = |item: &'a Value| {
                let mut variables = scope.variables.clone();
                if let Some(variable) = variable {
                    variables.push((variable.as_str(), item));
                }
                let inner = Scope {
                    root: scope.root,
                    variables,
                    options: scope.options,
                };
                truthy(&eval(body, &inner))
            };
            Val::Bool(if *all {
                items.iter().all(test)
            } else {
                items.iter().any(test)
            })
        }
    }
}

fn as_text<'v>(v: &'v Val<'_>) -> Option<&'v str> {
    match v {
        Val::Str(s) => Some(s),
        Val::Guid(g) => Some(g),
        _ => None,
    }
}

fn fold(s: &str, options: &MatchOptions) -> String {
    if options.case_insensitive_strings {
        s.to_lowercase()
    } else {
        s.to_owned()
    }
}

fn call<'a>(func: Func, args: &'a [Node], scope: &Scope<'a>) -> Val<'a> {
    let values: Vec<Val<'a>> = args.iter().map(|a| eval(a, scope)).collect();
    let options = scope.options;
    match func {
        Func::Contains | Func::StartsWith | Func::EndsWith => {
            let (Some(haystack), Some(needle)) = (
                values.first().and_then(as_text),
                values.get(1).and_then(as_text),
            ) else {
                return Val::Bool(false);
            };
            let (haystack, needle) = (fold(haystack, options), fold(needle, options));
            Val::Bool(match func {
                Func::Contains => haystack.contains(&needle),
                Func::StartsWith => haystack.starts_with(&needle),
                _ => haystack.ends_with(&needle),
            })
        }
        Func::ToLower | Func::ToUpper | Func::Trim => {
            let Some(text) = values.first().and_then(as_text) else {
                return Val::Null;
            };
            Val::Str(std::borrow::Cow::Owned(match func {
                Func::ToLower => text.to_lowercase(),
                Func::ToUpper => text.to_uppercase(),
                _ => text.trim().to_owned(),
            }))
        }
        Func::Length => match values.first() {
            Some(Val::Str(s)) => Val::Number(s.chars().count() as f64),
            Some(Val::Other(Value::Array(items))) => Val::Number(items.len() as f64),
            _ => Val::Null,
        },
    }
}

fn apply(op: CmpOp, ordering: Ordering) -> bool {
    match op {
        CmpOp::Eq => ordering == Ordering::Equal,
        CmpOp::Ne => ordering != Ordering::Equal,
        CmpOp::Gt => ordering == Ordering::Greater,
        CmpOp::Ge => ordering != Ordering::Less,
        CmpOp::Lt => ordering == Ordering::Less,
        CmpOp::Le => ordering != Ordering::Greater,
    }
}

fn compare(op: CmpOp, a: &Val<'_>, b: &Val<'_>, options: &MatchOptions) -> bool {
    let a_null = matches!(a, Val::Null);
    let b_null = matches!(b, Val::Null);
    if a_null || b_null {
        // SQL-like: null only equals null; ordering comparisons with null are false.
        return match op {
            CmpOp::Eq => a_null && b_null,
            CmpOp::Ne => a_null != b_null,
            _ => false,
        };
    }
    let ordering = match (a, b) {
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        (Val::Number(x), Val::Number(y)) => x.partial_cmp(y),
        (Val::DateTime(x), Val::DateTime(y)) => Some(compare_datetimes(x, y)),
        // An unquoted date(-time) literal against a stored ISO string: compare instants
        // (a date-only literal is midnight UTC).
        (Val::DateTime(x), Val::Str(s)) => DateTime::parse(s).map(|y| compare_datetimes(x, &y)),
        (Val::Str(s), Val::DateTime(y)) => DateTime::parse(s).map(|x| compare_datetimes(&x, y)),
        // GUIDs are case-insensitive whatever the string options say.
        (Val::Guid(_), Val::Str(_) | Val::Guid(_)) | (Val::Str(_), Val::Guid(_)) => {
            let (x, y) = (as_text(a).unwrap_or(""), as_text(b).unwrap_or(""));
            Some(x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase()))
        }
        (Val::Str(x), Val::Str(y)) => Some(compare_strings(x, y, options)),
        _ => None,
    };
    match ordering {
        Some(ordering) => apply(op, ordering),
        // Different types never compare equal; `ne` across types is true.
        None => op == CmpOp::Ne,
    }
}

// ---------------------------------------------------------------------------------------
// Tokenizer and parser

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    String(String),
    Number(f64),
    Guid(String),
    DateTime(DateTime),
    OpenParen,
    CloseParen,
    OpenBracket,
    CloseBracket,
    Comma,
    Slash,
    Colon,
    Equals,
    End,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Tok,
    position: usize,
}

struct Parser {
    text: String,
    tokens: Vec<Token>,
    index: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$' || c == '@'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '.' || c == '$' || c == '@' || c == '-'
}

fn is_guid_at(chars: &[char], i: usize) -> bool {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let mut j = i;
    for (n, len) in GROUPS.iter().enumerate() {
        for _ in 0..*len {
            if !chars.get(j).is_some_and(char::is_ascii_hexdigit) {
                return false;
            }
            j += 1;
        }
        if n < 4 {
            if chars.get(j) != Some(&'-') {
                return false;
            }
            j += 1;
        }
    }
    !chars.get(j).is_some_and(|c| is_ident_char(*c))
}

fn error(text: &str, position: usize, message: impl Into<String>) -> ODataError {
    ODataError {
        position,
        message: message.into(),
        text: text.to_owned(),
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, ODataError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let simple = match c {
            '(' => Some(Tok::OpenParen),
            ')' => Some(Tok::CloseParen),
            '[' => Some(Tok::OpenBracket),
            ']' => Some(Tok::CloseBracket),
            ',' => Some(Tok::Comma),
            '/' => Some(Tok::Slash),
            ':' => Some(Tok::Colon),
            '=' => Some(Tok::Equals),
            _ => None,
        };
        if let Some(kind) = simple {
            tokens.push(Token {
                kind,
                position: start,
            });
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            // Single quotes are OData's; Dataverse function parameters also take
            // double-quoted values (`PropertyValues=["5","2000"]`).
            let (value, next) = string_literal(text, &chars, i)?;
            tokens.push(Token {
                kind: Tok::String(value),
                position: start,
            });
            i = next;
            continue;
        }
        if is_guid_at(&chars, i) {
            let guid: String = chars[i..i + 36].iter().collect();
            tokens.push(Token {
                kind: Tok::Guid(guid),
                position: start,
            });
            i += 36;
            continue;
        }
        if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // Date-time literal: dddd-dd-dd…
            if chars.len() >= i + 10
                && chars[i..i + 4].iter().all(char::is_ascii_digit)
                && chars[i + 4] == '-'
            {
                let mut j = i;
                while j < chars.len()
                    && (chars[j].is_ascii_digit()
                        || matches!(chars[j], '-' | ':' | '.' | '+' | 'T' | 't' | 'Z' | 'z'))
                {
                    j += 1;
                }
                let literal: String = chars[i..j].iter().collect();
                let Some(value) = DateTime::parse(&literal) else {
                    return Err(error(
                        text,
                        start,
                        format!("Unrecognized date-time literal '{literal}'"),
                    ));
                };
                tokens.push(Token {
                    kind: Tok::DateTime(value),
                    position: start,
                });
                i = j;
                continue;
            }
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                j += 1;
            }
            if j < chars.len() && matches!(chars[j], 'e' | 'E') {
                let mut k = j + 1;
                if k < chars.len() && matches!(chars[k], '+' | '-') {
                    k += 1;
                }
                if k < chars.len() && chars[k].is_ascii_digit() {
                    j = k;
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                }
            }
            let literal: String = chars[i..j].iter().collect();
            // OData type suffixes: 10M (decimal), 10L (int64), 1.5d / 1.5f.
            if j < chars.len() && matches!(chars[j], 'M' | 'm' | 'L' | 'l' | 'D' | 'd' | 'F' | 'f')
            {
                j += 1;
            }
            if chars.get(j).is_some_and(|c| is_ident_char(*c)) {
                return Err(error(
                    text,
                    j,
                    format!("Syntax error: character '{}' is not valid", chars[j]),
                ));
            }
            let Ok(number) = literal.parse::<f64>() else {
                return Err(error(
                    text,
                    start,
                    format!("Unrecognized number literal '{literal}'"),
                ));
            };
            tokens.push(Token {
                kind: Tok::Number(number),
                position: start,
            });
            i = j;
            continue;
        }
        if is_ident_start(c) {
            let mut j = i + 1;
            while j < chars.len() && is_ident_char(chars[j]) {
                j += 1;
            }
            let ident: String = chars[i..j].iter().collect();
            // guid'…', datetime'…' and friends: OData v3 typed literals, still accepted.
            if j < chars.len()
                && chars[j] == '\''
                && matches!(ident.as_str(), "guid" | "datetime" | "datetimeoffset")
            {
                let (value, next) = string_literal(text, &chars, j)?;
                let kind = if ident == "guid" {
                    Tok::Guid(value)
                } else {
                    match DateTime::parse(&value) {
                        Some(d) => Tok::DateTime(d),
                        None => {
                            return Err(error(
                                text,
                                start,
                                format!("Unrecognized date-time literal '{value}'"),
                            ));
                        }
                    }
                };
                tokens.push(Token {
                    kind,
                    position: start,
                });
                i = next;
                continue;
            }
            tokens.push(Token {
                kind: Tok::Ident(ident),
                position: start,
            });
            i = j;
            continue;
        }
        return Err(error(
            text,
            start,
            format!("Syntax error: character '{c}' is not valid"),
        ));
    }
    tokens.push(Token {
        kind: Tok::End,
        position: chars.len(),
    });
    Ok(tokens)
}

/// A quoted literal starting at `chars[start]`; the quote is doubled to escape it.
fn string_literal(text: &str, chars: &[char], start: usize) -> Result<(String, usize), ODataError> {
    let quote = chars[start];
    let mut value = String::new();
    let mut j = start + 1;
    loop {
        match chars.get(j) {
            None => {
                return Err(error(text, start, "There is an unterminated literal"));
            }
            Some(c) if *c == quote => {
                if chars.get(j + 1) == Some(&quote) {
                    value.push(quote);
                    j += 2;
                } else {
                    return Ok((value, j + 1));
                }
            }
            Some(c) => {
                value.push(*c);
                j += 1;
            }
        }
    }
}

impl Parser {
    fn new(text: &str) -> Result<Parser, ODataError> {
        Ok(Parser {
            text: text.to_owned(),
            tokens: tokenize(text)?,
            index: 0,
        })
    }

    fn peek(&self) -> &Token {
        let last = self.tokens.len().saturating_sub(1);
        &self.tokens[self.index.min(last)]
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        if self.index < self.tokens.len() {
            self.index += 1;
        }
        token
    }

    fn error_at(&self, position: usize, message: impl Into<String>) -> ODataError {
        error(&self.text, position, message)
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(&self.peek().kind, Tok::Ident(w) if w == word)
    }

    fn expect(&mut self, kind: &Tok, message: &str) -> Result<Token, ODataError> {
        let token = self.next();
        if &token.kind == kind {
            Ok(token)
        } else {
            Err(self.error_at(token.position, message))
        }
    }

    fn or_expr(&mut self) -> Result<Node, ODataError> {
        let mut left = self.and_expr()?;
        while self.is_keyword("or") {
            self.next();
            let right = self.and_expr()?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Node, ODataError> {
        let mut left = self.unary()?;
        while self.is_keyword("and") {
            self.next();
            let right = self.unary()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, ODataError> {
        // `not` followed by an operator keyword would be a property named "not"; OData
        // reserves it, and so do we.
        if self.is_keyword("not") {
            self.next();
            let operand = self.unary()?;
            return Ok(Node::Not(Box::new(operand)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, ODataError> {
        let left = self.primary()?;
        let op = match &self.peek().kind {
            Tok::Ident(w) => match w.as_str() {
                "eq" => Some(CmpOp::Eq),
                "ne" => Some(CmpOp::Ne),
                "gt" => Some(CmpOp::Gt),
                "ge" => Some(CmpOp::Ge),
                "lt" => Some(CmpOp::Lt),
                "le" => Some(CmpOp::Le),
                "in" => None,
                "add" | "sub" | "mul" | "div" | "divby" | "mod" | "has" => {
                    let position = self.peek().position;
                    return Err(
                        self.error_at(position, format!("The operator '{w}' is not supported"))
                    );
                }
                _ => return Ok(left),
            },
            _ => return Ok(left),
        };
        self.next();
        match op {
            Some(op) => {
                let right = self.primary()?;
                Ok(Node::Compare(op, Box::new(left), Box::new(right)))
            }
            None => {
                self.expect(&Tok::OpenParen, "'(' expected")?;
                let mut items = vec![self.primary()?];
                loop {
                    let token = self.next();
                    match token.kind {
                        Tok::Comma => items.push(self.primary()?),
                        Tok::CloseParen => break,
                        _ => return Err(self.error_at(token.position, "')' or ',' expected")),
                    }
                }
                Ok(Node::In(Box::new(left), items))
            }
        }
    }

    fn primary(&mut self) -> Result<Node, ODataError> {
        let token = self.next();
        match token.kind {
            Tok::OpenParen => {
                let inner = self.or_expr()?;
                let close = self.next();
                if close.kind != Tok::CloseParen {
                    return Err(self.error_at(close.position, "')' or operator expected"));
                }
                Ok(inner)
            }
            Tok::String(s) => Ok(Node::Literal(Literal::String(s))),
            Tok::Number(n) => Ok(Node::Literal(Literal::Number(n))),
            Tok::Guid(g) => Ok(Node::Literal(Literal::Guid(g))),
            Tok::DateTime(d) => Ok(Node::Literal(Literal::DateTime(d))),
            Tok::Ident(word) => self.identifier(word, token.position),
            Tok::End => Err(self.error_at(token.position, "Expression expected")),
            _ => Err(self.error_at(token.position, "Expression expected")),
        }
    }

    fn identifier(&mut self, word: String, position: usize) -> Result<Node, ODataError> {
        match word.as_str() {
            "null" => return Ok(Node::Literal(Literal::Null)),
            "true" => return Ok(Node::Literal(Literal::Bool(true))),
            "false" => return Ok(Node::Literal(Literal::Bool(false))),
            "eq" | "ne" | "gt" | "ge" | "lt" | "le" | "and" | "or" => {
                return Err(self.error_at(position, "Expression expected"));
            }
            _ => {}
        }
        if self.peek().kind == Tok::OpenParen {
            if let Some(name) = word.strip_prefix("Microsoft.Dynamics.CRM.") {
                let Some(func) = CrmFunc::from_name(name) else {
                    return Err(self.error_at(position, format!("Unknown function '{word}'")));
                };
                return self.crm_function(func, position);
            }
            let Some((func, arity)) = Func::from_name(&word) else {
                return Err(self.error_at(position, format!("Unknown function '{word}'")));
            };
            self.next();
            let mut args = Vec::new();
            if self.peek().kind != Tok::CloseParen {
                args.push(self.or_expr()?);
                while self.peek().kind == Tok::Comma {
                    self.next();
                    args.push(self.or_expr()?);
                }
            }
            let close = self.next();
            if close.kind != Tok::CloseParen {
                return Err(self.error_at(close.position, "')' or ',' expected"));
            }
            if args.len() != arity {
                return Err(self.error_at(
                    position,
                    format!(
                        "The function '{word}' takes {arity} argument(s) but {} were given",
                        args.len()
                    ),
                ));
            }
            return Ok(Node::Call(func, args));
        }
        let mut path = vec![word];
        while self.peek().kind == Tok::Slash {
            self.next();
            let token = self.next();
            let Tok::Ident(segment) = token.kind else {
                return Err(self.error_at(token.position, "Expression expected"));
            };
            if matches!(segment.as_str(), "any" | "all") && self.peek().kind == Tok::OpenParen {
                return self.lambda(path, segment == "all");
            }
            path.push(segment);
        }
        Ok(Node::Path(path))
    }

    fn lambda(&mut self, collection: Vec<String>, all: bool) -> Result<Node, ODataError> {
        let open = self.next();
        if self.peek().kind == Tok::CloseParen {
            self.next();
            if all {
                return Err(self.error_at(open.position, "'all' requires a lambda expression"));
            }
            return Ok(Node::Lambda {
                collection,
                all,
                variable: None,
                body: None,
            });
        }
        let token = self.next();
        let Tok::Ident(variable) = token.kind else {
            return Err(self.error_at(token.position, "Lambda variable expected"));
        };
        self.expect(&Tok::Colon, "':' expected")?;
        let body = self.or_expr()?;
        let close = self.next();
        if close.kind != Tok::CloseParen {
            return Err(self.error_at(close.position, "')' or operator expected"));
        }
        Ok(Node::Lambda {
            collection,
            all,
            variable: Some(variable),
            body: Some(Box::new(body)),
        })
    }

    /// `Microsoft.Dynamics.CRM.In(PropertyName='x',PropertyValues=['a','b'])`.
    fn crm_function(&mut self, func: CrmFunc, position: usize) -> Result<Node, ODataError> {
        self.next();
        let mut property = None;
        let mut values = Vec::new();
        loop {
            let token = self.next();
            let Tok::Ident(name) = token.kind else {
                if token.kind == Tok::CloseParen {
                    break;
                }
                return Err(self.error_at(token.position, "Parameter name expected"));
            };
            self.expect(&Tok::Equals, "'=' expected")?;
            match name.as_str() {
                "PropertyName" => {
                    let token = self.next();
                    let Tok::String(p) = token.kind else {
                        return Err(self.error_at(token.position, "Quoted property name expected"));
                    };
                    property = Some(p);
                }
                "PropertyValue" => values.push(self.literal()?),
                "PropertyValues" => {
                    self.expect(&Tok::OpenBracket, "'[' expected")?;
                    if self.peek().kind != Tok::CloseBracket {
                        values.push(self.literal()?);
                        while self.peek().kind == Tok::Comma {
                            self.next();
                            values.push(self.literal()?);
                        }
                    }
                    self.expect(&Tok::CloseBracket, "']' or ',' expected")?;
                }
                other => {
                    return Err(
                        self.error_at(token.position, format!("Unknown parameter '{other}'"))
                    );
                }
            }
            let token = self.next();
            match token.kind {
                Tok::Comma => {}
                Tok::CloseParen => break,
                _ => return Err(self.error_at(token.position, "')' or ',' expected")),
            }
        }
        let Some(property) = property else {
            return Err(self.error_at(position, "Missing parameter 'PropertyName'"));
        };
        let needed = match func {
            CrmFunc::Between | CrmFunc::NotBetween => Some(2),
            CrmFunc::Null | CrmFunc::NotNull => Some(0),
            CrmFunc::In | CrmFunc::NotIn => None,
        };
        if needed.is_some_and(|n| n != values.len()) || (needed.is_none() && values.is_empty()) {
            return Err(self.error_at(position, "Wrong number of values in 'PropertyValues'"));
        }
        // Dataverse passes the values as strings (`["5","2000"]`); compare them as
        // numbers or dates when they look like ones, since the column type decides there.
        let values = values.into_iter().map(retype).collect();
        Ok(Node::Crm {
            func,
            property,
            values,
        })
    }

    fn literal(&mut self) -> Result<Literal, ODataError> {
        let token = self.next();
        Ok(match token.kind {
            Tok::String(s) => Literal::String(s),
            Tok::Number(n) => Literal::Number(n),
            Tok::Guid(g) => Literal::Guid(g),
            Tok::DateTime(d) => Literal::DateTime(d),
            Tok::Ident(w) if w == "null" => Literal::Null,
            Tok::Ident(w) if w == "true" => Literal::Bool(true),
            Tok::Ident(w) if w == "false" => Literal::Bool(false),
            _ => return Err(self.error_at(token.position, "Literal expected")),
        })
    }
}

/// A string parameter of a Dataverse function that is really a number, GUID or date.
fn retype(literal: Literal) -> Literal {
    let Literal::String(s) = &literal else {
        return literal;
    };
    if let Ok(n) = s.parse::<f64>() {
        return Literal::Number(n);
    }
    let chars: Vec<char> = s.chars().collect();
    if chars.len() == 36 && is_guid_at(&chars, 0) {
        return Literal::Guid(s.clone());
    }
    if looks_like_date(s)
        && let Some(d) = DateTime::parse(s)
    {
        return Literal::DateTime(d);
    }
    literal
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CI: MatchOptions = MatchOptions {
        case_insensitive_strings: true,
    };
    const CS: MatchOptions = MatchOptions {
        case_insensitive_strings: false,
    };

    fn m(filter: &str, record: &Value) -> bool {
        parse_filter(filter)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(record, &CI)
    }

    fn referral() -> Value {
        json!({
            "status": "New",
            "type": "Shared",
            "direction": "Outgoing",
            "team": [{"email": "a@b.com"}, {"email": "X@Y.com"}],
            "customerProfile": {"address": {"country": "US"}},
            "value": 5000,
            "createdDateTime": "2019-02-23T02:05:23.2931817Z",
            "name": "O'Bryan",
            "empty": null,
            "flag": true,
            "id": "7D3E0A4B-1111-4222-8333-444455556666",
        })
    }

    #[test]
    fn partner_center_example() {
        let filter = "status eq 'New' and (type eq 'Shared' or direction eq 'Incoming') and team/any(t:t/email eq 'x@y.com') and customerProfile/address/country eq 'US'";
        assert!(m(filter, &referral()));
        let mut other = referral();
        other["team"] = json!([{"email": "z@y.com"}]);
        assert!(!m(filter, &other));
        let mut other = referral();
        other["type"] = json!("Independent");
        assert!(!m(filter, &other));
        other["direction"] = json!("Incoming");
        assert!(m(filter, &other));
        let parsed = parse_filter(filter).unwrap();
        assert_eq!(
            parsed.properties(),
            vec!["customerProfile", "direction", "status", "team", "type"]
        );
    }

    #[test]
    fn case_sensitivity_is_an_option() {
        let f = parse_filter("status eq 'new'").unwrap();
        assert!(f.matches(&referral(), &CI));
        assert!(!f.matches(&referral(), &CS));
    }

    #[test]
    fn comparisons_numbers_null_bool() {
        let r = referral();
        assert!(m("value gt 4999", &r));
        assert!(m("value ge 5000 and value le 5000", &r));
        assert!(!m("value lt 5000", &r));
        assert!(m("value ne 1.5", &r));
        assert!(m("value eq 5e3", &r));
        assert!(m("empty eq null", &r));
        assert!(m("missing eq null", &r));
        assert!(!m("status eq null", &r));
        assert!(m("status ne null", &r));
        assert!(!m("empty gt 1", &r));
        assert!(m("flag eq true", &r));
        assert!(m("flag", &r));
        assert!(!m("flag eq false", &r));
        assert!(m("value eq -5 or value eq 5000", &r));
        assert!(!m("status eq 5", &r), "type mismatch never equal");
    }

    #[test]
    fn not_and_precedence() {
        let r = referral();
        assert!(m("not status eq 'Won'", &r));
        assert!(!m("not (status eq 'New')", &r));
        // and binds tighter than or
        assert!(m("status eq 'x' and value eq 1 or flag eq true", &r));
        assert!(!m("status eq 'x' and (value eq 1 or flag eq true)", &r));
        assert!(m("not contains(status,'zz')", &r));
        assert!(m("not not flag", &r));
    }

    #[test]
    fn string_functions_and_quotes() {
        let r = referral();
        assert!(m("contains(status,'EW')", &r));
        assert!(m("startswith(status,'ne')", &r));
        assert!(m("endswith(status,'w')", &r));
        assert!(!m("endswith(status,'x')", &r));
        assert!(m("name eq 'O''Bryan'", &r));
        assert!(m("tolower(status) eq 'new'", &r));
        assert!(m("toupper(status) eq 'NEW'", &r));
        assert!(m("length(status) eq 3", &r));
        assert!(m("trim(' New ') eq status", &r));
        assert!(
            !m("contains(value,'5')", &r),
            "contains on a number is false"
        );
    }

    #[test]
    fn dates_and_guids() {
        let r = referral();
        assert!(m("createdDateTime gt 2019-01-01T00:00:00Z", &r));
        assert!(m("createdDateTime lt 2019-02-24", &r));
        assert!(!m("createdDateTime lt 2019-02-23T02:05:23Z", &r));
        assert!(m("createdDateTime gt '2019-02-23T02:00:00+00:00'", &r));
        assert!(m("id eq 7d3e0a4b-1111-4222-8333-444455556666", &r));
        assert!(m("id eq '7d3e0a4b-1111-4222-8333-444455556666'", &r));
        assert!(m("id eq guid'7d3e0a4b-1111-4222-8333-444455556666'", &r));
        let cs = parse_filter("id eq 7d3e0a4b-1111-4222-8333-444455556666").unwrap();
        assert!(
            cs.matches(&r, &CS),
            "GUIDs ignore case regardless of options"
        );
    }

    #[test]
    fn lambdas() {
        let r = referral();
        assert!(m("team/any(t:t/email eq 'a@b.com')", &r));
        assert!(m("team/all(t:contains(t/email,'.com'))", &r));
        assert!(!m("team/all(t:t/email eq 'a@b.com')", &r));
        assert!(m("team/any()", &r));
        assert!(!m("missing/any()", &r));
        assert!(m(
            "team/any(t:t/email eq 'a@b.com' and status eq 'New')",
            &r
        ));
        let f = parse_filter("team/any(t:t/email eq status)").unwrap();
        assert_eq!(f.properties(), vec!["status", "team"]);
    }

    #[test]
    fn in_operator_and_crm_functions() {
        let r = referral();
        assert!(m("status in ('Won','New')", &r));
        assert!(!m("status in ('Won','Lost')", &r));
        assert!(m(
            "Microsoft.Dynamics.CRM.In(PropertyName='status',PropertyValues=['Won','new'])",
            &r
        ));
        assert!(m(
            "Microsoft.Dynamics.CRM.NotIn(PropertyName='status',PropertyValues=['Won'])",
            &r
        ));
        assert!(m(
            "Microsoft.Dynamics.CRM.Between(PropertyName='value',PropertyValues=[\"5\",\"2000000\"])",
            &r
        ));
        assert!(m("Microsoft.Dynamics.CRM.Null(PropertyName='empty')", &r));
        let f =
            parse_filter("Microsoft.Dynamics.CRM.In(PropertyName='status',PropertyValues=['a'])")
                .unwrap();
        assert_eq!(f.properties(), vec!["status"]);
    }

    #[test]
    fn error_positions() {
        let e = parse_filter("name eq 'x").unwrap_err();
        assert_eq!(e.position, 8);
        assert_eq!(
            e.to_string(),
            "There is an unterminated literal at position 8 in 'name eq 'x'."
        );
        let e = parse_filter("(name eq 'x'").unwrap_err();
        assert_eq!(
            (e.position, e.message.as_str()),
            (12, "')' or operator expected")
        );
        let e = parse_filter("name eq").unwrap_err();
        assert_eq!((e.position, e.message.as_str()), (7, "Expression expected"));
        let e = parse_filter("name eq 'x' foo").unwrap_err();
        assert_eq!((e.position, e.message.as_str()), (12, "Syntax error"));
        let e = parse_filter("name % 'x'").unwrap_err();
        assert_eq!(e.position, 5);
        assert!(e.message.contains("'%'"));
        let e = parse_filter("frobnicate(name)").unwrap_err();
        assert_eq!(e.position, 0);
        assert!(e.message.contains("frobnicate"));
        let e = parse_filter("contains(name)").unwrap_err();
        assert!(e.message.contains("2 argument"));
        let e = parse_filter("value add 1 eq 2").unwrap_err();
        assert_eq!(e.position, 6);
        let e = parse_filter("").unwrap_err();
        assert_eq!(e.position, 0);
        let e = parse_filter("d gt 2024-13-01").unwrap_err();
        assert_eq!(e.position, 5);
        // Positions count characters, not bytes.
        let e = parse_filter("name eq 'é' and").unwrap_err();
        assert_eq!(e.position, 15);
    }

    #[test]
    fn orderby() {
        assert_eq!(
            parse_orderby("name, createdon desc,address/city asc").unwrap(),
            vec![
                ("name".to_owned(), false),
                ("createdon".to_owned(), true),
                ("address/city".to_owned(), false)
            ]
        );
        let e = parse_orderby("name up").unwrap_err();
        assert_eq!(e.position, 5);
        let e = parse_orderby("name,").unwrap_err();
        assert_eq!(e.position, 5);
        assert!(parse_orderby("").is_err());
    }

    #[test]
    fn value_ordering() {
        let o = |a: Value, b: Value| compare_values(&a, &b, &CI);
        assert_eq!(o(json!(null), json!(1)), Ordering::Less);
        assert_eq!(o(json!(2), json!(10)), Ordering::Less);
        assert_eq!(o(json!("b"), json!("A")), Ordering::Greater);
        assert_eq!(o(json!("a"), json!("A")), Ordering::Equal);
        assert_eq!(
            compare_values(&json!("a"), &json!("A"), &CS),
            Ordering::Greater
        );
        assert_eq!(
            o(
                json!("2024-01-01T10:00:00+02:00"),
                json!("2024-01-01T09:00:00Z")
            ),
            Ordering::Less
        );
        assert_eq!(o(json!(false), json!(true)), Ordering::Less);
    }
}
