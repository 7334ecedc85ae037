//! A compiled evaluator for the everyday subset of minijinja expressions — paths, literals,
//! comparisons, `and`/`or`/`not`, `x if c else y`, `~`, `in`, the `is` tests and a few filters
//! — working directly on the parsed JSON without converting it for minijinja.
//!
//! Anything outside the subset is left to minijinja ([`FastExpr::parse`] returns `None`), so
//! the language a user writes is always minijinja's; this only makes the common cases fast.
//! The semantics mirror minijinja with cosell's settings (chainable undefined); a property test
//! in `template.rs` checks both give the same results.

use std::borrow::Cow;

use minijinja::Value as MjValue;
use serde_json::Value;

use super::template::{Vars, looks_like_email};

/// The globals minijinja defines (its `builtins` feature): names that are never undefined.
/// Expressions naming one are left to minijinja.
pub const MINIJINJA_GLOBALS: &[&str] = &["range", "dict", "debug", "namespace"];
use super::transforms;

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum FastValue<'a> {
    /// Missing.
    Undefined,
    /// JSON, borrowed from a variable or owned.
    Json(Cow<'a, Value>),
}

impl<'a> FastValue<'a> {
    fn owned(v: Value) -> Self {
        FastValue::Json(Cow::Owned(v))
    }

    fn json(&self) -> Option<&Value> {
        match self {
            FastValue::Undefined => None,
            FastValue::Json(v) => Some(v.as_ref()),
        }
    }

    /// minijinja truthiness.
    pub fn truthy(&self) -> bool {
        match self.json() {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
        }
    }

