//! SOQL: lexer, parser, checks against the schema, and evaluation over the [`Store`].
//!
//! Supported: `SELECT f1, Rel.f2 FROM Obj [WHERE …] [ORDER BY f [ASC|DESC] [NULLS
//! FIRST|LAST], …] [LIMIT n] [OFFSET n]`, `SELECT COUNT() …` and `SELECT COUNT(f) …`.
//! Child-relationship subqueries in the select list, one level deep as in SOQL:
//! `SELECT Id, (SELECT Name FROM Contacts WHERE … ORDER BY … LIMIT n) FROM Account`.
//! Conditions: `= != <> < > <= >= LIKE IN NOT IN`, `AND`/`OR`/`NOT` with parentheses
//! (SOQL refuses to mix AND and OR without them), string, number, boolean, null, date,
//! date-time (`Z` or `±hh:mm`) and relative date literals (`TODAY`, `LAST_N_DAYS:n`, …).
//! Keywords and field names are case-insensitive; results use the canonical names.
//! Errors carry Salesforce's messages, with the `ERROR at Row:r:Column:c` pointer.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::ids;
use super::schema::{FieldType, Object, Schema};
use super::store::{Store, Val};
use super::write::{format_datetime, parse_datetime};
use crate::mapping::transforms::datetime::DateTime;

/// A query error: `errorCode` and the complete message.
#[derive(Debug, Clone, PartialEq)]
pub struct SoqlError {
    /// `MALFORMED_QUERY`, `INVALID_FIELD`, `INVALID_TYPE`, …
    pub code: &'static str,
    /// The message, with the position pointer where Salesforce gives one.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Pat {
    Char(char),
    Any,
    One,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str { value: String, pattern: Vec<Pat> },
    Num(f64),
    Date(String),
    DateTime(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    Colon,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
    text: String,
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl Lexer<'_> {
    fn peek_byte(&self, offset: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + offset).copied()
    }

    fn tokens(mut self) -> Result<Vec<Token>, (usize, String)> {
        let mut out = Vec::new();
        loop {
            while self.peek_byte(0).is_some_and(|b| b.is_ascii_whitespace()) {
                self.pos += 1;
            }
            let start = self.pos;
            let Some(b) = self.peek_byte(0) else {
                out.push(Token {
                    tok: Tok::Eof,
                    pos: start,
                    text: "<EOF>".into(),
                });
                return Ok(out);
            };
            let tok = match b {
                b'(' => {
                    self.pos += 1;
                    Tok::LParen
                }
                b')' => {
                    self.pos += 1;
                    Tok::RParen
                }
                b',' => {
                    self.pos += 1;
                    Tok::Comma
                }
                b':' => {
                    self.pos += 1;
                    Tok::Colon
                }
                b'=' => {
                    self.pos += 1;
                    Tok::Op("=")
                }
                b'!' if self.peek_byte(1) == Some(b'=') => {
                    self.pos += 2;
                    Tok::Op("!=")
                }
                b'<' => {
                    self.pos += 1;
                    match self.peek_byte(0) {
                        Some(b'=') => {
                            self.pos += 1;
                            Tok::Op("<=")
                        }
                        Some(b'>') => {
                            self.pos += 1;
                            Tok::Op("!=")
                        }
                        _ => Tok::Op("<"),
                    }
                }
                b'>' => {
                    self.pos += 1;
                    if self.peek_byte(0) == Some(b'=') {
                        self.pos += 1;
                        Tok::Op(">=")
                    } else {
                        Tok::Op(">")
                    }
                }
                b'\'' => self.string()?,
                b'0'..=b'9' => self.number_or_date()?,
                b'-' | b'+'
                    if self
                        .peek_byte(1)
                        .is_some_and(|c| c.is_ascii_digit() || c == b'.') =>
                {
                    self.pos += 1;
                    match self.number_or_date()? {
                        Tok::Num(n) => Tok::Num(if b == b'-' { -n } else { n }),
                        _ => return Err((start, self.src[start..self.pos].to_owned())),
                    }
                }
                b'.' if self.peek_byte(1).is_some_and(|c| c.is_ascii_digit()) => {
                    self.number_or_date()?
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    while self
                        .peek_byte(0)
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
                    {
                        self.pos += 1;
                    }
                    Tok::Ident(self.src[start..self.pos].to_owned())
                }
                _ => {
                    let ch = self.src[start..].chars().next().unwrap_or('?');
                    return Err((start, ch.to_string()));
                }
            };
            out.push(Token {
                tok,
                pos: start,
                text: self.src[start..self.pos].to_owned(),
            });
        }
    }

    fn string(&mut self) -> Result<Tok, (usize, String)> {
        let start = self.pos;
        self.pos += 1;
        let mut value = String::new();
        let mut pattern = Vec::new();
        let rest = &self.src[self.pos..];
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' => {
                    self.pos += i + 1;
                    return Ok(Tok::Str { value, pattern });
                }
                '\\' => {
                    let Some((_, e)) = chars.next() else { break };
                    let (v, p) = match e {
                        'n' => ('\n', Pat::Char('\n')),
                        'r' => ('\r', Pat::Char('\r')),
                        't' => ('\t', Pat::Char('\t')),
                        'b' => ('\u{8}', Pat::Char('\u{8}')),
                        'f' => ('\u{c}', Pat::Char('\u{c}')),
                        '\'' | '"' | '\\' => (e, Pat::Char(e)),
                        '%' | '_' => {
                            // Escaped wildcards: literal characters in LIKE patterns.
                            value.push('\\');
                            (e, Pat::Char(e))
                        }
                        'u' => {
                            let hex: String = chars.by_ref().take(4).map(|(_, h)| h).collect();
                            let code = u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or((start, "\\u".to_owned()))?;
                            (code, Pat::Char(code))
                        }
                        _ => return Err((start, format!("\\{e}"))),
                    };
                    value.push(v);
                    pattern.push(p);
                }
                '%' => {
                    value.push(c);
                    pattern.push(Pat::Any);
                }
                '_' => {
                    value.push(c);
                    pattern.push(Pat::One);
                }
                _ => {
                    value.push(c);
                    pattern.push(Pat::Char(c));
                }
            }
        }
        Err((start, "'".to_owned()))
    }

    fn number_or_date(&mut self) -> Result<Tok, (usize, String)> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let is_date = bytes.len() >= start + 10
            && bytes[start..start + 4].iter().all(u8::is_ascii_digit)
            && bytes[start + 4] == b'-'
            && bytes[start + 5..start + 7].iter().all(u8::is_ascii_digit)
            && bytes[start + 7] == b'-'
            && bytes[start + 8..start + 10].iter().all(u8::is_ascii_digit);
        if is_date {
            self.pos = start + 10;
            if self.peek_byte(0) != Some(b'T') && self.peek_byte(0) != Some(b't') {
                let text = &self.src[start..self.pos];
                return parse_datetime(text)
                    .map(|_| Tok::Date(text.to_owned()))
                    .ok_or((start, text.to_owned()));
            }
            while self.peek_byte(0).is_some_and(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b':' | b'.' | b'+' | b'-')
            }) {
                self.pos += 1;
            }
            let text = &self.src[start..self.pos];
            // SOQL date-time literals need a zone: `Z` or `±hh:mm`.
            let zoned = text.ends_with(['Z', 'z'])
                || text.len() > 6 && matches!(text.as_bytes()[text.len() - 6], b'+' | b'-');
            return match parse_datetime(text) {
                Some(dt) if zoned => Ok(Tok::DateTime(format_datetime(&dt))),
                _ => Err((start, text.to_owned())),
            };
        }
        while self
            .peek_byte(0)
            .is_some_and(|c| c.is_ascii_digit() || c == b'.')
        {
            self.pos += 1;
        }
        let text = &self.src[start..self.pos];
        text.parse::<f64>()
            .map(Tok::Num)
            .map_err(|_| (start, text.to_owned()))
    }
}

