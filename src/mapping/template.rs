//! minijinja templates and expressions, compiled once.
//!
//! Semantics a mapping author can rely on:
//! - A missing value is *undefined*: falsy in conditions, replaced by `default(…)`, comparable
//!   (`x == 'a'` is false) and chainable (`referral.inviteContext.notes` is undefined when
//!   `inviteContext` is missing) — but **printing** an undefined value in a template is an error,
//!   so a typo or missing data never silently becomes an empty CRM field. Null prints as empty.
//! - Expressions (`expr:`, `when:`, `check:`) keep the type of their result.
//! - The cosell transforms are available as filters (`country_code`, `date`, …) and as tests
//!   (`is country_code`, `is currency_code`, `is blank`, `is email`).
//!
//! Records reach minijinja through [`JsonNode`], a lazy view over the parsed JSON: only the
//! fields an expression touches are converted. Templates that are plain text around
//! `{{ a.b.c }}` placeholders, and expressions that are a plain path, never enter minijinja at
//! all (see [`FastTemplate`]); both paths produce the same output, which a property test checks.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value as MjValue};
use serde_json::Value;

use super::fastexpr::{FastExpr, FastValue};
use super::transforms;

/// Marker error: the fast path cannot decide, ask minijinja.
const FALLBACK: &str = "\u{0}fallback";

/// Variable names and the JSON they stand for, for one evaluation.
pub struct Vars<'a> {
    /// `(name, value)` pairs; few enough that a linear scan beats hashing.
    pub entries: Vec<(&'a str, VarValue<'a>)>,
}

/// A variable's value: borrowed JSON, or an `Arc` root that minijinja may hold on to.
#[derive(Clone)]
pub enum VarValue<'a> {
    /// JSON owned by the caller (converted eagerly if minijinja needs it; used for small values).
    Borrowed(&'a Value),
    /// A record shared with minijinja lazily.
    Shared(&'a Arc<Value>),
    /// A value already converted for minijinja (settings).
    Prepared(&'a Value, &'a MjValue),
}

impl<'a> VarValue<'a> {
    /// The JSON behind the variable.
    pub fn json(&self) -> &'a Value {
        match self.clone() {
            VarValue::Borrowed(v) => v,
            VarValue::Shared(a) => a.as_ref(),
            VarValue::Prepared(v, _) => v,
        }
    }

    fn to_minijinja(&self) -> MjValue {
        match self {
            VarValue::Borrowed(v) => json_to_minijinja_eager(v),
            VarValue::Shared(a) => JsonNode::root((*a).clone()),
            VarValue::Prepared(_, m) => (*m).clone(),
        }
    }
}

impl<'a> Vars<'a> {
    /// Looks a variable up by name.
    pub fn get(&self, name: &str) -> Option<&VarValue<'a>> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    fn context(&self) -> MjValue {
        let map: std::collections::BTreeMap<String, MjValue> = self
            .entries
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_minijinja()))
            .collect();
        MjValue::from(map)
    }
}

/// A step of a placeholder path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathStep {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Expr(FastExpr, String),
}

/// A template that is only text and `{{ plain.path }}` placeholders.
#[derive(Debug, Clone)]
struct FastTemplate {
    pieces: Vec<Piece>,
    /// Room to reserve for the output: the text plus a typical value per placeholder, so
    /// rendering allocates once instead of growing the string piece by piece.
    capacity: usize,
}

