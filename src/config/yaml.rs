//! Loading YAML mapping files into [`serde_json::Value`] while remembering
//! where every node came from.
//!
//! The tree is built from `saphyr-parser` events with an explicit stack, so
//! neither deep nesting nor hostile input can overflow the call stack. The
//! loader follows the YAML 1.2 core schema (`yes`/`no`/`on`/`off` stay text),
//! rejects duplicate keys, supports anchors, aliases and `<<` merge keys, and
//! enforces [`Limits`] on size, depth and node count (alias expansions
//! included).
//!
//! Every node gets an entry in a [`SpanIndex`], addressed by an RFC 6901 JSON
//! pointer. Nodes that come from an alias or a merge key resolve to the spans
//! of the text they were copied from (the anchored definition).
//!
//! # Error positions
//!
//! `saphyr-parser` sometimes reports a syntax error somewhere other than on
//! the line the user has to fix. [`parse`] moves the position in these cases:
//!
//! * `simple key expect ':'` (a key without `:`) is reported by the parser
//!   on the *next* content line or at end of file; it is moved back to the
//!   last content line before that, which is the line missing its `:`.
//! * `mapping values are not allowed in this context` is reported at the
//!   `:`. When the offending line is indented deeper than the content line
//!   above it, it is being read as the continuation of the previous value:
//!   if that previous line has no `:` at all, the error is moved there (a
//!   key missing its `:`); otherwise the caret is moved to the start of the
//!   over-indented line.
//! * `did not find expected key` / `did not find expected '-' indicator`:
//!   the caret is moved to the first non-blank character of the line when
//!   only blanks or `- ` precede it.
//! * Unclosed flow collections (`{ a: 1` / `[1, 2`) are reported by the
//!   parser at the first token that cannot continue them, often on a later
//!   line or at end of file; when that position is at end of file or on a
//!   line not indented deeper than the line of the opening bracket, the
//!   error is moved to the opening bracket.
//! * Tab errors are moved to the offending tab character.
//! * `[`, `]`, `{` or `}` glued to a plain value inside a flow collection
//!   (`{ path: $.team[0].name }`, invalid in YAML) keeps its position but
//!   gets a message and a hint that quotes the whole value.
//!
//! Merge keys: `<<: *a` and `<<: [*a, *b]` (or inline mappings) are merged
//! when the mapping ends; explicit keys win, then earlier sources; merged
//! keys are never duplicates, and several `<<` entries in one mapping are
//! all merged in order.
//!
//! # Error codes
//!
//! `yaml-syntax`, `yaml-encoding`, `yaml-duplicate-key`, `yaml-complex-key`,
//! `yaml-tag`, `yaml-number`, `yaml-alias`, `yaml-merge`, `yaml-limit`,
//! `yaml-multi-document`.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Tag};
use serde_json::{Map, Number, Value};

/// A position in the source. line and col are 1-based; col counts characters
/// (not bytes). offset/len are BYTE offsets into the source string, for
/// snippet rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Span {
    /// 1-based line number.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub col: u32,
    /// Byte offset of the first byte of the span in the source.
    pub offset: usize,
    /// Length of the span in bytes.
    pub len: usize,
}

impl Span {
    /// Byte offset just past the end of the span.
    #[must_use]
    pub fn end(&self) -> usize {
        self.offset.saturating_add(self.len)
    }
}

/// Where a node and (for mapping entries) its key are.
#[derive(Debug, Clone, Copy)]
pub struct NodeSpan {
    /// Span of the node itself.
    pub value: Span,
    /// Span of the key when the node is the value of a mapping entry.
    pub key: Option<Span>,
}

/// A pointer segment as stored in the index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seg {
    /// Position in a sequence.
    Index(usize),
    /// Key in a mapping.
    Key(Box<str>),
    /// The n-th `<<` merge value of a mapping (not addressable by pointers).
    Merge(usize),
}

#[derive(Debug, Clone, Copy)]
struct IndexNode {
    span: NodeSpan,
    /// Node whose children stand in for this node's children (aliases and
    /// merged entries); always a node created earlier (smaller id).
    via: Option<usize>,
}

/// Index from RFC 6901 JSON pointer ("" = root, "/flows/a/fields/name",
/// "/tests/0/name"; '~' and '/' escaped as ~0 ~1) to spans.
///
/// Internally this is a tree (parent id + segment) rather than a map of full
/// pointer strings, so that memory stays proportional to the document even
/// for very long keys; nodes copied by aliases and merge keys are resolved
/// through the node they were copied from.
#[derive(Debug, Default, Clone)]
pub struct SpanIndex {
    nodes: Vec<IndexNode>,
    children: HashMap<(usize, Seg), usize>,
}

impl SpanIndex {
    /// Spans of the node at `pointer`, if it exists.
    #[must_use]
    pub fn get(&self, pointer: &str) -> Option<NodeSpan> {
        let id = self.resolve(pointer)?;
        self.nodes.get(id).map(|n| n.span)
    }

    /// Span of the value at pointer, or of its nearest existing ancestor
    /// (never fails: root span as last resort).
    #[must_use]
    pub fn value_span(&self, pointer: &str) -> Span {
        let mut p = pointer;
        loop {
            if let Some(ns) = self.get(p) {
                return ns.value;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return self.root_span(),
            }
        }
    }

    /// Span of the key of the entry at pointer (falls back to value_span).
    #[must_use]
    pub fn key_span(&self, pointer: &str) -> Span {
        match self.get(pointer) {
            Some(NodeSpan { key: Some(k), .. }) => k,
            _ => self.value_span(pointer),
        }
    }

    fn root_span(&self) -> Span {
        self.nodes.first().map_or(
            Span {
                line: 1,
                col: 1,
                offset: 0,
                len: 0,
            },
            |n| n.span.value,
        )
    }

    fn resolve(&self, pointer: &str) -> Option<usize> {
        if self.nodes.is_empty() {
            return None;
        }
        if pointer.is_empty() {
            return Some(0);
        }
        let rest = pointer.strip_prefix('/')?;
        let mut cur = 0;
        for raw in rest.split('/') {
            let seg = unescape_pointer_segment(raw);
            cur = self.child_by_name(cur, &seg)?;
        }
        Some(cur)
    }

    fn child_by_name(&self, node: usize, name: &str) -> Option<usize> {
        if is_array_index(name)
            && let Ok(i) = name.parse::<usize>()
            && let Some(c) = self.child(node, &Seg::Index(i))
        {
            return Some(c);
        }
        self.child(node, &Seg::Key(name.into()))
    }

    /// Child of `node` named `seg`, following `via` links.
    fn child(&self, mut node: usize, seg: &Seg) -> Option<usize> {
        // Clone-free lookup needs the key by value; segments are small.
        let mut key = (node, seg.clone());
        loop {
            if let Some(&c) = self.children.get(&key) {
                return Some(c);
            }
            let next = self.nodes.get(node)?.via?;
            if next >= node {
                return None;
            }
            node = next;
            key.0 = node;
        }
    }

    fn push(&mut self, span: NodeSpan, via: Option<usize>) -> usize {
        let id = self.nodes.len();
        self.nodes.push(IndexNode { span, via });
        id
    }
}

/// A loaded document.
#[derive(Debug)]
pub struct Document {
    /// The document as JSON.
    pub value: serde_json::Value,
    /// Where every node of `value` is in the source.
    pub spans: SpanIndex,
}

/// A YAML-level problem (syntax, duplicate key, limit exceeded…).
#[derive(Debug, Clone)]
pub struct YamlError {
    /// Where the problem is.
    pub span: Span,
    /// What is wrong, as a lowercase phrase.
    pub message: String,
    /// How to fix it, when we can guess.
    pub hint: Option<String>,
    /// Stable short code, e.g. `yaml-syntax` or `yaml-duplicate-key`.
    pub code: &'static str,
}

/// Limits that keep hostile input from using unbounded memory or time.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted source, in bytes (default 8 MiB).
    pub max_bytes: usize,
    /// Deepest accepted nesting of mappings/sequences (default 64).
    pub max_depth: usize,
    /// Most nodes in the document, counting alias expansions (default 1 000 000).
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 8 * 1024 * 1024,
            max_depth: 64,
            max_nodes: 1_000_000,
        }
    }
}

/// Most errors collected before giving up on a document.
const MAX_ERRORS: usize = 100;
/// Distance between checkpoints of the char index → byte offset table.
const LINE_STEP: usize = 32;
/// Longest text quoted verbatim in a message.
const MAX_QUOTED: usize = 60;
const UTF8_BOM: char = '\u{FEFF}';

/// Parse `source` with the default [`Limits`].
///
/// # Errors
/// Returns every problem found (syntax errors stop parsing; duplicate keys,
/// bad tags and the like are all collected).
pub fn parse(source: &str) -> Result<Document, Vec<YamlError>> {
    parse_with_limits(source, Limits::default())
}

/// Parse `source` with explicit [`Limits`].
///
/// A leading UTF-8 byte order mark is skipped; spans keep pointing into
/// `source` as given (so offsets include the BOM's 3 bytes, columns do not).
///
/// # Errors
/// Returns every problem found (see [`parse`]).
pub fn parse_with_limits(source: &str, limits: Limits) -> Result<Document, Vec<YamlError>> {
    if source.len() > limits.max_bytes {
        return Err(vec![too_large(source.len(), limits.max_bytes)]);
    }
    let base = if source.starts_with(UTF8_BOM) {
        UTF8_BOM.len_utf8()
    } else {
        0
    };
    let body = source.get(base..).unwrap_or("");
    if let Some(e) = check_control_chars(body, base) {
        return Err(vec![e]);
    }
    Builder::new(source, base, limits).run(body)
}

/// Decode bytes (rejects non-UTF-8 with the line:col of the first bad byte, a
/// leading UTF-8 BOM is accepted and skipped-but-offsets-stay-correct, rejects
/// NUL/binary control chars other than tab/CR/LF with position) then parse.
///
/// The returned `String` is the decoded text exactly as in the file (a BOM,
/// if any, is kept), so spans are byte offsets into both the file and it.
///
/// # Errors
/// Returns an encoding error, or the problems found by [`parse`].
pub fn parse_bytes(bytes: &[u8]) -> Result<(String, Document), Vec<YamlError>> {
    let limits = Limits::default();
    if bytes.len() > limits.max_bytes {
        return Err(vec![too_large(bytes.len(), limits.max_bytes)]);
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return Err(vec![utf8_error(bytes, e.valid_up_to())]),
    };
    let doc = parse_with_limits(text, limits)?;
    Ok((text.to_owned(), doc))
}

/// Escape one JSON-pointer segment.
#[must_use]
pub fn escape_pointer_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Undo [`escape_pointer_segment`].
fn unescape_pointer_segment(s: &str) -> Cow<'_, str> {
    if s.contains('~') {
        Cow::Owned(s.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(s)
    }
}