// ---------------------------------------------------------------------------------------
// Syntax tree

#[derive(Debug, Clone)]
struct PathExpr {
    text: String,
    pos: usize,
}

#[derive(Debug, Clone)]
enum Literal {
    Str { value: String, pattern: Vec<Pat> },
    Num(f64),
    Bool(bool),
    Null,
    Date(String),
    DateTime(String),
    Relative(Relative),
}

#[derive(Debug, Clone, Copy)]
enum Relative {
    Today,
    Yesterday,
    Tomorrow,
    LastNDays(i64),
    NextNDays(i64),
    ThisWeek,
    LastWeek,
    NextWeek,
    ThisMonth,
    LastMonth,
    NextMonth,
    ThisYear,
    LastYear,
    NextYear,
}

#[derive(Debug, Clone)]
enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Cmp {
        path: PathExpr,
        op: &'static str,
        value: Literal,
        value_pos: usize,
    },
    Like {
        path: PathExpr,
        value: Literal,
        value_pos: usize,
    },
    In {
        path: PathExpr,
        negated: bool,
        values: Vec<(Literal, usize)>,
    },
}

#[derive(Debug, Clone)]
enum SelectItem {
    Path(PathExpr),
    /// `(SELECT … FROM ChildRelationship …)`: its `from` is the relationship name.
    Subquery(Box<Ast>),
}

#[derive(Debug, Clone)]
enum SelectList {
    Count(Option<PathExpr>),
    Fields(Vec<SelectItem>),
}

#[derive(Debug, Clone)]
struct OrderItem {
    path: PathExpr,
    descending: bool,
    nulls_last: Option<bool>,
}

#[derive(Debug, Clone)]
struct Ast {
    select: SelectList,
    from: PathExpr,
    filter: Option<Cond>,
    order: Vec<OrderItem>,
    limit: Option<u64>,
    offset: Option<u64>,
    /// Where the OFFSET keyword is (for the subquery OFFSET error).
    offset_pos: usize,
}

struct Parser<'a> {
    src: &'a str,
    tokens: Vec<Token>,
    at: usize,
    /// Nesting of parentheses and NOTs, bounded so a hostile query cannot exhaust the
    /// stack of the recursive descent.
    depth: usize,
}

/// Deepest nesting of parentheses and NOT accepted.
const MAX_DEPTH: usize = 64;

const RESERVED: &[&str] = &[
    "select", "from", "where", "order", "by", "limit", "offset", "and", "or", "not", "in", "like",
    "asc", "desc", "nulls", "group", "having", "with", "for", "true", "false", "null",
];