impl FastTemplate {
    fn parse(source: &str) -> Option<FastTemplate> {
        if source.contains("{%") || source.contains("{#") {
            return None;
        }
        // minijinja drops a template's final newline (`keep_trailing_newline` is off): one
        // `\n`, then one `\r`. A YAML block scalar (`name: |`) ends in one; the fast path
        // kept it, so a field rendered differently depending on the path it took (found by
        // the `mapping_interpreter` fuzz target).
        let source = source.strip_suffix('\n').unwrap_or(source);
        let source = source.strip_suffix('\r').unwrap_or(source);
        let mut pieces = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}")?;
            let inner = &after[..end];
            if inner.starts_with('-') || inner.ends_with('-') {
                return None;
            }
            let body = inner.trim();
            let expr = FastExpr::parse(body)?;
            if expr.has_dict() {
                return None;
            }
            pieces.push(Piece::Expr(expr, body.to_string()));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return None;
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Some(FastTemplate::with_pieces(pieces))
    }

    fn with_pieces(pieces: Vec<Piece>) -> FastTemplate {
        let capacity = pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len(),
                Piece::Expr(..) => 32,
            })
            .sum();
        FastTemplate { pieces, capacity }
    }

    /// Folds the placeholders that read only settings into the text (see
    /// [`FastExpr::fold_settings`]).
    fn fold_settings(self, settings: &Value) -> FastTemplate {
        let mut pieces: Vec<Piece> = Vec::with_capacity(self.pieces.len());
        for piece in self.pieces {
            let piece = match piece {
                Piece::Expr(mut expr, source) => {
                    expr.fold_settings(settings);
                    match expr.constant() {
                        Some(v) => {
                            let mut text = String::new();
                            match write_display(&mut text, v) {
                                Ok(()) => Piece::Text(text),
                                Err(_) => Piece::Expr(expr, source),
                            }
                        }
                        None => Piece::Expr(expr, source),
                    }
                }
                text => text,
            };
            match (pieces.last_mut(), piece) {
                (Some(Piece::Text(prev)), Piece::Text(t)) => prev.push_str(&t),
                (_, Piece::Text(t)) if t.is_empty() => {}
                (_, piece) => pieces.push(piece),
            }
        }
        FastTemplate::with_pieces(pieces)
    }

    fn render(&self, vars: &Vars<'_>) -> Result<String, String> {
        let mut out = String::with_capacity(self.capacity);
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Expr(expr, source) => match expr.eval(vars) {
                    Ok(FastValue::Undefined) => return Err(undefined_message(source)),
                    Ok(FastValue::Json(v)) => write_display(&mut out, &v)?,
                    // Let minijinja produce its own error message.
                    Err(_) => return Err(FALLBACK.to_string()),
                },
            }
        }
        Ok(out)
    }
}

fn undefined_message(path: &str) -> String {
    format!("`{path}` is undefined (use `{{{{ {path} | default('') }}}}` if it is optional)")
}

