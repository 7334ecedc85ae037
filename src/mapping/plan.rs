//! Compiling a validated [`Config`] into a [`Plan`]: every path parsed, every template and
//! expression compiled, every value map turned into a hash map, every setting folded in —
//! once. Compilation is also where the semantic checks of `cosell validate` happen, so each
//! problem carries the JSON pointer of the config node it is about.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use minijinja::Value as MjValue;
use serde_json::{Map, Value};

use super::referral_schema::{self as rs, FieldType, PathCheck, Step as RsStep};
use super::selector::{Segment, Selector};
use super::template::{Engine, Expression, Template, VarValue, Vars, json_to_minijinja_eager};
use crate::config::diagnostic::did_you_mean;
use crate::config::model::*;
use crate::config::yaml::escape_pointer_segment as esc;

/// A problem found while compiling, located by JSON pointer into the config.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanError {
    /// Stable short code (`bad-jsonpath`, `unknown-value-map`, …).
    pub code: &'static str,
    /// JSON pointer of the offending node.
    pub pointer: String,
    /// Point at the node's key rather than its value.
    pub at_key: bool,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl PlanError {
    fn new(code: &'static str, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        PlanError {
            code,
            pointer: pointer.into(),
            at_key: false,
            message: message.into(),
            hint: None,
        }
    }
    fn hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
    fn at_key(mut self) -> Self {
        self.at_key = true;
        self
    }
}

fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    did_you_mean(word, candidates).map(|s| format!("did you mean `{s}`?"))
}

/// A compiled value map.
#[derive(Debug)]
pub struct ValueMapPlan {
    name: String,
    ignore_case: bool,
    forward: KeyTable,
    reverse: Option<KeyTable>,
    fallback: Fallback,
}

/// A value map's entries. Value maps are looked up for every record and their keys are
/// short; the keys are fixed by the config (record data only ever looks up), so a simple
/// FNV-1a hash serves instead of the default DoS-resistant SipHash, which was most of a
/// lookup's cost.
type KeyTable = HashMap<String, Value, std::hash::BuildHasherDefault<KeyHasher>>;

/// FNV-1a, for [`KeyTable`].
struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Decimal text of an integer in `buf` (what `Number::to_string` gives), without
/// allocating; `None` for other numbers.
fn integer_text<'b>(n: &serde_json::Number, buf: &'b mut [u8; 24]) -> Option<&'b str> {
    let (negative, mut rest) = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => (false, u),
        (None, Some(i)) => (i < 0, i.unsigned_abs()),
        (None, None) => return None,
    };
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + u8::try_from(rest % 10).ok()?;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        buf[at] = b'-';
    }
    std::str::from_utf8(&buf[at..]).ok()
}

/// Text form of a scalar used as a value-map key (`1` and `"1"` are the same key).
fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl ValueMapPlan {
    fn norm(&self, key: String) -> String {
        if self.ignore_case {
            key.to_lowercase()
        } else {
            key
        }
    }

    /// Translates a value; `Err` is the user-facing message.
    pub fn apply(&self, v: Value, reverse: bool) -> Result<Value, String> {
        if v.is_null() {
            return Ok(v);
        }
        let table = if reverse {
            self.reverse.as_ref().unwrap_or(&self.forward)
        } else {
            &self.forward
        };
        // Text keys (the common case) are looked up without allocating.
        let mut buf = [0u8; 24];
        let found = match &v {
            Value::String(s) if !self.ignore_case => table.get(s.as_str()),
            // Integers (status codes) too; their text has no case.
            Value::Number(n) if let Some(text) = integer_text(n, &mut buf) => table.get(text),
            other => key_text(other).and_then(|k| table.get(&self.norm(k))),
        };
        if let Some(out) = found {
            return Ok(out.clone());
        }
        match &self.fallback {
            Fallback::Action(FallbackAction::Keep) => Ok(v),
            Fallback::Action(FallbackAction::Null) | Fallback::NullLiteral(()) => Ok(Value::Null),
            Fallback::Value(FallbackValue { value }) => Ok(value.clone()),
            Fallback::Action(FallbackAction::Error) | Fallback::Undeclared => Err(format!(
                "no entry for {} in value map `{}`",
                short_json(&v),
                self.name
            )),
        }
    }
}

fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// One compiled conversion step: a built-in transform, or a value map (forwards or backwards).
#[derive(Debug)]
enum StepPlan {
    Builtin(Transform),
    Map(Arc<ValueMapPlan>, bool),
}

impl StepPlan {
    fn apply(&self, v: Value) -> Result<Value, String> {
        use super::transforms as t;
        let builtin = match self {
            StepPlan::Map(m, reverse) => return m.apply(v, *reverse),
            StepPlan::Builtin(b) => b,
        };
        let r = match builtin {
            Transform::Trim => t::trim(v),
            Transform::Upper => t::upper(v),
            Transform::Lower => t::lower(v),
            Transform::EmptyToNull => t::empty_to_null(v),
            Transform::Truncate(n) => t::truncate(v, *n),
            Transform::MaxLength(n) => t::max_length(v, *n),
            Transform::CountryCode => t::country_code(v),
            Transform::CountryName => t::country_name(v),
            Transform::CountryAlpha3 => t::country_alpha3(v),
            Transform::CurrencyCode => t::currency_code(v),
            Transform::Date => t::date(v),
            Transform::Datetime => t::datetime(v),
            Transform::Number => t::number(v),
            Transform::Integer => t::integer(v),
            Transform::Round(d) => t::round(v, *d),
            Transform::String => t::string(v),
            Transform::Boolean => t::boolean(v),
            Transform::First => t::first(v),
            Transform::Join(sep) => t::join(v, sep),
            Transform::StripMarks => t::strip_marks(v),
            // Resolved to `StepPlan::Map` at compile time.
            Transform::Map(_) => Ok(v),
        };
        r.map_err(|e| e.message)
    }
}

#[derive(Debug)]
enum ValueSource {
    Path(Selector),
    Template(Template),
    Expr(Expression),
    Const(Value),
    /// A lookup's field: its name, and the placeholder the field holds until the lookup is
    /// resolved (built once, cloned per record).
    Lookup {
        name: String,
        placeholder: Value,
    },
    Each {
        selector: Selector,
        fields: FieldSet,
    },
}

/// The fields of one record, with the record's shape worked out at compile time so each
/// evaluation builds its maps in one pass (a sorted bulk build) instead of one `BTreeMap`
/// insert — a search with string comparisons — per field.
#[derive(Debug)]
struct FieldSet {
    fields: Vec<FieldPlan>,
    shape: Shape,
}

#[derive(Debug)]
enum Shape {
    /// Every target is one top-level key: the entries are collected in evaluation order and
    /// bulk-built (file order is nearly sorted, so the sort is almost free).
    Flat,
    /// Partner Center paths (`details.dealValue`), none a prefix of another: the values go
    /// into slots, then each map level is built from its keys, sorted at compile time.
    Tree(Vec<ShapeNode>),
    /// Targets that overlap (`a` and `a.b`): inserted one by one, in file order, as the
    /// overwrite order decides the result.
    Sequential,
}

#[derive(Debug)]
struct ShapeNode {
    key: String,
    kind: ShapeKind,
}

#[derive(Debug)]
enum ShapeKind {
    /// The value of field `.0`.
    Leaf(usize),
    /// A nested object, present when any field below it is.
    Branch(Vec<ShapeNode>),
}

impl FieldSet {
    fn new(fields: Vec<FieldPlan>) -> FieldSet {
        let shape = Shape::of(&fields);
        FieldSet { fields, shape }
    }
}

impl Shape {
    fn of(fields: &[FieldPlan]) -> Shape {
        let paths: Vec<Vec<&str>> = fields
            .iter()
            .map(|f| match &f.nested {
                Some(path) => path.iter().map(String::as_str).collect(),
                None => vec![f.target.as_str()],
            })
            .collect();
        if paths.iter().any(Vec::is_empty) {
            return Shape::Sequential;
        }
        let mut keys: Vec<&[&str]> = paths.iter().map(Vec::as_slice).collect();
        keys.sort();
        // Sorted, a duplicate or a path that is a prefix of another sits right before it.
        if keys.windows(2).any(|w| w[1].starts_with(w[0])) {
            return Shape::Sequential;
        }
        if paths.iter().all(|p| p.len() == 1) {
            return Shape::Flat;
        }
        fn level(paths: &[(usize, &[&str])]) -> Vec<ShapeNode> {
            let mut sorted = paths.to_vec();
            sorted.sort_by(|a, b| a.1[0].cmp(b.1[0]));
            let mut out: Vec<ShapeNode> = Vec::new();
            let mut i = 0;
            while i < sorted.len() {
                let key = sorted[i].1[0];
                let mut j = i;
                while j < sorted.len() && sorted[j].1[0] == key {
                    j += 1;
                }
                let kind = if sorted[i].1.len() == 1 {
                    // No other path shares a prefix with a leaf (checked above).
                    ShapeKind::Leaf(sorted[i].0)
                } else {
                    let below: Vec<(usize, &[&str])> =
                        sorted[i..j].iter().map(|(f, p)| (*f, &p[1..])).collect();
                    ShapeKind::Branch(level(&below))
                };
                out.push(ShapeNode {
                    key: key.to_string(),
                    kind,
                });
                i = j;
            }
            out
        }
        let indexed: Vec<(usize, &[&str])> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.as_slice()))
            .collect();
        Shape::Tree(level(&indexed))
    }
}

/// Builds one map level of a [`Shape::Tree`] from the evaluated slots.
fn build_level(nodes: &[ShapeNode], slots: &mut [Option<Value>]) -> Map<String, Value> {
    let mut entries = Vec::with_capacity(nodes.len());
    for node in nodes {
        match &node.kind {
            ShapeKind::Leaf(i) => {
                if let Some(v) = slots[*i].take() {
                    entries.push((node.key.clone(), v));
                }
            }
            ShapeKind::Branch(children) => {
                let m = build_level(children, slots);
                if !m.is_empty() {
                    entries.push((node.key.clone(), Value::Object(m)));
                }
            }
        }
    }
    entries.into_iter().collect()
}

/// One compiled target field.
#[derive(Debug)]
pub struct FieldPlan {
    /// Target field name (settings already substituted).
    pub target: String,
    /// For Partner Center targets: the nested path.
    nested: Option<Vec<String>>,
    source: ValueSource,
    default: Option<Value>,
    steps: Vec<StepPlan>,
    value_type: Option<ValueType>,
    required: Option<String>,
    when: Option<Expression>,
    /// When the field is written.
    pub on: WriteOn,
    /// Who wins a conflicting change (None: the flow's source side).
    pub owner: Option<Owner>,
}

#[derive(Debug)]
struct RulePlan {
    check: Expression,
    message: Template,
    when: Option<Expression>,
}