/// RFC 6901 array index: digits, no leading zero.
fn is_array_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// Render a JSON pointer for humans: `/flows/a.b/fields/0` becomes
/// `flows."a.b".fields[0]`. Segments containing `.`, blanks, quotes or
/// brackets (or empty ones) are quoted; the root pointer renders as `(root)`.
#[must_use]
pub fn pointer_to_dotted(pointer: &str) -> String {
    if pointer.is_empty() {
        return "(root)".to_owned();
    }
    let rest = pointer.strip_prefix('/').unwrap_or(pointer);
    let mut out = String::new();
    for raw in rest.split('/') {
        let seg = unescape_pointer_segment(raw);
        if is_array_index(&seg) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        let needs_quotes = seg.is_empty()
            || seg.chars().any(|c| {
                matches!(c, '.' | '"' | '[' | ']' | '\\') || c.is_whitespace() || c.is_control()
            });
        if needs_quotes {
            out.push('"');
            for c in seg.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_control() => out.extend(c.escape_default()),
                    c => out.push(c),
                }
            }
            out.push('"');
        } else {
            out.push_str(&seg);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Encoding checks

fn too_large(len: usize, max: usize) -> YamlError {
    YamlError {
        span: Span {
            line: 1,
            col: 1,
            offset: 0,
            len: 0,
        },
        message: format!("file is too large ({len} bytes; the limit is {max} bytes)"),
        hint: Some("split the configuration into smaller files".to_owned()),
        code: "yaml-limit",
    }
}

/// Line and column (1-based, in chars) of byte `offset` of `text`, counting
/// line breaks like the YAML scanner (`\n`, `\r\n`, lone `\r`) and not
/// counting a leading BOM as a column.
fn locate(text: &str, offset: usize) -> (u32, u32) {
    let start = if text.starts_with(UTF8_BOM) {
        UTF8_BOM.len_utf8()
    } else {
        0
    };
    let end = floor_char_boundary(text, offset);
    let slice = text.get(start.min(end)..end).unwrap_or("");
    advance(slice, 1, 1)
}

/// Advance a 1-based (line, col) position over `slice`.
fn advance(slice: &str, mut line: u32, mut col: u32) -> (u32, u32) {
    let mut chars = slice.chars().peekable();
    while let Some(c) = chars.next() {
        let is_break = c == '\n' || (c == '\r' && chars.peek() != Some(&'\n'));
        if is_break {
            line = line.saturating_add(1);
            col = 1;
        } else {
            col = col.saturating_add(1);
        }
    }
    (line, col)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut i = offset.min(text.len());
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Byte length of the char at `offset` (0 at end of input or a line break).
fn char_len_at(text: &str, offset: usize) -> usize {
    match text.get(offset..).and_then(|s| s.chars().next()) {
        Some('\n' | '\r') | None => 0,
        Some(c) => c.len_utf8(),
    }
}

fn utf8_error(bytes: &[u8], valid_up_to: usize) -> YamlError {
    let prefix = bytes
        .get(..valid_up_to)
        .and_then(|p| std::str::from_utf8(p).ok())
        .unwrap_or("");
    let (line, col) = locate(prefix, prefix.len());
    let byte = bytes.get(valid_up_to).copied().unwrap_or(0);
    let utf16 = bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]);
    YamlError {
        span: Span {
            line,
            col,
            offset: valid_up_to,
            len: 1,
        },
        message: format!(
            "file is not valid UTF-8 (invalid byte 0x{byte:02X} at line {line}, column {col})"
        ),
        hint: Some(if utf16 {
            "the file looks like UTF-16; save it as UTF-8".to_owned()
        } else {
            "save the file as UTF-8 text".to_owned()
        }),
        code: "yaml-encoding",
    }
}

fn is_forbidden_control(c: char) -> bool {
    match c {
        '\t' | '\n' | '\r' | '\u{85}' => false,
        c => c.is_control(),
    }
}

fn check_control_chars(body: &str, base: usize) -> Option<YamlError> {
    let (i, c) = body
        .char_indices()
        .find(|&(_, c)| is_forbidden_control(c))?;
    let prefix = body.get(..i).unwrap_or("");
    let (line, col) = advance(prefix, 1, 1);
    let what = if c == '\0' {
        "a NUL byte".to_owned()
    } else {
        format!("the control character U+{:04X}", u32::from(c))
    };
    Some(YamlError {
        span: Span {
            line,
            col,
            offset: base + i,
            len: c.len_utf8(),
        },
        message: format!("file contains {what} at line {line}, column {col}"),
        hint: Some(
            "YAML files must be plain text; remove the character (is this a binary file?)"
                .to_owned(),
        ),
        code: "yaml-encoding",
    })
}

// ---------------------------------------------------------------------------
// Parser positions → byte offsets

/// Maps the parser's (line, column) markers to byte offsets into the whole
/// source.
///
/// The parser's char `index` is not used: `saphyr-parser` 0.3.3 advances it
/// by bytes instead of chars inside `%` directives, so after a directive
/// containing non-ASCII text every index is off. Line and column are what we
/// report, so offsets are derived from them; markers arrive (almost) in
/// order, so a cursor makes this linear overall, and a table of every
/// LINE_STEP-th line start bounds the cost of jumping backwards.
struct PosMap<'a> {
    body: &'a str,
    base: usize,
    /// Byte offset (in body) of lines 1, 1 + LINE_STEP, 1 + 2 * LINE_STEP, …
    line_starts: Vec<usize>,
    /// Last resolved position: (1-based line, 0-based col, byte offset in body).
    cursor: Cell<(usize, usize, usize)>,
}

impl<'a> PosMap<'a> {
    fn new(body: &'a str, base: usize) -> Self {
        let bytes = body.as_bytes();
        let mut line_starts = vec![0];
        let mut line = 1usize;
        for (i, &c) in bytes.iter().enumerate() {
            if c == b'\n' || (c == b'\r' && bytes.get(i + 1) != Some(&b'\n')) {
                line += 1;
                if (line - 1).is_multiple_of(LINE_STEP) {
                    line_starts.push(i + 1);
                }
            }
        }
        PosMap {
            body,
            base,
            line_starts,
            cursor: Cell::new((1, 0, 0)),
        }
    }

    /// Absolute byte offset, 1-based line and 1-based column of a marker.
    /// Columns past the end of their line are clamped to the line end.
    fn locate(&self, m: Marker) -> (usize, u32, u32) {
        let target_line = m.line().max(1);
        let target_col = m.col();
        let (mut line, mut col, mut byte) = self.cursor.get();
        let k = (target_line - 1) / LINE_STEP;
        let checkpoint = self
            .line_starts
            .get(k)
            .map(|&b| (k * LINE_STEP + 1, b))
            .or_else(|| {
                let last = self.line_starts.len().saturating_sub(1);
                self.line_starts
                    .get(last)
                    .map(|&b| (last * LINE_STEP + 1, b))
            });
        let behind = (target_line, target_col) < (line, col);

        if let Some((cl, cb)) = checkpoint
            && (behind || cl > line)
        {
            (line, col, byte) = (cl, 0, cb);
        }
        while line < target_line {
            let Some(i) = self.body.get(byte..).and_then(|s| s.find(['\n', '\r'])) else {
                break;
            };
            let b = byte + i;
            let crlf = self.body.get(b..b + 2) == Some("\r\n");
            byte = b + if crlf { 2 } else { 1 };
            line += 1;
            col = 0;
        }
        if line == target_line {
            for c in self.body.get(byte..).unwrap_or("").chars() {
                if col >= target_col || c == '\n' || c == '\r' {
                    break;
                }
                byte += c.len_utf8();
                col += 1;
            }
        } else {
            // Past the last line: stay at its end.
            let rest = self.body.get(byte..).unwrap_or("");
            col += rest.chars().count();
            byte = self.body.len();
        }
        self.cursor.set((line, col, byte));
        (
            self.base + byte,
            to_u32(line),
            to_u32(col.saturating_add(1)),
        )
    }

    fn offset(&self, m: Marker) -> usize {
        self.locate(m).0
    }
}

// ---------------------------------------------------------------------------
// Scalars

/// A problem with a single node.
struct Problem {
    message: String,
    hint: Option<String>,
    code: &'static str,
}

fn quote_it_hint() -> Option<String> {
    Some("quote it to use it as text".to_owned())
}

/// Shorten and quote user text for a message.
fn quoted(s: &str) -> String {
    if s.chars().count() > MAX_QUOTED {
        let short: String = s.chars().take(MAX_QUOTED).collect();
        format!("{short:?}…")
    } else {
        format!("{s:?}")
    }
}

/// Text in backquotes, shortened.
fn code_text(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_QUOTED)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > MAX_QUOTED {
        out.push('…');
    }
    format!("`{out}`")
}

enum TagKind {
    Str,
    Int,
    Float,
    Bool,
    Null,
    Map,
    Seq,
    NonSpecific,
    Other(String),
}

fn classify_tag(tag: &Tag) -> TagKind {
    const CORE: &str = "tag:yaml.org,2002:";
    let core = if tag.handle == CORE {
        Some(tag.suffix.as_str())
    } else if tag.handle.is_empty() {
        tag.suffix.strip_prefix(CORE)
    } else {
        None
    };
    match core {
        Some("str") => TagKind::Str,
        Some("int") => TagKind::Int,
        Some("float") => TagKind::Float,
        Some("bool") => TagKind::Bool,
        Some("null") => TagKind::Null,
        Some("map") => TagKind::Map,
        Some("seq") => TagKind::Seq,
        Some(other) => TagKind::Other(format!("!!{other}")),
        None if (tag.handle == "!" && tag.suffix.is_empty())
            || (tag.handle.is_empty() && tag.suffix == "!") =>
        {
            TagKind::NonSpecific
        }
        None if tag.handle.is_empty() => TagKind::Other(format!("!<{}>", tag.suffix)),
        None => TagKind::Other(tag.to_string()),
    }
}

fn unsupported_tag(name: &str) -> Problem {
    Problem {
        message: format!("unsupported tag {}", code_text(name)),
        hint: Some(
            "remove the tag; only !!str, !!int, !!float, !!bool and !!null are supported"
                .to_owned(),
        ),
        code: "yaml-tag",
    }
}

fn is_null(t: &str) -> bool {
    matches!(t, "" | "~" | "null" | "Null" | "NULL")
}