impl Parser<'_> {
    fn peek(&self) -> &Token {
        let last = self.tokens.len().saturating_sub(1);
        &self.tokens[self.at.min(last)]
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        if self.at < self.tokens.len() {
            self.at += 1;
        }
        token
    }

    fn unexpected(&self, token: &Token) -> SoqlError {
        malformed(
            self.src,
            token.pos,
            &format!("unexpected token: '{}'", token.text),
        )
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(w) if w.eq_ignore_ascii_case(word))
    }

    fn eat_keyword(&mut self, word: &str) -> bool {
        if self.is_keyword(word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn keyword(&mut self, word: &str) -> Result<(), SoqlError> {
        if self.eat_keyword(word) {
            Ok(())
        } else {
            Err(self.unexpected(&self.peek().clone()))
        }
    }

    fn expect(&mut self, tok: &Tok) -> Result<(), SoqlError> {
        let token = self.next();
        if &token.tok == tok {
            Ok(())
        } else {
            Err(self.unexpected(&token))
        }
    }

    fn path(&mut self) -> Result<PathExpr, SoqlError> {
        let token = self.next();
        match &token.tok {
            Tok::Ident(name)
                if !RESERVED.contains(&name.to_ascii_lowercase().as_str())
                    && !name.ends_with('.')
                    && !name.contains("..") =>
            {
                Ok(PathExpr {
                    text: name.clone(),
                    pos: token.pos,
                })
            }
            _ => Err(self.unexpected(&token)),
        }
    }

    fn integer(&mut self) -> Result<u64, SoqlError> {
        let token = self.next();
        match token.tok {
            Tok::Num(n) if n >= 0.0 && n.fract() == 0.0 && n < 1e15 => Ok(n as u64),
            _ => Err(self.unexpected(&token)),
        }
    }

    fn query(&mut self) -> Result<Ast, SoqlError> {
        let ast = self.select(false)?;
        let end = self.next();
        if end.tok != Tok::Eof {
            return Err(self.unexpected(&end));
        }
        Ok(ast)
    }

    /// A SELECT statement up to (not including) what ends it: the end of the text, or the
    /// `)` of a subquery (`nested`). A subquery takes neither COUNT nor subqueries of its
    /// own, so both fail there as unexpected tokens.
    fn select(&mut self, nested: bool) -> Result<Ast, SoqlError> {
        self.keyword("select")?;
        let select = if !nested
            && self.is_keyword("count")
            && self
                .tokens
                .get(self.at + 1)
                .is_some_and(|t| t.tok == Tok::LParen)
        {
            self.at += 2;
            let field = if self.peek().tok == Tok::RParen {
                None
            } else {
                Some(self.path()?)
            };
            self.expect(&Tok::RParen)?;
            SelectList::Count(field)
        } else {
            let mut fields = vec![self.select_item(nested)?];
            while self.peek().tok == Tok::Comma {
                self.at += 1;
                fields.push(self.select_item(nested)?);
            }
            SelectList::Fields(fields)
        };
        self.keyword("from")?;
        let from = self.path()?;
        let filter = if self.eat_keyword("where") {
            Some(self.condition()?)
        } else {
            None
        };
        let mut order = Vec::new();
        if self.eat_keyword("order") {
            self.keyword("by")?;
            loop {
                let path = self.path()?;
                let descending = if self.eat_keyword("desc") {
                    true
                } else {
                    self.eat_keyword("asc");
                    false
                };
                let nulls_last = if self.eat_keyword("nulls") {
                    if self.eat_keyword("first") {
                        Some(false)
                    } else {
                        self.keyword("last")?;
                        Some(true)
                    }
                } else {
                    None
                };
                order.push(OrderItem {
                    path,
                    descending,
                    nulls_last,
                });
                if self.peek().tok != Tok::Comma {
                    break;
                }
                self.at += 1;
            }
        }
        let limit = if self.eat_keyword("limit") {
            Some(self.integer()?)
        } else {
            None
        };
        let offset_pos = self.peek().pos;
        let offset = if self.eat_keyword("offset") {
            Some(self.integer()?)
        } else {
            None
        };
        Ok(Ast {
            select,
            from,
            filter,
            order,
            limit,
            offset,
            offset_pos,
        })
    }

    /// A field path, or (outside a subquery) a parenthesised child subquery.
    fn select_item(&mut self, nested: bool) -> Result<SelectItem, SoqlError> {
        let opens_subquery = self.peek().tok == Tok::LParen
            && self.tokens.get(self.at + 1).is_some_and(
                |t| matches!(&t.tok, Tok::Ident(w) if w.eq_ignore_ascii_case("select")),
            );
        if nested || !opens_subquery {
            return self.path().map(SelectItem::Path);
        }
        self.at += 1;
        let ast = self.select(true)?;
        self.expect(&Tok::RParen)?;
        Ok(SelectItem::Subquery(Box::new(ast)))
    }

    /// A chain of conditions joined by one of AND or OR: mixing them without
    /// parentheses is a syntax error in SOQL.
    fn condition(&mut self) -> Result<Cond, SoqlError> {
        let first = self.unary()?;
        let joiner = if self.is_keyword("and") {
            "and"
        } else if self.is_keyword("or") {
            "or"
        } else {
            return Ok(first);
        };
        let mut parts = vec![first];
        while self.eat_keyword(joiner) {
            parts.push(self.unary()?);
        }
        let other = if joiner == "and" { "or" } else { "and" };
        if self.is_keyword(other) {
            return Err(self.unexpected(&self.peek().clone()));
        }
        Ok(if joiner == "and" {
            Cond::And(parts)
        } else {
            Cond::Or(parts)
        })
    }

    fn unary(&mut self) -> Result<Cond, SoqlError> {
        if self.is_keyword("not") || self.peek().tok == Tok::LParen {
            if self.depth >= MAX_DEPTH {
                let token = self.peek().clone();
                return Err(malformed(
                    self.src,
                    token.pos,
                    "Query is too complicated: too many nested conditions",
                ));
            }
            self.depth += 1;
            let inner = if self.eat_keyword("not") {
                self.unary().map(|c| Cond::Not(Box::new(c)))
            } else {
                self.at += 1;
                self.condition()
                    .and_then(|inner| self.expect(&Tok::RParen).map(|()| inner))
            };
            self.depth -= 1;
            return inner;
        }
        let path = self.path()?;
        if self.eat_keyword("like") {
            let value_pos = self.peek().pos;
            let value = self.literal()?;
            return Ok(Cond::Like {
                path,
                value,
                value_pos,
            });
        }
        let negated = if self.is_keyword("not")
            && self
                .tokens
                .get(self.at + 1)
                .is_some_and(|t| matches!(&t.tok, Tok::Ident(w) if w.eq_ignore_ascii_case("in")))
        {
            self.at += 1;
            true
        } else {
            false
        };
        if self.eat_keyword("in") {
            self.expect(&Tok::LParen)?;
            let mut values = Vec::new();
            loop {
                let pos = self.peek().pos;
                values.push((self.literal()?, pos));
                if self.peek().tok != Tok::Comma {
                    break;
                }
                self.at += 1;
            }
            self.expect(&Tok::RParen)?;
            return Ok(Cond::In {
                path,
                negated,
                values,
            });
        }
        let token = self.next();
        let Tok::Op(op) = token.tok else {
            return Err(self.unexpected(&token));
        };
        let value_pos = self.peek().pos;
        let value = self.literal()?;
        Ok(Cond::Cmp {
            path,
            op,
            value,
            value_pos,
        })
    }

    fn literal(&mut self) -> Result<Literal, SoqlError> {
        let token = self.next();
        Ok(match &token.tok {
            Tok::Str { value, pattern } => Literal::Str {
                value: value.clone(),
                pattern: pattern.clone(),
            },
            Tok::Num(n) => Literal::Num(*n),
            Tok::Date(d) => Literal::Date(d.clone()),
            Tok::DateTime(d) => Literal::DateTime(d.clone()),
            Tok::Ident(word) => match word.to_ascii_uppercase().as_str() {
                "TRUE" => Literal::Bool(true),
                "FALSE" => Literal::Bool(false),
                "NULL" => Literal::Null,
                "TODAY" => Literal::Relative(Relative::Today),
                "YESTERDAY" => Literal::Relative(Relative::Yesterday),
                "TOMORROW" => Literal::Relative(Relative::Tomorrow),
                "THIS_WEEK" => Literal::Relative(Relative::ThisWeek),
                "LAST_WEEK" => Literal::Relative(Relative::LastWeek),
                "NEXT_WEEK" => Literal::Relative(Relative::NextWeek),
                "THIS_MONTH" => Literal::Relative(Relative::ThisMonth),
                "LAST_MONTH" => Literal::Relative(Relative::LastMonth),
                "NEXT_MONTH" => Literal::Relative(Relative::NextMonth),
                "THIS_YEAR" => Literal::Relative(Relative::ThisYear),
                "LAST_YEAR" => Literal::Relative(Relative::LastYear),
                "NEXT_YEAR" => Literal::Relative(Relative::NextYear),
                upper @ ("LAST_N_DAYS" | "NEXT_N_DAYS") => {
                    self.expect(&Tok::Colon)?;
                    let n = i64::try_from(self.integer()?)
                        .unwrap_or(i64::MAX / 4)
                        .min(100_000);
                    Literal::Relative(if upper == "LAST_N_DAYS" {
                        Relative::LastNDays(n)
                    } else {
                        Relative::NextNDays(n)
                    })
                }
                _ => return Err(self.unexpected(&token)),
            },
            _ => return Err(self.unexpected(&token)),
        })
    }
}

fn located(src: &str, pos: usize, message: &str) -> String {
    let pos = pos.min(src.len());
    let before = src.get(..pos).unwrap_or("");
    let row = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = src.get(line_start..pos).map_or(0, |s| s.chars().count()) + 1;
    let line = src
        .get(line_start..)
        .unwrap_or("")
        .split('\n')
        .next()
        .unwrap_or("");
    format!(
        "\n{line}\n{}^\nERROR at Row:{row}:Column:{column}\n{message}",
        " ".repeat(column - 1)
    )
}

fn malformed(src: &str, pos: usize, message: &str) -> SoqlError {
    SoqlError {
        code: "MALFORMED_QUERY",
        message: located(src, pos, message),
    }
}

fn error_at(code: &'static str, src: &str, pos: usize, message: &str) -> SoqlError {
    SoqlError {
        code,
        message: located(src, pos, message),
    }
}

// ---------------------------------------------------------------------------------------
// Plan: the query checked against the schema

/// A resolved field path: lookups to follow from the queried object, then a field.
#[derive(Debug, Clone)]
struct FieldPath {
    /// `(object, reference field)` for each relationship hop.
    hops: Vec<(usize, usize)>,
    object: usize,
    field: usize,
    kind: FieldType,
}

#[derive(Debug, Clone)]
enum Operand {
    Null,
    Bool(bool),
    Num(f64),
    /// Lower-cased text (text comparisons are case-insensitive).
    Text(String),
    /// Canonical 18-character id, or a canonical date / date-time string.
    Exact(String),
    /// `[start, end)` of a relative date literal, as canonical strings.
    Range(String, String),
}

#[derive(Debug, Clone)]
enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cmp(FieldPath, &'static str, Operand),
    Like(FieldPath, Vec<Pat>),
    In(FieldPath, bool, Vec<Operand>),
}

/// What to output for a record.
#[derive(Debug, Clone)]
enum Node {
    Field(usize),
    Relationship {
        reference: usize,
        name: String,
        object: usize,
        children: Vec<Node>,
    },
    /// A child subquery (only among the top-level nodes of a query).
    Children(Box<Subquery>),
}

/// A checked child subquery: the child records whose lookup points at the parent record.
#[derive(Debug, Clone)]
struct Subquery {
    /// Canonical relationship name (`Microsoft_Solutions__r`): the key in the parent record.
    name: String,
    /// Index of the child's lookup field to the parent.
    reference: usize,
    /// The subquery over the child object: its filter, order, limit and offset apply to
    /// each parent's children separately.
    plan: Plan,
}

#[derive(Debug, Clone)]
enum Projection {
    Count,
    CountField(FieldPath),
    Fields(Vec<Node>),
}

/// A checked query, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The queried object.
    pub object: usize,
    projection: Projection,
    filter: Option<Filter>,
    order: Vec<(FieldPath, bool, bool)>,
    limit: Option<u64>,
    offset: Option<u64>,
}