/// A compiled lookup.
#[derive(Debug)]
pub struct LookupPlan {
    /// Lookup name.
    pub name: String,
    /// Table searched.
    pub entity: String,
    /// Primary key column.
    pub id_field: String,
    match_fields: FieldSet,
    /// What happens when nothing matches.
    pub on_missing: OnMissing,
    create: FieldSet,
    message: Option<Template>,
    result: Template,
    /// Whether results may be cached.
    pub cache: bool,
    /// Lookups used by `create` fields, resolved first.
    depends_on: Vec<String>,
}

/// A compiled flow.
#[derive(Debug)]
pub struct FlowPlan {
    /// Flow name.
    pub name: String,
    /// Record read.
    pub source: RecordKind,
    /// Record written.
    pub target: RecordKind,
    /// CRM table on the CRM side.
    pub entity: String,
    /// Flow whose record this one follows.
    pub parent: Option<String>,
    for_each: Option<Selector>,
    /// Identity field of child records.
    pub key: Option<String>,
    /// Related records read with the source.
    pub expand: BTreeMap<String, Vec<String>>,
    /// CRM column holding the referral id.
    pub referral_id_field: String,
    /// CRM yes/no column opting records into sync (CRM → Partner Center flows).
    pub sync_flag: Option<String>,
    when: Option<Expression>,
    fields: FieldSet,
    rules: Vec<RulePlan>,
    on_success: FieldSet,
    on_failure: FieldSet,
    /// Lookups this flow needs, dependencies included.
    pub lookups_used: Vec<String>,
}

impl FlowPlan {
    /// The compiled target fields, in file order.
    pub fn fields(&self) -> &[FieldPlan] {
        &self.fields.fields
    }

    /// The compiled `on_success` write-back fields.
    pub fn on_success_fields(&self) -> &[FieldPlan] {
        &self.on_success.fields
    }

    /// The compiled `on_failure` write-back fields.
    pub fn on_failure_fields(&self) -> &[FieldPlan] {
        &self.on_failure.fields
    }

    /// Whether the flow makes one target record per element (`for_each`).
    pub fn is_for_each(&self) -> bool {
        self.for_each.is_some()
    }
}

/// Everything compiled from one mapping file.
#[derive(Debug)]
pub struct Plan {
    /// The CRM.
    pub crm: CrmKind,
    settings: Value,
    settings_mj: MjValue,
    engine: Engine,
    lookups: BTreeMap<String, LookupPlan>,
    flows: BTreeMap<String, FlowPlan>,
    op_create: Value,
    op_update: Value,
}

/// A rule violation or a value that could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Target field concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// User-facing message.
    pub message: String,
}

impl Violation {
    fn field(field: &str, message: impl Into<String>) -> Self {
        Violation {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

/// A lookup a mapped record needs before it can be written.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LookupRequest {
    /// Lookup name (as in `lookups:`).
    pub name: String,
    /// Table searched.
    pub entity: String,
    /// Primary key column.
    pub id_field: String,
    /// Column → value that must all match.
    #[serde(rename = "match")]
    pub matches: Map<String, Value>,
    /// What happens when nothing matches.
    pub on_missing: OnMissing,
    /// Fields of the record to create when nothing matches (may hold placeholders of earlier
    /// lookups).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub create: Map<String, Value>,
    /// Violation message for `on_missing: fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether results may be cached.
    pub cache: bool,
}

/// One target record produced by a flow.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct TargetRecord {
    /// Field values; a lookup's field holds the placeholder `{"$lookup": "<name>"}` until the
    /// lookup is resolved.
    pub fields: Map<String, Value>,
    /// Lookups to resolve, dependencies first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<LookupRequest>,
}

/// The outcome of mapping one source record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapped {
    /// The flow's `when` was false: nothing to write.
    pub skipped: bool,
    /// The target records (one, or one per element for `for_each` flows).
    pub records: Vec<TargetRecord>,
    /// Problems; when non-empty nothing may be written.
    pub violations: Vec<Violation>,
}

/// What one evaluation works on.
pub struct Input<'a> {
    /// The source record.
    pub record: &'a Arc<Value>,
    /// The parent flow's written record (flows with `parent:`).
    pub parent: Option<&'a Value>,
    /// Create or update (decides `on:` fields).
    pub operation: Operation,
}

/// The placeholder a lookup field holds until resolved.
pub fn lookup_placeholder(name: &str) -> Value {
    let mut m = Map::new();
    m.insert("$lookup".to_string(), Value::String(name.to_string()));
    Value::Object(m)
}

/// If `v` is a lookup placeholder, the lookup's name.
pub fn placeholder_name(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get("$lookup")?.as_str(),
        _ => None,
    }
}

const GLOBALS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "debug",
    "loop",
    "true",
    "false",
    "none",
];

/// Names a scope provides, for the static variable check.
#[derive(Clone)]
struct Scope {
    names: Vec<&'static str>,
    source: RecordKind,
    /// `$` is an element (for_each / each), not the source record.
    dollar_is_item: bool,
}

impl Scope {
    fn with(&self, name: &'static str) -> Scope {
        let mut s = self.clone();
        if !s.names.contains(&name) {
            s.names.push(name);
        }
        s
    }
}

struct Compiler<'c> {
    config: &'c Config,
    engine: Engine,
    settings: Value,
    settings_mj: MjValue,
    errors: Vec<PlanError>,
    value_maps: HashMap<String, Arc<ValueMapPlan>>,
}

impl Plan {
    /// Compiles a config with already-resolved settings. All problems are returned at once.
    pub fn compile(config: &Config, settings: Map<String, Value>) -> Result<Plan, Vec<PlanError>> {
        let settings = Value::Object(settings);
        let settings_mj = json_to_minijinja_eager(&settings);
        let mut engine = Engine::new();
        engine.fold_settings(settings.clone());
        let mut c = Compiler {
            config,
            engine,
            settings,
            settings_mj,
            errors: Vec::new(),
            value_maps: HashMap::new(),
        };
        if config.version != 1 {
            c.errors.push(
                PlanError::new(
                    "bad-version",
                    "/version",
                    format!("unsupported version {}", config.version),
                )
                .hint(Some("this cosell understands `version: 1`".into())),
            );
        }
        for (name, vm) in &config.value_maps {
            if let Some(plan) = c.value_map(name, vm) {
                c.value_maps.insert(name.clone(), Arc::new(plan));
            }
        }
        let mut lookups = BTreeMap::new();
        for (name, l) in &config.lookups {
            if let Some(plan) = c.lookup(name, l) {
                lookups.insert(name.clone(), plan);
            }
        }
        c.check_lookup_cycles(&lookups);
        let mut flows = BTreeMap::new();
        for (name, f) in &config.flows {
            if let Some(plan) = c.flow(name, f, &lookups) {
                flows.insert(name.clone(), plan);
            }
        }
        c.check_flow_parents();
        c.check_tests();
        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        Ok(Plan {
            crm: config.crm,
            settings: c.settings,
            settings_mj: c.settings_mj,
            engine: c.engine,
            lookups,
            flows,
            op_create: Value::String("create".into()),
            op_update: Value::String("update".into()),
        })
    }

    /// A flow by name.
    pub fn flow(&self, name: &str) -> Option<&FlowPlan> {
        self.flows.get(name)
    }

    /// All flows.
    pub fn flows(&self) -> impl Iterator<Item = &FlowPlan> {
        self.flows.values()
    }

    /// A lookup by name.
    pub fn lookup(&self, name: &str) -> Option<&LookupPlan> {
        self.lookups.get(name)
    }

    /// The resolved settings.
    pub fn settings(&self) -> &Value {
        &self.settings
    }

    /// What a lookup's field receives for a found or created record id.
    pub fn lookup_result(&self, name: &str, id: &str) -> Result<Value, String> {
        let l = self
            .lookups
            .get(name)
            .ok_or_else(|| format!("unknown lookup `{name}`"))?;
        let idv = Value::String(id.to_string());
        let vars = Vars {
            entries: vec![
                ("id", VarValue::Borrowed(&idv)),
                (
                    "settings",
                    VarValue::Prepared(&self.settings, &self.settings_mj),
                ),
            ],
        };
        self.engine.render(&l.result, &vars).map(Value::String)
    }

    /// The primary key column of a CRM table (`opportunities` → `opportunityid`, any
    /// Salesforce object → `Id`).
    pub fn id_field(&self, entity: &str) -> String {
        default_id_field(self.crm, entity)
    }

    /// Maps one source record through a flow.
    pub fn evaluate(&self, flow: &FlowPlan, input: &Input<'_>) -> Mapped {
        let mut out = Mapped::default();
        let source_name = flow.source.as_str();
        let operation = match input.operation {
            Operation::Create => &self.op_create,
            Operation::Update => &self.op_update,
        };
        let mut vars = Vars {
            entries: vec![
                (source_name, VarValue::Shared(input.record)),
                (
                    "settings",
                    VarValue::Prepared(&self.settings, &self.settings_mj),
                ),
                ("operation", VarValue::Borrowed(operation)),
            ],
        };
        if let Some(p) = input.parent {
            vars.entries.push(("parent", VarValue::Borrowed(p)));
        }
        if let Some(when) = &flow.when {
            match self.engine.is_true(when, &vars) {
                Ok(true) => {}
                Ok(false) => {
                    out.skipped = true;
                    return out;
                }
                Err(e) => {
                    out.violations.push(Violation {
                        field: None,
                        message: format!("cannot evaluate `when`: {e}"),
                    });
                    return out;
                }
            }
        }
        for rule in &flow.rules {
            self.check_rule(rule, &vars, &mut out.violations);
        }
        match &flow.for_each {
            None => {
                let record = self.map_record(
                    &flow.fields,
                    &vars,
                    input.record,
                    input.operation,
                    &mut out.violations,
                );
                out.records.push(record);
            }
            Some(sel) => {
                for (i, item) in sel.select_all(input.record).into_iter().enumerate() {
                    let mut item_vars = Vars {
                        entries: vars.entries.clone(),
                    };
                    item_vars.entries.push(("item", VarValue::Borrowed(item)));
                    let mut violations = Vec::new();
                    let record = self.map_record(
                        &flow.fields,
                        &item_vars,
                        item,
                        input.operation,
                        &mut violations,
                    );
                    out.violations.extend(violations.into_iter().map(|mut v| {
                        v.field = Some(format!("[{i}].{}", v.field.unwrap_or_default()));
                        v
                    }));
                    out.records.push(record);
                }
            }
        }
        out
    }

