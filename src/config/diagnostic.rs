//! User-facing diagnostics: one problem located in a file, rendered
//! rustc-style for humans (with `annotate-snippets`) or as JSON for tools.

use std::ops::Range;

use annotate_snippets::{AnnotationKind, Group, Level, Origin, Renderer, Snippet};
use serde_json::json;

use super::yaml::{Span, YamlError};

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file cannot be used.
    Error,
    /// The file works, but probably not as intended.
    Warning,
}

/// One problem, located in a file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable short code, e.g. "unknown-key", "yaml-syntax", "bad-jsonpath".
    pub code: &'static str,
    /// What is wrong: a lowercase phrase, e.g. `unknown key "feilds" in flow "referral_to_opportunity"`.
    pub message: String,
    /// Where (None = whole file).
    pub span: Option<Span>,
    /// Short text printed under the caret, e.g. "not a mapping key here".
    pub label: Option<String>,
    /// How to fix it, e.g. "did you mean `fields`?".
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A new error about the whole file (add a location with [`Diagnostic::at`]).
    #[must_use]
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message.into())
    }

    /// A new warning about the whole file (add a location with [`Diagnostic::at`]).
    #[must_use]
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, message.into())
    }

    fn new(severity: Severity, code: &'static str, message: String) -> Self {
        Diagnostic {
            severity,
            code,
            message,
            span: None,
            label: None,
            hint: None,
        }
    }

    /// Locate the problem at `span`.
    #[must_use]
    pub fn at(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }

    /// Set the text printed under the caret.
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Set the "how to fix it" text.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl From<YamlError> for Diagnostic {
    fn from(e: YamlError) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code: e.code,
            message: e.message,
            span: Some(e.span),
            label: None,
            hint: e.hint,
        }
    }
}

/// A file's name (as the user typed it) and text.
#[derive(Debug, Clone, Copy)]
pub struct SourceFile<'a> {
    /// Path as the user typed it; printed verbatim after `-->`.
    pub path: &'a str,
    /// The whole text of the file (spans are byte offsets into it).
    pub text: &'a str,
}

/// Human rendering (rustc-like), using annotate-snippets 0.12:
///
/// ```text
/// error[unknown-key]: unknown key "feilds" in flow "x"
///   --> mappings/dynamics365.yaml:42:5
///    |
/// 42 |     feilds:
///    |     ^^^^^^ not a field of a flow
///    |
///    = help: did you mean `fields`?
/// ```
///
/// Only the first line of a span is shown; spans reaching past the text or
/// splitting a UTF-8 character are clamped. A diagnostic without a span
/// shows the header and `--> PATH`. Diagnostics are separated by a blank
/// line and the result ends with a newline (empty string for no diagnostics).
/// `color`: use ANSI colours when true, plain text otherwise.
#[must_use]
pub fn render(file: &SourceFile, diags: &[Diagnostic], color: bool) -> String {
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = String::new();
    for d in diags {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&render_one(&renderer, file, d));
        out.push('\n');
    }
    out
}

fn render_one(renderer: &Renderer, file: &SourceFile, d: &Diagnostic) -> String {
    let level = match d.severity {
        Severity::Error => Level::ERROR,
        Severity::Warning => Level::WARNING,
    };
    let title = level.primary_title(sanitize(&d.message)).id(d.code);
    let mut group = Group::with_title(title);
    match d.span {
        Some(span) => {
            let ex = excerpt(file.text, span);
            let mut annotation = AnnotationKind::Primary.span(ex.range);
            if let Some(label) = &d.label {
                annotation = annotation.label(sanitize(label));
            }
            group = group.element(
                Snippet::source(ex.text)
                    .line_start(ex.line)
                    .path(file.path)
                    .annotation(annotation),
            );
        }
        None => group = group.element(Origin::path(file.path)),
    }
    if let Some(hint) = &d.hint {
        group = group.element(Level::HELP.message(sanitize(hint)));
    }
    renderer.render(&[group])
}

/// Escape control and bidi-override characters so user text cannot play
/// tricks on the terminal.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let dangerous = (c.is_control() && c != '\n')
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if dangerous {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The line of `text` a span starts on, and the span's range within it.
struct Excerpt<'t> {
    text: &'t str,
    line: usize,
    range: Range<usize>,
}

fn floor_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while i < text.len() && !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

fn excerpt(text: &str, span: Span) -> Excerpt<'_> {
    let bom = if text.starts_with('\u{FEFF}') { 3 } else { 0 };
    let start = floor_boundary(text, span.offset).max(bom);
    let line_start = text
        .get(..start)
        .and_then(|s| s.rfind(['\n', '\r']))
        .map_or(bom, |i| i + 1);
    let line_end = text
        .get(start..)
        .and_then(|s| s.find(['\n', '\r']))
        .map_or(text.len(), |i| start + i);
    let end = ceil_boundary(text, span.end()).clamp(start, line_end);
    let line = if span.line >= 1 {
        span.line as usize
    } else {
        1 + count_line_breaks(text.get(..line_start).unwrap_or(""))
    };
    Excerpt {
        text: text.get(line_start..line_end).unwrap_or(""),
        line,
        range: (start - line_start)..(end - line_start),
    }
}