/// Parses `src` and checks it against `schema`. `today` is the sandbox clock's date, for
/// relative date literals.
pub fn plan(schema: &Schema, src: &str, today: DateTime) -> Result<Plan, SoqlError> {
    let tokens = Lexer { src, pos: 0 }
        .tokens()
        .map_err(|(pos, text)| malformed(src, pos, &format!("unexpected token: '{text}'")))?;
    let ast = Parser {
        src,
        tokens,
        at: 0,
        depth: 0,
    }
    .query()?;
    let object = schema.object(&ast.from.text).ok_or_else(|| {
        error_at(
            "INVALID_TYPE",
            src,
            ast.from.pos,
            &format!(
                "sObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names.",
                ast.from.text
            ),
        )
    })?;
    build(schema, src, today, object, &ast)
}

/// Checks `ast` as a query of `object`: the whole query, or a subquery over the child
/// object of its relationship.
fn build(
    schema: &Schema,
    src: &str,
    today: DateTime,
    object: usize,
    ast: &Ast,
) -> Result<Plan, SoqlError> {
    let resolver = Resolver {
        schema,
        src,
        root: object,
        today,
    };
    let projection = match &ast.select {
        SelectList::Count(None) => Projection::Count,
        SelectList::Count(Some(path)) => Projection::CountField(resolver.path(path)?),
        SelectList::Fields(items) => {
            let mut nodes = Vec::new();
            for item in items {
                match item {
                    SelectItem::Path(path) => {
                        let resolved = resolver.path(path)?;
                        insert_node(schema, &mut nodes, object, &resolved);
                    }
                    SelectItem::Subquery(sub) => {
                        let subquery = subquery(schema, src, today, object, ast, sub)?;
                        if nodes
                            .iter()
                            .any(|n| matches!(n, Node::Children(c) if c.name == subquery.name))
                        {
                            // UNVERIFIED: wording of the error for the same relationship
                            // queried twice.
                            return Err(error_at(
                                "MALFORMED_QUERY",
                                src,
                                sub.from.pos,
                                &format!("duplicate field selected: {}", subquery.name),
                            ));
                        }
                        nodes.push(Node::Children(Box::new(subquery)));
                    }
                }
            }
            Projection::Fields(nodes)
        }
    };
    let filter = match &ast.filter {
        Some(cond) => Some(resolver.filter(cond)?),
        None => None,
    };
    let mut order = Vec::new();
    for item in &ast.order {
        let path = resolver.path(&item.path)?;
        let field = &schema.objects[path.object].fields[path.field];
        if is_long_text(field.kind, field.length) {
            return Err(error_at(
                "INVALID_FIELD",
                src,
                item.path.pos,
                &format!("field '{}' can not be sorted in a query call", field.name),
            ));
        }
        // UNVERIFIED: nulls sort first unless NULLS LAST is given ("By default, null
        // values are sorted first" in the SOQL reference, for either direction).
        order.push((path, item.descending, item.nulls_last.unwrap_or(false)));
    }
    if let Some(offset) = ast.offset
        && offset > 2000
    {
        return Err(SoqlError {
            code: "NUMBER_OUTSIDE_VALID_RANGE",
            message: format!("Maximum SOQL offset allowed is 2000 (found {offset})"),
        });
    }
    Ok(Plan {
        object,
        projection,
        filter,
        order,
        limit: ast.limit,
        offset: ast.offset,
    })
}

/// Checks the subquery `sub` in the select list of `outer`, a query of `parent`: its FROM
/// names one of the parent's child relationships, and the rest is checked against the
/// child object.
fn subquery(
    schema: &Schema,
    src: &str,
    today: DateTime,
    parent: usize,
    outer: &Ast,
    sub: &Ast,
) -> Result<Subquery, SoqlError> {
    let parent_object = &schema.objects[parent];
    let Some(relationship) = parent_object
        .child_relationship(&sub.from.text)
        .map(|i| &parent_object.child_relationships[i])
    else {
        // The same wording as an unknown parent relationship in a field path, with the
        // FROM part named and the sObject error's code (the FROM names a type here).
        return Err(error_at(
            "INVALID_TYPE",
            src,
            sub.from.pos,
            &format!(
                "Didn't understand relationship '{}' in FROM part of query call. If you are attempting to use a custom relationship, be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe call for the appropriate names.",
                sub.from.text
            ),
        ));
    };
    // The SOQL reference: "A subquery can use OFFSET only if the parent query has a
    // LIMIT 1 clause".
    if sub.offset.is_some() && outer.limit != Some(1) {
        // UNVERIFIED: the error's code and wording.
        return Err(malformed(
            src,
            sub.offset_pos,
            "OFFSET is allowed in a subquery only when the outer query has LIMIT 1",
        ));
    }
    Ok(Subquery {
        name: relationship.name.clone().unwrap_or_default(),
        reference: relationship.field,
        plan: build(schema, src, today, relationship.child, sub)?,
    })
}

fn is_long_text(kind: FieldType, length: Option<usize>) -> bool {
    kind == FieldType::Textarea && length.unwrap_or(0) > 255
}

fn insert_node(schema: &Schema, nodes: &mut Vec<Node>, object: usize, path: &FieldPath) {
    let Some(((_, reference), rest)) = path.hops.split_first() else {
        if !nodes
            .iter()
            .any(|n| matches!(n, Node::Field(f) if *f == path.field))
        {
            nodes.push(Node::Field(path.field));
        }
        return;
    };
    let obj = &schema.objects[object];
    let field = &obj.fields[*reference];
    let target = rest.first().map_or(path.object, |(o, _)| *o);
    let position = nodes
        .iter()
        .position(|n| matches!(n, Node::Relationship { reference: r, .. } if r == reference));
    let index = position.unwrap_or_else(|| {
        nodes.push(Node::Relationship {
            reference: *reference,
            name: field.relationship_name.clone().unwrap_or_default(),
            object: target,
            children: Vec::new(),
        });
        nodes.len() - 1
    });
    if let Node::Relationship { children, .. } = &mut nodes[index] {
        let tail = FieldPath {
            hops: rest.to_vec(),
            object: path.object,
            field: path.field,
            kind: path.kind,
        };
        insert_node(schema, children, target, &tail);
    }
}

struct Resolver<'a> {
    schema: &'a Schema,
    src: &'a str,
    root: usize,
    today: DateTime,
}