/// Writes a JSON value the way minijinja prints it (null as empty text).
fn write_display(out: &mut String, v: &Value) -> Result<(), String> {
    match v {
        Value::Null => {}
        // Exactly as minijinja prints it.
        Value::Bool(b) => {
            let _ = write!(out, "{}", MjValue::from(*b));
        }
        Value::String(s) => out.push_str(s),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                let _ = write!(out, "{}", MjValue::from(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        other => {
            let _ = write!(out, "{}", json_to_minijinja_eager(other));
        }
    }
    Ok(())
}

/// A compiled template (text result).
#[derive(Debug, Clone)]
pub struct Template {
    name: String,
    fast: Option<FastTemplate>,
}

/// A compiled expression (typed result).
#[derive(Debug, Clone)]
pub struct Expression {
    name: String,
    /// The expression, when it is inside the fast subset.
    fast: Option<FastExpr>,
}

/// Holds the minijinja environment with every template and expression of a plan.
pub struct Engine {
    env: Environment<'static>,
    counter: usize,
    /// The plan's settings, when fixed: the fast paths of templates and expressions compiled
    /// from then on have their settings-only parts folded into constants.
    settings: Option<Value>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("templates", &self.counter)
            .finish()
    }
}

/// A compile error, with the position inside the template/expression source when known.
#[derive(Debug, Clone)]
pub struct CompileError {
    /// minijinja's description, e.g. "unexpected end of input, expected end of variable block".
    pub message: String,
    /// 1-based line within the source.
    pub line: Option<usize>,
}

const EXPR_PREFIX: &str = "{% set __value = (";
const EXPR_SUFFIX: &str = ") %}";

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl Engine {
    /// A fresh environment with cosell's filters, tests and undefined semantics.
    pub fn new() -> Engine {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_recursion_limit(64);
        // Bounded work per evaluation: a hostile `{% for %}` over a huge range cannot hang the
        // engine.
        env.set_fuel(Some(200_000));
        env.set_formatter(|out, _state, value| {
            if value.is_undefined() {
                return Err(Error::new(
                    ErrorKind::UndefinedError,
                    "printing an undefined value (use `| default('')` if it is optional)",
                ));
            }
            if value.is_none() {
                return Ok(());
            }
            write!(out, "{value}").map_err(|_| Error::new(ErrorKind::WriteFailure, "write failed"))
        });
        register_filters(&mut env);
        Engine {
            env,
            counter: 0,
            settings: None,
        }
    }

    /// Declares the settings every later evaluation will see (a plan's settings never
    /// change), so the templates and expressions compiled from now on fold what reads only
    /// settings into constants. Results are the same; they just cost less per record.
    pub fn fold_settings(&mut self, settings: Value) {
        self.settings = Some(settings);
    }

    /// Compiles a template.
    pub fn template(&mut self, source: &str) -> Result<Template, CompileError> {
        self.counter += 1;
        let name = format!("t{}", self.counter);
        self.env
            .add_template_owned(name.clone(), source.to_string())
            .map_err(compile_error)?;
        let fast = FastTemplate::parse(source).map(|t| match &self.settings {
            Some(settings) => t.fold_settings(settings),
            None => t,
        });
        Ok(Template { name, fast })
    }

    /// Compiles an expression.
    pub fn expression(&mut self, source: &str) -> Result<Expression, CompileError> {
        // Syntax check on the expression itself, so positions and messages refer to what the
        // user wrote, not to the wrapper below.
        self.env.compile_expression(source).map_err(compile_error)?;
        self.counter += 1;
        let name = format!("e{}", self.counter);
        // Stored as a template that assigns the value: the environment owns it (no
        // self-borrowing structs), and the value is read back from the render state.
        self.env
            .add_template_owned(name.clone(), format!("{EXPR_PREFIX}{source}{EXPR_SUFFIX}"))
            .map_err(compile_error)?;
        let mut fast = FastExpr::parse(source);
        if let (Some(f), Some(settings)) = (&mut fast, &self.settings) {
            f.fold_settings(settings);
        }
        Ok(Expression { name, fast })
    }

    /// Filters (`| name`) and tests (`is name`) a template or expression uses that this
    /// environment does not have, as `("filter" | "test", name)`.
    ///
    /// minijinja looks filters and tests up only when it evaluates them, so a typo
    /// (`truncate_char`, `is blnk`) used to compile, pass `cosell validate`, and then fail
    /// every record at run time — in a `require:` check that turned into a rejection with the
    /// rule's own message ("Customer name is required"), which hid the typo. Each name found
    /// in the source is probed against the environment itself, so this list never drifts
    /// from what is registered.
    pub fn unknown_names(&self, source: &str, is_template: bool) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        let code: Vec<&str> = if is_template {
            code_blocks(source)
        } else {
            vec![source]
        };
        for block in code {
            for (kind, name) in filter_and_test_names(block) {
                let probe = match kind {
                    "filter" => format!("{{% set _probe = x | {name} %}}"),
                    _ => format!("{{% if x is {name} %}}{{% endif %}}"),
                };
                let unknown = match self.env.render_str(&probe, ()) {
                    Err(e) => matches!(e.kind(), ErrorKind::UnknownFilter | ErrorKind::UnknownTest),
                    Ok(_) => false,
                };
                if unknown && !out.iter().any(|(k, n)| *k == kind && *n == name) {
                    out.push((kind, name.to_string()));
                }
            }
        }
        out
    }

    /// Variables a template or expression reads (top-level names only).
    pub fn variables_of(&self, name_of: &str) -> HashSet<String> {
        match self.env.get_template(name_of) {
            Ok(t) => {
                let mut vars = t.undeclared_variables(false);
                vars.remove("__value");
                vars
            }
            Err(_) => HashSet::new(),
        }
    }

    /// Renders a template.
    pub fn render(&self, template: &Template, vars: &Vars<'_>) -> Result<String, String> {
        if let Some(fast) = &template.fast {
            match fast.render(vars) {
                Err(e) if e == FALLBACK => {}
                other => return other,
            }
        }
        let t = self
            .env
            .get_template(&template.name)
            .map_err(|e| e.to_string())?;
        t.render(vars.context()).map_err(|e| runtime_message(&e))
    }

    /// Evaluates an expression to JSON (undefined becomes null).
    pub fn eval(&self, expr: &Expression, vars: &Vars<'_>) -> Result<Value, String> {
        if let Some(fast) = &expr.fast
            && let Ok(v) = fast.eval(vars)
        {
            return Ok(v.into_json());
        }
        let value = self.eval_raw(expr, vars)?;
        minijinja_to_json(&value)
    }

    /// Evaluates an expression for its truth (conditions and rules).
    pub fn is_true(&self, expr: &Expression, vars: &Vars<'_>) -> Result<bool, String> {
        if let Some(fast) = &expr.fast
            && let Ok(v) = fast.eval(vars)
        {
            return Ok(v.truthy());
        }
        Ok(self.eval_raw(expr, vars)?.is_true())
    }

    fn eval_raw(&self, expr: &Expression, vars: &Vars<'_>) -> Result<MjValue, String> {
        let t = self
            .env
            .get_template(&expr.name)
            .map_err(|e| e.to_string())?;
        let captured = t
            .render_captured(vars.context())
            .map_err(|e| runtime_message(&e))?;
        Ok(captured
            .state()
            .lookup("__value")
            .unwrap_or(MjValue::UNDEFINED))
    }

    /// Name under which a template is registered (for [`Engine::variables_of`]).
    pub fn name_of_template(t: &Template) -> &str {
        &t.name
    }

    /// Name under which an expression is registered (for [`Engine::variables_of`]).
    pub fn name_of_expression(e: &Expression) -> &str {
        &e.name
    }
}