    /// The fields of the record a lookup creates when nothing matched, evaluated in the scope
    /// of the flow that needs it (`item` for `for_each` flows). Placeholders of the lookups it
    /// depends on are left for the caller to substitute.
    pub fn lookup_create(
        &self,
        flow: &FlowPlan,
        name: &str,
        input: &Input<'_>,
        item: Option<&Value>,
    ) -> Result<Map<String, Value>, Vec<Violation>> {
        let Some(l) = self.lookups.get(name) else {
            return Err(vec![Violation {
                field: None,
                message: format!("unknown lookup `{name}`"),
            }]);
        };
        let operation = match input.operation {
            Operation::Create => &self.op_create,
            Operation::Update => &self.op_update,
        };
        let mut vars = Vars {
            entries: vec![
                (flow.source.as_str(), VarValue::Shared(input.record)),
                (
                    "settings",
                    VarValue::Prepared(&self.settings, &self.settings_mj),
                ),
                ("operation", VarValue::Borrowed(operation)),
            ],
        };
        if let Some(p) = input.parent {
            vars.entries.push(("parent", VarValue::Borrowed(p)));
        }
        let dollar: &Value = match item {
            Some(i) => {
                vars.entries.push(("item", VarValue::Borrowed(i)));
                i
            }
            None => input.record,
        };
        let mut violations = Vec::new();
        let mut nested: Vec<&str> = Vec::new();
        let create = self.build_fields(
            &l.create,
            &vars,
            dollar,
            Operation::Create,
            false,
            &mut violations,
            &mut nested,
        );
        if violations.is_empty() {
            Ok(create)
        } else {
            Err(violations
                .into_iter()
                .map(|mut v| {
                    v.field = Some(format!("lookup {name}: {}", v.field.unwrap_or_default()));
                    v
                })
                .collect())
        }
    }

    /// [`Plan::lookup_create`] with its violations joined into one message.
    pub fn lookup_create_text(
        &self,
        flow: &FlowPlan,
        name: &str,
        input: &Input<'_>,
    ) -> Result<Map<String, Value>, String> {
        self.lookup_create(flow, name, input, None).map_err(|v| {
            v.into_iter()
                .map(|v| v.message)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Fields written back to the source record after the target was written (`result`).
    pub fn on_success(
        &self,
        flow: &FlowPlan,
        record: &Arc<Value>,
        result: &Value,
    ) -> Result<Map<String, Value>, Vec<Violation>> {
        let vars = Vars {
            entries: vec![
                (flow.source.as_str(), VarValue::Shared(record)),
                (
                    "settings",
                    VarValue::Prepared(&self.settings, &self.settings_mj),
                ),
                ("result", VarValue::Borrowed(result)),
            ],
        };
        self.write_back(&flow.on_success, &vars, record)
    }

    /// Fields written back to the source record when the sync failed.
    pub fn on_failure(
        &self,
        flow: &FlowPlan,
        record: &Arc<Value>,
        violations: &[Violation],
    ) -> Result<Map<String, Value>, Vec<Violation>> {
        let messages = Value::Array(
            violations
                .iter()
                .map(|v| Value::String(v.message.clone()))
                .collect(),
        );
        let vars = Vars {
            entries: vec![
                (flow.source.as_str(), VarValue::Shared(record)),
                (
                    "settings",
                    VarValue::Prepared(&self.settings, &self.settings_mj),
                ),
                ("violations", VarValue::Borrowed(&messages)),
            ],
        };
        self.write_back(&flow.on_failure, &vars, record)
    }

    fn write_back(
        &self,
        fields: &FieldSet,
        vars: &Vars<'_>,
        record: &Value,
    ) -> Result<Map<String, Value>, Vec<Violation>> {
        let mut violations = Vec::new();
        let out = self.map_record(fields, vars, record, Operation::Update, &mut violations);
        if violations.is_empty() {
            Ok(out.fields)
        } else {
            Err(violations)
        }
    }

    fn check_rule(&self, rule: &RulePlan, vars: &Vars<'_>, violations: &mut Vec<Violation>) {
        if let Some(when) = &rule.when {
            match self.engine.is_true(when, vars) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    violations.push(Violation {
                        field: None,
                        message: format!("cannot evaluate rule condition: {e}"),
                    });
                    return;
                }
            }
        }
        let passed = self.engine.is_true(&rule.check, vars).unwrap_or(false);
        if !passed {
            let message = self.engine.render(&rule.message, vars).unwrap_or_else(|e| {
                format!("rule failed (and its message could not be rendered: {e})")
            });
            violations.push(Violation {
                field: None,
                message,
            });
        }
    }

    fn map_record(
        &self,
        fields: &FieldSet,
        vars: &Vars<'_>,
        dollar: &Value,
        op: Operation,
        violations: &mut Vec<Violation>,
    ) -> TargetRecord {
        let mut used_lookups: Vec<&str> = Vec::new();
        let fields = self.build_fields(
            fields,
            vars,
            dollar,
            op,
            true,
            violations,
            &mut used_lookups,
        );
        let lookups = if used_lookups.is_empty() {
            Vec::new()
        } else {
            self.lookup_requests(&used_lookups, vars, dollar, violations)
        };
        TargetRecord { fields, lookups }
    }

    /// Evaluates a set of fields (in file order: violations and lookups keep that order) into
    /// a map. With `filter_on`, fields whose `on:` excludes `op` are skipped.
    #[allow(clippy::too_many_arguments)]
    fn build_fields<'s>(
        &'s self,
        set: &'s FieldSet,
        vars: &Vars<'_>,
        dollar: &Value,
        op: Operation,
        filter_on: bool,
        violations: &mut Vec<Violation>,
        used_lookups: &mut Vec<&'s str>,
    ) -> Map<String, Value> {
        let wanted = |f: &FieldPlan| !filter_on || writes_on(f.on, op);
        match &set.shape {
            // One field (most lookup `match`es): no sort, so no scratch list either.
            Shape::Flat if set.fields.len() == 1 => {
                let mut map = Map::new();
                let f = &set.fields[0];
                if wanted(f)
                    && let Some(v) = self.field_value(f, vars, dollar, op, violations, used_lookups)
                {
                    map.insert(f.target.clone(), v);
                }
                map
            }
            Shape::Flat => {
                let mut entries = Vec::with_capacity(set.fields.len());
                for f in &set.fields {
                    if wanted(f)
                        && let Some(v) =
                            self.field_value(f, vars, dollar, op, violations, used_lookups)
                    {
                        entries.push((f.target.clone(), v));
                    }
                }
                entries.into_iter().collect()
            }
            Shape::Tree(nodes) => {
                let mut slots = Vec::with_capacity(set.fields.len());
                for f in &set.fields {
                    slots.push(if wanted(f) {
                        self.field_value(f, vars, dollar, op, violations, used_lookups)
                    } else {
                        None
                    });
                }
                build_level(nodes, &mut slots)
            }
            Shape::Sequential => {
                let mut map = Map::new();
                for f in &set.fields {
                    if wanted(f)
                        && let Some(v) =
                            self.field_value(f, vars, dollar, op, violations, used_lookups)
                    {
                        insert(&mut map, f, v);
                    }
                }
                map
            }
        }
    }

    /// Computes one field; `None` means "do not write it".
    fn field_value<'s>(
        &'s self,
        field: &'s FieldPlan,
        vars: &Vars<'_>,
        dollar: &Value,
        op: Operation,
        violations: &mut Vec<Violation>,
        used_lookups: &mut Vec<&'s str>,
    ) -> Option<Value> {
        if let Some(when) = &field.when {
            match self.engine.is_true(when, vars) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    violations.push(Violation::field(
                        &field.target,
                        format!("cannot evaluate `when`: {e}"),
                    ));
                    return None;
                }
            }
        }
        let raw = match &field.source {
            ValueSource::Const(v) => v.clone(),
            ValueSource::Path(sel) => sel
                .select(dollar)
                .map(|c| c.into_owned())
                .unwrap_or(Value::Null),
            ValueSource::Template(t) => match self.engine.render(t, vars) {
                Ok(s) => Value::String(s),
                Err(e) => {
                    violations.push(Violation::field(
                        &field.target,
                        format!("cannot render `{}`: {e}", field.target),
                    ));
                    return None;
                }
            },
            ValueSource::Expr(e) => match self.engine.eval(e, vars) {
                Ok(v) => v,
                Err(e) => {
                    violations.push(Violation::field(
                        &field.target,
                        format!("cannot evaluate `{}`: {e}", field.target),
                    ));
                    return None;
                }
            },
            ValueSource::Lookup { name, placeholder } => {
                if !used_lookups.contains(&name.as_str()) {
                    used_lookups.push(name);
                }
                return Some(placeholder.clone());
            }
            ValueSource::Each { selector, fields } => {
                let mut items = Vec::new();
                for (i, item) in selector.select_all(dollar).into_iter().enumerate() {
                    let mut item_vars = Vars {
                        entries: vars.entries.clone(),
                    };
                    item_vars.entries.retain(|(n, _)| *n != "item");
                    item_vars.entries.push(("item", VarValue::Borrowed(item)));
                    let mut inner = Vec::new();
                    let obj = self.build_fields(
                        fields,
                        &item_vars,
                        item,
                        op,
                        true,
                        &mut inner,
                        used_lookups,
                    );
                    violations.extend(inner.into_iter().map(|mut v| {
                        v.field = Some(format!(
                            "{}[{i}].{}",
                            field.target,
                            v.field.unwrap_or_default()
                        ));
                        v
                    }));
                    items.push(Value::Object(obj));
                }
                Value::Array(items)
            }
        };
        let mut value = raw;
        if is_blank(&value)
            && let Some(d) = &field.default
        {
            value = d.clone();
        }
        for step in &field.steps {
            match step.apply(value) {
                Ok(v) => value = v,
                Err(message) => {
                    violations.push(Violation::field(
                        &field.target,
                        format!("{}: {message}", field.target),
                    ));
                    return None;
                }
            }
        }
        if let Some(t) = field.value_type
            && !value.is_null()
            && !type_matches(t, &value)
        {
            violations.push(Violation::field(
                &field.target,
                format!(
                    "{}: expected {}, got {}",
                    field.target,
                    t.as_str(),
                    short_json(&value)
                ),
            ));
            return None;
        }
        // `required:` also refuses text that is only whitespace: a referral named "   " is as
        // nameless as one named "", and would become a CRM record nobody can find.
        if let Some(message) = &field.required
            && (is_blank(&value) || value.as_str().is_some_and(|s| s.trim().is_empty()))
        {
            violations.push(Violation::field(&field.target, message.clone()));
            return None;
        }
        Some(value)
    }

    fn lookup_requests(
        &self,
        used: &[&str],
        vars: &Vars<'_>,
        dollar: &Value,
        violations: &mut Vec<Violation>,
    ) -> Vec<LookupRequest> {
        // Dependencies first; each lookup once.
        let mut order: Vec<&str> = Vec::new();
        fn visit<'p>(plan: &'p Plan, name: &'p str, order: &mut Vec<&'p str>, depth: usize) {
            if order.contains(&name) || depth > 16 {
                return;
            }
            if let Some(l) = plan.lookups.get(name) {
                for dep in &l.depends_on {
                    visit(plan, dep, order, depth + 1);
                }
            }
            order.push(name);
        }
        for name in used {
            visit(self, name, &mut order, 0);
        }
        let mut requests = Vec::new();
        for name in order {
            let Some(l) = self.lookups.get(name) else {
                continue;
            };
            let mut nested: Vec<&str> = Vec::new();
            let mut inner = Vec::new();
            let matches = self.build_fields(
                &l.match_fields,
                vars,
                dollar,
                Operation::Create,
                false,
                &mut inner,
                &mut nested,
            );
            violations.extend(inner.into_iter().map(|mut v| {
                v.field = Some(format!("lookup {name}: {}", v.field.unwrap_or_default()));
                v
            }));
            // `create` fields are computed only when a lookup finds nothing
            // (`Plan::lookup_create`): most lookups match, and this is the hot path.
            let create = Map::new();
            let message = l.message.as_ref().map(|m| {
                self.engine
                    .render(m, vars)
                    .unwrap_or_else(|_| format!("no matching record for lookup `{name}`"))
            });
            requests.push(LookupRequest {
                name: name.to_string(),
                entity: l.entity.clone(),
                id_field: l.id_field.clone(),
                matches,
                on_missing: l.on_missing,
                create,
                message,
                cache: l.cache,
            });
        }
        requests
    }
}