impl Resolver<'_> {
    fn path(&self, path: &PathExpr) -> Result<FieldPath, SoqlError> {
        let mut parts: Vec<&str> = path.text.split('.').collect();
        let root = &self.schema.objects[self.root];
        // `SELECT Account.Name FROM Account`: the object's own name may prefix a path.
        if parts.len() > 1
            && parts[0].eq_ignore_ascii_case(&root.name)
            && root.relationship(parts[0]).is_none()
        {
            parts.remove(0);
        }
        let mut object = self.root;
        let mut hops = Vec::new();
        let (last, relationships) = parts.split_last().unwrap_or((&"", &[]));
        for name in relationships {
            let obj = &self.schema.objects[object];
            let target = obj.relationship(name).and_then(|f| {
                obj.fields[f]
                    .reference_to
                    .as_deref()
                    .and_then(|t| self.schema.object(t))
                    .map(|t| (f, t))
            });
            let Some((field, target)) = target else {
                return Err(error_at(
                    "INVALID_FIELD",
                    self.src,
                    path.pos,
                    &format!(
                        "Didn't understand relationship '{name}' in field path. If you are attempting to use a custom relationship, be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe call for the appropriate names."
                    ),
                ));
            };
            hops.push((object, field));
            object = target;
        }
        let obj = &self.schema.objects[object];
        let Some(field) = obj.field(last) else {
            return Err(error_at(
                "INVALID_FIELD",
                self.src,
                path.pos,
                &format!(
                    "No such column '{last}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
                    obj.name
                ),
            ));
        };
        Ok(FieldPath {
            hops,
            object,
            field,
            kind: obj.fields[field].kind,
        })
    }

    fn filter(&self, cond: &Cond) -> Result<Filter, SoqlError> {
        Ok(match cond {
            Cond::And(parts) => Filter::And(
                parts
                    .iter()
                    .map(|c| self.filter(c))
                    .collect::<Result<_, _>>()?,
            ),
            Cond::Or(parts) => Filter::Or(
                parts
                    .iter()
                    .map(|c| self.filter(c))
                    .collect::<Result<_, _>>()?,
            ),
            Cond::Not(inner) => Filter::Not(Box::new(self.filter(inner)?)),
            Cond::Cmp {
                path,
                op,
                value,
                value_pos,
            } => {
                let resolved = self.filterable(path)?;
                let operand = self.operand(&resolved, value, *value_pos)?;
                if matches!(operand, Operand::Bool(_)) && !matches!(*op, "=" | "!=") {
                    return Err(error_at(
                        "INVALID_QUERY_FILTER_OPERATOR",
                        self.src,
                        path.pos,
                        &format!(
                            "invalid operator on boolean field: {}",
                            self.name(&resolved)
                        ),
                    ));
                }
                Filter::Cmp(resolved, op, operand)
            }
            Cond::Like {
                path,
                value,
                value_pos,
            } => {
                let resolved = self.filterable(path)?;
                if !resolved.kind.is_text() {
                    return Err(error_at(
                        "INVALID_QUERY_FILTER_OPERATOR",
                        self.src,
                        path.pos,
                        &format!(
                            "invalid operator on {} field: {}",
                            if resolved.kind.is_id() {
                                "id"
                            } else {
                                resolved.kind.soap_name()
                            },
                            self.name(&resolved)
                        ),
                    ));
                }
                let Literal::Str { pattern, .. } = value else {
                    return Err(self.type_error(&resolved, *value_pos));
                };
                Filter::Like(resolved, pattern.clone())
            }
            Cond::In {
                path,
                negated,
                values,
            } => {
                let resolved = self.filterable(path)?;
                let operands = values
                    .iter()
                    .map(|(v, pos)| self.operand(&resolved, v, *pos))
                    .collect::<Result<_, _>>()?;
                Filter::In(resolved, *negated, operands)
            }
        })
    }

    fn name(&self, path: &FieldPath) -> String {
        self.schema.objects[path.object].fields[path.field]
            .name
            .clone()
    }

    fn filterable(&self, path: &PathExpr) -> Result<FieldPath, SoqlError> {
        let resolved = self.path(path)?;
        let field = &self.schema.objects[resolved.object].fields[resolved.field];
        if is_long_text(field.kind, field.length) {
            return Err(error_at(
                "INVALID_FIELD",
                self.src,
                path.pos,
                &format!("field '{}' can not be filtered in a query call", field.name),
            ));
        }
        Ok(resolved)
    }

    fn type_error(&self, path: &FieldPath, pos: usize) -> SoqlError {
        let kind = path.kind;
        let (type_name, quoting) = match kind {
            k if k.is_text() || k.is_id() => ("string", "should be enclosed in quotes"),
            FieldType::Datetime => ("dateTime", "should not be enclosed in quotes"),
            other => (other.soap_name(), "should not be enclosed in quotes"),
        };
        error_at(
            "INVALID_FIELD",
            self.src,
            pos,
            &format!(
                "value of filter criterion for field '{}' must be of type {type_name} and {quoting}",
                self.name(path)
            ),
        )
    }

    fn operand(&self, path: &FieldPath, value: &Literal, pos: usize) -> Result<Operand, SoqlError> {
        let kind = path.kind;
        Ok(match (kind, value) {
            (_, Literal::Null) => Operand::Null,
            (k, Literal::Str { value, .. }) if k.is_id() => match ids::normalize(value) {
                Some(id) => Operand::Exact(id),
                None => {
                    return Err(error_at(
                        "INVALID_QUERY_FILTER_OPERATOR",
                        self.src,
                        pos,
                        &format!("invalid ID field: {value}"),
                    ));
                }
            },
            (k, Literal::Str { value, .. }) if k.is_text() => {
                Operand::Text(value.replace("\\%", "%").replace("\\_", "_").to_lowercase())
            }
            (k, Literal::Num(n)) if k.is_number() => Operand::Num(*n),
            (FieldType::Boolean, Literal::Bool(b)) => Operand::Bool(*b),
            (FieldType::Date, Literal::Date(d)) => Operand::Exact(d.clone()),
            (FieldType::Datetime, Literal::DateTime(d)) => Operand::Exact(d.clone()),
            (FieldType::Date | FieldType::Datetime, Literal::Relative(r)) => {
                let (start, end) = relative_range(*r, self.today);
                if kind == FieldType::Date {
                    Operand::Range(day_string(start), day_string(end))
                } else {
                    Operand::Range(day_start(start), day_start(end))
                }
            }
            _ => return Err(self.type_error(path, pos)),
        })
    }
}

/// Days since 1970-01-01 of a UTC date-time.
fn day_number(dt: DateTime) -> i64 {
    dt.to_utc().unix_seconds().div_euclid(86_400)
}

fn civil(day: i64) -> DateTime {
    DateTime::from_unix(day.saturating_mul(86_400), 0)
}

fn day_string(day: i64) -> String {
    civil(day).date_string()
}

fn day_start(day: i64) -> String {
    format_datetime(&civil(day))
}

fn month_start(year: i32, month: i32) -> i64 {
    let (y, m) = (
        year + (month - 1).div_euclid(12),
        (month - 1).rem_euclid(12) + 1,
    );
    day_number(DateTime {
        year: y,
        month: u8::try_from(m).unwrap_or(1),
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
        nanos: 0,
        offset_minutes: 0,
    })
}