fn parse_bool(t: &str) -> Option<bool> {
    match t {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn too_big_number(t: &str) -> Problem {
    Problem {
        message: format!("number {} is too large to be represented", code_text(t)),
        hint: quote_it_hint(),
        code: "yaml-number",
    }
}

/// Core-schema integer: `[-+]?[0-9]+`, `0x[0-9a-fA-F]+`, `0o[0-7]+`.
fn parse_int(t: &str) -> Option<Result<Value, Problem>> {
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = t.strip_prefix("0o") {
        (8, o)
    } else {
        let unsigned = t.strip_prefix(['-', '+']).unwrap_or(t);
        if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if let Ok(i) = t.parse::<i64>() {
            return Some(Ok(Value::Number(i.into())));
        }
        if let Ok(u) = unsigned.parse::<u64>()
            && !t.starts_with('-')
        {
            return Some(Ok(Value::Number(u.into())));
        }
        return Some(Err(too_big_number(t)));
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    Some(match u64::from_str_radix(digits, radix) {
        Ok(u) => Ok(Value::Number(u.into())),
        Err(_) => Err(too_big_number(t)),
    })
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_core_float(t: &str) -> bool {
    let b = t.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let s = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - s
    };
    if matches!(b.first(), Some(b'-' | b'+')) {
        i += 1;
    }
    let before = digits(&mut i);
    let mut after = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        after = digits(&mut i);
    }
    if before == 0 && after == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

fn is_special_float(t: &str) -> bool {
    let unsigned = t.strip_prefix(['-', '+']).unwrap_or(t);
    matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(t, ".nan" | ".NaN" | ".NAN")
}

fn not_json_float(t: &str) -> Problem {
    Problem {
        message: format!("{} cannot be represented in JSON", code_text(t)),
        hint: quote_it_hint(),
        code: "yaml-number",
    }
}

fn parse_float(t: &str) -> Option<Result<Value, Problem>> {
    if is_special_float(t) {
        return Some(Err(not_json_float(t)));
    }
    if !is_core_float(t) {
        return None;
    }
    let f = t.parse::<f64>().ok()?;
    Some(
        Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| not_json_float(t)),
    )
}

fn resolve_plain(t: &str) -> Result<Value, Problem> {
    if is_null(t) {
        return Ok(Value::Null);
    }
    if let Some(b) = parse_bool(t) {
        return Ok(Value::Bool(b));
    }
    if let Some(r) = parse_int(t) {
        return r;
    }
    if let Some(r) = parse_float(t) {
        return r;
    }
    Ok(Value::String(t.to_owned()))
}

fn resolve_scalar(t: &str, style: ScalarStyle, tag: Option<&Tag>) -> Result<Value, Problem> {
    let Some(tag) = tag else {
        return if style == ScalarStyle::Plain {
            resolve_plain(t)
        } else {
            Ok(Value::String(t.to_owned()))
        };
    };
    let mismatch = |what: &str, tag: &str| Problem {
        message: format!("{} is not a valid {what} (tagged {tag})", code_text(t)),
        hint: Some(format!("fix the value or remove the {tag} tag")),
        code: "yaml-tag",
    };
    match classify_tag(tag) {
        TagKind::Str | TagKind::NonSpecific => Ok(Value::String(t.to_owned())),
        TagKind::Int => parse_int(t).unwrap_or_else(|| Err(mismatch("integer", "!!int"))),
        TagKind::Float => {
            if let Some(r) = parse_float(t) {
                return r;
            }
            match parse_int(t) {
                Some(Ok(_)) => t
                    .parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| not_json_float(t)),
                Some(Err(e)) => Err(e),
                None => Err(mismatch("number", "!!float")),
            }
        }
        TagKind::Bool => parse_bool(t)
            .map(Value::Bool)
            .ok_or_else(|| mismatch("boolean", "!!bool")),
        TagKind::Null => {
            if is_null(t) {
                Ok(Value::Null)
            } else {
                Err(mismatch("null", "!!null"))
            }
        }
        TagKind::Map | TagKind::Seq => Err(Problem {
            message: "a collection tag (!!map/!!seq) is used on a scalar".to_owned(),
            hint: Some("remove the tag".to_owned()),
            code: "yaml-tag",
        }),
        TagKind::Other(name) => Err(unsupported_tag(&name)),
    }
}

// ---------------------------------------------------------------------------
// Builder

/// Parsing was aborted (error already recorded).
struct Stop;
type Step = Result<(), Stop>;

enum PendingKey {
    Key {
        text: String,
        span: Span,
        dup: bool,
    },
    Merge {
        span: Span,
        n: usize,
    },
    /// The key was invalid (already reported); drop the value.
    Invalid,
}

/// A mapping to merge and the index node it came from.
type MergeMap = (Map<String, Value>, Option<usize>);

struct MergeSource {
    value: Value,
    node: usize,
    span: Span,
}

enum Kind {
    Seq(Vec<Value>),
    Map {
        map: Map<String, Value>,
        key: Option<PendingKey>,
        merges: Vec<MergeSource>,
    },
}

struct Frame {
    node: usize,
    anchor: usize,
    /// Nodes in this subtree so far, including itself.
    count: usize,
    /// Collection height of the tallest child so far.
    height: usize,
    /// Byte offset of the `{` or `[` opening a flow collection.
    flow_open: Option<usize>,
    kind: Kind,
}

struct Anchor {
    value: Value,
    node: Option<usize>,
    count: usize,
    height: usize,
    /// Source text of an anchored scalar, for use as a mapping key.
    raw: Option<String>,
}

struct Builder<'s> {
    src: &'s str,
    base: usize,
    pos: PosMap<'s>,
    limits: Limits,
    errors: Vec<YamlError>,
    index: SpanIndex,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchor>,
    nodes: usize,
    root: Option<Value>,
    documents: usize,
    /// Byte offset and position of the end of the previous event.
    last_end: (usize, u32, u32),
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<'s> Builder<'s> {
    fn new(src: &'s str, base: usize, limits: Limits) -> Self {
        let body = src.get(base..).unwrap_or("");
        Builder {
            src,
            base,
            pos: PosMap::new(body, base),
            limits,
            errors: Vec::new(),
            index: SpanIndex::default(),
            stack: Vec::new(),
            anchors: HashMap::new(),
            nodes: 0,
            root: None,
            documents: 0,
            last_end: (base, 1, 1),
        }
    }

    fn run(mut self, body: &str) -> Result<Document, Vec<YamlError>> {
        let mut parser = Parser::new_from_str(body);
        while let Some(next) = parser.next_event() {
            match next {
                Err(e) => {
                    let err = self.syntax_error(&e);
                    self.errors.push(err);
                    break;
                }
                Ok((event, span)) => {
                    let step = self.on_event(event, span);
                    self.last_end = self.pos.locate(span.end);
                    if step.is_err() {
                        break;
                    }
                }
            }
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        if self.index.nodes.is_empty() {
            let span = Span {
                line: 1,
                col: 1,
                offset: self.base,
                len: 0,
            };
            self.index.push(
                NodeSpan {
                    value: span,
                    key: None,
                },
                None,
            );
        }
        Ok(Document {
            value: self.root.unwrap_or(Value::Null),
            spans: self.index,
        })
    }

    fn on_event(&mut self, event: Event<'_>, span: saphyr_parser::Span) -> Step {
        match event {
            Event::Nothing | Event::StreamStart | Event::DocumentEnd | Event::StreamEnd => Ok(()),
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    let mut sp = self.point_span(span.start);
                    if self
                        .src
                        .get(sp.offset..)
                        .is_some_and(|s| s.starts_with("---"))
                    {
                        sp.len = 3;
                    }
                    self.errors.push(YamlError {
                        span: sp,
                        message: "only one YAML document per file is supported".to_owned(),
                        hint: Some(
                            "remove this `---` (and what follows) or move it to its own file"
                                .to_owned(),
                        ),
                        code: "yaml-multi-document",
                    });
                    return Err(Stop);
                }
                Ok(())
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.on_scalar(&text, style, anchor, tag.as_deref(), span)
            }
            Event::SequenceStart(anchor, tag) => {
                self.on_collection_start(false, anchor, tag.as_deref(), span)
            }
            Event::MappingStart(anchor, tag) => {
                self.on_collection_start(true, anchor, tag.as_deref(), span)
            }
            Event::SequenceEnd | Event::MappingEnd => self.on_collection_end(),
            Event::Alias(id) => self.on_alias(id, span),
        }
    }

    // -- errors -------------------------------------------------------------

    fn push_error(&mut self, span: Span, p: Problem) -> Step {
        self.errors.push(YamlError {
            span,
            message: p.message,
            hint: p.hint,
            code: p.code,
        });
        if self.errors.len() >= MAX_ERRORS {
            self.errors.push(YamlError {
                span,
                message: format!("too many errors ({MAX_ERRORS}); stopping here"),
                hint: None,
                code: "yaml-limit",
            });
            return Err(Stop);
        }
        Ok(())
    }

    fn fatal(&mut self, span: Span, message: String, hint: &str) -> Step {
        self.errors.push(YamlError {
            span,
            message,
            hint: Some(hint.to_owned()),
            code: "yaml-limit",
        });
        Err(Stop)
    }

    fn count_nodes(&mut self, n: usize, span: Span, alias: bool) -> Step {
        let total = self.nodes.saturating_add(n);
        if total > self.limits.max_nodes {
            let max = self.limits.max_nodes;
            let message = if alias {
                format!("document expands to more than {max} nodes (alias bomb?)")
            } else {
                format!("document has more than {max} nodes")
            };
            return self.fatal(
                span,
                message,
                "reduce the size of the document or the use of aliases",
            );
        }
        self.nodes = total;
        Ok(())
    }

    fn depth_error(&mut self, span: Span) -> Step {
        let max = self.limits.max_depth;
        self.fatal(
            span,
            format!("nesting deeper than {max} levels"),
            "flatten the structure",
        )
    }

    // -- spans ---------------------------------------------------------------

    fn span_from(&self, start: (usize, u32, u32), end_offset: usize) -> Span {
        let (offset, line, col) = start;
        Span {
            line,
            col,
            offset,
            len: end_offset.saturating_sub(offset),
        }
    }

    fn scalar_span(&self, sp: &saphyr_parser::Span) -> Span {
        let start = self.pos.locate(sp.start);
        self.span_from(start, self.pos.offset(sp.end))
    }

    /// One character at `m` (0 bytes at a line break or end of input).
    fn point_span(&self, m: Marker) -> Span {
        let start = self.pos.locate(m);
        self.span_from(start, start.0 + char_len_at(self.src, start.0))
    }

    /// Block scalars are reported by the parser at their content; point at
    /// the `|`/`>` header instead (or at the anchor/tag before it).
    fn block_scalar_span(&self, sp: &saphyr_parser::Span) -> Span {
        let located = self.pos.locate(sp.start);
        let start = located.0;
        let end = self.pos.offset(sp.end).max(start);
        let (from, line, col) = self.last_end;
        let Some(ind) = find_block_indicator(self.src, from.min(end), end) else {
            return self.span_from(located, end);
        };
        let rest = self.src.get(ind..).unwrap_or("");
        let header_end = ind + rest.find(char::is_whitespace).unwrap_or(rest.len());
        if start < ind && start >= from {
            return self.span_from(located, header_end);
        }
        let (l, c) = advance(self.src.get(from..ind).unwrap_or(""), line, col);
        Span {
            line: l,
            col: c,
            offset: ind,
            len: header_end - ind,
        }
    }

    // -- tree building -------------------------------------------------------

    fn awaiting_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame {
                kind: Kind::Map { key: None, .. },
                ..
            })
        )
    }

    /// Create the index node for a value about to be attached to the top frame.
    fn new_node(&mut self, value: Span, via: Option<usize>) -> usize {
        let (link, key) = match self.stack.last() {
            None => (None, None),
            Some(f) => match &f.kind {
                Kind::Seq(items) => (Some((f.node, Seg::Index(items.len()))), None),
                Kind::Map { key, .. } => match key {
                    Some(PendingKey::Key { text, span, dup }) => (
                        (!dup).then(|| (f.node, Seg::Key(text.as_str().into()))),
                        Some(*span),
                    ),
                    Some(PendingKey::Merge { span, n }) => {
                        (Some((f.node, Seg::Merge(*n))), Some(*span))
                    }
                    Some(PendingKey::Invalid) | None => (None, None),
                },
            },
        };
        let id = self.index.push(NodeSpan { value, key }, via);
        if let Some(l) = link {
            self.index.children.insert(l, id);
        }
        id
    }

    /// Attach a finished value to the top frame (or make it the root).
    fn attach(
        &mut self,
        value: Value,
        node: usize,
        count: usize,
        height: usize,
        span: Span,
    ) -> Step {
        let Some(f) = self.stack.last_mut() else {
            self.root = Some(value);
            return Ok(());
        };
        f.count = f.count.saturating_add(count);
        f.height = f.height.max(height);
        let mut complex_key = false;
        match &mut f.kind {
            Kind::Seq(items) => items.push(value),
            Kind::Map { map, key, merges } => match key.take() {
                None => {
                    complex_key = true;
                    *key = Some(PendingKey::Invalid);
                }
                Some(PendingKey::Key {
                    text, dup: false, ..
                }) => {
                    map.insert(text, value);
                }
                Some(PendingKey::Key { dup: true, .. } | PendingKey::Invalid) => {}
                Some(PendingKey::Merge { .. }) => merges.push(MergeSource { value, node, span }),
            },
        }
        if complex_key {
            return self.push_error(
                span,
                Problem {
                    message: "complex mapping keys are not supported".to_owned(),
                    hint: Some("use a plain text key".to_owned()),
                    code: "yaml-complex-key",
                },
            );
        }
        Ok(())
    }

    fn set_key(&mut self, text: String, span: Span) -> Step {
        let Some(f) = self.stack.last() else {
            return Ok(());
        };
        let first = self
            .index
            .children
            .get(&(f.node, Seg::Key(text.as_str().into())))
            .and_then(|&id| self.index.nodes.get(id))
            .map(|n| n.span.key.unwrap_or(n.span.value));
        let problem = first.map(|first| Problem {
            message: format!("duplicate key {}", quoted(&text)),
            hint: Some(format!(
                "first defined at line {}:{}; remove one of them",
                first.line, first.col
            )),
            code: "yaml-duplicate-key",
        });
        if let Some(Frame {
            kind: Kind::Map { key, .. },
            ..
        }) = self.stack.last_mut()
        {
            *key = Some(PendingKey::Key {
                text,
                span,
                dup: problem.is_some(),
            });
        }
        match problem {
            Some(p) => self.push_error(span, p),
            None => Ok(()),
        }
    }

    fn on_scalar(
        &mut self,
        text: &str,
        style: ScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        sp: saphyr_parser::Span,
    ) -> Step {
        let span = if matches!(style, ScalarStyle::Literal | ScalarStyle::Folded) {
            self.block_scalar_span(&sp)
        } else {
            self.scalar_span(&sp)
        };
        let resolved = resolve_scalar(text, style, tag);
        if self.awaiting_key() {
            let mut problem = None;
            if let Some(TagKind::Other(name)) = tag.map(classify_tag) {
                problem = Some(unsupported_tag(&name));
            }
            if anchor != 0 {
                self.anchors.insert(
                    anchor,
                    Anchor {
                        value: resolved.unwrap_or_else(|_| Value::String(text.to_owned())),
                        node: None,
                        count: 1,
                        height: 0,
                        raw: Some(text.to_owned()),
                    },
                );
            }
            if let Some(p) = problem {
                self.push_error(span, p)?;
            }
            if style == ScalarStyle::Plain && tag.is_none() && text == "<<" {
                if let Some(Frame {
                    kind: Kind::Map { key, merges, .. },
                    ..
                }) = self.stack.last_mut()
                {
                    *key = Some(PendingKey::Merge {
                        span,
                        n: merges.len(),
                    });
                }
                return Ok(());
            }
            return self.set_key(text.to_owned(), span);
        }
        self.count_nodes(1, span, false)?;
        let value = match resolved {
            Ok(v) => v,
            Err(p) => {
                self.push_error(span, p)?;
                Value::Null
            }
        };
        let node = self.new_node(span, None);
        if anchor != 0 {
            self.anchors.insert(
                anchor,
                Anchor {
                    value: value.clone(),
                    node: Some(node),
                    count: 1,
                    height: 0,
                    raw: Some(text.to_owned()),
                },
            );
        }
        self.attach(value, node, 1, 0, span)
    }

    fn on_collection_start(
        &mut self,
        is_map: bool,
        anchor: usize,
        tag: Option<&Tag>,
        sp: saphyr_parser::Span,
    ) -> Step {
        let span = self.point_span(sp.start);
        if self.stack.len() >= self.limits.max_depth {
            return self.depth_error(span);
        }
        if let Some(tag) = tag {
            let problem = match classify_tag(tag) {
                TagKind::Map if is_map => None,
                TagKind::Seq if !is_map => None,
                TagKind::NonSpecific => None,
                TagKind::Other(name) => Some(unsupported_tag(&name)),
                _ => Some(Problem {
                    message: format!(
                        "a scalar tag is used on a {}",
                        if is_map { "mapping" } else { "sequence" }
                    ),
                    hint: Some("remove the tag".to_owned()),
                    code: "yaml-tag",
                }),
            };
            if let Some(p) = problem {
                self.push_error(span, p)?;
            }
        }
        self.count_nodes(1, span, false)?;
        let end = self.pos.offset(sp.end);
        let flow_open = self
            .src
            .get(span.offset..end)
            .and_then(|s| s.rfind(['{', '[']))
            .map(|i| span.offset + i);
        let node = self.new_node(span, None);
        let kind = if is_map {
            Kind::Map {
                map: Map::new(),
                key: None,
                merges: Vec::new(),
            }
        } else {
            Kind::Seq(Vec::new())
        };
        self.stack.push(Frame {
            node,
            anchor,
            count: 1,
            height: 0,
            flow_open,
            kind,
        });
        Ok(())
    }

    fn on_collection_end(&mut self) -> Step {
        let Some(frame) = self.stack.pop() else {
            return Ok(());
        };
        let value = match frame.kind {
            Kind::Seq(items) => Value::Array(items),
            Kind::Map { map, merges, .. } => {
                Value::Object(self.apply_merges(frame.node, map, merges)?)
            }
        };
        let height = frame.height.saturating_add(1);
        if frame.anchor != 0 {
            self.anchors.insert(
                frame.anchor,
                Anchor {
                    value: value.clone(),
                    node: Some(frame.node),
                    count: frame.count,
                    height,
                    raw: None,
                },
            );
        }
        let span = self
            .index
            .nodes
            .get(frame.node)
            .map(|n| n.span.value)
            .unwrap_or_default();
        self.attach(value, frame.node, frame.count, height, span)
    }

    fn apply_merges(
        &mut self,
        node: usize,
        mut map: Map<String, Value>,
        merges: Vec<MergeSource>,
    ) -> Result<Map<String, Value>, Stop> {
        for m in merges {
            let sources: Option<Vec<MergeMap>> = match m.value {
                Value::Object(o) => Some(vec![(o, Some(m.node))]),
                Value::Array(items) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::Object(o) => Some((o, self.index.child(m.node, &Seg::Index(i)))),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            };
            let Some(sources) = sources else {
                self.push_error(
                    m.span,
                    Problem {
                        message: "the merge key `<<` expects a mapping or a list of mappings"
                            .to_owned(),
                        hint: Some("write e.g. `<<: *defaults` or `<<: [*a, *b]`".to_owned()),
                        code: "yaml-merge",
                    },
                )?;
                continue;
            };
            for (src, src_node) in sources {
                for (k, v) in src {
                    if map.contains_key(&k) {
                        continue;
                    }
                    let origin =
                        src_node.and_then(|s| self.index.child(s, &Seg::Key(k.as_str().into())));
                    if let Some(c) = origin
                        && let Some(n) = self.index.nodes.get(c).copied()
                    {
                        let id = self.index.push(n.span, Some(c));
                        self.index
                            .children
                            .insert((node, Seg::Key(k.as_str().into())), id);
                    }
                    map.insert(k, v);
                }
            }
        }
        Ok(map)
    }

    fn on_alias(&mut self, id: usize, sp: saphyr_parser::Span) -> Step {
        let span = self.scalar_span(&sp);
        let name = self
            .src
            .get(span.offset..span.end())
            .unwrap_or("")
            .trim_start_matches('*')
            .to_owned();
        let Some(anchor) = self.anchors.get(&id) else {
            let recursive = self.stack.iter().any(|f| f.anchor == id);
            let problem = if recursive {
                Problem {
                    message: format!("alias `*{name}` refers to a node that contains it"),
                    hint: Some("recursive aliases are not supported".to_owned()),
                    code: "yaml-alias",
                }
            } else {
                Problem {
                    message: format!("unknown alias `*{name}`"),
                    hint: Some(format!("define the anchor `&{name}` before using it")),
                    code: "yaml-alias",
                }
            };
            self.push_error(span, problem)?;
            if self.awaiting_key() {
                if let Some(Frame {
                    kind: Kind::Map { key, .. },
                    ..
                }) = self.stack.last_mut()
                {
                    *key = Some(PendingKey::Invalid);
                }
                return Ok(());
            }
            self.count_nodes(1, span, false)?;
            let node = self.new_node(span, None);
            return self.attach(Value::Null, node, 1, 0, span);
        };
        if self.awaiting_key()
            && let Some(raw) = anchor.raw.clone()
        {
            return self.set_key(raw, span);
        }
        let (count, height, via) = (anchor.count, anchor.height, anchor.node);
        if self.stack.len().saturating_add(height) > self.limits.max_depth {
            return self.depth_error(span);
        }
        self.count_nodes(count, span, true)?;
        let value = self
            .anchors
            .get(&id)
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let node = self.new_node(span, via);
        self.attach(value, node, count, height, span)
    }

    // -- syntax errors -------------------------------------------------------

    fn syntax_error(&self, e: &ScanError) -> YamlError {
        let info = e.info();
        let marker = *e.marker();
        let offset = self.pos.offset(marker);
        let span = self.point_span(marker);
        let mut err = YamlError {
            span,
            message: readable_scan_message(info),
            hint: scan_hint(info),
            code: "yaml-syntax",
        };
        let at_eof = offset >= self.src.len();
        let text = self.src;
        let (line_start, line_end) = line_bounds(text, offset);

        if info.contains("unknown anchor") {
            let rest = text.get(offset..).unwrap_or("");
            let name: String = rest
                .trim_start_matches('*')
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | '[' | ']' | '{' | '}'))
                .collect();
            err.code = "yaml-alias";
            err.message = format!("unknown alias `*{name}`");
            err.hint = Some(format!("define the anchor `&{name}` before using it"));
            err.span = self.span_at(offset, 1 + name.len());
        } else if info == "recursion limit exceeded" {
            err.code = "yaml-limit";
            err.message = format!("nesting deeper than {} levels", self.limits.max_depth);
            err.hint = Some("flatten the structure".to_owned());
        } else if info.contains("simple key expect ':'") {
            // Reported on the line after the key (or at EOF): move it back.
            let chars_before = text
                .get(line_start..offset)
                .map_or(0, |s| s.chars().count());
            let key_line = if at_eof && !line_content(text, line_start, line_end).is_empty() {
                Some((line_start, line_end))
            } else if chars_before <= 1024 {
                prev_content_line(text, line_start, self.base)
            } else {
                None
            };
            if let Some((s, e)) = key_line {
                let content = line_content(text, s, e);
                err.span = self.content_span(s, e);
                err.message = format!("could not find the `:` after {}", code_text(content));
                err.hint = Some(missing_colon_hint(content));
            }
        } else if info.contains("mapping values are not allowed") {
            let this_indent = indentation(text, line_start, line_end);
            let prefix = text.get(line_start..offset).unwrap_or("");
            let prev = prev_content_line(text, line_start, self.base);
            match prev {
                Some((ps, pe))
                    if this_indent > indentation(text, ps, pe) && !prefix.contains(": ") =>
                {
                    let prev_content = line_content(text, ps, pe);
                    let bare = prev_content.trim_start_matches("- ");
                    if !bare.contains(':')
                        && !bare.starts_with(['"', '\'', '|', '>', '[', '{', '&', '*', '!'])
                    {
                        err.span = self.content_span(ps, pe);
                        err.message = format!("could not find the `:` after {}", code_text(bare));
                        err.hint = Some(format!(
                            "{} (the next line is indented under it)",
                            missing_colon_hint(bare)
                        ));
                    } else {
                        let key_start = line_start + (prefix.len() - prefix.trim_start().len());
                        err.span = self.span_at(key_start, offset.saturating_sub(key_start).max(1));
                        err.message = "this line is indented more than the line above".to_owned();
                        err.hint = Some(
                            "it is read as the continuation of the previous value; align it with \
                             the keys above (or quote the previous value if it contains `: `)"
                                .to_owned(),
                        );
                    }
                }
                _ => {}
            }
        } else if info.contains("did not find expected key")
            || info.contains("did not find expected '-' indicator")
            || info == "invalid indentation"
        {
            let prefix = text.get(line_start..offset).unwrap_or("");
            if !at_eof && prefix.chars().all(|c| c == ' ' || c == '-' || c == '\t') {
                let first = line_start + (prefix.len() - prefix.trim_start().len());
                let word = text
                    .get(first..line_end)
                    .unwrap_or("")
                    .find(|c: char| c.is_whitespace() || c == ':')
                    .unwrap_or(line_end.saturating_sub(first));
                err.span = self.span_at(first, word.max(char_len_at(text, first)));
                if prefix.trim_start().starts_with('-') && info.contains("expected key") {
                    err.message = "a list item (`- `) is not allowed here".to_owned();
                    err.hint = Some(
                        "the enclosing mapping expects `key: value` entries; check the \
                         indentation of this line"
                            .to_owned(),
                    );
                }
            }
        } else if info.contains("tab") {
            let on_line = text
                .get(line_start..offset)
                .and_then(|s| s.find('\t'))
                .map(|i| line_start + i);
            // Otherwise the first tab after the marker, if it is close by.
            let after = text
                .get(offset..)
                .and_then(|s| s.find('\t'))
                .map(|i| offset + i)
                .filter(|&t| count_breaks(text.get(offset..t).unwrap_or("")) <= 2);
            if let Some(t) = on_line.or(after) {
                err.span = self.span_at(t, 1);
            }
            err.message = "a tab character is not allowed here".to_owned();
        }

        let flow_error = info.contains("flow")
            || info.contains("illegal placement of ':'")
            || info.contains("did not find expected node content");
        if flow_error && let Some((c, value)) = glued_flow_indicator(text, offset, line_start) {
            err.message = format!("a plain value inside `{{ }}` or `[ ]` cannot contain `{c}`");
            err.hint = Some(format!("put the value in quotes: \"{value}\""));
        }
        if flow_error && let Some(open) = self.stack.iter().rev().find_map(|f| f.flow_open) {
            let (open_start, open_end) = line_bounds(text, open);
            let open_indent = indentation(text, open_start, open_end);
            let later_line = line_start > open_start;
            if at_eof || (later_line && indentation(text, line_start, line_end) <= open_indent) {
                let bracket = text
                    .get(open..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or('{');
                let (what, close) = if bracket == '[' {
                    ("sequence", ']')
                } else {
                    ("mapping", '}')
                };
                err.span = self.span_at(open, 1);
                err.message = format!("this flow {what} `{bracket}` is never closed");
                err.hint = Some(format!(
                    "add the missing `{close}` (or a missing `,` between entries)"
                ));
            }
        }
        err
    }

    /// Span at an arbitrary byte offset (position computed by scanning).
    fn span_at(&self, offset: usize, len: usize) -> Span {
        let offset = floor_char_boundary(self.src, offset);
        let (line, col) = locate(self.src, offset);
        let end = floor_char_boundary(self.src, offset.saturating_add(len)).max(offset);
        Span {
            line,
            col,
            offset,
            len: end - offset,
        }
    }

    /// Span over the content of a line (without indentation and comment).
    fn content_span(&self, start: usize, end: usize) -> Span {
        let line = text_between(self.src, start, end);
        let content = line_content(self.src, start, end);
        let lead = line.len() - line.trim_start().len();
        self.span_at(start + lead, content.len())
    }
}