fn writes_on(on: WriteOn, op: Operation) -> bool {
    match on {
        WriteOn::Always => true,
        WriteOn::Create => op == Operation::Create,
        WriteOn::Update => op == Operation::Update,
    }
}

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn type_matches(t: ValueType, v: &Value) -> bool {
    use super::transforms::datetime;
    match (t, v) {
        (ValueType::String, Value::String(_)) => true,
        (ValueType::Number, Value::Number(_)) => true,
        (ValueType::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
        (ValueType::Boolean, Value::Bool(_)) => true,
        (ValueType::Date, Value::String(s)) => s.len() == 10 && datetime::parse(s).is_some(),
        (ValueType::Datetime, Value::String(s)) => datetime::parse(s).is_some(),
        (ValueType::Array, Value::Array(_)) => true,
        (ValueType::Object, Value::Object(_)) => true,
        _ => false,
    }
}

/// Puts a field's value into a record, nesting Partner Center paths.
fn insert(fields: &mut Map<String, Value>, field: &FieldPlan, value: Value) {
    let Some(path) = &field.nested else {
        fields.insert(field.target.clone(), value);
        return;
    };
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = fields;
    for p in parents {
        let entry = current
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(m) = entry else { return };
        current = m;
    }
    current.insert(last.clone(), value);
}

// ---------------------------------------------------------------------------------------------
// Compilation
// ---------------------------------------------------------------------------------------------

impl Compiler<'_> {
    fn settings_vars(&self) -> Vars<'_> {
        Vars {
            entries: vec![(
                "settings",
                VarValue::Prepared(&self.settings, &self.settings_mj),
            )],
        }
    }

    fn settings_names(&self) -> Vec<String> {
        self.settings
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Renders text that may be a template over settings only (keys, value-map entries).
    fn settings_text(&mut self, text: &str, pointer: &str, at_key: bool) -> Option<String> {
        if !text.contains("{{") && !text.contains("{%") {
            return Some(text.to_string());
        }
        let t = match self.engine.template(text) {
            Ok(t) => t,
            Err(e) => {
                let mut err = PlanError::new(
                    "bad-template",
                    pointer,
                    format!("template `{text}` does not compile: {}", e.message),
                );
                err.at_key = at_key;
                self.errors.push(err);
                return None;
            }
        };
        let vars_used = self.engine.variables_of(Engine::name_of_template(&t));
        if let Some(v) = vars_used.iter().find(|v| v.as_str() != "settings") {
            let mut err = PlanError::new(
                "variable-not-in-scope",
                pointer,
                format!(
                    "`{v}` is not available here; only `settings` can be used in names and value-map entries"
                ),
            );
            err.at_key = at_key;
            self.errors.push(err);
            return None;
        }
        self.check_settings_refs(text, pointer, at_key);
        match self.engine.render(&t, &self.settings_vars()) {
            Ok(s) => Some(s),
            Err(e) => {
                let mut err = PlanError::new(
                    "bad-template",
                    pointer,
                    format!("cannot render `{text}`: {e}"),
                );
                err.at_key = at_key;
                self.errors.push(err);
                None
            }
        }
    }

    /// A value-map entry: `"{{ settings.x }}"` alone keeps the setting's type (a status reason
    /// code stays a number); any other text is rendered as a template.
    fn settings_value(&mut self, text: &str, pointer: &str) -> Option<Value> {
        let trimmed = text.trim();
        if let Some(inner) = trimmed
            .strip_prefix("{{")
            .and_then(|t| t.strip_suffix("}}"))
            && !inner.contains("{{")
            && !inner.contains("}}")
        {
            let expr = match self.engine.expression(inner.trim()) {
                Ok(e) => e,
                Err(e) => {
                    self.errors.push(PlanError::new(
                        "bad-template",
                        pointer,
                        format!("template `{text}` does not compile: {}", e.message),
                    ));
                    return None;
                }
            };
            let vars_used = self.engine.variables_of(Engine::name_of_expression(&expr));
            if let Some(v) = vars_used.iter().find(|v| v.as_str() != "settings") {
                self.errors.push(PlanError::new("variable-not-in-scope", pointer, format!("`{v}` is not available here; only `settings` can be used in value-map entries")));
                return None;
            }
            self.check_settings_refs(text, pointer, false);
            return match self.engine.eval(&expr, &self.settings_vars()) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.errors.push(PlanError::new(
                        "bad-template",
                        pointer,
                        format!("cannot evaluate `{text}`: {e}"),
                    ));
                    None
                }
            };
        }
        self.settings_text(text, pointer, false).map(Value::String)
    }

    /// Checks every `settings.<name>` in a template/expression source.
    fn check_settings_refs(&mut self, source: &str, pointer: &str, at_key: bool) {
        let names = self.settings_names();
        for name in attribute_refs(source, "settings") {
            if !names.iter().any(|n| n == &name) {
                let mut err = PlanError::new(
                    "unknown-setting",
                    pointer,
                    format!("unknown setting `{name}`"),
                )
                .hint(
                    suggest(&name, names.iter().map(String::as_str))
                        .or_else(|| Some("declare it under `settings.custom`".into())),
                );
                err.at_key = at_key;
                self.errors.push(err);
            }
        }
    }

    /// Checks `referral.a.b` chains in a source against the referral schema.
    fn check_referral_refs(&mut self, source: &str, var: &str, pointer: &str) {
        for chain in member_chains(source, var) {
            let steps: Vec<RsStep<'_>> = chain
                .iter()
                .map(|s| {
                    if s.parse::<usize>().is_ok() {
                        RsStep::Index
                    } else {
                        RsStep::Key(s)
                    }
                })
                .collect();
            if let PathCheck::Unknown { at, members } = rs::check(&steps) {
                let bad = chain.get(at).map(String::as_str).unwrap_or("");
                if bad.is_empty() {
                    continue;
                }
                let parent = chain[..at].join(".");
                self.errors.push(
                    PlanError::new(
                        "unknown-referral-field",
                        pointer,
                        format!(
                            "`{var}.{}` is not a Partner Center referral field",
                            if parent.is_empty() {
                                bad.to_string()
                            } else {
                                format!("{parent}.{bad}")
                            }
                        ),
                    )
                    .hint(
                        suggest(bad, members.iter().copied())
                            .or_else(|| (!members.is_empty()).then(|| known_fields(&members))),
                    ),
                );
            }
        }
    }

    fn check_vars(&mut self, name_of: &str, scope: &Scope, pointer: &str, what: &str) {
        let used = self.engine.variables_of(name_of);
        let mut used: Vec<String> = used.into_iter().collect();
        used.sort();
        for v in used {
            if GLOBALS.contains(&v.as_str()) || scope.names.contains(&v.as_str()) {
                continue;
            }
            let hint = suggest(&v, scope.names.iter().copied())
                .unwrap_or_else(|| format!("available here: {}", scope.names.join(", ")));
            self.errors.push(
                PlanError::new(
                    "variable-not-in-scope",
                    pointer,
                    format!("{what} uses `{v}`, which is not available here"),
                )
                .hint(Some(hint)),
            );
        }
    }

    /// The static checks every compiled template and expression gets: variables in scope,
    /// settings that exist, Partner Center fields that exist.
    fn check_source(
        &mut self,
        name_of: &str,
        source: &str,
        scope: &Scope,
        pointer: &str,
        what: &str,
    ) {
        self.check_vars(name_of, scope, pointer, what);
        self.check_settings_refs(source, pointer, false);
        if scope.source.is_partner_center() {
            self.check_referral_refs(source, scope.source.as_str(), pointer);
        }
    }

    /// Unknown filters and tests: an error here, not a failure of every record at run time.
    fn check_filter_and_test_names(&mut self, source: &str, is_template: bool, pointer: &str) {
        for (kind, name) in self.engine.unknown_names(source, is_template) {
            let known = if kind == "filter" {
                super::template::KNOWN_FILTERS
            } else {
                super::template::KNOWN_TESTS
            };
            let hint = did_you_mean(&name, known.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .or_else(|| template_hint(source, &format!("unknown {kind}")));
            self.errors.push(
                PlanError::new(
                    if kind == "filter" {
                        "unknown-filter"
                    } else {
                        "unknown-test"
                    },
                    pointer,
                    format!("unknown {kind} `{name}`"),
                )
                .hint(hint),
            );
        }
    }

    fn template(&mut self, source: &str, scope: &Scope, pointer: &str) -> Option<Template> {
        match self.engine.template(source) {
            Ok(t) => {
                self.check_filter_and_test_names(source, true, pointer);
                self.check_source(
                    Engine::name_of_template(&t),
                    source,
                    scope,
                    pointer,
                    "template",
                );
                Some(t)
            }
            Err(e) => {
                self.errors.push(
                    PlanError::new(
                        "bad-template",
                        pointer,
                        format!("template does not compile: {}", e.message),
                    )
                    .hint(template_hint(source, &e.message)),
                );
                None
            }
        }
    }

    fn expression(&mut self, source: &str, scope: &Scope, pointer: &str) -> Option<Expression> {
        match self.engine.expression(source) {
            Ok(e) => {
                self.check_filter_and_test_names(source, false, pointer);
                self.check_source(
                    Engine::name_of_expression(&e),
                    source,
                    scope,
                    pointer,
                    "expression",
                );
                Some(e)
            }
            Err(e) => {
                let hint = if source.contains("{{") {
                    Some("expressions are written without `{{ }}`, e.g. `referral.details.dealValue > 0`".to_string())
                } else {
                    None
                };
                self.errors.push(
                    PlanError::new(
                        "bad-expression",
                        pointer,
                        format!("expression does not compile: {}", e.message),
                    )
                    .hint(hint),
                );
                None
            }
        }
    }

    fn selector(
        &mut self,
        source: &str,
        scope: &Scope,
        pointer: &str,
    ) -> Option<(Selector, Option<FieldType>)> {
        match Selector::parse(source) {
            Ok(sel) => {
                let mut ty = None;
                if scope.source.is_partner_center()
                    && !scope.dollar_is_item
                    && let Some(chain) = sel.chain()
                {
                    let steps: Vec<RsStep<'_>> = chain
                        .iter()
                        .map(|s| match s {
                            Segment::Key(k) => RsStep::Key(k),
                            Segment::Index(_) => RsStep::Index,
                        })
                        .collect();
                    match rs::check(&steps) {
                        PathCheck::Known(t) => ty = Some(t),
                        PathCheck::Opaque => {}
                        PathCheck::Unknown { at, members } => {
                            if let Some(Segment::Key(bad)) = chain.get(at) {
                                self.errors.push(
                                    PlanError::new("unknown-referral-field", pointer, format!("`{bad}` in `{source}` is not a Partner Center referral field"))
                                        .hint(suggest(bad, members.iter().copied()).or_else(|| (!members.is_empty()).then(|| known_fields(&members)))),
                                );
                            } else {
                                self.errors.push(PlanError::new("unknown-referral-field", pointer, format!("`{source}` does not fit the shape of a Partner Center referral")));
                            }
                        }
                    }
                }
                Some((sel, ty))
            }
            Err(e) => {
                let hint = if !source.trim_start().starts_with('$') {
                    Some("JSONPath starts at the record root: `$.details.dealValue`".to_string())
                } else {
                    Some("check brackets and quotes; filters look like `$.team[?@.email == 'a@b.com']`".to_string())
                };
                self.errors
                    .push(PlanError::new("bad-jsonpath", pointer, e.message).hint(hint));
                None
            }
        }
    }

    fn value_map(&mut self, name: &str, vm: &ValueMap) -> Option<ValueMapPlan> {
        let base = format!("/value_maps/{}", esc(name));
        let mut forward = KeyTable::default();
        let mut ok = true;
        let mut raw_keys = Vec::new();
        for (k, v) in &vm.entries {
            let ptr = format!("{base}/entries/{}", esc(k));
            let Some(key) = self.settings_text(k, &ptr, true) else {
                ok = false;
                continue;
            };
            let value = match v {
                Value::String(s) => match self.settings_value(s, &ptr) {
                    Some(v) => v,
                    None => {
                        ok = false;
                        continue;
                    }
                },
                other => other.clone(),
            };
            if let Some(domain) = vm.values {
                self.check_domain_value(domain, &value, &ptr, "value");
            }
            let norm = if vm.ignore_case {
                key.to_lowercase()
            } else {
                key.clone()
            };
            if forward.insert(norm, value).is_some() {
                self.errors.push(
                    PlanError::new(
                        "duplicate-entry",
                        ptr.clone(),
                        format!("value map `{name}` has two entries for `{key}`"),
                    )
                    .at_key(),
                );
            }
            raw_keys.push((key, ptr));
        }
        if let Some(domain) = vm.keys {
            for (key, ptr) in &raw_keys {
                self.check_domain_value(domain, &Value::String(key.clone()), ptr, "key");
            }
            let undeclared = matches!(
                vm.fallback,
                Fallback::Undeclared | Fallback::Action(FallbackAction::Error)
            );
            if undeclared && let Some(all) = domain_values(domain) {
                let missing: Vec<&str> = all
                    .iter()
                    .copied()
                    .filter(|v| {
                        let k = if vm.ignore_case {
                            v.to_lowercase()
                        } else {
                            v.to_string()
                        };
                        !forward.contains_key(&k)
                    })
                    .collect();
                if !missing.is_empty() {
                    self.errors.push(
                        PlanError::new("incomplete-value-map", format!("{base}/entries"), format!("value map `{name}` has no entry for {} it can meet: {}", domain_label(domain), missing.join(", ")))
                            .hint(Some("add the missing entries, or declare a `fallback:` (`keep`, `null` or `{ value: … }`)".into()))
                            .at_key(),
                    );
                }
            }
        }
        if let Fallback::Value(FallbackValue { value }) = &vm.fallback
            && let Some(domain) = vm.values
        {
            self.check_domain_value(domain, value, &format!("{base}/fallback/value"), "fallback");
        }
        // A reverse table exists only when values are unique scalars.
        let mut reverse = KeyTable::default();
        let mut reversible = true;
        for (k, v) in &forward {
            match key_text(v) {
                Some(vk) => {
                    let vk = if vm.ignore_case {
                        vk.to_lowercase()
                    } else {
                        vk
                    };
                    if reverse.insert(vk, Value::String(k.clone())).is_some() {
                        reversible = false;
                    }
                }
                None => reversible = false,
            }
        }
        ok.then(|| ValueMapPlan {
            name: name.to_string(),
            ignore_case: vm.ignore_case,
            forward,
            reverse: reversible.then_some(reverse),
            fallback: vm.fallback.clone(),
        })
    }

    fn check_domain_value(&mut self, domain: Domain, value: &Value, pointer: &str, what: &str) {
        let Some(text) = value.as_str() else {
            if !value.is_null() {
                self.errors.push(PlanError::new(
                    "type-mismatch",
                    pointer,
                    format!(
                        "{what} {} must be text from {}",
                        short_json(value),
                        domain_label(domain)
                    ),
                ));
            }
            return;
        };
        let ok = match domain {
            Domain::CountryCode => super::transforms::country::is_alpha2_code(text),
            Domain::CurrencyCode => super::transforms::currency::is_code(text),
            d => domain_values(d).is_some_and(|all| all.contains(&text)),
        };
        if !ok {
            let hint = domain_values(domain)
                .and_then(|all| suggest(text, all.iter().copied()))
                .or_else(|| {
                    domain_values(domain).map(|all| format!("valid values: {}", all.join(", ")))
                });
            let mut err = PlanError::new(
                "not-in-domain",
                pointer,
                format!("{what} `{text}` is not one of {}", domain_label(domain)),
            )
            .hint(hint);
            err.at_key = what == "key";
            self.errors.push(err);
        }
    }

    fn lookup(&mut self, name: &str, l: &Lookup) -> Option<LookupPlan> {
        let base = format!("/lookups/{}", esc(name));
        // Lookups run in the scope of the flow that uses them; variables are checked per use.
        // Here, compile with the widest scope and let `flow` re-check.
        let scope = Scope {
            names: vec![
                "referral",
                "related_referral",
                "opportunity",
                "lead",
                "account",
                "contact",
                "solution",
                "settings",
                "parent",
                "item",
                "operation",
            ],
            source: RecordKind::Opportunity,
            dollar_is_item: false,
        };
        let match_fields = self.fields(
            &l.match_fields,
            &scope,
            &format!("{base}/match"),
            None,
            true,
        );
        if l.match_fields.is_empty() {
            self.errors.push(
                PlanError::new(
                    "empty-lookup",
                    format!("{base}/match"),
                    format!("lookup `{name}` has no `match` columns"),
                )
                .at_key(),
            );
        }
        let create = self.fields(&l.create, &scope, &format!("{base}/create"), None, true);
        if l.on_missing == OnMissing::Create && l.create.is_empty() {
            self.errors.push(
                PlanError::new("empty-lookup", format!("{base}/on_missing"), format!("lookup `{name}` creates a record when none matches, but declares no `create` fields"))
                    .hint(Some("add `create:` with at least the required columns".into())),
            );
        }
        let mut depends_on = Vec::new();
        for (field, fm) in &l.create {
            if let FieldMapping::Full(spec) = fm
                && let Some(dep) = &spec.lookup
            {
                if !self.config.lookups.contains_key(dep) {
                    self.errors.push(
                        PlanError::new(
                            "unknown-lookup",
                            format!("{base}/create/{}/lookup", esc(field)),
                            format!("unknown lookup `{dep}`"),
                        )
                        .hint(suggest(dep, self.config.lookups.keys().map(String::as_str))),
                    );
                }
                depends_on.push(dep.clone());
            }
        }
        let message = l
            .message
            .as_ref()
            .and_then(|m| self.template(m, &scope, &format!("{base}/message")));
        let default_result = match self.config.crm {
            CrmKind::Dynamics365 => format!("/{}({{{{ id }}}})", l.entity),
            CrmKind::Salesforce => "{{ id }}".to_string(),
        };
        let result_scope = Scope {
            names: vec!["id", "settings"],
            source: RecordKind::Opportunity,
            dollar_is_item: false,
        };
        let result = self.template(
            l.result.as_deref().unwrap_or(&default_result),
            &result_scope,
            &format!("{base}/result"),
        )?;
        let id_field = l
            .id_field
            .clone()
            .unwrap_or_else(|| default_id_field(self.config.crm, &l.entity));
        Some(LookupPlan {
            name: name.to_string(),
            entity: l.entity.clone(),
            id_field,
            match_fields: FieldSet::new(match_fields?),
            on_missing: l.on_missing,
            create: FieldSet::new(create?),
            message,
            result,
            cache: l.cache,
            depends_on,
        })
    }

    fn check_lookup_cycles(&mut self, lookups: &BTreeMap<String, LookupPlan>) {
        for start in lookups.keys() {
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            while let Some((node, path)) = stack.pop() {
                let Some(l) = lookups.get(&node) else {
                    continue;
                };
                for dep in &l.depends_on {
                    if dep == start {
                        self.errors.push(
                            PlanError::new(
                                "lookup-cycle",
                                format!("/lookups/{}", esc(start)),
                                format!(
                                    "lookups depend on each other in a circle: {} → {start}",
                                    path.join(" → ")
                                ),
                            )
                            .at_key(),
                        );
                        return;
                    }
                    if !path.contains(dep) && path.len() < 32 {
                        let mut p = path.clone();
                        p.push(dep.clone());
                        stack.push((dep.clone(), p));
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fields(
        &mut self,
        fields: &BTreeMap<String, FieldMapping>,
        scope: &Scope,
        base: &str,
        target: Option<RecordKind>,
        templated_keys: bool,
    ) -> Option<Vec<FieldPlan>> {
        self.fields_under(fields, scope, base, target, templated_keys, "")
    }

    /// Like [`Compiler::fields`], for the elements of an `each` whose path (for Partner Center
    /// schema checks) is `prefix`.
    #[allow(clippy::too_many_arguments)]
    fn fields_under(
        &mut self,
        fields: &BTreeMap<String, FieldMapping>,
        scope: &Scope,
        base: &str,
        target: Option<RecordKind>,
        templated_keys: bool,
        prefix: &str,
    ) -> Option<Vec<FieldPlan>> {
        let mut out = Vec::new();
        let mut ok = true;
        let mut seen: HashMap<String, String> = HashMap::new();
        for (key, fm) in fields {
            let ptr = format!("{base}/{}", esc(key));
            let concrete = if templated_keys {
                match self.settings_text(key, &ptr, true) {
                    Some(k) => k,
                    None => {
                        ok = false;
                        continue;
                    }
                }
            } else {
                key.clone()
            };
            if concrete.trim().is_empty() {
                self.errors.push(
                    PlanError::new(
                        "empty-field-name",
                        ptr.clone(),
                        format!("field name `{key}` is empty after substituting settings"),
                    )
                    .at_key(),
                );
                ok = false;
                continue;
            }
            if let Some(first) = seen.insert(concrete.clone(), key.clone()) {
                self.errors.push(
                    PlanError::new("duplicate-field", ptr.clone(), format!("field `{concrete}` is mapped twice (also by `{first}`)"))
                        .hint(Some("a setting used as a field name may name a field that is mapped explicitly too".into()))
                        .at_key(),
                );
                ok = false;
                continue;
            }
            match self.field(&concrete, fm, scope, &ptr, target, prefix) {
                Some(f) => out.push(f),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn field(
        &mut self,
        target_name: &str,
        fm: &FieldMapping,
        scope: &Scope,
        ptr: &str,
        target: Option<RecordKind>,
        prefix: &str,
    ) -> Option<FieldPlan> {
        let schema_name = if prefix.is_empty() {
            target_name.to_string()
        } else {
            format!("{prefix}.{target_name}")
        };
        let spec: FieldSpec = match fm {
            FieldMapping::Full(spec) => (**spec).clone(),
            FieldMapping::Short(short) => short_to_spec(short),
        };
        let spec_ptr = |k: &str| match fm {
            FieldMapping::Full(_) => format!("{ptr}/{k}"),
            FieldMapping::Short(_) => ptr.to_string(),
        };
        // Exactly one source.
        let given: Vec<&str> = [
            ("path", spec.path.is_some()),
            ("template", spec.template.is_some()),
            ("expr", spec.expr.is_some()),
            ("const", spec.constant.is_some()),
            ("setting", spec.setting.is_some()),
            ("lookup", spec.lookup.is_some()),
            ("each", spec.each.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, g)| g.then_some(n))
        .collect();
        if given.len() != 1 {
            let message = if given.is_empty() {
                format!("field `{target_name}` says nothing about where its value comes from")
            } else {
                format!(
                    "field `{target_name}` has {} value sources ({}); give exactly one",
                    given.len(),
                    given.join(", ")
                )
            };
            self.errors.push(
                PlanError::new("field-source", ptr, message).hint(Some(
                    "use one of `path`, `template`, `expr`, `const`, `setting`, `lookup` or `each`"
                        .into(),
                )),
            );
            return None;
        }
        if spec.fields.is_some() && spec.each.is_none() {
            self.errors.push(
                PlanError::new(
                    "field-source",
                    format!("{ptr}/fields"),
                    "`fields` only makes sense together with `each`",
                )
                .at_key(),
            );
        }
        if spec.map.is_some() && spec.reverse_map.is_some() {
            self.errors.push(
                PlanError::new(
                    "field-source",
                    format!("{ptr}/reverse_map"),
                    "give either `map` or `reverse_map`, not both",
                )
                .at_key(),
            );
        }
        let mut source_type: Option<FieldType> = None;
        let source = if let Some(p) = &spec.path {
            let (sel, ty) = self.selector(p, scope, &spec_ptr("path"))?;
            source_type = ty;
            ValueSource::Path(sel)
        } else if let Some(t) = &spec.template {
            ValueSource::Template(self.template(t, scope, &spec_ptr("template"))?)
        } else if let Some(e) = &spec.expr {
            ValueSource::Expr(self.expression(e, scope, &spec_ptr("expr"))?)
        } else if let Some(c) = &spec.constant {
            ValueSource::Const(c.clone())
        } else if let Some(s) = &spec.setting {
            match self.settings.get(s) {
                Some(v) => ValueSource::Const(v.clone()),
                None => {
                    let names = self.settings_names();
                    self.errors.push(
                        PlanError::new(
                            "unknown-setting",
                            spec_ptr("setting"),
                            format!("unknown setting `{s}`"),
                        )
                        .hint(suggest(s, names.iter().map(String::as_str))),
                    );
                    return None;
                }
            }
        } else if let Some(l) = &spec.lookup {
            if !self.config.lookups.contains_key(l) {
                self.errors.push(
                    PlanError::new(
                        "unknown-lookup",
                        spec_ptr("lookup"),
                        format!("unknown lookup `{l}`"),
                    )
                    .hint(
                        suggest(l, self.config.lookups.keys().map(String::as_str))
                            .or_else(|| Some("declare it under `lookups:`".into())),
                    ),
                );
                return None;
            }
            ValueSource::Lookup {
                name: l.clone(),
                placeholder: lookup_placeholder(l),
            }
        } else if let Some(e) = &spec.each {
            let (selector, _) = self.selector(e, scope, &spec_ptr("each"))?;
            let Some(inner) = &spec.fields else {
                self.errors.push(PlanError::new(
                    "field-source",
                    ptr,
                    format!(
                        "field `{target_name}` uses `each` but has no `fields` for the elements"
                    ),
                ));
                return None;
            };
            let item_scope = Scope {
                dollar_is_item: true,
                ..scope.with("item")
            };
            let nested_target = target.filter(|t| t.is_partner_center());
            let fields = self.fields_under(
                inner,
                &item_scope,
                &format!("{ptr}/fields"),
                nested_target,
                false,
                &format!("{schema_name}.0"),
            )?;
            ValueSource::Each {
                selector,
                fields: FieldSet::new(fields),
            }
        } else {
            return None;
        };
        let mut steps = Vec::new();
        let mut current_type = source_type;
        for (i, t) in spec.transform.iter().enumerate() {
            let step_ptr = format!("{ptr}/transform/{i}");
            if let Some(st) = current_type {
                self.check_transform_input(t, st, &step_ptr, target_name);
            }
            current_type = None;
            steps.push(match t {
                Transform::Map(m) => {
                    StepPlan::Map(self.value_map_ref(m, &format!("{step_ptr}/map"))?, false)
                }
                other => StepPlan::Builtin(other.clone()),
            });
        }
        if let Some(m) = &spec.map {
            steps.push(StepPlan::Map(
                self.value_map_ref(m, &format!("{ptr}/map"))?,
                false,
            ));
        }
        if let Some(m) = &spec.reverse_map {
            let vm = self.value_map_ref(m, &format!("{ptr}/reverse_map"))?;
            if vm.reverse.is_none() {
                self.errors.push(
                    PlanError::new("irreversible-value-map", format!("{ptr}/reverse_map"), format!("value map `{m}` cannot be used backwards: two keys share a value, or a value is not text/number"))
                        .hint(Some("declare a separate value map for this direction".into())),
                );
                return None;
            }
            steps.push(StepPlan::Map(vm, true));
        }
        let when = match &spec.when {
            Some(w) => Some(self.expression(w, scope, &format!("{ptr}/when"))?),
            None => None,
        };
        if let (Some(t), Some(c)) = (spec.value_type, &spec.constant)
            && spec.transform.is_empty()
            && spec.map.is_none()
            && !c.is_null()
            && !type_matches(t, c)
        {
            self.errors.push(PlanError::new(
                "type-mismatch",
                format!("{ptr}/const"),
                format!("constant {} is not a {}", short_json(c), t.as_str()),
            ));
        }
        if let (Some(t), Some(d)) = (spec.value_type, &spec.default)
            && spec.transform.is_empty()
            && !type_matches(t, d)
        {
            self.errors.push(PlanError::new(
                "type-mismatch",
                format!("{ptr}/default"),
                format!("default {} is not a {}", short_json(d), t.as_str()),
            ));
        }
        // Partner Center targets: the field must exist, and constants must fit its type.
        let nested = if target.is_some_and(RecordKind::is_partner_center) {
            let steps_rs = rs::dotted_steps(&schema_name);
            match rs::check(&steps_rs) {
                PathCheck::Known(ft) => {
                    if let ValueSource::Const(c) = &source
                        && spec.transform.is_empty()
                        && spec.map.is_none()
                        && spec.reverse_map.is_none()
                    {
                        self.check_const_for_referral(ft, c, &spec_ptr("const"), target_name);
                    }
                }
                PathCheck::Opaque => {}
                PathCheck::Unknown { at, members } => {
                    let bad = schema_name
                        .split('.')
                        .nth(at)
                        .unwrap_or(target_name)
                        .to_string();
                    let bad = bad.as_str();
                    self.errors.push(
                        PlanError::new(
                            "unknown-referral-field",
                            ptr,
                            format!("`{schema_name}` is not a Partner Center referral field"),
                        )
                        .hint(
                            suggest(bad, members.iter().copied())
                                .or_else(|| (!members.is_empty()).then(|| known_fields(&members))),
                        )
                        .at_key(),
                    );
                }
            }
            Some(target_name.split('.').map(str::to_string).collect())
        } else {
            None
        };
        Some(FieldPlan {
            target: target_name.to_string(),
            nested,
            source: fold_constant(self, source),
            default: spec.default.clone(),
            steps,
            value_type: spec.value_type,
            required: spec.required.clone(),
            when,
            on: spec.on.unwrap_or(WriteOn::Always),
            owner: spec.owner,
        })
    }

    fn check_const_for_referral(&mut self, ft: FieldType, c: &Value, ptr: &str, target_name: &str) {
        let ok = match (ft, c) {
            (_, Value::Null) => true,
            (FieldType::String, Value::String(_)) => true,
            (FieldType::Number, Value::Number(_)) => true,
            (FieldType::Boolean, Value::Bool(_)) => true,
            (FieldType::Datetime, Value::String(s)) => {
                super::transforms::datetime::parse(s).is_some()
            }
            (FieldType::Enum(values), Value::String(s)) => {
                if !values.contains(&s.as_str()) {
                    self.errors.push(
                        PlanError::new(
                            "not-in-domain",
                            ptr,
                            format!("`{s}` is not a valid `{target_name}`"),
                        )
                        .hint(
                            suggest(s, values.iter().copied())
                                .or_else(|| Some(format!("valid values: {}", values.join(", ")))),
                        ),
                    );
                }
                return;
            }
            (FieldType::Object, Value::Object(_))
            | (FieldType::Array, Value::Array(_))
            | (FieldType::Any, _) => true,
            _ => false,
        };
        if !ok {
            self.errors.push(PlanError::new(
                "type-mismatch",
                ptr,
                format!(
                    "`{target_name}` takes {}, but the constant is {}",
                    type_label(ft),
                    short_json(c)
                ),
            ));
        }
    }

    fn check_transform_input(
        &mut self,
        t: &Transform,
        source: FieldType,
        ptr: &str,
        target_name: &str,
    ) {
        let text_only = matches!(
            t,
            Transform::CountryCode
                | Transform::CountryName
                | Transform::CountryAlpha3
                | Transform::CurrencyCode
                | Transform::Trim
                | Transform::Upper
                | Transform::Lower
                | Transform::Truncate(_)
                | Transform::MaxLength(_)
                | Transform::StripMarks
        );
        let date_only = matches!(t, Transform::Date | Transform::Datetime);
        let numeric = matches!(t, Transform::Round(_) | Transform::Integer);
        let is_text = matches!(
            source,
            FieldType::String | FieldType::Enum(_) | FieldType::Datetime
        );
        let bad = (text_only && !is_text && source != FieldType::Any)
            || (date_only
                && !matches!(
                    source,
                    FieldType::Datetime | FieldType::String | FieldType::Any
                ))
            || (numeric
                && !matches!(
                    source,
                    FieldType::Number | FieldType::String | FieldType::Any
                ));
        if bad {
            self.errors.push(PlanError::new(
                "type-mismatch",
                ptr,
                format!(
                    "transform `{}` cannot convert {} (the source of `{target_name}`)",
                    transform_name(t),
                    type_label(source)
                ),
            ));
        }
    }

    fn value_map_ref(&mut self, name: &str, ptr: &str) -> Option<Arc<ValueMapPlan>> {
        if let Some(m) = self.value_maps.get(name) {
            return Some(m.clone());
        }
        if !self.config.value_maps.contains_key(name) {
            self.errors.push(
                PlanError::new(
                    "unknown-value-map",
                    ptr,
                    format!("unknown value map `{name}`"),
                )
                .hint(
                    suggest(name, self.config.value_maps.keys().map(String::as_str))
                        .or_else(|| Some("declare it under `value_maps:`".into())),
                ),
            );
        }
        None
    }

    fn flow(
        &mut self,
        name: &str,
        f: &Flow,
        lookups: &BTreeMap<String, LookupPlan>,
    ) -> Option<FlowPlan> {
        let base = format!("/flows/{}", esc(name));
        let crm = self.config.crm;
        if f.source.is_partner_center() == f.target.is_partner_center() {
            let msg = if f.source.is_partner_center() {
                "a flow must have a CRM record on one side; both `source` and `target` are Partner Center records"
            } else {
                "a flow must have a Partner Center record (`referral` or `related_referral`) on one side"
            };
            self.errors.push(PlanError::new(
                "flow-direction",
                format!("{base}/target"),
                msg,
            ));
            return None;
        }
        if f.target == RecordKind::RelatedReferral {
            self.errors.push(
                PlanError::new("flow-direction", format!("{base}/target"), "cosell cannot write Microsoft's related referral")
                    .hint(Some("write `target: referral`; the Microsoft-targeted referral of a co-sell is a `referral` with `parent:`".into())),
            );
            return None;
        }
        let crm_kind = if f.source.is_partner_center() {
            f.target
        } else {
            f.source
        };
        let entity = match f
            .entity
            .clone()
            .or_else(|| crm_kind.default_entity(crm).map(str::to_string))
        {
            Some(e) => e,
            None => {
                self.errors.push(
                    PlanError::new(
                        "missing-entity",
                        &base,
                        format!("flow `{name}` needs `entity:`"),
                    )
                    .at_key(),
                );
                return None;
            }
        };
        let mut scope = Scope {
            names: vec![f.source.as_str(), "settings", "operation"],
            source: f.source,
            dollar_is_item: false,
        };
        if let Some(p) = &f.parent {
            scope = scope.with("parent");
            if !self.config.flows.contains_key(p) {
                self.errors.push(
                    PlanError::new(
                        "unknown-flow",
                        format!("{base}/parent"),
                        format!("unknown flow `{p}`"),
                    )
                    .hint(suggest(p, self.config.flows.keys().map(String::as_str))),
                );
            }
        }
        let for_each = match &f.for_each {
            Some(p) => Some(self.selector(p, &scope, &format!("{base}/for_each"))?.0),
            None => None,
        };
        let field_scope = if for_each.is_some() {
            Scope {
                dollar_is_item: true,
                ..scope.with("item")
            }
        } else {
            scope.clone()
        };
        if f.key.is_some() && for_each.is_none() {
            self.errors.push(
                PlanError::new(
                    "key-without-for-each",
                    format!("{base}/key"),
                    "`key` identifies child records and needs `for_each`",
                )
                .at_key(),
            );
        }
        if let Some(k) = &f.key
            && !f.fields.contains_key(k)
        {
            self.errors.push(
                PlanError::new(
                    "unknown-field",
                    format!("{base}/key"),
                    format!("key `{k}` is not one of the flow's fields"),
                )
                .hint(suggest(k, f.fields.keys().map(String::as_str))),
            );
        }
        if !f.expand.is_empty() && f.source.is_partner_center() {
            self.errors.push(
                PlanError::new(
                    "expand-on-referral",
                    format!("{base}/expand"),
                    "`expand` reads related CRM records; this flow reads a referral",
                )
                .at_key(),
            );
        }
        let when = match &f.when {
            Some(w) => self.expression(w, &scope, &format!("{base}/when")),
            None => None,
        };
        let fields = self.fields(
            &f.fields,
            &field_scope,
            &format!("{base}/fields"),
            Some(f.target),
            true,
        );
        if f.fields.is_empty() {
            self.errors.push(
                PlanError::new(
                    "empty-flow",
                    format!("{base}/fields"),
                    format!("flow `{name}` maps no fields"),
                )
                .at_key(),
            );
        }
        let mut rules = Vec::new();
        for (i, r) in f.require.iter().enumerate() {
            let rp = format!("{base}/require/{i}");
            let check = self.expression(&r.check, &scope, &format!("{rp}/check"));
            let message = self.template(&r.message, &scope, &format!("{rp}/message"));
            let when = match &r.when {
                Some(w) => self.expression(w, &scope, &format!("{rp}/when")).map(Some),
                None => Some(None),
            };
            if let (Some(check), Some(message), Some(when)) = (check, message, when) {
                rules.push(RulePlan {
                    check,
                    message,
                    when,
                });
            }
        }
        let write_back_target = Some(f.source);
        let on_success = match &f.on_success {
            Some(wb) => self.fields(
                &wb.fields,
                &scope.with("result"),
                &format!("{base}/on_success/fields"),
                write_back_target,
                true,
            ),
            None => Some(Vec::new()),
        };
        let on_failure = match &f.on_failure {
            Some(wb) => self.fields(
                &wb.fields,
                &scope.with("violations"),
                &format!("{base}/on_failure/fields"),
                write_back_target,
                true,
            ),
            None => Some(Vec::new()),
        };
        // Lookups used by this flow (and the ones they need), re-checked in this flow's scope.
        let mut lookups_used = Vec::new();
        collect_lookups(&f.fields, &mut lookups_used);
        let mut i = 0;
        while i < lookups_used.len() {
            if let Some(l) = lookups.get(&lookups_used[i]) {
                for d in &l.depends_on {
                    if !lookups_used.contains(d) {
                        lookups_used.push(d.clone());
                    }
                }
            }
            i += 1;
        }
        for l in &lookups_used {
            if let Some(decl) = self.config.lookups.get(l) {
                self.check_lookup_scope(l, decl, &field_scope, name);
            }
        }
        let referral_id_field = f.referral_id_field.clone().unwrap_or_else(|| {
            match crm {
                CrmKind::Dynamics365 => "cosell_referralid",
                CrmKind::Salesforce => "Referral_Id__c",
            }
            .to_string()
        });
        let sync_flag = f.sync_flag.clone().or_else(|| {
            (!f.source.is_partner_center() && f.source == RecordKind::Opportunity).then(|| {
                match crm {
                    CrmKind::Dynamics365 => "cosell_synctopartnercenter",
                    CrmKind::Salesforce => "Sync_With_Partner_Center__c",
                }
                .to_string()
            })
        });
        Some(FlowPlan {
            name: name.to_string(),
            source: f.source,
            target: f.target,
            entity,
            parent: f.parent.clone(),
            for_each,
            key: f.key.clone(),
            expand: f.expand.clone(),
            referral_id_field,
            sync_flag,
            when,
            fields: FieldSet::new(fields?),
            rules,
            on_success: FieldSet::new(on_success?),
            on_failure: FieldSet::new(on_failure?),
            lookups_used,
        })
    }

    fn check_lookup_scope(&mut self, name: &str, l: &Lookup, scope: &Scope, flow: &str) {
        let mut sources: Vec<(String, String)> = Vec::new();
        for (section, fields) in [("match", &l.match_fields), ("create", &l.create)] {
            for (k, fm) in fields {
                let ptr = format!("/lookups/{}/{section}/{}", esc(name), esc(k));
                match fm {
                    FieldMapping::Short(ShortMapping::Text(t))
                        if t.contains("{{") || t.contains("{%") =>
                    {
                        sources.push((t.clone(), ptr))
                    }
                    FieldMapping::Full(spec) => {
                        for s in [&spec.template, &spec.expr, &spec.when]
                            .into_iter()
                            .flatten()
                        {
                            sources.push((s.clone(), ptr.clone()));
                        }
                    }
                    _ => {}
                }
            }
        }
        for (src, ptr) in sources {
            let vars = top_level_identifiers(&src);
            for v in vars {
                if [
                    "referral",
                    "related_referral",
                    "opportunity",
                    "lead",
                    "account",
                    "contact",
                    "solution",
                    "parent",
                    "item",
                ]
                .contains(&v.as_str())
                    && !scope.names.contains(&v.as_str())
                {
                    self.errors.push(
                        PlanError::new(
                            "variable-not-in-scope",
                            ptr.clone(),
                            format!(
                                "lookup `{name}` uses `{v}`, which flow `{flow}` does not provide"
                            ),
                        )
                        .hint(Some(format!(
                            "flow `{flow}` provides: {}",
                            scope.names.join(", ")
                        ))),
                    );
                }
            }
            if scope.source.is_partner_center() {
                self.check_referral_refs(&src, scope.source.as_str(), &ptr);
            }
        }
    }

    fn check_flow_parents(&mut self) {
        for (name, f) in &self.config.flows {
            let mut seen = vec![name.as_str()];
            let mut current = f.parent.as_deref();
            while let Some(p) = current {
                if seen.contains(&p) {
                    self.errors.push(PlanError::new(
                        "flow-cycle",
                        format!("/flows/{}/parent", esc(name)),
                        format!(
                            "flows follow each other in a circle: {} → {p}",
                            seen.join(" → ")
                        ),
                    ));
                    break;
                }
                seen.push(p);
                current = self.config.flows.get(p).and_then(|f| f.parent.as_deref());
            }
        }
    }

    fn check_tests(&mut self) {
        for (i, t) in self.config.tests.iter().enumerate() {
            let base = format!("/tests/{i}");
            if !self.config.flows.contains_key(&t.flow) {
                self.errors.push(
                    PlanError::new(
                        "unknown-flow",
                        format!("{base}/flow"),
                        format!("test `{}` names unknown flow `{}`", t.name, t.flow),
                    )
                    .hint(suggest(
                        &t.flow,
                        self.config.flows.keys().map(String::as_str),
                    )),
                );
            }
            match (&t.input, &t.input_file) {
                (Some(_), Some(_)) => self.errors.push(
                    PlanError::new(
                        "test-input",
                        format!("{base}/input_file"),
                        "give `input` or `input_file`, not both",
                    )
                    .at_key(),
                ),
                (None, None) => self.errors.push(PlanError::new(
                    "test-input",
                    base.clone(),
                    format!("test `{}` has no `input` or `input_file`", t.name),
                )),
                _ => {}
            }
            for name in t.expect.lookups.keys() {
                if !self.config.lookups.contains_key(name) {
                    self.errors.push(
                        PlanError::new(
                            "unknown-lookup",
                            format!("{base}/expect/lookups/{}", esc(name)),
                            format!("unknown lookup `{name}`"),
                        )
                        .hint(suggest(
                            name,
                            self.config.lookups.keys().map(String::as_str),
                        ))
                        .at_key(),
                    );
                }
            }
        }
    }
}

/// Folds templates and expressions that read only settings into constants.
fn fold_constant(c: &mut Compiler<'_>, source: ValueSource) -> ValueSource {
    let only_settings = |c: &Compiler<'_>, name: &str| {
        let vars = c.engine.variables_of(name);
        vars.iter().all(|v| v == "settings")
    };
    match source {
        ValueSource::Template(t) if only_settings(c, Engine::name_of_template(&t)) => {
            match c.engine.render(&t, &c.settings_vars()) {
                Ok(s) => ValueSource::Const(Value::String(s)),
                Err(_) => ValueSource::Template(t),
            }
        }
        ValueSource::Expr(e) if only_settings(c, Engine::name_of_expression(&e)) => {
            match c.engine.eval(&e, &c.settings_vars()) {
                Ok(v) => ValueSource::Const(v),
                Err(_) => ValueSource::Expr(e),
            }
        }
        other => other,
    }
}

fn collect_lookups(fields: &BTreeMap<String, FieldMapping>, out: &mut Vec<String>) {
    for fm in fields.values() {
        if let FieldMapping::Full(spec) = fm {
            if let Some(l) = &spec.lookup
                && !out.contains(l)
            {
                out.push(l.clone());
            }
            if let Some(inner) = &spec.fields {
                collect_lookups(inner, out);
            }
        }
    }
}

/// The short form of a field mapping as a full spec.
fn short_to_spec(short: &ShortMapping) -> FieldSpec {
    let mut spec = FieldSpec::default();
    match short {
        ShortMapping::Text(t) if t.trim_start().starts_with('$') => spec.path = Some(t.clone()),
        ShortMapping::Text(t) if t.contains("{{") || t.contains("{%") => {
            spec.template = Some(t.clone())
        }
        ShortMapping::Text(t) => spec.constant = Some(Value::String(t.clone())),
        ShortMapping::Number(n) => spec.constant = Some(Value::Number(n.clone())),
        ShortMapping::Bool(b) => spec.constant = Some(Value::Bool(*b)),
        ShortMapping::Null(()) => spec.constant = Some(Value::Null),
    }
    spec
}

fn default_id_field(crm: CrmKind, entity: &str) -> String {
    match crm {
        CrmKind::Salesforce => "Id".to_string(),
        CrmKind::Dynamics365 => {
            let singular = if let Some(stem) = entity.strip_suffix("ies") {
                format!("{stem}y")
            } else if let Some(stem) = entity.strip_suffix('s') {
                stem.to_string()
            } else {
                entity.to_string()
            };
            format!("{singular}id")
        }
    }
}

fn domain_values(d: Domain) -> Option<&'static [&'static str]> {
    Some(match d {
        Domain::ReferralStatus => rs::STATUS_PAIRS,
        Domain::Status => &rs::STATUS[1..],
        Domain::Substatus => &rs::SUBSTATUS[1..],
        Domain::AssistanceRequestCode => rs::ASSISTANCE_REQUEST_CODE,
        Domain::SalesStage => rs::SALES_STAGE,
        Domain::ReferralType => rs::REFERRAL_TYPE,
        Domain::Qualification => rs::QUALIFICATION,
        Domain::CountryCode | Domain::CurrencyCode => return None,
    })
}

fn domain_label(d: Domain) -> &'static str {
    match d {
        Domain::ReferralStatus => "the referral status/substatus pairs",
        Domain::Status => "the referral statuses",
        Domain::Substatus => "the referral substatuses",
        Domain::AssistanceRequestCode => "the assistance request codes",
        Domain::SalesStage => "the sales stages",
        Domain::ReferralType => "the referral types",
        Domain::Qualification => "the qualifications",
        Domain::CountryCode => "the ISO 3166 two-letter country codes",
        Domain::CurrencyCode => "the ISO 4217 currency codes",
    }
}

fn type_label(t: FieldType) -> String {
    match t {
        FieldType::String => "text".into(),
        FieldType::Number => "a number".into(),
        FieldType::Boolean => "true/false".into(),
        FieldType::Datetime => "a date-time".into(),
        FieldType::Enum(v) => format!("one of {}", v.join(", ")),
        FieldType::Object => "an object".into(),
        FieldType::Array => "a list".into(),
        FieldType::Any => "any value".into(),
    }
}

fn transform_name(t: &Transform) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| match v {
            Value::String(s) => Some(s),
            Value::Object(m) => m.keys().next().cloned(),
            _ => None,
        })
        .unwrap_or_else(|| "?".into())
}

fn template_hint(source: &str, message: &str) -> Option<String> {
    let opens = source.matches("{{").count();
    let closes = source.matches("}}").count();
    if opens > closes {
        return Some("a `{{` is not closed with `}}`".into());
    }
    if message.contains("unknown filter") || message.contains("unknown test") {
        return Some("cosell adds the filters country_code, country_name, country_alpha3, currency_code, date, datetime, number, strip_marks, truncate_chars and the tests country_code, country, currency_code, blank, email, date".into());
    }
    None
}

/// Identifiers that start an expression path (`referral` in `referral.name`), roughly: words
/// not preceded by `.` and not inside string literals.
fn top_level_identifiers(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (start, word) in words_outside_strings(source) {
        let prev = source[..start].chars().rev().find(|c| !c.is_whitespace());
        if prev != Some('.') {
            out.insert(word.to_string());
        }
    }
    out
}

/// `var.a.b[0].c` chains in a source, as segment lists after `var`.
fn member_chains(source: &str, var: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (start, word) in words_outside_strings(source) {
        if word != var {
            continue;
        }
        if source[..start].ends_with('.') {
            continue;
        }
        let mut rest = &source[start + word.len()..];
        let mut chain = Vec::new();
        loop {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                if end == 0 {
                    break;
                }
                chain.push(after[..end].to_string());
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let Some(end) = after.find(']') else { break };
                let inner = after[..end].trim();
                if inner.parse::<usize>().is_ok() {
                    chain.push("0".to_string());
                } else if let Some(k) = inner.strip_prefix('\'').and_then(|x| x.strip_suffix('\''))
                {
                    chain.push(k.to_string());
                } else {
                    break;
                }
                rest = &after[end + 1..];
            } else {
                break;
            }
        }
        // A trailing method call (`.items()`, `.get(…)`) is not a field.
        if rest.trim_start().starts_with('(') {
            chain.pop();
        }
        if !chain.is_empty() {
            out.push(chain);
        }
    }
    out
}

/// `settings.x` names in a source.
fn attribute_refs(source: &str, var: &str) -> Vec<String> {
    member_chains(source, var)
        .into_iter()
        .filter_map(|c| c.into_iter().next())
        .collect()
}

/// Identifier words outside quoted strings, with their byte offsets.
fn words_outside_strings(source: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let bytes = source.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
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
            i += 1;
            continue;
        }
        if b.is_ascii_alphabetic() || b == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((start, &source[start..i]));
            continue;
        }
        i += 1;
    }
    out
}