/// Whether this template is evaluated without minijinja.
impl Template {
    /// True when rendering bypasses minijinja.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }
}

impl Expression {
    /// True when evaluation bypasses minijinja.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }
}

fn compile_error(e: Error) -> CompileError {
    CompileError {
        message: e.detail().unwrap_or(&e.to_string()).to_string(),
        line: e.line(),
    }
}

fn runtime_message(e: &Error) -> String {
    let mut msg = e
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| e.kind().to_string());
    if e.kind() == ErrorKind::OutOfFuel {
        msg = "template did too much work (loop too long?)".to_string();
    }
    msg
}

/// Converts minijinja output back to JSON.
pub fn minijinja_to_json(v: &MjValue) -> Result<Value, String> {
    if v.is_undefined() || v.is_none() {
        return Ok(Value::Null);
    }
    serde_json::to_value(v).map_err(|e| format!("result is not representable as JSON: {e}"))
}

/// Eager conversion for small values (items, parents, results).
pub fn json_to_minijinja_eager(v: &Value) -> MjValue {
    MjValue::from(minijinja::value::Serde(v))
}

/// A lazy minijinja view over part of a shared JSON document.
#[derive(Debug)]
pub struct JsonNode {
    root: Arc<Value>,
    path: Box<[PathStep]>,
}

impl JsonNode {
    /// Wraps a whole document.
    pub fn root(root: Arc<Value>) -> MjValue {
        if !matches!(*root, Value::Object(_) | Value::Array(_)) {
            return json_to_minijinja_eager(&root);
        }
        MjValue::from_object(JsonNode {
            root,
            path: Box::new([]),
        })
    }

    fn node(&self) -> &Value {
        let mut current = self.root.as_ref();
        for step in self.path.iter() {
            current = match (step, current) {
                (PathStep::Key(k), Value::Object(m)) => m.get(k).unwrap_or(&Value::Null),
                (PathStep::Index(i), Value::Array(a)) => a.get(*i).unwrap_or(&Value::Null),
                _ => &Value::Null,
            };
        }
        current
    }

    fn child(&self, step: PathStep, value: &Value) -> MjValue {
        match value {
            Value::Null => MjValue::from(()),
            Value::Bool(b) => MjValue::from(*b),
            Value::Number(n) => number_to_minijinja(n),
            Value::String(s) => MjValue::from(s.as_str()),
            Value::Object(_) | Value::Array(_) => {
                let mut path = Vec::with_capacity(self.path.len() + 1);
                path.extend(self.path.iter().cloned());
                path.push(step);
                MjValue::from_object(JsonNode {
                    root: self.root.clone(),
                    path: path.into_boxed_slice(),
                })
            }
        }
    }
}

fn number_to_minijinja(n: &serde_json::Number) -> MjValue {
    if let Some(i) = n.as_i64() {
        MjValue::from(i)
    } else if let Some(u) = n.as_u64() {
        MjValue::from(u)
    } else {
        MjValue::from(n.as_f64().unwrap_or(f64::NAN))
    }
}