/// When the character at `offset` is a flow indicator glued to the plain
/// value before it (`{ path: $.team[0].name }`), that character and the
/// whole value it was probably meant to be part of.
fn glued_flow_indicator(text: &str, offset: usize, line_start: usize) -> Option<(char, String)> {
    let c = text.get(offset..)?.chars().next()?;
    if !matches!(c, '[' | ']' | '{' | '}') {
        return None;
    }
    let before = text.get(line_start..offset)?;
    let start = before
        .rfind(|ch: char| ch.is_whitespace() || matches!(ch, ',' | '{' | '['))
        .map_or(0, |i| i + 1);
    let token = before.get(start..)?;
    if token.is_empty() || token.ends_with(':') || token.starts_with(['"', '\'', '&', '*', '!']) {
        return None;
    }
    let mut depth = 0usize;
    let mut end = offset;
    for (i, ch) in text.get(offset..)?.char_indices() {
        match ch {
            '[' | '{' => depth += 1,
            ']' | '}' if depth > 0 => depth -= 1,
            ',' | ']' | '}' => break,
            '\n' | '\r' => break,
            ' ' if depth == 0
                && text
                    .get(offset + i + 1..)
                    .is_some_and(|r| r.starts_with('#')) =>
            {
                break;
            }
            _ => {}
        }
        end = offset + i + ch.len_utf8();
    }
    let value = format!("{token}{}", text.get(offset..end)?.trim_end());
    if value.chars().count() > 80 || value.contains('"') {
        return None;
    }
    Some((c, value))
}