fn known_fields(members: &[&str]) -> String {
    if members.len() > 12 {
        format!("known fields here include: {}, …", members[..12].join(", "))
    } else {
        format!("known fields here: {}", members.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_chains_skip_strings_and_methods() {
        let chains = member_chains(
            "referral.details.dealValue > 0 and 'referral.x' != referral.customerProfile.team[0].email and referral.items()",
            "referral",
        );
        assert_eq!(
            chains,
            vec![
                vec!["details".to_string(), "dealValue".into()],
                vec![
                    "customerProfile".into(),
                    "team".into(),
                    "0".into(),
                    "email".into()
                ]
            ]
        );
        assert_eq!(
            attribute_refs(
                "{{ settings.deal_value_field }} {{ x.settings.y }}",
                "settings"
            ),
            vec!["deal_value_field".to_string()]
        );
    }

    #[test]
    fn integer_keys_are_written_like_to_string() {
        for n in [0i64, 7, -7, 10, 100_000_002, i64::MIN, i64::MAX] {
            let number = serde_json::Number::from(n);
            let mut buf = [0u8; 24];
            assert_eq!(
                integer_text(&number, &mut buf),
                Some(number.to_string().as_str())
            );
        }
        let big = serde_json::Number::from(u64::MAX);
        let mut buf = [0u8; 24];
        assert_eq!(integer_text(&big, &mut buf), Some(big.to_string().as_str()));
        let float = serde_json::Number::from_f64(1.5).unwrap();
        assert_eq!(integer_text(&float, &mut buf), None);
    }

    #[test]
    fn default_id_fields_follow_dataverse_conventions() {
        assert_eq!(
            default_id_field(CrmKind::Dynamics365, "accounts"),
            "accountid"
        );
        assert_eq!(
            default_id_field(CrmKind::Dynamics365, "opportunities"),
            "opportunityid"
        );
        assert_eq!(
            default_id_field(CrmKind::Dynamics365, "transactioncurrencies"),
            "transactioncurrencyid"
        );
        assert_eq!(default_id_field(CrmKind::Salesforce, "Account"), "Id");
    }
}