/// Line breaks as the YAML scanner counts them (`\n`, `\r\n`, lone `\r`).
fn count_line_breaks(s: &str) -> usize {
    let b = s.as_bytes();
    b.iter()
        .enumerate()
        .filter(|&(i, &c)| c == b'\n' || (c == b'\r' && b.get(i + 1) != Some(&b'\n')))
        .count()
}

/// Line and column (1-based, column exclusive) just past the span's end.
fn end_position(text: &str, span: Span) -> (u32, u32) {
    let start = floor_boundary(text, span.offset);
    let end = ceil_boundary(text, span.end()).max(start);
    let (mut line, mut col) = (span.line, span.col);
    let slice = text.get(start..end).unwrap_or("");
    let mut chars = slice.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' || (c == '\r' && chars.peek() != Some(&'\n')) {
            line = line.saturating_add(1);
            col = 1;
        } else {
            col = col.saturating_add(1);
        }
    }
    (line, col)
}

/// One JSON object per diagnostic: {"file","line","column","end_line",
/// "end_column","severity","code","message","label","hint"} (line/column
/// null when span is None). `end_column` is exclusive: the column just after
/// the last character of the span.
#[must_use]
pub fn to_json(file: &SourceFile, diag: &Diagnostic) -> serde_json::Value {
    let (line, column, end_line, end_column) = match diag.span {
        Some(span) => {
            let (el, ec) = end_position(file.text, span);
            (Some(span.line), Some(span.col), Some(el), Some(ec))
        }
        None => (None, None, None, None),
    };
    json!({
        "file": file.path,
        "line": line,
        "column": column,
        "end_line": end_line,
        "end_column": end_column,
        "severity": diag.severity,
        "code": diag.code,
        "message": diag.message,
        "label": diag.label,
        "hint": diag.hint,
    })
}

/// Closest candidate by edit distance (Damerau-Levenshtein or Levenshtein,
/// case-insensitive), only when close enough to be a plausible typo
/// (distance <= max(1, len/3)); used for "did you mean" hints.
///
/// Uses the optimal-string-alignment distance (adjacent transpositions count
/// as one edit); `len` is the length of `word` in characters; ties go to the
/// first candidate.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let w: Vec<char> = word.chars().flat_map(char::to_lowercase).collect();
    let max = (w.len() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for cand in candidates {
        let c: Vec<char> = cand.chars().flat_map(char::to_lowercase).collect();
        if c.len().abs_diff(w.len()) > max {
            continue;
        }
        let d = osa_distance(&w, &c);
        if d <= max && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, cand));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal string alignment distance (Levenshtein + adjacent transpositions).
fn osa_distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    // Three rolling rows: i-2, i-1, i.
    let mut prev2 = vec![0usize; width];
    let mut prev: Vec<usize> = (0..width).collect();
    let mut cur = vec![0usize; width];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            let mut v = (prev[j + 1] + 1).min(cur[j] + 1).min(prev[j] + cost);
            if i > 0 && j > 0 && a.get(i - 1) == Some(&cb) && b.get(j - 1) == Some(&ca) {
                v = v.min(prev2[j - 1] + 1);
            }
            cur[j + 1] = v;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::yaml;
    use super::*;

    fn span_of(text: &str, needle: &str) -> Span {
        let offset = text.find(needle).expect("needle in text");
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = text[line_start..offset].chars().count() + 1;
        Span {
            line: line as u32,
            col: col as u32,
            offset,
            len: needle.len(),
        }
    }

    const TEXT: &str = "\
flows:
  referral_to_opportunity:
    source: lead
    feilds:
      name: $.name