impl Object for JsonNode {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &MjValue) -> Option<MjValue> {
        match self.node() {
            Value::Object(map) => {
                let k = key.as_str()?;
                let v = map.get(k)?;
                Some(self.child(PathStep::Key(k.to_string()), v))
            }
            Value::Array(items) => {
                let i = usize::try_from(key.as_i64()?).ok()?;
                let v = items.get(i)?;
                Some(self.child(PathStep::Index(i), v))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            Value::Object(map) => {
                Enumerator::Values(map.keys().map(|k| MjValue::from(k.as_str())).collect())
            }
            Value::Array(items) => Enumerator::Seq(items.len()),
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.node() {
            Value::Object(map) => Some(map.len()),
            Value::Array(items) => Some(items.len()),
            _ => Some(0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Filters and tests
// ---------------------------------------------------------------------------------------------

fn via_json(
    v: MjValue,
    f: fn(Value) -> Result<Value, transforms::TransformError>,
) -> Result<MjValue, Error> {
    // Undefined stays undefined, so `{{ missing | date }}` is still caught when printed.
    if v.is_undefined() {
        return Ok(v);
    }
    let json = minijinja_to_json(&v).map_err(|m| Error::new(ErrorKind::InvalidOperation, m))?;
    f(json)
        .map(|out| json_to_minijinja_eager(&out))
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.message))
}

fn register_filters(env: &mut Environment<'static>) {
    env.add_filter("country_code", |v: MjValue| {
        via_json(v, transforms::country_code)
    });
    env.add_filter("country_name", |v: MjValue| {
        via_json(v, transforms::country_name)
    });
    env.add_filter("country_alpha3", |v: MjValue| {
        via_json(v, transforms::country_alpha3)
    });
    env.add_filter("currency_code", |v: MjValue| {
        via_json(v, transforms::currency_code)
    });
    env.add_filter("date", |v: MjValue| via_json(v, transforms::date));
    env.add_filter("datetime", |v: MjValue| via_json(v, transforms::datetime));
    env.add_filter("number", |v: MjValue| via_json(v, transforms::number));
    env.add_filter("strip_marks", |v: MjValue| {
        via_json(v, transforms::strip_marks)
    });
    env.add_filter("empty_to_null", |v: MjValue| {
        via_json(v, transforms::empty_to_null)
    });
    env.add_filter("truncate_chars", |v: MjValue, n: usize| {
        if v.is_undefined() {
            return Ok(v);
        }
        let json = minijinja_to_json(&v).map_err(|m| Error::new(ErrorKind::InvalidOperation, m))?;
        transforms::truncate(json, n)
            .map(|out| json_to_minijinja_eager(&out))
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.message))
    });
    env.add_test("country_code", |v: MjValue| {
        v.as_str().is_some_and(transforms::country::is_alpha2_code)
    });
    env.add_test("country", |v: MjValue| {
        v.as_str()
            .is_some_and(|s| transforms::country::find(s).is_some())
    });
    env.add_test("currency_code", |v: MjValue| {
        v.as_str().is_some_and(transforms::currency::is_code)
    });
    env.add_test("blank", |v: MjValue| {
        v.is_undefined() || v.is_none() || v.as_str().is_some_and(|s| s.trim().is_empty())
    });
    env.add_test("email", |v: MjValue| {
        v.as_str().is_some_and(looks_like_email)
    });
    env.add_test("date", |v: MjValue| {
        v.as_str()
            .is_some_and(|s| transforms::datetime::parse(s).is_some())
    });
}

/// Filter and test names commonly used in mappings: cosell's own and minijinja's usual ones,
/// the candidates of the "did you mean" hint for an unknown name.
pub const KNOWN_FILTERS: &[&str] = &[
    "country_code",
    "country_name",
    "country_alpha3",
    "currency_code",
    "date",
    "datetime",
    "number",
    "strip_marks",
    "empty_to_null",
    "truncate_chars",
    "default",
    "d",
    "length",
    "lower",
    "upper",
    "trim",
    "join",
    "first",
    "last",
    "replace",
    "round",
    "int",
    "float",
    "string",
    "title",
    "capitalize",
    "list",
    "abs",
    "unique",
    "sort",
    "split",
    "map",
    "select",
    "reject",
    "selectattr",
    "rejectattr",
    "min",
    "max",
    "sum",
    "tojson",
    "items",
];
/// See [`KNOWN_FILTERS`].
pub const KNOWN_TESTS: &[&str] = &[
    "country_code",
    "country",
    "currency_code",
    "blank",
    "email",
    "date",
    "defined",
    "undefined",
    "none",
    "number",
    "string",
    "integer",
    "float",
    "true",
    "false",
    "boolean",
    "sequence",
    "mapping",
    "iterable",
    "startingwith",
    "endingwith",
    "lower",
    "upper",
    "odd",
    "even",
    "in",
];

/// The `{{ … }}` and `{% … %}` parts of a template (the code, not the literal text).
fn code_blocks(source: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find(['{']) {
        let after = &rest[start..];
        let close = if after.starts_with("{{") {
            "}}"
        } else if after.starts_with("{%") {
            "%}"
        } else {
            rest = &rest[start + 1..];
            continue;
        };
        let body = &after[2..];
        match body.find(close) {
            Some(end) => {
                out.push(&body[..end]);
                rest = &body[end + 2..];
            }
            None => {
                out.push(body);
                break;
            }
        }
    }
    out
}

/// `(kind, name)` of each `| filter` and `is [not] test` in code, outside string literals.
fn filter_and_test_names(code: &str) -> Vec<(&'static str, &str)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    // What the previous token asks for the next identifier to be.
    let mut expect: Option<&'static str> = None;
    let mut after_is = false;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if b == b'\'' || b == b'"' {
            quote = Some(b);
            expect = None;
            after_is = false;
            i += 1;
        } else if b == b'|' {
            expect = Some("filter");
            after_is = false;
            i += 1;
        } else if b.is_ascii_alphabetic() || b == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &code[start..i];
            if after_is && word == "not" {
                continue;
            }
            if let Some(kind) = expect.take() {
                out.push((kind, word));
                after_is = false;
            } else if word == "is" {
                expect = Some("test");
                after_is = true;
            }
        } else {
            if !b.is_ascii_whitespace() {
                expect = None;
                after_is = false;
            }
            i += 1;
        }
    }
    out
}