/// `[start, end)` in day numbers. Weeks start on Sunday (the en_US locale); the org's
/// time zone is UTC.
fn relative_range(relative: Relative, today: DateTime) -> (i64, i64) {
    let day = day_number(today);
    // 1970-01-01 was a Thursday: (day + 4) mod 7 is days since Sunday.
    let week = day - (day + 4).rem_euclid(7);
    let (year, month) = (today.year, i32::from(today.month));
    match relative {
        Relative::Today => (day, day + 1),
        Relative::Yesterday => (day - 1, day),
        Relative::Tomorrow => (day + 1, day + 2),
        Relative::LastNDays(n) => (day - n, day + 1),
        Relative::NextNDays(n) => (day + 1, day + 1 + n),
        Relative::ThisWeek => (week, week + 7),
        Relative::LastWeek => (week - 7, week),
        Relative::NextWeek => (week + 7, week + 14),
        Relative::ThisMonth => (month_start(year, month), month_start(year, month + 1)),
        Relative::LastMonth => (month_start(year, month - 1), month_start(year, month)),
        Relative::NextMonth => (month_start(year, month + 1), month_start(year, month + 2)),
        Relative::ThisYear => (month_start(year, 1), month_start(year + 1, 1)),
        Relative::LastYear => (month_start(year - 1, 1), month_start(year, 1)),
        Relative::NextYear => (month_start(year + 1, 1), month_start(year + 2, 1)),
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation

fn value_of<'a>(
    schema: &Schema,
    store: &'a Store,
    root: usize,
    row: u32,
    path: &FieldPath,
) -> &'a Val {
    static NULL: Val = Val::Null;
    let mut object = root;
    let mut record = &store.tables[object].records[row as usize];
    for (_, reference) in &path.hops {
        let Some(id) = record.values[*reference].as_text() else {
            return &NULL;
        };
        let target = schema.objects[object].fields[*reference]
            .reference_to
            .as_deref()
            .and_then(|t| schema.object(t));
        let Some(target) = target else { return &NULL };
        let Some(next) = store.tables[target].row(id) else {
            return &NULL;
        };
        object = target;
        record = &store.tables[object].records[next as usize];
    }
    &record.values[path.field]
}

fn compare(value: &Val, operand: &Operand) -> Option<Ordering> {
    match (value, operand) {
        (Val::Text(v), Operand::Text(o)) => Some(v.to_lowercase().as_str().cmp(o.as_str())),
        (Val::Text(v), Operand::Exact(o)) => Some(v.as_ref().cmp(o.as_str())),
        (Val::Num(v), Operand::Num(o)) => v.partial_cmp(o),
        (Val::Bool(v), Operand::Bool(o)) => Some(v.cmp(o)),
        _ => None,
    }
}

fn matches_op(value: &Val, op: &str, operand: &Operand) -> bool {
    if let Operand::Null = operand {
        return match op {
            "=" => value.is_null(),
            "!=" => !value.is_null(),
            _ => false,
        };
    }
    if value.is_null() {
        // UNVERIFIED: `!=` and NOT IN match records whose field is null (SOQL is not SQL's
        // three-valued logic here).
        return op == "!=";
    }
    if let Operand::Range(start, end) = operand {
        let Some(v) = value.as_text() else {
            return false;
        };
        let (after_start, before_end) = (v >= start.as_str(), v < end.as_str());
        return match op {
            "=" => after_start && before_end,
            "!=" => !(after_start && before_end),
            "<" => !after_start,
            "<=" => before_end,
            ">" => !before_end,
            ">=" => after_start,
            _ => false,
        };
    }
    let Some(ordering) = compare(value, operand) else {
        return op == "!=";
    };
    match op {
        "=" => ordering == Ordering::Equal,
        "!=" => ordering != Ordering::Equal,
        "<" => ordering == Ordering::Less,
        "<=" => ordering != Ordering::Greater,
        ">" => ordering == Ordering::Greater,
        ">=" => ordering != Ordering::Less,
        _ => false,
    }
}

fn like(text: &[char], pattern: &[Pat]) -> bool {
    // Iterative wildcard match with backtracking to the last `%`.
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Pat::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Pat::One) => {
                t += 1;
                p += 1;
            }
            Some(Pat::Char(c)) if c.to_lowercase().eq(text[t].to_lowercase()) => {
                t += 1;
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|x| *x == Pat::Any)
}

fn test(schema: &Schema, store: &Store, root: usize, row: u32, filter: &Filter) -> bool {
    match filter {
        Filter::And(parts) => parts.iter().all(|f| test(schema, store, root, row, f)),
        Filter::Or(parts) => parts.iter().any(|f| test(schema, store, root, row, f)),
        Filter::Not(inner) => !test(schema, store, root, row, inner),
        Filter::Cmp(path, op, operand) => {
            matches_op(value_of(schema, store, root, row, path), op, operand)
        }
        Filter::Like(path, pattern) => match value_of(schema, store, root, row, path).as_text() {
            Some(text) => like(&text.chars().collect::<Vec<_>>(), pattern),
            None => false,
        },
        Filter::In(path, negated, operands) => {
            let value = value_of(schema, store, root, row, path);
            let found = operands.iter().any(|o| matches_op(value, "=", o));
            found != *negated
        }
    }
}

#[derive(Debug, PartialEq, PartialOrd)]
enum SortKey {
    Num(f64),
    Text(String),
    Bool(bool),
}

fn sort_key(value: &Val, kind: FieldType) -> Option<SortKey> {
    match value {
        Val::Null => None,
        Val::Num(n) => Some(SortKey::Num(*n)),
        Val::Bool(b) => Some(SortKey::Bool(*b)),
        Val::Text(t) if kind.is_text() => Some(SortKey::Text(t.to_lowercase())),
        Val::Text(t) => Some(SortKey::Text(t.to_string())),
    }
}

/// What a query returned: rows of [`Plan::object`], or a count.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Matching rows, sorted, offset and limit applied.
    Rows(Vec<u32>),
    /// `SELECT COUNT()`: the number, no records.
    Count(u64),
    /// `SELECT COUNT(field)`: one aggregate record.
    Aggregate(u64),
}

/// Runs a plan. `all_rows` includes deleted records (`queryAll`).
pub fn run(schema: &Schema, store: &Store, plan: &Plan, all_rows: bool) -> Outcome {
    let table = &store.tables[plan.object];
    let rows: Vec<u32> = table
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| all_rows || r.deleted_at.is_none())
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .filter(|row| {
            plan.filter
                .as_ref()
                .is_none_or(|f| test(schema, store, plan.object, *row, f))
        })
        .collect();
    let rows = arrange(schema, store, plan, rows);
    match &plan.projection {
        Projection::Count => Outcome::Count(rows.len() as u64),
        Projection::CountField(path) => Outcome::Aggregate(
            rows.iter()
                .filter(|row| !value_of(schema, store, plan.object, **row, path).is_null())
                .count() as u64,
        ),
        Projection::Fields(_) => Outcome::Rows(rows),
    }
}