    /// The value as JSON (undefined becomes null).
    pub fn into_json(self) -> Value {
        match self {
            FastValue::Undefined => Value::Null,
            FastValue::Json(v) => v.into_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
}

#[derive(Debug, Clone)]
enum Node {
    Const(Value),
    Var(String),
    Attr(Box<Node>, String),
    Item(Box<Node>, Box<Node>),
    List(Vec<Node>),
    /// `{'key': value, …}` with literal keys; only where its value becomes JSON (see
    /// [`dicts_only_as_values`]).
    Dict(Vec<(String, Node)>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(Box<Node>, CmpOp, Box<Node>),
    Concat(Box<Node>, Box<Node>),
    Cond {
        test: Box<Node>,
        then: Box<Node>,
        otherwise: Option<Box<Node>>,
    },
    Test {
        value: Box<Node>,
        name: String,
        negated: bool,
    },
    Filter {
        value: Box<Node>,
        name: String,
        args: Vec<Node>,
    },
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct FastExpr {
    root: Node,
}

const TESTS: &[&str] = &[
    "defined",
    "undefined",
    "none",
    "blank",
    "email",
    "country_code",
    "country",
    "currency_code",
    "string",
    "number",
    "true",
    "false",
];
const FILTERS: &[&str] = &[
    "default",
    "d",
    "length",
    "lower",
    "upper",
    "trim",
    "truncate_chars",
    "strip_marks",
    "join",
    "first",
    "country_code",
    "currency_code",
];

impl FastExpr {
    /// Compiles `source` when it is inside the supported subset.
    pub fn parse(source: &str) -> Option<FastExpr> {
        let tokens = lex(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            depth: 0,
        };
        let root = p.expr()?;
        (p.pos == p.tokens.len() && dicts_only_as_values(&root, true)).then_some(FastExpr { root })
    }

    /// Evaluates against the variables.
    pub fn eval<'a>(&'a self, vars: &Vars<'a>) -> Result<FastValue<'a>, String> {
        eval(&self.root, vars)
    }

    /// Whether the expression builds a dict. Printed, minijinja shows a dict's keys in the
    /// order written while JSON objects here are sorted, so templates leave these to
    /// minijinja.
    pub fn has_dict(&self) -> bool {
        fn any(node: &Node) -> bool {
            let mut found = matches!(node, Node::Dict(_));
            node.for_each_child(&mut |c| found |= any(c));
            found
        }
        any(&self.root)
    }

    /// Replaces every part that reads nothing but `settings` (and literals) by its value, so
    /// `x if settings.flag else y` or `record[settings.field]` cost nothing per record. The
    /// settings of a plan never change after compilation, and a part is only replaced when it
    /// evaluates to a value (not undefined, not an error), so results are unchanged.
    pub fn fold_settings(&mut self, settings: &Value) {
        let root = std::mem::replace(&mut self.root, Node::Const(Value::Null));
        self.root = fold(root, settings);
    }

    /// True when the whole expression is a constant (after [`FastExpr::fold_settings`]).
    pub fn constant(&self) -> Option<&Value> {
        match &self.root {
            Node::Const(v) => Some(v),
            _ => None,
        }
    }
}

/// A dict is only evaluated here where its value ends up as JSON (the whole expression, an
/// element of a list or dict there, a branch of `x if c else y` there), where key order does
/// not show. Anywhere else (printed with `~`, filtered, compared) minijinja's insertion order
/// could, so such expressions are left to minijinja.
fn dicts_only_as_values(node: &Node, value_position: bool) -> bool {
    match node {
        Node::Dict(entries) => {
            value_position && entries.iter().all(|(_, v)| dicts_only_as_values(v, true))
        }
        Node::List(items) => items
            .iter()
            .all(|i| dicts_only_as_values(i, value_position)),
        Node::Cond {
            test,
            then,
            otherwise,
        } => {
            dicts_only_as_values(test, false)
                && dicts_only_as_values(then, value_position)
                && otherwise
                    .as_ref()
                    .is_none_or(|o| dicts_only_as_values(o, value_position))
        }
        other => {
            let mut ok = true;
            other.for_each_child(&mut |c| ok &= dicts_only_as_values(c, false));
            ok
        }
    }
}

impl Node {
    fn for_each_child(&self, f: &mut dyn FnMut(&Node)) {
        match self {
            Node::Const(_) | Node::Var(_) => {}
            Node::Attr(b, _) | Node::Not(b) => f(b),
            Node::Item(a, b)
            | Node::And(a, b)
            | Node::Or(a, b)
            | Node::Cmp(a, _, b)
            | Node::Concat(a, b) => {
                f(a);
                f(b);
            }
            Node::List(items) => items.iter().for_each(f),
            Node::Dict(entries) => entries.iter().for_each(|(_, v)| f(v)),
            Node::Cond {
                test,
                then,
                otherwise,
            } => {
                f(test);
                f(then);
                if let Some(o) = otherwise {
                    f(o);
                }
            }
            Node::Test { value, .. } => f(value),
            Node::Filter { value, args, .. } => {
                f(value);
                args.iter().for_each(f);
            }
        }
    }

    fn map_children(self, f: &mut dyn FnMut(Node) -> Node) -> Node {
        let mut b = |n: Box<Node>| Box::new(f(*n));
        match self {
            leaf @ (Node::Const(_) | Node::Var(_)) => leaf,
            Node::Attr(base, name) => Node::Attr(b(base), name),
            Node::Not(x) => Node::Not(b(x)),
            Node::Item(x, y) => {
                let x = b(x);
                Node::Item(x, b(y))
            }
            Node::And(x, y) => {
                let x = b(x);
                Node::And(x, b(y))
            }
            Node::Or(x, y) => {
                let x = b(x);
                Node::Or(x, b(y))
            }
            Node::Cmp(x, op, y) => {
                let x = b(x);
                Node::Cmp(x, op, b(y))
            }
            Node::Concat(x, y) => {
                let x = b(x);
                Node::Concat(x, b(y))
            }
            Node::List(items) => Node::List(items.into_iter().map(&mut *f).collect()),
            Node::Dict(entries) => {
                Node::Dict(entries.into_iter().map(|(k, v)| (k, f(v))).collect())
            }
            Node::Cond {
                test,
                then,
                otherwise,
            } => {
                let test = b(test);
                let then = b(then);
                Node::Cond {
                    test,
                    then,
                    otherwise: otherwise.map(b),
                }
            }
            Node::Test {
                value,
                name,
                negated,
            } => Node::Test {
                value: b(value),
                name,
                negated,
            },
            Node::Filter { value, name, args } => {
                let value = b(value);
                Node::Filter {
                    value,
                    name,
                    args: args.into_iter().map(&mut *f).collect(),
                }
            }
        }
    }

    /// Whether evaluating this reads no variable but `settings`.
    fn reads_only_settings(&self) -> bool {
        match self {
            Node::Var(name) => name == "settings",
            other => {
                let mut ok = true;
                other.for_each_child(&mut |c| ok &= c.reads_only_settings());
                ok
            }
        }
    }
}

fn fold(node: Node, settings: &Value) -> Node {
    let node = node.map_children(&mut |c| fold(c, settings));
    if matches!(node, Node::Const(_)) || !node.reads_only_settings() {
        return node;
    }
    let vars = Vars {
        entries: vec![("settings", super::template::VarValue::Borrowed(settings))],
    };
    let folded = match eval(&node, &vars) {
        Ok(FastValue::Json(v)) => Some(v.into_owned()),
        Ok(FastValue::Undefined) | Err(_) => None,
    };
    match folded {
        Some(v) => Node::Const(v),
        None => node,
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Sym(&'static str),
}

fn lex(s: &str) -> Option<Vec<Tok>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[start..i].to_string()));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Tok::Float(s[start..i].parse().ok()?));
            } else {
                out.push(Tok::Int(s[start..i].parse().ok()?));
            }
            continue;
        }
        if c == b'\'' || c == b'"' {
            let start = i + 1;
            let end = s[start..].find(c as char)? + start;
            let text = &s[start..end];
            if text.contains('\\') {
                return None;
            }
            out.push(Tok::Str(text.to_string()));
            i = end + 1;
            continue;
        }
        let two = s.get(i..i + 2).unwrap_or("");
        let sym: &'static str = match two {
            "==" => "==",
            "!=" => "!=",
            "<=" => "<=",
            ">=" => ">=",
            _ => match c {
                b'<' => "<",
                b'>' => ">",
                b'(' => "(",
                b')' => ")",
                b'[' => "[",
                b']' => "]",
                b'.' => ".",
                b',' => ",",
                b'|' => "|",
                b'~' => "~",
                b'{' => "{",
                b'}' => "}",
                b':' => ":",
                _ => return None,
            },
        };
        i += sym.len();
        out.push(Tok::Sym(sym));
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }
    fn peek_ident(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == word)
    }
    fn peek_sym(&self, sym: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym)
    }
    fn bump(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn expect_sym(&mut self, sym: &str) -> Option<()> {
        if self.peek_sym(sym) {
            self.pos += 1;
            Some(())
        } else {
            None
        }
    }

    fn expr(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > 32 {
            return None;
        }
        let value = self.or()?;
        let out = if self.peek_ident("if") {
            self.pos += 1;
            let test = self.or()?;
            let otherwise = if self.peek_ident("else") {
                self.pos += 1;
                Some(Box::new(self.expr()?))
            } else {
                None
            };
            Node::Cond {
                test: Box::new(test),
                then: Box::new(value),
                otherwise,
            }
        } else {
            value
        };
        self.depth -= 1;
        Some(out)
    }

    fn or(&mut self) -> Option<Node> {
        let mut left = self.and()?;
        while self.peek_ident("or") {
            self.pos += 1;
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Some(left)
    }

    fn and(&mut self) -> Option<Node> {
        let mut left = self.not()?;
        while self.peek_ident("and") {
            self.pos += 1;
            left = Node::And(Box::new(left), Box::new(self.not()?));
        }
        Some(left)
    }

    fn not(&mut self) -> Option<Node> {
        if self.peek_ident("not") {
            self.pos += 1;
            return Some(Node::Not(Box::new(self.not()?)));
        }
        self.compare()
    }

    fn compare(&mut self) -> Option<Node> {
        let left = self.concat()?;
        let op = match self.peek() {
            Some(Tok::Sym("==")) => CmpOp::Eq,
            Some(Tok::Sym("!=")) => CmpOp::Ne,
            Some(Tok::Sym("<")) => CmpOp::Lt,
            Some(Tok::Sym("<=")) => CmpOp::Le,
            Some(Tok::Sym(">")) => CmpOp::Gt,
            Some(Tok::Sym(">=")) => CmpOp::Ge,
            Some(Tok::Ident(w)) if w == "in" => CmpOp::In,
            Some(Tok::Ident(w))
                if w == "not"
                    && matches!(self.tokens.get(self.pos + 1), Some(Tok::Ident(x)) if x == "in") =>
            {
                self.pos += 1;
                CmpOp::NotIn
            }
            Some(Tok::Ident(w)) if w == "is" => {
                self.pos += 1;
                let negated = self.peek_ident("not");
                if negated {
                    self.pos += 1;
                }
                let name = match self.bump()? {
                    Tok::Ident(n) if TESTS.contains(&n.as_str()) => n,
                    _ => return None,
                };
                if self.peek_sym("(") {
                    return None;
                }
                return Some(Node::Test {
                    value: Box::new(left),
                    name,
                    negated,
                });
            }
            _ => return Some(left),
        };
        self.pos += 1;
        let right = self.concat()?;
        // Chained comparisons (a < b < c) are left to minijinja.
        if matches!(
            self.peek(),
            Some(Tok::Sym("==" | "!=" | "<" | "<=" | ">" | ">="))
        ) {
            return None;
        }
        Some(Node::Cmp(Box::new(left), op, Box::new(right)))
    }

    fn concat(&mut self) -> Option<Node> {
        let mut left = self.filtered()?;
        while self.peek_sym("~") {
            self.pos += 1;
            left = Node::Concat(Box::new(left), Box::new(self.filtered()?));
        }
        Some(left)
    }

    fn filtered(&mut self) -> Option<Node> {
        let mut value = self.postfix()?;
        while self.peek_sym("|") {
            self.pos += 1;
            let name = match self.bump()? {
                Tok::Ident(n) if FILTERS.contains(&n.as_str()) => n,
                _ => return None,
            };
            let mut args = Vec::new();
            if self.peek_sym("(") {
                self.pos += 1;
                if !self.peek_sym(")") {
                    loop {
                        args.push(self.expr()?);
                        if self.peek_sym(",") {
                            self.pos += 1;
                        } else {
                            break;
                        }
                    }
                }
                self.expect_sym(")")?;
            }
            value = Node::Filter {
                value: Box::new(value),
                name,
                args,
            };
        }
        Some(value)
    }

    fn postfix(&mut self) -> Option<Node> {
        let mut node = self.primary()?;
        loop {
            if self.peek_sym(".") {
                self.pos += 1;
                match self.bump()? {
                    Tok::Ident(name) => node = Node::Attr(Box::new(node), name),
                    Tok::Int(i) => {
                        node = Node::Item(Box::new(node), Box::new(Node::Const(Value::from(i))))
                    }
                    _ => return None,
                }
            } else if self.peek_sym("[") {
                self.pos += 1;
                let index = self.expr()?;
                self.expect_sym("]")?;
                node = Node::Item(Box::new(node), Box::new(index));
            } else if self.peek_sym("(") {
                // Calls (methods, functions) are minijinja's business.
                return None;
            } else {
                return Some(node);
            }
        }
    }

    fn primary(&mut self) -> Option<Node> {
        match self.bump()? {
            Tok::Str(s) => Some(Node::Const(Value::String(s))),
            Tok::Int(i) => Some(Node::Const(Value::from(i))),
            Tok::Float(f) => Some(Node::Const(Value::from(f))),
            Tok::Ident(w) => match w.as_str() {
                "true" | "True" => Some(Node::Const(Value::Bool(true))),
                "false" | "False" => Some(Node::Const(Value::Bool(false))),
                "none" | "None" => Some(Node::Const(Value::Null)),
                "not" | "and" | "or" | "if" | "else" | "in" | "is" => None,
                // minijinja's global functions: a name no variable shadows is the function
                // there (`{{ range }}` prints it), where the fast path would see an undefined
                // variable. Found by the `mapping_interpreter` fuzz target.
                name if MINIJINJA_GLOBALS.contains(&name) => None,
                _ => Some(Node::Var(w)),
            },
            Tok::Sym("(") => {
                let e = self.expr()?;
                self.expect_sym(")")?;
                Some(e)
            }
            Tok::Sym("[") => {
                let mut items = Vec::new();
                if !self.peek_sym("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.peek_sym(",") {
                            self.pos += 1;
                        } else {
                            break;
                        }
                    }
                }
                self.expect_sym("]")?;
                Some(Node::List(items))
            }
            Tok::Sym("{") => {
                let mut entries = Vec::new();
                if !self.peek_sym("}") {
                    loop {
                        let Tok::Str(key) = self.bump()? else {
                            return None;
                        };
                        self.expect_sym(":")?;
                        entries.push((key, self.expr()?));
                        if self.peek_sym(",") {
                            self.pos += 1;
                        } else {
                            break;
                        }
                    }
                }
                self.expect_sym("}")?;
                Some(Node::Dict(entries))
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

fn eval<'v>(node: &'v Node, vars: &Vars<'v>) -> Result<FastValue<'v>, String> {
    Ok(match node {
        // Constants live as long as the plan: borrowed, never copied.
        Node::Const(v) => FastValue::Json(Cow::Borrowed(v)),
        Node::Var(name) => match vars.get(name) {
            Some(v) => FastValue::Json(Cow::Borrowed(v.json())),
            None => FastValue::Undefined,
        },
        Node::Attr(base, name) => {
            let base = eval(base, vars)?;
            member(base, |v| match v {
                Value::Object(m) => m.get(name.as_str()),
                _ => None,
            })
        }
        Node::Item(base, index) => {
            let base = eval(base, vars)?;
            let index = eval(index, vars)?;
            match index.json() {
                Some(Value::String(k)) => member(base, |v| match v {
                    Value::Object(m) => m.get(k.as_str()),
                    _ => None,
                }),
                Some(Value::Number(n)) if n.as_i64().is_some() => {
                    let i = n.as_i64().unwrap_or(0);
                    member(base, |v| match v {
                        Value::Array(a) => {
                            let idx = if i < 0 {
                                a.len().checked_sub(i.unsigned_abs() as usize)?
                            } else {
                                usize::try_from(i).ok()?
                            };
                            a.get(idx)
                        }
                        _ => None,
                    })
                }
                _ => FastValue::Undefined,
            }
        }
        Node::List(items) => {
            let mut out = Vec::with_capacity(items.len());
            for i in items {
                out.push(eval(i, vars)?.into_json());
            }
            FastValue::owned(Value::Array(out))
        }
        Node::Dict(entries) => {
            let mut out = serde_json::Map::new();
            for (k, v) in entries {
                out.insert(k.clone(), eval(v, vars)?.into_json());
            }
            FastValue::owned(Value::Object(out))
        }
        Node::Not(e) => FastValue::owned(Value::Bool(!eval(e, vars)?.truthy())),
        Node::And(a, b) => {
            let left = eval(a, vars)?;
            if !left.truthy() { left } else { eval(b, vars)? }
        }
        Node::Or(a, b) => {
            let left = eval(a, vars)?;
            if left.truthy() { left } else { eval(b, vars)? }
        }
        Node::Cmp(a, op, b) => {
            let left = eval(a, vars)?;
            let right = eval(b, vars)?;
            FastValue::owned(Value::Bool(compare(&left, *op, &right)?))
        }
        Node::Concat(a, b) => {
            let mut s = display(&eval(a, vars)?);
            s.push_str(&display(&eval(b, vars)?));
            FastValue::owned(Value::String(s))
        }
        Node::Cond {
            test,
            then,
            otherwise,
        } => {
            if eval(test, vars)?.truthy() {
                eval(then, vars)?
            } else {
                match otherwise {
                    Some(e) => eval(e, vars)?,
                    None => FastValue::Undefined,
                }
            }
        }
        Node::Test {
            value,
            name,
            negated,
        } => {
            let v = eval(value, vars)?;
            FastValue::owned(Value::Bool(run_test(&v, name) != *negated))
        }
        Node::Filter { value, name, args } => {
            let v = eval(value, vars)?;
            let mut evaluated = Vec::with_capacity(args.len());
            for a in args {
                evaluated.push(eval(a, vars)?);
            }
            run_filter(v, name, &evaluated)?
        }
    })
}

fn member<'v>(base: FastValue<'v>, get: impl Fn(&Value) -> Option<&Value>) -> FastValue<'v> {
    match base {
        FastValue::Undefined => FastValue::Undefined,
        FastValue::Json(Cow::Borrowed(v)) => match get(v) {
            Some(child) => FastValue::Json(Cow::Borrowed(child)),
            None => FastValue::Undefined,
        },
        FastValue::Json(Cow::Owned(v)) => match get(&v) {
            Some(child) => FastValue::owned(child.clone()),
            None => FastValue::Undefined,
        },
    }
}

/// minijinja's text form of a value (what `~` and printing produce); undefined is empty text
/// for `~`.
pub fn display(v: &FastValue<'_>) -> String {
    match v.json() {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => MjValue::from(minijinja::value::Serde(other)).to_string(),
    }
}

fn compare(a: &FastValue<'_>, op: CmpOp, b: &FastValue<'_>) -> Result<bool, String> {
    let (x, y) = (a.json(), b.json());
    match op {
        CmpOp::Eq | CmpOp::Ne => {
            let eq = match (x, y) {
                (None, None) => true,
                (None, _) | (_, None) => false,
                (Some(Value::Number(m)), Some(Value::Number(n))) => m.as_f64() == n.as_f64(),
                // minijinja compares true == 1.
                (Some(Value::Bool(p)), Some(Value::Number(n)))
                | (Some(Value::Number(n)), Some(Value::Bool(p))) => {
                    n.as_f64() == Some(if *p { 1.0 } else { 0.0 })
                }
                (Some(l), Some(r)) => l == r,
            };
            Ok(if op == CmpOp::Eq { eq } else { !eq })
        }
        CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => {
            let ord = match (x, y) {
                (Some(Value::Number(m)), Some(Value::Number(n))) => {
                    m.as_f64().partial_cmp(&n.as_f64())
                }
                (Some(Value::String(m)), Some(Value::String(n))) => Some(m.cmp(n)),
                _ => return Err("unsupported comparison".into()),
            };
            let Some(ord) = ord else { return Ok(false) };
            Ok(match op {
                CmpOp::Lt => ord.is_lt(),
                CmpOp::Le => ord.is_le(),
                CmpOp::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
        CmpOp::In | CmpOp::NotIn => {
            let found = match y {
                Some(Value::Array(items)) => items.iter().any(|i| {
                    compare(a, CmpOp::Eq, &FastValue::Json(Cow::Borrowed(i))).unwrap_or(false)
                }),
                Some(Value::String(s)) => match x {
                    Some(Value::String(needle)) => s.contains(needle.as_str()),
                    _ => return Err("unsupported `in`".into()),
                },
                Some(Value::Object(m)) => match x {
                    Some(Value::String(k)) => m.contains_key(k),
                    _ => false,
                },
                _ => return Err("unsupported `in`".into()),
            };
            Ok(if op == CmpOp::In { found } else { !found })
        }
    }
}

fn run_test(v: &FastValue<'_>, name: &str) -> bool {
    let j = v.json();
    match name {
        "defined" => j.is_some(),
        "undefined" => j.is_none(),
        "none" => matches!(j, Some(Value::Null)),
        "blank" => match j {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.trim().is_empty(),
            _ => false,
        },
        "email" => j.and_then(Value::as_str).is_some_and(looks_like_email),
        "country_code" => j
            .and_then(Value::as_str)
            .is_some_and(transforms::country::is_alpha2_code),
        "country" => j
            .and_then(Value::as_str)
            .is_some_and(|s| transforms::country::find(s).is_some()),
        "currency_code" => j
            .and_then(Value::as_str)
            .is_some_and(transforms::currency::is_code),
        "string" => matches!(j, Some(Value::String(_))),
        "number" => matches!(j, Some(Value::Number(_))),
        "true" => matches!(j, Some(Value::Bool(true))),
        "false" => matches!(j, Some(Value::Bool(false))),
        _ => false,
    }
}

fn run_filter<'v>(
    v: FastValue<'v>,
    name: &str,
    args: &[FastValue<'v>],
) -> Result<FastValue<'v>, String> {
    let text_only = |v: &FastValue<'_>| -> Result<Option<String>, String> {
        match v.json() {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("filter `{name}` needs text")),
        }
    };
    Ok(match name {
        "default" | "d" => {
            if matches!(v, FastValue::Undefined) {
                args.first()
                    .cloned()
                    .unwrap_or_else(|| FastValue::owned(Value::String(String::new())))
            } else {
                v
            }
        }
        "length" => match v.json() {
            Some(Value::String(s)) => FastValue::owned(Value::from(s.chars().count())),
            Some(Value::Array(a)) => FastValue::owned(Value::from(a.len())),
            Some(Value::Object(o)) => FastValue::owned(Value::from(o.len())),
            _ => return Err("cannot take the length of this value".into()),
        },
        "lower" | "upper" | "trim" => match text_only(&v)? {
            // minijinja's string filters turn undefined into empty text.
            None => FastValue::owned(Value::String(String::new())),
            Some(s) => FastValue::owned(Value::String(match name {
                "lower" => s.to_lowercase(),
                "upper" => s.to_uppercase(),
                _ => s.trim().to_string(),
            })),
        },
        "join" => {
            let sep = args.first().map(display).unwrap_or_default();
            match v.json() {
                Some(Value::Array(items)) => {
                    let parts: Vec<String> = items
                        .iter()
                        .map(|i| display(&FastValue::Json(Cow::Borrowed(i))))
                        .collect();
                    FastValue::owned(Value::String(parts.join(&sep)))
                }
                _ => return Err("join needs a list".into()),
            }
        }
        "first" => match v.json() {
            Some(Value::Array(items)) => match items.first() {
                Some(f) => FastValue::owned(f.clone()),
                None => FastValue::Undefined,
            },
            _ => return Err("first needs a list".into()),
        },
        "truncate_chars" | "strip_marks" | "country_code" | "currency_code" => {
            if matches!(v, FastValue::Undefined) {
                return Ok(v);
            }
            // Text no longer than the limit in bytes is not longer in characters either:
            // unchanged, so it is not copied (names go through this for every record).
            if name == "truncate_chars"
                && let (Some(Value::String(s)), Some(n)) =
                    (v.json(), args.first().and_then(|a| a.json()?.as_u64()))
                && u64::try_from(s.len()).is_ok_and(|len| len <= n)
            {
                return Ok(v);
            }
            let json = v.into_json();
            let r = match name {
                "truncate_chars" => {
                    let n = args
                        .first()
                        .and_then(|a| a.json().and_then(Value::as_u64))
                        .ok_or("truncate_chars needs a number")?;
                    transforms::truncate(json, usize::try_from(n).unwrap_or(usize::MAX))
                }
                "strip_marks" => transforms::strip_marks(json),
                "country_code" => transforms::country_code(json),
                _ => transforms::currency_code(json),
            };
            FastValue::owned(r.map_err(|e| e.message)?)
        }
        _ => return Err(format!("unknown filter {name}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subset_and_refuses_the_rest() {
        for ok in [
            "referral.type == 'Shared' or not settings.sync_cosell_only",
            "referral.customerProfile.team[0].email is email",
            "opportunity[settings.deal_value_field] is not none and opportunity.estimatedclosedate",
            "'Shared' if opportunity.cosell_microsofthelp else 'Independent'",
            "(referral.name or referral.customerProfile.name) | truncate_chars(296)",
            "[{'type': 1}]",
            "[{'type': 'SolutionProfile', 'id': opportunity.x[0].y}] if opportunity.z else none",
        ] {
            assert!(FastExpr::parse(ok).is_some(), "{ok}");
        }
        for refused in [
            "x.items()",
            "range(3)",
            "a * 2",
            "{'a': 1} ~ 'x'",
            "{'a': 1} | length",
            "{a: 1}",
            "{'a': 1,}",
            "x is divisibleby(3)",
            "a < b < c",
            "x | map('upper')",
        ] {
            assert!(FastExpr::parse(refused).is_none(), "{refused}");
        }
    }
}