/// A deliberately loose e-mail check: one `@`, something on both sides, a dot in the domain.
pub fn looks_like_email(s: &str) -> bool {
    let s = s.trim();
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_vars<R>(record: &Arc<Value>, f: impl FnOnce(&Vars<'_>) -> R) -> R {
        let settings = json!({"checkmark_in_name": true, "deal_value_field": "estimatedvalue"});
        let mj = json_to_minijinja_eager(&settings);
        let vars = Vars {
            entries: vec![
                ("referral", VarValue::Shared(record)),
                ("settings", VarValue::Prepared(&settings, &mj)),
            ],
        };
        f(&vars)
    }

    #[test]
    fn fast_and_slow_templates_agree() {
        let record = Arc::new(
            json!({"name": "Deal", "details": {"dealValue": 50000, "x": 1.5, "n": null}, "team": [{"email": "a@b.c"}]}),
        );
        let mut engine = Engine::new();
        for src in [
            "{{ referral.name }} ✔",
            "{{ referral.details.dealValue }}",
            "{{ referral.details.x }}",
            "[{{ referral.details.n }}]",
            "{{ referral.team[0].email }}",
            "{{ settings.checkmark_in_name }}",
        ] {
            let fast = engine.template(src).unwrap();
            assert!(fast.is_fast(), "{src}");
            let slow = engine
                .template(&format!("{src}{{% if false %}}{{% endif %}}"))
                .unwrap();
            assert!(!slow.is_fast());
            with_vars(&record, |vars| {
                assert_eq!(
                    engine.render(&fast, vars),
                    engine.render(&slow, vars),
                    "{src}"
                );
            });
        }
        let missing = engine.template("{{ referral.nope }}").unwrap();
        let missing_slow = engine
            .template("{{ referral.nope }}{% if false %}{% endif %}")
            .unwrap();
        with_vars(&record, |vars| {
            assert!(engine.render(&missing, vars).is_err());
            assert!(engine.render(&missing_slow, vars).is_err());
        });
    }

    #[test]
    fn expressions_keep_types_and_undefined_is_falsy() {
        let record = Arc::new(json!({"type": "Shared", "details": {"dealValue": 50000}}));
        let mut engine = Engine::new();
        let e = engine.expression("referral.details.dealValue * 2").unwrap();
        let when = engine
            .expression("referral.type == 'Shared' or not settings.checkmark_in_name")
            .unwrap();
        let missing = engine
            .expression("referral.inviteContext.assistanceRequestCode")
            .unwrap();
        let country = engine
            .expression("'US' is country_code and 'us' is not country_code")
            .unwrap();
        with_vars(&record, |vars| {
            assert_eq!(engine.eval(&e, vars).unwrap(), json!(100000));
            assert!(engine.is_true(&when, vars).unwrap());
            assert!(!engine.is_true(&missing, vars).unwrap());
            assert_eq!(engine.eval(&missing, vars).unwrap(), Value::Null);
            assert!(engine.is_true(&country, vars).unwrap());
        });
    }

    #[test]
    fn dict_literals_match_minijinja() {
        let record = Arc::new(json!({"a": 1, "list": [{"id": "S"}]}));
        let mut engine = Engine::new();
        for src in [
            "[{'type': 'SolutionProfile', 'id': referral.list[0].id}]",
            "{'b': 1, 'a': referral.missing, 'b': [referral.a, {}]}",
            "{'x': 1} if referral.a else none",
            "{}",
        ] {
            let e = engine.expression(src).unwrap();
            assert!(e.is_fast(), "{src}");
            with_vars(&record, |vars| {
                let slow = minijinja_to_json(&engine.eval_raw(&e, vars).unwrap()).unwrap();
                assert_eq!(engine.eval(&e, vars).unwrap(), slow, "{src}");
                assert_eq!(
                    engine.is_true(&e, vars).unwrap(),
                    engine.eval_raw(&e, vars).unwrap().is_true(),
                    "{src}"
                );
            });
        }
        // Printed, minijinja keeps the written key order: not for the fast path.
        assert!(!engine.template("{{ {'b': 1, 'a': 2} }}").unwrap().is_fast());
        assert!(!engine.expression("{'b': 1} ~ ''").unwrap().is_fast());
    }

    /// A template's final newline (`\n`, `\r\n` or `\r`) is dropped on the fast path as
    /// minijinja drops it; only the last one.
    #[test]
    fn fast_templates_drop_the_final_newline_like_minijinja() {
        let record = Arc::new(json!({"name": "Deal"}));
        let mut engine = Engine::new();
        for src in [
            "{{ referral.name }}\n",
            "{{ referral.name }}\r\n",
            "{{ referral.name }}\r",
            "{{ referral.name }}\n\n",
            "{{ referral.name }}\r\r\n",
            "text\n",
            "\n",
        ] {
            let fast = engine.template(src).unwrap();
            assert!(fast.is_fast(), "{src:?}");
            // The tag goes first: after the source it would move the final newline.
            let slow = engine
                .template(&format!("{{% if false %}}{{% endif %}}{src}"))
                .unwrap();
            with_vars(&record, |vars| {
                assert_eq!(
                    engine.render(&fast, vars),
                    engine.render(&slow, vars),
                    "{src:?}"
                );
            });
        }
        with_vars(&record, |vars| {
            let block_scalar = engine.template("{{ referral.name }}\n").unwrap();
            assert_eq!(engine.render(&block_scalar, vars).unwrap(), "Deal");
        });
    }

    /// minijinja's globals are defined where a variable of that name would be undefined:
    /// left to minijinja, they print and test the same with and without the fast path
    /// (`{{ range }}` was an "undefined" error on the fast path only; found by fuzzing).
    #[test]
    fn minijinja_globals_are_not_undefined_variables() {
        let record = Arc::new(json!({"range": 3}));
        let mut engine = Engine::new();
        for global in super::super::fastexpr::MINIJINJA_GLOBALS {
            let fast = engine.template(&format!("{{{{ {global} }}}}")).unwrap();
            assert!(!fast.is_fast(), "{global}");
            let slow = engine
                .template(&format!("{{{{ {global} }}}}{{% if false %}}{{% endif %}}"))
                .unwrap();
            let defined = engine.expression(&format!("{global} is defined")).unwrap();
            with_vars(&record, |vars| {
                assert_eq!(engine.render(&fast, vars), engine.render(&slow, vars));
                assert!(engine.render(&fast, vars).is_ok(), "{global}");
                assert_eq!(engine.eval(&defined, vars), Ok(json!(true)), "{global}");
            });
        }
        // A path below a field with such a name is an ordinary path.
        assert!(engine.template("{{ referral.range }}").unwrap().is_fast());
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let record = Arc::new(json!({}));
        let mut engine = Engine::new();
        let t = engine
            .template(
                "{% for i in range(100000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}",
            )
            .unwrap();
        with_vars(&record, |vars| assert!(engine.render(&t, vars).is_err()));
    }

    mod equivalence {
        use super::super::*;
        use crate::mapping::fastexpr::FastExpr;
        use proptest::prelude::*;
        use serde_json::json;

        fn atom() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("r.a".to_string()),
                Just("r.b".to_string()),
                Just("r.c.d".to_string()),
                Just("r.list[0]".to_string()),
                Just("r.list".to_string()),
                Just("r['a']".to_string()),
                Just("r.missing".to_string()),
                Just("r.missing.deeper".to_string()),
                Just("settings.flag".to_string()),
                Just("settings.field".to_string()),
                Just("r[settings.field]".to_string()),
                Just("'US'".to_string()),
                Just("'x'".to_string()),
                Just("''".to_string()),
                Just("1".to_string()),
                Just("0".to_string()),
                Just("2.5".to_string()),
                Just("true".to_string()),
                Just("none".to_string()),
                Just("[1, 'a']".to_string()),
                Just("{'k': r.a, 'j': r.missing, 'a': [r.c.d]}".to_string()),
                Just("{'b': 1, 'a': r.b, 'b': settings.field}".to_string()),
                Just("[{'type': 'S', 'id': r.list[0]}, {}]".to_string()),
                Just("('x' if settings.flag else r.a)".to_string()),
            ]
        }

        fn expr() -> impl Strategy<Value = String> {
            atom().prop_recursive(3, 24, 3, |inner| {
                prop_oneof![
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} == {b})")),
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} != {b})")),
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} and {b})")),
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
                    inner.clone().prop_map(|a| format!("(not {a})")),
                    (inner.clone(), inner.clone(), inner.clone())
                        .prop_map(|(a, b, c)| format!("({a} if {b} else {c})")),
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} ~ {b})")),
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} in {b})")),
                    inner.clone().prop_map(|a| format!("({a} is defined)")),
                    inner.clone().prop_map(|a| format!("({a} is not none)")),
                    inner.clone().prop_map(|a| format!("({a} is blank)")),
                    inner.clone().prop_map(|a| format!("({a} is country_code)")),
                    inner.clone().prop_map(|a| format!("({a} | default('d'))")),
                    inner.clone().prop_map(|a| format!("({a} | length)")),
                    inner.clone().prop_map(|a| format!("({a} | upper)")),
                    (inner.clone(), inner).prop_map(|(a, b)| format!("({a} < {b})")),
                ]
            })
        }

        fn record() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(json!(null)),
                Just(json!(true)),
                Just(json!(false)),
                Just(json!(0)),
                Just(json!(1)),
                Just(json!(2.5)),
                Just(json!("US")),
                Just(json!("x")),
                Just(json!("")),
                Just(json!("a")),
            ];
            (
                leaf.clone(),
                leaf.clone(),
                leaf.clone(),
                prop::collection::vec(leaf, 0..3),
            )
                .prop_map(
                    |(a, b, d, list)| json!({ "a": a, "b": b, "c": { "d": d }, "list": list }),
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
            #[test]
            fn fast_expressions_agree_with_minijinja(e in expr(), r in record(), flag in any::<bool>()) {
                let Some(fast) = FastExpr::parse(&e) else { return Ok(()) };
                let mut engine = Engine::new();
                let compiled = engine.expression(&e).unwrap();
                let record = Arc::new(r);
                let settings = json!({"flag": flag, "field": "a"});
                let mj = json_to_minijinja_eager(&settings);
                let vars = Vars { entries: vec![("r", VarValue::Shared(&record)), ("settings", VarValue::Prepared(&settings, &mj))] };
                let slow = engine.eval_raw(&compiled, &vars);
                if let Ok(v) = fast.eval(&vars) {
                    let slow = slow.map_err(|e| format!("minijinja failed where the fast path did not: {e}"));
                    prop_assert!(slow.is_ok(), "{e}: {:?}", slow);
                    let slow = slow.unwrap();
                    prop_assert_eq!(v.truthy(), slow.is_true(), "truthiness of {}", e);
                    let slow_json = minijinja_to_json(&slow).unwrap();
                    prop_assert_eq!(v.into_json(), slow_json, "value of {}", e);
                }
                // With the settings folded in at compile time, as plans do.
                let mut folded = fast.clone();
                folded.fold_settings(&settings);
                if let Ok(v) = folded.eval(&vars) {
                    let slow = engine.eval_raw(&compiled, &vars);
                    prop_assert!(slow.is_ok(), "{e} (folded): {:?}", slow);
                    let slow = slow.unwrap();
                    prop_assert_eq!(v.truthy(), slow.is_true(), "truthiness of {} (folded)", e);
                    prop_assert_eq!(v.into_json(), minijinja_to_json(&slow).unwrap(), "value of {} (folded)", e);
                }
            }

            #[test]
            fn folded_templates_agree_with_minijinja(e in expr(), r in record(), flag in any::<bool>()) {
                let src = format!("<{{{{ {e} }}}}|{{{{ settings.field }}}}>");
                let settings = json!({"flag": flag, "field": "a"});
                let mut engine = Engine::new();
                engine.fold_settings(settings.clone());
                let fast = engine.template(&src).unwrap();
                if !fast.is_fast() { return Ok(()) }
                let slow = engine.template(&format!("{src}{{% if false %}}{{% endif %}}")).unwrap();
                let record = Arc::new(r);
                let mj = json_to_minijinja_eager(&settings);
                let vars = Vars { entries: vec![("r", VarValue::Shared(&record)), ("settings", VarValue::Prepared(&settings, &mj))] };
                let (f, s) = (engine.render(&fast, &vars), engine.render(&slow, &vars));
                prop_assert_eq!(f.is_ok(), s.is_ok(), "{}: {:?} vs {:?}", src, f, s);
                if let (Ok(f), Ok(s)) = (f, s) {
                    prop_assert_eq!(f, s, "{}", src);
                }
            }

            #[test]
            fn fast_templates_agree_with_minijinja(e in expr(), r in record(), flag in any::<bool>()) {
                let src = format!("<{{{{ {e} }}}}>");
                let mut engine = Engine::new();
                let fast = engine.template(&src).unwrap();
                if !fast.is_fast() { return Ok(()) }
                let slow = engine.template(&format!("{src}{{% if false %}}{{% endif %}}")).unwrap();
                let record = Arc::new(r);
                let settings = json!({"flag": flag, "field": "a"});
                let mj = json_to_minijinja_eager(&settings);
                let vars = Vars { entries: vec![("r", VarValue::Shared(&record)), ("settings", VarValue::Prepared(&settings, &mj))] };
                let (f, s) = (engine.render(&fast, &vars), engine.render(&slow, &vars));
                prop_assert_eq!(f.is_ok(), s.is_ok(), "{}: {:?} vs {:?}", src, f, s);
                if let (Ok(f), Ok(s)) = (f, s) {
                    prop_assert_eq!(f, s, "{}", src);
                }
            }
        }
    }
}