/// Sorts the matching `rows` by the plan's ORDER BY, then applies its OFFSET and LIMIT.
fn arrange(schema: &Schema, store: &Store, plan: &Plan, mut rows: Vec<u32>) -> Vec<u32> {
    if !plan.order.is_empty() {
        let mut keyed: Vec<(Vec<Option<SortKey>>, u32)> = rows
            .iter()
            .map(|row| {
                let keys = plan
                    .order
                    .iter()
                    .map(|(path, _, _)| {
                        sort_key(value_of(schema, store, plan.object, *row, path), path.kind)
                    })
                    .collect();
                (keys, *row)
            })
            .collect();
        keyed.sort_by(|(a, _), (b, _)| {
            for ((x, y), (_, descending, nulls_last)) in a.iter().zip(b).zip(&plan.order) {
                let ordering = match (x, y) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => {
                        if *nulls_last {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    (Some(_), None) => {
                        if *nulls_last {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (Some(x), Some(y)) => {
                        let o = x.partial_cmp(y).unwrap_or(Ordering::Equal);
                        if *descending { o.reverse() } else { o }
                    }
                };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            Ordering::Equal
        });
        rows = keyed.into_iter().map(|(_, row)| row).collect();
    }
    let offset = usize::try_from(plan.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    rows.into_iter()
        .skip(offset)
        .take(
            plan.limit
                .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)),
        )
        .collect()
}

// ---------------------------------------------------------------------------------------
// Output

/// A JSON object that keeps its members in insertion order (serde_json's `Map` sorts
/// them), so records read `attributes`, `Id`, … like Salesforce's.
#[derive(Debug, Clone, Default)]
pub struct Ordered(pub Vec<(String, Out)>);

/// A member value of an [`Ordered`] object.
#[derive(Debug, Clone)]
pub enum Out {
    /// A plain JSON value.
    Json(Value),
    /// A nested ordered object.
    Object(Ordered),
    /// An array of ordered objects (the records of a child subquery).
    List(Vec<Ordered>),
}

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            match value {
                Out::Json(v) => map.serialize_entry(key, v)?,
                Out::Object(o) => map.serialize_entry(key, o)?,
                Out::List(list) => map.serialize_entry(key, list)?,
            }
        }
        map.end()
    }
}

/// `{"type","url"}` of a record.
pub fn attributes(object: &Object, id: &str, version: &str) -> Out {
    Out::Object(Ordered(vec![
        ("type".into(), Out::Json(Value::String(object.name.clone()))),
        (
            "url".into(),
            Out::Json(Value::String(format!(
                "/services/data/v{version}/sobjects/{}/{id}",
                object.name
            ))),
        ),
    ]))
}

/// A record with the fields of `nodes` (all fields when `None`).
pub fn render_record(
    schema: &Schema,
    store: &Store,
    object: usize,
    row: u32,
    fields: Option<&[usize]>,
    version: &str,
) -> Ordered {
    let obj = &schema.objects[object];
    let record = &store.tables[object].records[row as usize];
    let mut out = vec![(
        "attributes".to_owned(),
        attributes(obj, record.id(obj), version),
    )];
    let all: Vec<usize>;
    let fields = match fields {
        Some(f) => f,
        None => {
            all = (0..obj.fields.len()).collect();
            &all
        }
    };
    for index in fields {
        let field = &obj.fields[*index];
        out.push((
            field.name.clone(),
            Out::Json(record.values[*index].to_json(field.kind)),
        ));
    }
    Ordered(out)
}

/// The children of one page of parent records for one subquery: parent id → the
/// subquery's matching child rows of that parent, in creation order (not yet sorted or
/// limited).
type ChildRows<'a> = HashMap<&'a str, Vec<u32>>;

/// Child rows of the `parents` rows of `object` for every subquery among `nodes`, indexed
/// like `nodes` (`None` for the other nodes). One pass over each child table serves the
/// whole page, rather than one pass per parent record.
fn child_rows<'a>(
    schema: &Schema,
    store: &'a Store,
    object: usize,
    parents: &[u32],
    nodes: &[Node],
) -> Vec<Option<ChildRows<'a>>> {
    let obj = &schema.objects[object];
    let table = &store.tables[object];
    let ids: HashSet<&str> = parents
        .iter()
        .map(|row| table.records[*row as usize].id(obj))
        .collect();
    nodes
        .iter()
        .map(|node| {
            let Node::Children(sub) = node else {
                return None;
            };
            let mut by_parent: ChildRows<'a> = HashMap::new();
            let children = &store.tables[sub.plan.object];
            for (index, record) in children.records.iter().enumerate() {
                // Deleted children are left out, in queryAll too. UNVERIFIED: whether
                // queryAll's subqueries return deleted children.
                if record.deleted_at.is_some() {
                    continue;
                }
                let Some(parent) = record.values[sub.reference]
                    .as_text()
                    .and_then(|id| ids.get(id).copied())
                else {
                    continue;
                };
                let Ok(row) = u32::try_from(index) else {
                    continue;
                };
                if sub
                    .plan
                    .filter
                    .as_ref()
                    .is_none_or(|f| test(schema, store, sub.plan.object, row, f))
                {
                    by_parent.entry(parent).or_default().push(row);
                }
            }
            Some(by_parent)
        })
        .collect()
}