/// Line breaks in `s` (`\n`, `\r\n` or a lone `\r`).
fn count_breaks(s: &str) -> usize {
    advance(s, 1, 1).0.saturating_sub(1) as usize
}

fn text_between(text: &str, start: usize, end: usize) -> &str {
    text.get(start..end).unwrap_or("")
}

/// First `|` or `>` in `from..to` that follows a blank (or starts the
/// input), skipping comments.
fn find_block_indicator(src: &str, from: usize, to: usize) -> Option<usize> {
    let bytes = src.as_bytes();
    let mut i = from;
    let is_blank =
        |i: usize| i == 0 || matches!(bytes.get(i - 1), Some(b' ' | b'\t' | b'\n' | b'\r'));
    while i < to.min(bytes.len()) {
        match bytes.get(i) {
            Some(b'#') if is_blank(i) => {
                while i < bytes.len() && !matches!(bytes.get(i), Some(b'\n' | b'\r')) {
                    i += 1;
                }
            }
            Some(b'|' | b'>') if is_blank(i) => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Byte range of the line containing `offset` (without the line break).
fn line_bounds(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let start = text
        .get(..offset)
        .and_then(|s| s.rfind(['\n', '\r']))
        .map_or(0, |i| i + 1);
    let end = text
        .get(offset..)
        .and_then(|s| s.find(['\n', '\r']))
        .map_or(text.len(), |i| offset + i);
    (start, end)
}

/// Number of leading blanks of a line.
fn indentation(text: &str, start: usize, end: usize) -> usize {
    text_between(text, start, end)
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .count()
}

/// A line's content without indentation, trailing blanks or a comment.
fn line_content(text: &str, start: usize, end: usize) -> &str {
    let line = text_between(text, start, end).trim_start();
    let mut cut = line.len();
    let mut prev_blank = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_blank {
            cut = i;
            break;
        }
        prev_blank = c == ' ' || c == '\t';
    }
    line.get(..cut).unwrap_or(line).trim_end()
}

/// The last line before the line starting at `line_start` that has content
/// other than blanks and comments.
fn prev_content_line(text: &str, line_start: usize, floor: usize) -> Option<(usize, usize)> {
    let mut end = line_start;
    while end > floor {
        let before = text.get(..end)?;
        let e = if before.ends_with("\r\n") {
            end - 2
        } else if before.ends_with(['\n', '\r']) {
            end - 1
        } else {
            return None;
        };
        let (s, _) = line_bounds(text, e);
        let s = s.max(floor);
        if !line_content(text, s, e).is_empty() {
            return Some((s, e));
        }
        end = s;
    }
    None
}

fn missing_colon_hint(content: &str) -> String {
    let key = content.trim_start_matches("- ");
    if !key.is_empty() && key.chars().count() <= 40 && !key.contains(char::is_whitespace) {
        format!("add `:` after the key, e.g. `{key}:`")
    } else {
        "every entry of a mapping must be written `key: value`".to_owned()
    }
}

/// Make the scanner's text lowercase-first and readable.
fn readable_scan_message(info: &str) -> String {
    let replaced = match info {
        "simple key expect ':'" | "simple key expected" => {
            "could not find the `:` expected after a key".to_owned()
        }
        "while parsing a block mapping, did not find expected key" => {
            "did not find the expected `key:` (bad indentation?)".to_owned()
        }
        "while parsing a block collection, did not find expected '-' indicator" => {
            "did not find the expected `- ` list item (bad indentation?)".to_owned()
        }
        "while scanning a quoted scalar, found unexpected end of stream"
        | "invalid indentation in quoted scalar" => "this quoted value is never closed".to_owned(),
        "did not find expected <document start>" => {
            "unexpected content after the end of the document (bad indentation?)".to_owned()
        }
        "misplaced bracket" => "unexpected closing bracket".to_owned(),
        other => {
            if let Some(rest) = other.strip_prefix("unexpected character: `") {
                let c = rest.trim_end_matches('\'');
                format!("found character `{c}` that cannot start any token")
            } else {
                other.replace('\'', "`")
            }
        }
    };
    let mut chars = replaced.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "invalid YAML".to_owned(),
    }
}

fn scan_hint(info: &str) -> Option<String> {
    let h = if info.contains("tab") {
        "YAML does not allow tabs for indentation; use spaces"
    } else if info.contains("unexpected character") {
        "`@` and `` ` `` cannot start a plain value; quote the value"
    } else if info.contains("mapping values are not allowed") {
        "a plain value cannot contain `: `; put the value in quotes, or check the indentation"
    } else if info.contains("quoted scalar, found unexpected end of stream")
        || info.contains("invalid indentation in quoted scalar")
    {
        "add the closing quote"
    } else if info.contains("did not find expected key") || info == "invalid indentation" {
        "check the indentation of this line: it must line up with the other keys of its mapping"
    } else if info.contains("'-' indicator") {
        "this list expects `- item` entries here; check the indentation of this line"
    } else if info.contains("document start") {
        "check the indentation: all top-level keys must start in the same column"
    } else if info.contains("misplaced bracket") {
        "this bracket does not close anything; remove it or quote the value"
    } else if info.contains("trailing content after double-quoted") {
        "a quoted value must end at its closing quote; quote the whole value"
    } else if info.contains("expected ',' or") {
        "a `,` may be missing between entries"
    } else if info.contains("wrongly indented line in block scalar") {
        "every line of a `|` or `>` block must be indented at least as much as its first line"
    } else if info.contains("comment intercepting") {
        "a comment cannot interrupt a multi-line value; quote the value or move the comment"
    } else if info.contains("block sequence entries are not allowed") {
        "start the list on a new line, indented under its key"
    } else if info.contains("unknown escape character") {
        "use single quotes, or write a backslash as `\\\\`"
    } else {
        return None;
    };
    Some(h.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(src: &str) -> Document {
        match parse(src) {
            Ok(d) => d,
            Err(e) => panic!("unexpected errors for {src:?}: {e:#?}"),
        }
    }

    fn errs(src: &str) -> Vec<YamlError> {
        match parse(src) {
            Ok(d) => panic!("expected an error for {src:?}, got {:?}", d.value),
            Err(e) => e,
        }
    }

    fn one_err(src: &str) -> YamlError {
        let e = errs(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        e.into_iter().next().unwrap()
    }

    fn lc(s: Span) -> (u32, u32) {
        (s.line, s.col)
    }

    /// Every JSON pointer of a value (iteratively).
    fn all_pointers(v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![(String::new(), v)];
        while let Some((p, v)) = todo.pop() {
            match v {
                Value::Object(m) => {
                    for (k, c) in m {
                        todo.push((format!("{p}/{}", escape_pointer_segment(k)), c));
                    }
                }
                Value::Array(a) => {
                    for (i, c) in a.iter().enumerate() {
                        todo.push((format!("{p}/{i}"), c));
                    }
                }
                _ => {}
            }
            out.push(p);
        }
        out
    }

    fn assert_all_spans(doc: &Document, src: &str) {
        for p in all_pointers(&doc.value) {
            let Some(ns) = doc.spans.get(&p) else {
                panic!("no span for {p:?} in {src:?}");
            };
            for sp in std::iter::once(ns.value).chain(ns.key) {
                assert!(sp.end() <= src.len(), "{p} {sp:?} in {src:?}");
                assert!(src.is_char_boundary(sp.offset) && src.is_char_boundary(sp.end()));
                assert_eq!(
                    locate(src, sp.offset),
                    (sp.line, sp.col),
                    "{p} {sp:?} in {src:?}"
                );
            }
        }
    }

    #[test]
    fn scalar_resolution_table() {
        let cases: &[(&str, Value)] = &[
            ("null", json!(null)),
            ("Null", json!(null)),
            ("NULL", json!(null)),
            ("~", json!(null)),
            ("", json!(null)),
            ("true", json!(true)),
            ("True", json!(true)),
            ("TRUE", json!(true)),
            ("false", json!(false)),
            ("FALSE", json!(false)),
            ("yes", json!("yes")),
            ("no", json!("no")),
            ("on", json!("on")),
            ("off", json!("off")),
            ("nULL", json!("nULL")),
            ("tRUE", json!("tRUE")),
            ("42", json!(42)),
            ("-17", json!(-17)),
            ("+5", json!(5)),
            ("007", json!(7)),
            (
                "18446744073709551615",
                json!(18_446_744_073_709_551_615_u64),
            ),
            ("0x1F", json!(31)),
            ("0o17", json!(15)),
            ("0x", json!("0x")),
            ("0o9", json!("0o9")),
            ("1.5", json!(1.5)),
            ("-2e3", json!(-2000.0)),
            (".5", json!(0.5)),
            ("1.", json!(1.0)),
            ("1e3", json!(1000.0)),
            ("1_000", json!("1_000")),
            ("1.2.3", json!("1.2.3")),
            ("12:30", json!("12:30")),
            ("hello world", json!("hello world")),
            ("'42'", json!("42")),
            ("\"true\"", json!("true")),
            ("'null'", json!("null")),
            ("!!str 12", json!("12")),
            ("!!str", json!("")),
            ("!!int \"12\"", json!(12)),
            ("!!float 3", json!(3.0)),
            ("!!bool 'true'", json!(true)),
            ("!!null ''", json!(null)),
            ("! 12", json!("12")),
        ];
        for (src, want) in cases {
            let doc = ok(&format!("v: {src}\n"));
            assert_eq!(doc.value["v"], *want, "for {src:?}");
        }
        let block = ok("a: |\n  42\nb: >\n  true\n");
        assert_eq!(block.value, json!({"a": "42\n", "b": "true\n"}));
    }

    #[test]
    fn scalar_errors() {
        for src in [".inf", "-.Inf", "+.INF", ".nan", ".NaN", "1e999"] {
            let e = one_err(&format!("v: {src}\n"));
            assert!(
                e.message.contains("cannot be represented in JSON"),
                "{src}: {e:?}"
            );
            assert_eq!(e.hint.as_deref(), Some("quote it to use it as text"));
            assert_eq!(lc(e.span), (1, 4));
        }
        assert_eq!(ok("v: '.inf'").value["v"], json!(".inf"));
        let e = one_err("v: 99999999999999999999\n");
        assert_eq!(e.code, "yaml-number");
        let e = one_err("v: !!int abc\n");
        assert_eq!(e.code, "yaml-tag");
        let e = one_err("v: !!bool yes\n");
        assert_eq!(e.code, "yaml-tag");
        let e = one_err("v: !custom x\n");
        assert!(e.message.contains("unsupported tag `!custom`"), "{e:?}");
        assert!(e.hint.is_some());
        let e = one_err("v: !!binary aGVsbG8=\n");
        assert!(e.message.contains("!!binary"), "{e:?}");
        let e = one_err("v: !!str [1]\n");
        assert_eq!(e.code, "yaml-tag");
        assert_eq!(ok("v: !!seq [1]\n").value, json!({"v": [1]}));
    }

    #[test]
    fn keys_are_text() {
        let doc = ok("1: a\ntrue: b\nnull: c\n'q': d\n1.5: e\n");
        assert_eq!(
            doc.value,
            json!({"1": "a", "true": "b", "null": "c", "q": "d", "1.5": "e"})
        );
        let e = one_err("[a, b]: 1\n");
        assert_eq!(e.message, "complex mapping keys are not supported");
        assert_eq!(lc(e.span), (1, 1));
        let e = one_err("x: 1\n? {a: 1}\n: 2\n");
        assert_eq!(e.code, "yaml-complex-key");
        assert_eq!(lc(e.span), (2, 3));
    }

    #[test]
    fn duplicate_keys_reported_at_second_occurrence() {
        let src = "flows:\n  a:\n    fields: 1\n    source: x\n    fields: 2\n  b: {}\nflows: 3\n";
        let e = errs(src);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert_eq!(e[0].message, "duplicate key \"fields\"");
        assert_eq!(lc(e[0].span), (5, 5));
        assert_eq!(e[0].span.len, 6);
        assert_eq!(
            e[0].hint.as_deref(),
            Some("first defined at line 3:5; remove one of them")
        );
        assert_eq!(e[0].code, "yaml-duplicate-key");
        assert_eq!(e[1].message, "duplicate key \"flows\"");
        assert_eq!(lc(e[1].span), (7, 1));
        assert_eq!(
            e[1].hint.as_deref(),
            Some("first defined at line 1:1; remove one of them")
        );
        // Flow mappings, quoted spellings and three occurrences.
        let e = errs("m: {a: 1, 'a': 2}\nn: [{x: 1, x: 2, x: 3}]\n");
        assert_eq!(e.len(), 3, "{e:#?}");
        assert_eq!(lc(e[0].span), (1, 11));
        assert_eq!(lc(e[1].span), (2, 12));
        assert_eq!(lc(e[2].span), (2, 18));
        assert!(e[2].hint.as_deref().unwrap().contains("line 2:6"));
        // Same key in different mappings is fine.
        ok("a: {x: 1}\nb: {x: 1}\n");
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let src = "\
defaults: &defaults
  timeout: 30
  retries: 3
  nested: {deep: 1}
list: &l [1, 2]
svc:
  <<: *defaults
  retries: 5
  name: svc
other:
  <<: [*defaults, {extra: true, timeout: 99}]
copy: *l
inline:
  <<: {a: 1}
  b: 2
";
        let doc = ok(src);
        assert_all_spans(&doc, src);
        assert_eq!(
            doc.value["svc"],
            json!({"timeout": 30, "retries": 5, "name": "svc", "nested": {"deep": 1}})
        );
        assert_eq!(
            doc.value["other"],
            json!({"timeout": 30, "retries": 3, "nested": {"deep": 1}, "extra": true})
        );
        assert_eq!(doc.value["copy"], json!([1, 2]));
        assert_eq!(doc.value["inline"], json!({"a": 1, "b": 2}));
        let s = &doc.spans;
        // Explicit keys keep their own spans.
        assert_eq!(lc(s.key_span("/svc/retries")), (8, 3));
        assert_eq!(lc(s.value_span("/svc/retries")), (8, 12));
        // Merged keys point at the merge source (the anchored definition).
        assert_eq!(lc(s.key_span("/svc/timeout")), (2, 3));
        assert_eq!(lc(s.value_span("/svc/timeout")), (2, 12));
        assert_eq!(lc(s.value_span("/svc/nested/deep")), (4, 18));
        assert_eq!(lc(s.key_span("/other/extra")), (11, 20));
        assert_eq!(lc(s.value_span("/inline/a")), (14, 11));
        // An alias node is at the alias; its children at the anchor.
        assert_eq!(lc(s.value_span("/copy")), (12, 7));
        assert_eq!(lc(s.key_span("/copy")), (12, 1));
        assert_eq!(lc(s.value_span("/copy/1")), (5, 14));
        // Merged keys are not duplicates; explicit duplicates still are.
        let e = one_err("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n  x: 3\n");
        assert_eq!(lc(e.span), (5, 3));
        // Bad merge values.
        let e = one_err("a: {<<: 1}\n");
        assert_eq!(e.code, "yaml-merge");
        // Alias keys use the anchored scalar's text.
        assert_eq!(
            ok("- &k name\n- {*k : v}\n").value,
            json!(["name", {"name": "v"}])
        );
        // Quoted `<<` is an ordinary key.
        assert_eq!(ok("'<<': {a: 1}\n").value, json!({"<<": {"a": 1}}));
    }

    #[test]
    fn alias_errors() {
        let e = one_err("a: *nope\n");
        assert_eq!(e.code, "yaml-alias");
        assert!(e.message.contains("*nope"), "{e:?}");
        assert_eq!(lc(e.span), (1, 4));
        let e = one_err("a: &x [1, *x]\n");
        assert_eq!(e.code, "yaml-alias");
        assert_eq!(lc(e.span), (1, 11));
    }

    #[test]
    fn alias_bomb_fails_fast() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..=9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            src.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let start = std::time::Instant::now();
        let e = one_err(&src);
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        assert!(e.message.contains("alias bomb"), "{e:?}");
        assert_eq!(e.code, "yaml-limit");
        // Small limit: reported at the alias that crosses it.
        let limits = Limits {
            max_nodes: 50,
            ..Limits::default()
        };
        let e = parse_with_limits(&src, limits).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].span.line, 2);
        // Aliases cannot be used to build deep values either.
        let mut deep = String::from("l0: &l0 [[[[[[[[[[1]]]]]]]]]]\n");
        for i in 1..10 {
            deep.push_str(&format!("l{i}: &l{i} [[[[[[[[[[*l{}]]]]]]]]]]\n", i - 1));
        }
        let e = one_err(&deep);
        assert!(e.message.contains("nesting deeper than 64 levels"), "{e:?}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let flow = "[".repeat(10_000);
        let e = one_err(&flow);
        assert!(e.message.contains("nesting deeper than 64 levels"), "{e:?}");
        let mut block = String::new();
        for i in 0..100 {
            block.push_str(&" ".repeat(i));
            block.push_str("k:\n");
        }
        let e = one_err(&block);
        assert_eq!(e.message, "nesting deeper than 64 levels");
        assert_eq!(lc(e.span), (65, 65));
        let seq = "- ".repeat(5_000) + "x\n";
        assert!(one_err(&seq).message.contains("nesting deeper"));
        // Exactly at the limit is fine.
        let ok_depth = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        ok(&ok_depth);
        let too_deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(lc(one_err(&too_deep).span), (1, 65));
    }

    #[test]
    fn size_and_node_limits() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        let e = parse_with_limits("a: 1234567890\n", limits).unwrap_err();
        assert_eq!(lc(e[0].span), (1, 1));
        assert_eq!(e[0].code, "yaml-limit");
        let limits = Limits {
            max_nodes: 5,
            ..Limits::default()
        };
        let e = parse_with_limits("[1, 2, 3, 4, 5, 6]", limits).unwrap_err();
        assert!(e[0].message.contains("more than 5 nodes"), "{e:?}");
    }

    #[test]
    fn documents() {
        assert_eq!(ok("").value, Value::Null);
        assert_eq!(ok("# only a comment\n\n").value, Value::Null);
        assert_eq!(ok("---\n").value, Value::Null);
        assert_eq!(ok("--- \na: 1\n...\n").value, json!({"a": 1}));
        assert_eq!(lc(ok("").spans.value_span("")), (1, 1));
        let e = one_err("a: 1\n---\nb: 2\n");
        assert_eq!(e.message, "only one YAML document per file is supported");
        assert_eq!(lc(e.span), (2, 1));
        assert_eq!(e.code, "yaml-multi-document");
        assert_eq!(ok("plain").value, json!("plain"));
    }

    #[test]
    fn utf8_bom_and_control_characters() {
        let e = parse_bytes(b"a: 1\nb: caf\xe9\n").unwrap_err();
        assert_eq!(lc(e[0].span), (2, 7));
        assert_eq!(e[0].span.offset, 11);
        assert_eq!(e[0].code, "yaml-encoding");
        assert!(e[0].message.contains("UTF-8"));
        let e = parse_bytes(b"\xff\xfea\x00").unwrap_err();
        assert!(e[0].hint.as_deref().unwrap().contains("UTF-16"));

        let (text, doc) = parse_bytes("\u{FEFF}a: 1\nb: x\n".as_bytes()).unwrap();
        assert!(text.starts_with('\u{FEFF}'));
        assert_eq!(doc.value, json!({"a": 1, "b": "x"}));
        let a = doc.spans.key_span("/a");
        assert_eq!((a.line, a.col, a.offset, a.len), (1, 1, 3, 1));
        let b = doc.spans.value_span("/b");
        assert_eq!((b.line, b.col, b.offset), (2, 4, 11));
        assert_eq!(&text[b.offset..b.end()], "x");

        let e = parse_bytes(b"a: 1\nb: x\x00y\n").unwrap_err();
        assert_eq!(lc(e[0].span), (2, 5));
        assert!(e[0].message.contains("NUL"));
        let e = parse("a: \x1b[31m\n").unwrap_err();
        assert_eq!(lc(e[0].span), (1, 4));
        // Tabs and CRLF are fine.
        assert_eq!(
            ok("a: 1\t# c\r\nb:\t\"\tx\"\r\n").value,
            json!({"a": 1, "b": "\tx"})
        );
    }

    #[test]
    fn spans_in_a_realistic_document() {
        let src = "\
# mapping file
version: 1
flows:
  referral_to_opportunity:
    description: |
      Multi-line text
      spanning lines
    source: {entity: lead, filter: \"x\"}
    fields:
      name: ✔ $.name
      ✔key: 'quoted ✔'
      \"q\": >-
        folded
    tests:
      - name: first
        input: [1, 2]
      - name: second
last: end
";
        let doc = ok(src);
        assert_all_spans(&doc, src);
        let s = &doc.spans;
        let at = |p: &str| lc(s.value_span(p));
        let key = |p: &str| lc(s.key_span(p));
        let text = |sp: Span| &src[sp.offset..sp.end()];
        assert_eq!(at(""), (2, 1));
        assert_eq!(key("/version"), (2, 1));
        assert_eq!(at("/version"), (2, 10));
        assert_eq!(key("/flows/referral_to_opportunity"), (4, 3));
        assert_eq!(at("/flows/referral_to_opportunity"), (5, 5));
        assert_eq!(key("/flows/referral_to_opportunity/description"), (5, 5));
        let desc = s.value_span("/flows/referral_to_opportunity/description");
        assert_eq!(lc(desc), (5, 18));
        assert_eq!(text(desc), "|");
        // After a multi-line block scalar.
        assert_eq!(key("/flows/referral_to_opportunity/source"), (8, 5));
        let source = s.value_span("/flows/referral_to_opportunity/source");
        assert_eq!(lc(source), (8, 13));
        assert_eq!(text(source), "{");
        let filter = s.value_span("/flows/referral_to_opportunity/source/filter");
        assert_eq!(lc(filter), (8, 36));
        assert_eq!(text(filter), "\"x\"");
        assert_eq!(key("/flows/referral_to_opportunity/source/filter"), (8, 28));
        assert_eq!(key("/flows/referral_to_opportunity/fields"), (9, 5));
        // Multi-byte characters before the value on the same line.
        let name = s.value_span("/flows/referral_to_opportunity/fields/name");
        assert_eq!(lc(name), (10, 13));
        assert_eq!(text(name), "✔ $.name");
        let k = s.key_span("/flows/referral_to_opportunity/fields/✔key");
        assert_eq!(lc(k), (11, 7));
        assert_eq!(text(k), "✔key");
        let v = s.value_span("/flows/referral_to_opportunity/fields/✔key");
        assert_eq!(lc(v), (11, 13));
        assert_eq!(text(v), "'quoted ✔'");
        let q = s.get("/flows/referral_to_opportunity/fields/q").unwrap();
        assert_eq!(text(q.key.unwrap()), "\"q\"");
        assert_eq!(text(q.value), ">-");
        assert_eq!(lc(q.value), (12, 12));
        assert_eq!(key("/flows/referral_to_opportunity/tests"), (14, 5));
        assert_eq!(at("/flows/referral_to_opportunity/tests"), (15, 7));
        assert_eq!(at("/flows/referral_to_opportunity/tests/0"), (15, 9));
        assert_eq!(key("/flows/referral_to_opportunity/tests/0/name"), (15, 9));
        assert_eq!(
            at("/flows/referral_to_opportunity/tests/0/input/1"),
            (16, 20)
        );
        assert_eq!(at("/flows/referral_to_opportunity/tests/1/name"), (17, 15));
        assert_eq!(key("/last"), (18, 1));
        assert_eq!(at("/last"), (18, 7));
        // Sequence items have no key span: key_span falls back to the value.
        assert!(
            s.get("/flows/referral_to_opportunity/tests/1")
                .unwrap()
                .key
                .is_none()
        );
        // Missing pointers fall back to the nearest ancestor.
        assert_eq!(at("/flows/referral_to_opportunity/fields/nope/x"), (10, 7));
        assert_eq!(at("/nope"), (2, 1));
        assert_eq!(at("not a pointer"), (2, 1));
        assert!(s.get("/flows/referral_to_opportunity/tests/01").is_none());
        assert!(s.get("/flows/referral_to_opportunity/tests/+1").is_none());
    }

    #[test]
    fn spans_after_a_directive_with_non_ascii_text() {
        // saphyr-parser counts bytes as chars inside `%` directives; spans
        // are derived from line/column so they stay right.
        let src = "%FOO é✔ ✔\n---\na: ✔ x\nb: [1, ✔]\n";
        let doc = ok(src);
        let a = doc.spans.value_span("/a");
        assert_eq!((lc(a), &src[a.offset..a.end()]), ((3, 4), "✔ x"));
        let b1 = doc.spans.value_span("/b/1");
        assert_eq!((lc(b1), &src[b1.offset..b1.end()]), ((4, 8), "✔"));
        let e = one_err("%FOO é\n---\na: ✔ x\n  b: [\n");
        assert_eq!(lc(e.span), (4, 3));
        assert_eq!(e.span.offset, "%FOO é\n---\na: ✔ x\n  ".len());
    }

    #[test]
    fn every_node_has_a_span() {
        let src = "a:\n  b: [1, {c: 2}]\n  'x/y~z': 3\n  e:\n  -  f\n";
        let doc = ok(src);
        for p in [
            "",
            "/a",
            "/a/b",
            "/a/b/0",
            "/a/b/1",
            "/a/b/1/c",
            "/a/x~1y~0z",
            "/a/e",
        ] {
            assert!(doc.spans.get(p).is_some(), "no span for {p}");
        }
        assert_eq!(doc.value["a"]["e"], json!(["f"]));
        assert_eq!(lc(doc.spans.value_span("/a/e/0")), (5, 6));
        // An empty value points at the `:` after its key.
        let doc = ok("a:\nb: 1\n");
        let sp = doc.spans.value_span("/a");
        assert_eq!((sp.line, sp.col, sp.len), (1, 2, 0));
    }

    #[test]
    fn pointers() {
        assert_eq!(escape_pointer_segment("a/b~c"), "a~1b~0c");
        assert_eq!(unescape_pointer_segment("a~1b~0c"), "a/b~c");
        assert_eq!(
            pointer_to_dotted("/flows/a.b/fields/0"),
            "flows.\"a.b\".fields[0]"
        );
        assert_eq!(pointer_to_dotted("/tests/0/name"), "tests[0].name");
        assert_eq!(pointer_to_dotted("/a b/x~1y"), "\"a b\".x/y");
        assert_eq!(pointer_to_dotted("/0"), "[0]");
        assert_eq!(pointer_to_dotted(""), "(root)");
    }

    // -- syntax errors: where are they reported? ------------------------------

    #[test]
    fn misindented_key_in_nested_mapping() {
        // One space too few: does not line up with anything.
        let src = "flows:\n  a:\n    fields:\n      name: x\n     other: y\n";
        let e = one_err(src);
        assert_eq!(lc(e.span), (5, 6));
        assert_eq!(e.code, "yaml-syntax");
        assert!(e.hint.as_deref().unwrap().contains("indentation"), "{e:?}");
        // One space too many after a scalar value: read as a continuation.
        let src = "flows:\n  a:\n    source: x\n     fields:\n       name: y\n";
        let e = one_err(src);
        assert_eq!(lc(e.span), (4, 6));
        assert_eq!(&src[e.span.offset..e.span.end()], "fields");
        assert!(e.message.contains("indented more"), "{e:?}");
        // Dedented into no mapping.
        let src = "flows:\n  a:\n    source: x\n   fields:\n       name: y\n";
        assert_eq!(lc(one_err(src).span), (4, 4));
        // A line indented under a plain value on a sibling key.
        let e = one_err("key: value\n  bad: 1\n");
        assert_eq!(lc(e.span), (2, 3));
    }

    #[test]
    fn key_without_colon_is_reported_on_its_own_line() {
        // The parser reports these on the following line / at EOF.
        let src = "flows:\n  a:\n    source: x\n    fields\n      name: y\n";
        let e = one_err(src);
        assert_eq!(lc(e.span), (4, 5));
        assert_eq!(&src[e.span.offset..e.span.end()], "fields");
        assert_eq!(
            e.hint.as_deref(),
            Some("add `:` after the key, e.g. `fields:`")
        );
        let e = one_err("a: 1\nb\n\n# comment\nc: 2\n");
        assert_eq!(lc(e.span), (2, 1));
        let e = one_err("a: 1\nb\n");
        assert_eq!(lc(e.span), (2, 1));
        // First key of a mapping without colon, next line indented under it.
        let src = "flows:\n  a:\n    fields\n      name: y\n";
        let e = one_err(src);
        assert_eq!(lc(e.span), (3, 5));
        assert!(e.message.contains("`fields`"), "{e:?}");
    }

    #[test]
    fn unclosed_quotes_and_flow_collections() {
        let e = one_err("a: 1\nb: \"unclosed\nc: 3\n");
        assert_eq!(lc(e.span), (2, 4));
        assert_eq!(e.message, "this quoted value is never closed");
        let e = one_err("a: 'x\n");
        assert_eq!(lc(e.span), (1, 4));
        assert_eq!(e.hint.as_deref(), Some("add the closing quote"));

        let e = one_err("a: 1\nb: { x: 1\nc: 3\n");
        assert_eq!(lc(e.span), (2, 4));
        assert!(e.message.contains("never closed"), "{e:?}");
        let e = one_err("a: { x: 1\n");
        assert_eq!(lc(e.span), (1, 4));
        let e = one_err("a: [1, 2\nb: 3\n");
        assert_eq!(lc(e.span), (1, 4));
        assert!(e.hint.as_deref().unwrap().contains(']'), "{e:?}");
        let e = one_err("x: [\n  a,\n  b\n");
        assert_eq!(lc(e.span), (1, 4));
        // A missing comma inside a multi-line flow mapping stays where it is.
        let e = one_err("x: {\n  a: 1\n  b: 2\n}\n");
        assert_eq!(e.span.line, 3);
        assert!(e.hint.as_deref().unwrap().contains(','), "{e:?}");
        let e = one_err("a: { x: 1 y: 2 }\n");
        assert_eq!(e.span.line, 1);
        // JSONPath with brackets, unquoted inside a flow mapping.
        let src = "f:\n  lastname: { path: $.team[0].lastName, default: x }\n";
        let e = one_err(src);
        assert_eq!(lc(e.span), (2, 27));
        assert_eq!(
            e.message,
            "a plain value inside `{ }` or `[ ]` cannot contain `[`"
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("put the value in quotes: \"$.team[0].lastName\"")
        );
        assert_eq!(
            ok("f:\n  lastname: { path: \"$.team[0].lastName\" }\n  b: $.team[0].x\n").value,
            json!({"f": {"lastname": {"path": "$.team[0].lastName"}, "b": "$.team[0].x"}})
        );
    }

    #[test]
    fn tabs_and_stray_items() {
        let e = one_err("a:\n\tb: 1\n");
        assert_eq!(lc(e.span), (2, 1));
        assert_eq!(
            e.hint.as_deref(),
            Some("YAML does not allow tabs for indentation; use spaces")
        );
        let e = one_err("a:\n  b: 1\n\tc: 2\n");
        assert_eq!(lc(e.span), (3, 1));
        assert!(e.hint.as_deref().unwrap().contains("tabs"));

        let e = one_err("a: 1\nb: 2\n- item\nc: 3\n");
        assert_eq!(lc(e.span), (3, 1));
        assert!(e.message.contains("list item"), "{e:?}");
        let e = one_err("x:\n  - a\n  - b\n - c\n");
        assert_eq!(lc(e.span), (4, 2));
        let e = one_err("a:\n  - x\n  y: 1\n");
        assert_eq!(lc(e.span), (3, 3));
        assert!(e.hint.is_some());
    }

    #[test]
    fn other_syntax_errors_are_readable() {
        let e = one_err("a: b: c\n");
        assert_eq!(e.message, "mapping values are not allowed in this context");
        assert_eq!(lc(e.span), (1, 5));
        assert!(e.hint.as_deref().unwrap().contains("quotes"));
        let e = one_err("a: @x\n");
        assert_eq!(e.message, "found character `@` that cannot start any token");
        assert_eq!(lc(e.span), (1, 4));
        let e = one_err("a: [1]]\n");
        assert_eq!(lc(e.span), (1, 7));
        let e = one_err("a: \"x\"y\n");
        assert!(e.message.starts_with("invalid trailing content"));
        let e = one_err(" a: 1\nb: 2\n");
        assert_eq!(e.span.line, 2);
        let e = one_err("x:\n  a: |\n    text\n   more\n  b: 1\n");
        assert_eq!(lc(e.span), (4, 4));
        for e in [one_err("a: b: c"), one_err("{")] {
            assert!(e.message.chars().next().unwrap().is_lowercase(), "{e:?}");
        }
    }

    /// Deterministic xorshift generator for the fuzz loop.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
        }
    }

    #[test]
    fn fuzz_never_panics() {
        const SEED: &str = "\
defaults: &d
  timeout: 30
flows:
  a:
    <<: *d
    source: {entity: lead, filter: \"x ✔\"}
    fields:
      name: $.name
      text: |
        block ✔
      list: [1, 2.5, true, ~, 'q']
    tests:
      - name: t
        input: {a: [*d]}
";
        const ALPHABET: &[u8] = b" \n\t:-?[]{},&*!|>'\"#%@`~0123456789abcxyz.\\\r<";
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let limits = Limits {
            max_nodes: 10_000,
            ..Limits::default()
        };
        let mut ok_docs = 0;
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 4 == 0 {
                let len = rng.below(64);
                (0..len).map(|_| (rng.next() & 0xFF) as u8).collect()
            } else {
                let mut b = SEED.as_bytes().to_vec();
                for _ in 0..=rng.below(if i % 3 == 0 { 6 } else { 1 }) {
                    let pos = rng.below(b.len() + 1);
                    match rng.below(5) {
                        0 if pos < b.len() => {
                            b.remove(pos);
                        }
                        1 => b.insert(pos, ALPHABET[rng.below(ALPHABET.len())]),
                        2 if pos < b.len() => b[pos] = ALPHABET[rng.below(ALPHABET.len())],
                        3 => b.insert(pos, (rng.next() & 0xFF) as u8),
                        _ => {
                            let cut = rng.below(b.len() + 1);
                            let (lo, hi) = (pos.min(cut), pos.max(cut));
                            let chunk = b[lo..hi].to_vec();
                            b.splice(pos..pos, chunk);
                        }
                    }
                }
                b
            };
            let _ = parse_bytes(&bytes);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                match parse_with_limits(text, limits) {
                    // Every node has a span, inside the text, on char
                    // boundaries and agreeing with its line:col.
                    Ok(doc) => {
                        ok_docs += 1;
                        assert_all_spans(&doc, text);
                    }
                    Err(errors) => {
                        for e in errors {
                            let sp = e.span;
                            assert!(sp.end() <= text.len().max(1), "{e:?} in {text:?}");
                            if sp.end() <= text.len() {
                                assert_eq!(
                                    locate(text, sp.offset),
                                    (sp.line, sp.col),
                                    "{e:?} in {text:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
        // The mutations must leave enough valid documents to check spans on.
        assert!(ok_docs > 2_000, "only {ok_docs} valid documents");
    }
}