";

    #[test]
    fn plain_rendering_of_a_located_error() {
        let file = SourceFile {
            path: "mappings/dynamics365.yaml",
            text: TEXT,
        };
        let d = Diagnostic::error(
            "unknown-key",
            "unknown key \"feilds\" in flow \"referral_to_opportunity\"",
        )
        .at(span_of(TEXT, "feilds"))
        .with_label("not a field of a flow")
        .with_hint("did you mean `fields`?");
        let out = render(&file, &[d], false);
        let expected = "\
error[unknown-key]: unknown key \"feilds\" in flow \"referral_to_opportunity\"
 --> mappings/dynamics365.yaml:4:5
  |
4 |     feilds:
  |     ^^^^^^ not a field of a flow
  |
  = help: did you mean `fields`?
";
        assert_eq!(out, expected);
    }

    #[test]
    fn caret_counts_characters_not_bytes() {
        let text = "a: 1\nb: \"✔✔ ok\" # é\nlonger_line_number_ten: x\n";
        let file = SourceFile {
            path: "x.yaml",
            text,
        };
        let span = span_of(text, "ok");
        assert_eq!((span.line, span.col), (2, 8));
        let out = render(
            &file,
            &[Diagnostic::warning("w", "look here").at(span)],
            false,
        );
        assert!(out.starts_with("warning[w]: look here\n"), "{out}");
        assert!(out.contains("--> x.yaml:2:8\n"), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        let src_line = lines
            .iter()
            .position(|l| l.contains("b: \"✔✔ ok\""))
            .unwrap();
        let caret_line = lines[src_line + 1];
        let src_col = lines[src_line].chars().position(|c| c == 'o').unwrap();
        assert_eq!(
            caret_line.chars().position(|c| c == '^'),
            Some(src_col),
            "{out}"
        );
        assert_eq!(caret_line.matches('^').count(), 2, "{out}");
    }

    #[test]
    fn rendering_spans_from_the_yaml_loader() {
        let text = "\u{FEFF}flows:\n  ✔a: {x: 1, x: 2}\n";
        let errors = yaml::parse(text).unwrap_err();
        let diags: Vec<Diagnostic> = errors.into_iter().map(Diagnostic::from).collect();
        assert_eq!(diags[0].code, "yaml-duplicate-key");
        let file = SourceFile {
            path: "m.yaml",
            text,
        };
        let out = render(&file, &diags, false);
        assert!(
            out.contains("error[yaml-duplicate-key]: duplicate key \"x\""),
            "{out}"
        );
        assert!(out.contains("--> m.yaml:2:14"), "{out}");
        assert!(
            out.contains("= help: first defined at line 2:8; remove one of them"),
            "{out}"
        );
        let caret = out.lines().find(|l| l.contains('^')).unwrap();
        let src = out.lines().find(|l| l.contains("✔a:")).unwrap();
        let want = src
            .char_indices()
            .filter(|(_, c)| *c == 'x')
            .nth(1)
            .unwrap()
            .0;
        let want_chars = src[..want].chars().count();
        assert_eq!(
            caret.chars().position(|c| c == '^'),
            Some(want_chars),
            "{out}"
        );
        // Syntax errors render at the reported line.
        let text = "a:\n  b: 1\n\tc: 2\n";
        let d: Diagnostic = yaml::parse(text).unwrap_err().remove(0).into();
        let out = render(
            &SourceFile {
                path: "t.yaml",
                text,
            },
            &[d],
            false,
        );
        assert!(out.contains("--> t.yaml:3:1"), "{out}");
    }

    #[test]
    fn rendering_without_span_and_multiple_diagnostics() {
        let file = SourceFile {
            path: "empty.yaml",
            text: "",
        };
        let d1 =
            Diagnostic::error("file-empty", "file is empty").with_hint("add a `flows:` section");
        let d2 = Diagnostic::warning("w", "second").with_label("ignored without span");
        let out = render(&file, &[d1, d2], false);
        assert_eq!(
            out,
            "error[file-empty]: file is empty\n--> empty.yaml\n = help: add a `flows:` section\n\nwarning[w]: second\n--> empty.yaml\n"
        );
        assert_eq!(render(&file, &[], false), "");
    }

    #[test]
    fn bad_spans_are_clamped() {
        let text = "é: x\nb: y";
        let file = SourceFile { path: "p", text };
        let spans = [
            Span {
                line: 1,
                col: 1,
                offset: 1,
                len: 1,
            }, // inside `é`
            Span {
                line: 1,
                col: 2,
                offset: 2,
                len: 500,
            }, // past the end
            Span {
                line: 9,
                col: 9,
                offset: 9999,
                len: 3,
            },
            Span {
                line: 0,
                col: 0,
                offset: 7,
                len: 0,
            },
            Span {
                line: 2,
                col: 5,
                offset: text.len(),
                len: 0,
            },
            Span::default(),
        ];
        for span in spans {
            let d = Diagnostic::error("x", "m").at(span).with_label("l");
            let plain = render(&file, std::slice::from_ref(&d), false);
            assert!(plain.contains("--> p:"), "{plain}");
            let colored = render(&file, std::slice::from_ref(&d), true);
            assert!(colored.contains('\u{1b}'), "{colored}");
            let _ = to_json(&file, &d);
        }
        let d = Diagnostic::error("x", "m").at(Span {
            line: 0,
            col: 0,
            offset: 7,
            len: 0,
        });
        assert!(render(&file, &[d], false).contains("--> p:2:2"));
        // Empty file, trailing newline, CRLF.
        for text in ["", "a: 1\n", "a: 1\r\nb: 2\r\n"] {
            let file = SourceFile { path: "p", text };
            let span = Span {
                line: 1,
                col: 1,
                offset: text.len(),
                len: 4,
            };
            let _ = render(&file, &[Diagnostic::error("x", "m").at(span)], false);
        }
    }

    #[test]
    fn rendering_never_panics_on_arbitrary_spans() {
        let texts = [
            "",
            "\n",
            "a",
            "é✔\r\n\tx\r",
            "\u{FEFF}k: ✔\n  - \"q\"\n",
            "a\u{1b}b\u{0}\n\n",
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (n as u64 + 1)) as usize
        };
        for i in 0..5_000 {
            let text = texts[i % texts.len()];
            let span = Span {
                line: next(5) as u32,
                col: next(5) as u32,
                offset: next(text.len() + 3),
                len: if i % 7 == 0 { usize::MAX } else { next(6) },
            };
            let file = SourceFile {
                path: "p.yaml",
                text,
            };
            let d = Diagnostic::error("c", "m")
                .at(span)
                .with_label("l")
                .with_hint("h");
            let out = render(&file, std::slice::from_ref(&d), i % 2 == 0);
            assert!(out.contains("p.yaml:"), "{out}");
            let v = to_json(&file, &d);
            assert!(v["end_line"].as_u64().is_some());
        }
    }

    #[test]
    fn control_characters_in_messages_are_escaped() {
        let file = SourceFile {
            path: "p",
            text: "a: 1\n",
        };
        let d = Diagnostic::error("x", "key \u{1b}[31mred").with_hint("\u{202E}evil");
        let out = render(&file, &[d], false);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{202E}'),
            "{out:?}"
        );
        assert!(out.contains("\\u{1b}[31mred"), "{out}");
    }

    #[test]
    fn json_shape() {
        let file = SourceFile {
            path: "mappings/d.yaml",
            text: TEXT,
        };
        let d = Diagnostic::error("unknown-key", "unknown key \"feilds\"")
            .at(span_of(TEXT, "feilds"))
            .with_hint("did you mean `fields`?");
        assert_eq!(
            to_json(&file, &d),
            json!({
                "file": "mappings/d.yaml",
                "line": 4,
                "column": 5,
                "end_line": 4,
                "end_column": 11,
                "severity": "error",
                "code": "unknown-key",
                "message": "unknown key \"feilds\"",
                "label": null,
                "hint": "did you mean `fields`?",
            })
        );
        let w = Diagnostic::warning("file-empty", "file is empty").with_label("x");
        let v = to_json(&file, &w);
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["line"], serde_json::Value::Null);
        assert_eq!(v["end_column"], serde_json::Value::Null);
        assert_eq!(v["label"], "x");
        assert_eq!(v.as_object().unwrap().len(), 10);
        // Multi-line spans end on a later line; columns count characters.
        let text = "k: |\n  ✔ab\nz: 1\n";
        let span = span_of(text, "|\n  ✔ab");
        let v = to_json(
            &SourceFile { path: "p", text },
            &Diagnostic::error("c", "m").at(span),
        );
        assert_eq!(
            (v["end_line"].as_u64(), v["end_column"].as_u64()),
            (Some(2), Some(6))
        );
        // The derived Serialize uses the same lowercase severity.
        let s = serde_json::to_value(&d).unwrap();
        assert_eq!(s["severity"], "error");
        assert_eq!(s["span"]["line"], 4);
    }

    #[test]
    fn did_you_mean_cases() {
        let keys = [
            "source",
            "fields",
            "value_maps",
            "transform",
            "tests",
            "description",
        ];
        assert_eq!(did_you_mean("feilds", keys), Some("fields"));
        assert_eq!(did_you_mean("valuemaps", keys), Some("value_maps"));
        assert_eq!(did_you_mean("tranform", keys), Some("transform"));
        assert_eq!(did_you_mean("xyz", keys), None);
        assert_eq!(did_you_mean("Fields", keys), Some("fields"));
        assert_eq!(did_you_mean("tsets", keys), Some("tests"));
        assert_eq!(did_you_mean("", keys), None);
        assert_eq!(did_you_mean("a", ["b", "ab"]), Some("b"));
        assert_eq!(did_you_mean("sauce", keys), None);
        assert_eq!(did_you_mean("feilds", std::iter::empty()), None);
    }

    #[test]
    fn osa_distance_basics() {
        let d = |a: &str, b: &str| {
            osa_distance(
                &a.chars().collect::<Vec<_>>(),
                &b.chars().collect::<Vec<_>>(),
            )
        };
        assert_eq!(d("", ""), 0);
        assert_eq!(d("abc", ""), 3);
        assert_eq!(d("", "ab"), 2);
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(d("ab", "ba"), 1);
        assert_eq!(d("ca", "abc"), 3);
        assert_eq!(d("✔é", "é✔"), 1);
    }
}