/// The record of `row` with the output of `nodes`; `children` holds the child rows of
/// the subqueries among them (see [`child_rows`]; empty where there are none).
fn render_nodes(
    schema: &Schema,
    store: &Store,
    object: usize,
    row: u32,
    nodes: &[Node],
    children: &[Option<ChildRows<'_>>],
    version: &str,
) -> Ordered {
    let obj = &schema.objects[object];
    let record = &store.tables[object].records[row as usize];
    let mut out = vec![(
        "attributes".to_owned(),
        attributes(obj, record.id(obj), version),
    )];
    for (position, node) in nodes.iter().enumerate() {
        match node {
            Node::Field(index) => {
                let field = &obj.fields[*index];
                out.push((
                    field.name.clone(),
                    Out::Json(record.values[*index].to_json(field.kind)),
                ));
            }
            Node::Relationship {
                reference,
                name,
                object: target,
                children: fields,
            } => {
                let related = record.values[*reference]
                    .as_text()
                    .and_then(|id| store.tables[*target].row(id));
                let value = match related {
                    Some(r) => Out::Object(render_nodes(
                        schema,
                        store,
                        *target,
                        r,
                        fields,
                        &[],
                        version,
                    )),
                    None => Out::Json(Value::Null),
                };
                out.push((name.clone(), value));
            }
            Node::Children(sub) => {
                let rows = children
                    .get(position)
                    .and_then(Option::as_ref)
                    .and_then(|by_parent| by_parent.get(record.id(obj)))
                    .map(|rows| arrange(schema, store, &sub.plan, rows.clone()))
                    .unwrap_or_default();
                out.push((
                    sub.name.clone(),
                    render_children(schema, store, sub, &rows, version),
                ));
            }
        }
    }
    Ordered(out)
}

/// A subquery's value in its parent record: `null` without children (what Salesforce
/// returns, not an empty result), else a query result of its own.
fn render_children(
    schema: &Schema,
    store: &Store,
    sub: &Subquery,
    rows: &[u32],
    version: &str,
) -> Out {
    if rows.is_empty() {
        return Out::Json(Value::Null);
    }
    let Projection::Fields(nodes) = &sub.plan.projection else {
        return Out::Json(Value::Null);
    };
    let records = rows
        .iter()
        .map(|row| render_nodes(schema, store, sub.plan.object, *row, nodes, &[], version))
        .collect();
    // Salesforce pages long child lists with a `nextRecordsUrl` of their own; the
    // emulator returns every child at once (`done` is always true).
    Out::Object(Ordered(vec![
        ("totalSize".into(), Out::Json(Value::from(rows.len()))),
        ("done".into(), Out::Json(Value::Bool(true))),
        ("records".into(), Out::List(records)),
    ]))
}

/// The records of `rows` as a query returns them.
pub fn render_rows(
    schema: &Schema,
    store: &Store,
    plan: &Plan,
    rows: &[u32],
    version: &str,
) -> Vec<Ordered> {
    let Projection::Fields(nodes) = &plan.projection else {
        return Vec::new();
    };
    let children = if nodes.iter().any(|n| matches!(n, Node::Children(_))) {
        child_rows(schema, store, plan.object, rows, nodes)
    } else {
        Vec::new()
    };
    rows.iter()
        .map(|row| render_nodes(schema, store, plan.object, *row, nodes, &children, version))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> DateTime {
        DateTime::parse("2024-03-15T12:00:00Z").unwrap()
    }

    fn error(src: &str) -> SoqlError {
        let schema = Schema::load().unwrap();
        plan(&schema, src, today()).unwrap_err()
    }

    #[test]
    fn unknown_column_points_at_it() {
        let e = error("SELECT Foo FROM Account");
        assert_eq!(e.code, "INVALID_FIELD");
        assert!(
            e.message.starts_with("\nSELECT Foo FROM Account\n       ^\nERROR at Row:1:Column:8\nNo such column 'Foo' on entity 'Account'."),
            "{}",
            e.message
        );
    }

    #[test]
    fn mixing_and_or_needs_parentheses() {
        let e = error("SELECT Id FROM Account WHERE Name = 'a' AND Phone = 'b' OR Name = 'c'");
        assert_eq!(e.code, "MALFORMED_QUERY");
        assert!(
            e.message.ends_with("unexpected token: 'OR'"),
            "{}",
            e.message
        );
        let schema = Schema::load().unwrap();
        assert!(
            plan(
                &schema,
                "select id from account where (name = 'a' and phone = 'b') or name = 'c'",
                today()
            )
            .is_ok()
        );
    }

    #[test]
    fn date_fields_refuse_datetime_literals() {
        let e = error("SELECT Id FROM Opportunity WHERE CloseDate > 2024-01-01T00:00:00Z");
        assert_eq!(e.code, "INVALID_FIELD");
        assert!(e.message.contains("must be of type date"), "{}", e.message);
        let e = error("SELECT Id FROM Opportunity WHERE CreatedDate > 2024-01-01");
        assert!(
            e.message.contains("must be of type dateTime"),
            "{}",
            e.message
        );
        let e = error("SELECT Id FROM Opportunity WHERE CreatedDate > 2024-01-01T00:00:00");
        assert_eq!(e.code, "MALFORMED_QUERY");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let src = format!(
            "SELECT Id FROM Account WHERE {}Name = 'x'{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        assert_eq!(error(&src).code, "MALFORMED_QUERY");
        let src = format!(
            "SELECT Id FROM Account WHERE {}Name = 'x'",
            "NOT ".repeat(100_000)
        );
        assert_eq!(error(&src).code, "MALFORMED_QUERY");
        let schema = Schema::load().unwrap();
        let nested = format!(
            "SELECT Id FROM Account WHERE {}Name = 'x'{}",
            "(".repeat(10),
            ")".repeat(10)
        );
        assert!(plan(&schema, &nested, today()).is_ok());
    }

    #[test]
    fn child_subqueries_are_checked_against_the_child_object() {
        let schema = Schema::load().unwrap();
        let ok = |src: &str| plan(&schema, src, today()).unwrap();
        ok(
            "SELECT Id, (SELECT Solution_Id__c, Name FROM Microsoft_Solutions__r WHERE Name != null ORDER BY Name DESC LIMIT 2) FROM Opportunity",
        );
        ok("select (select lastname from contacts), (select name from opportunities) from account");
        ok("SELECT Id, (SELECT Name FROM Contacts LIMIT 5 OFFSET 1) FROM Account LIMIT 1");
        let e = error("SELECT Id, (SELECT Id FROM Solutions) FROM Opportunity");
        assert_eq!(e.code, "INVALID_TYPE");
        assert!(
            e.message.starts_with("\nSELECT Id, (SELECT Id FROM Solutions) FROM Opportunity\n                           ^\nERROR at Row:1:Column:28\nDidn't understand relationship 'Solutions' in FROM part of query call."),
            "{}",
            e.message
        );
        let e = error("SELECT Id, (SELECT Foo FROM Contacts) FROM Account");
        assert_eq!(e.code, "INVALID_FIELD");
        assert!(
            e.message
                .contains("No such column 'Foo' on entity 'Contact'"),
            "{}",
            e.message
        );
        // One level only, no aggregates, and no subquery in COUNT() queries.
        let e = error(
            "SELECT Id, (SELECT Id, (SELECT Id FROM Opportunities) FROM Contacts) FROM Account",
        );
        assert_eq!(e.code, "MALFORMED_QUERY");
        assert_eq!(
            error("SELECT Id, (SELECT COUNT() FROM Contacts) FROM Account").code,
            "MALFORMED_QUERY"
        );
        assert_eq!(
            error("SELECT COUNT(), (SELECT Id FROM Contacts) FROM Account").code,
            "MALFORMED_QUERY"
        );
        assert_eq!(
            error("SELECT Id, (SELECT Id FROM Contacts FROM Account").code,
            "MALFORMED_QUERY"
        );
        let e = error("SELECT Id, (SELECT Id FROM Contacts OFFSET 1) FROM Account");
        assert_eq!(e.code, "MALFORMED_QUERY");
        assert!(e.message.contains("Column:37"), "{}", e.message);
        let e = error("SELECT (SELECT Id FROM Contacts), (SELECT Name FROM contacts) FROM Account");
        assert_eq!(e.code, "MALFORMED_QUERY");
    }

    #[test]
    fn like_patterns() {
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        let pattern = |s: &str| match (Lexer { src: s, pos: 0 }).tokens().unwrap()[0].tok.clone() {
            Tok::Str { pattern, .. } => pattern,
            other => panic!("{other:?}"),
        };
        assert!(like(&chars("Contoso Ltd"), &pattern("'con%'")));
        assert!(like(&chars("Contoso Ltd"), &pattern("'%LTD'")));
        assert!(like(&chars("abc"), &pattern("'a_c'")));
        assert!(!like(&chars("abc"), &pattern("'a_'")));
        assert!(like(&chars("100%"), &pattern("'100\\%'")));
        assert!(!like(&chars("1000"), &pattern("'100\\%'")));
    }

    #[test]
    fn relative_ranges() {
        assert_eq!(relative_range(Relative::Today, today()), (19797, 19798));
        let (start, end) = relative_range(Relative::ThisMonth, today());
        assert_eq!(
            (day_string(start), day_string(end)),
            ("2024-03-01".into(), "2024-04-01".into())
        );
        let (start, _) = relative_range(Relative::ThisWeek, today());
        assert_eq!(day_string(start), "2024-03-10", "weeks start on Sunday");
        let (start, end) = relative_range(Relative::LastYear, today());
        assert_eq!(
            (day_string(start), day_string(end)),
            ("2023-01-01".into(), "2024-01-01".into())
        );
    }
}
