//! Section `configs`: broken mapping files, each with the diagnostic a CRM admin must get.
//!
//! The corpus is one table ([`CASES`]): most cases take a shipped mapping
//! (`mappings/dynamics365.yaml`, `mappings/salesforce.yaml`) and break one thing on one line,
//! so the expected `line:col` is a line of the shipped file; the rest are whole files made
//! here (empty, binary, UTF-16, an alias bomb, 5 000 nested brackets, 17 MB). Each edit checks
//! that the text it replaces is still on that line, so a change to a shipped mapping fails
//! here loudly instead of quietly testing something else.
//!
//! Every case goes through `cosell::load::check_bytes` (what `cosell validate` runs) and must:
//! report an error (never success), put the first diagnostic at the expected line (and column
//! when given), with a message containing the expected text and the expected fix hint; every
//! diagnostic carries a location (no raw serde text without a place); no panic; under
//! [`FAST`]. A handful also run through the real binary (`cosell validate FILE` and
//! `--format json`): exit code 1, `FILE:LINE:COL` in the text, `line`/`column` in the JSON.
//!
//! Then a mutation sweep: lines of both shipped mappings deleted, duplicated, tab-indented,
//! cut in half or given a stray quote (a seeded sample in CI, every line with `--long`);
//! each result must be valid or fail with located diagnostics inside the file, fast, without
//! a panic.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cosell::config::diagnostic::{Diagnostic, Severity};
use cosell::load::{self, Checked};

use crate::report::{Ctx, Figures};

/// A debug build validates any of these files well within this (most take a few ms).
const FAST: Duration = Duration::from_secs(3);

#[derive(Clone, Copy)]
enum Base {
    D365,
    Sf,
    /// The whole file comes from [`Edit::Whole`].
    Blank,
}

#[derive(Clone, Copy)]
enum Edit {
    /// On line N (1-based), replace the first `from` with `to`.
    Sub(usize, &'static str, &'static str),
    /// Insert a line after line N.
    Ins(usize, &'static str),
    /// Delete line N.
    Del(usize),
    /// The whole file.
    Whole(fn() -> Vec<u8>),
}
use Edit::*;

struct Case {
    name: &'static str,
    base: Base,
    edit: Edit,
    /// `line` or `line:col` of the first diagnostic; "" when it is about the whole file.
    at: &'static str,
    /// Text the message must contain.
    message: &'static str,
    /// Text the hint must contain ("" when the product gives none).
    hint: &'static str,
}

const fn case(
    name: &'static str,
    base: Base,
    edit: Edit,
    at: &'static str,
    message: &'static str,
    hint: &'static str,
) -> Case {
    Case {
        name,
        base,
        edit,
        at,
        message,
        hint,
    }
}

use Base::{Blank, D365, Sf};

/// The corpus: category, then what is broken. Lines refer to the shipped mappings.
#[rustfmt::skip]
const CASES: &[Case] = &[
    // --- YAML syntax
    case("tab-indent", D365, Sub(20, "      tenant_id", "\ttenant_id"), "20:1", "tab character", "use spaces"),
    case("over-indented-key", D365, Sub(29, "    api_version", "     api_version"), "29:6", "expected `key:`", "indentation"),
    case("unclosed-quote", D365, Sub(146, "Dynamics 365\"", "Dynamics 365"), "146:14", "never closed", "closing quote"),
    case("unclosed-brace", D365, Sub(77, " }", ""), "77:14", "`{` is never closed", "missing `}`"),
    case("unclosed-bracket", Sf, Sub(205, "BillingCountry]", "BillingCountry"), "205:16", "`[` is never closed", "missing `]`"),
    case("duplicate-setting", D365, Ins(43, "  on_hold_stage: 3"), "44:3", "duplicate key \"on_hold_stage\"", "first defined at line 43"),
    case("duplicate-section", Sf, Ins(31, "connections: {}"), "32:1", "duplicate key \"connections\"", "line 14"),
    case("colon-in-plain-value", D365, Sub(121, "name: {", "name {"), "121:53", "mapping values are not allowed", "quotes"),
    case("text-after-quote", Sf, Sub(213, "'Active')", "\"Active\")"), "213:118", "trailing content", "quote the whole value"),
    case("second-document", D365, Ins(47, "---"), "48:1", "only one YAML document", "remove this `---`"),
    case("binary-tag", D365, Sub(38, "true", "!!binary dHJ1ZQ=="), "38:22", "unsupported tag `!!binary`", "remove the tag"),
    case("unknown-alias", Sf, Sub(291, "*referral_fields", "*referal_fields"), "291:11", "unknown alias", "define the anchor"),
    // --- encoding, size, hostile structure
    case("empty-file", Blank, Whole(Vec::new), "", "the file is empty", "start from mappings/"),
    case("only-comments", Blank, Whole(only_comments), "", "the file is empty", "start from mappings/"),
    case("binary-garbage", Blank, Whole(png), "1:1", "not valid UTF-8", "UTF-8"),
    case("utf16", Blank, Whole(utf16), "1:1", "not valid UTF-8", "UTF-16"),
    case("latin1-byte", D365, Sub(87, "Unknown", "Unkn\u{FFFF}own"), "87:11", "not valid UTF-8", "UTF-8"),
    case("nul-byte", D365, Sub(3, "Dynamics 365", "Dynamics\0 365"), "3:46", "NUL byte", "plain text"),
    case("billion-laughs", Blank, Whole(billion_laughs), "9", "alias bomb", "aliases"),
    case("deep-flow-nesting", Blank, Whole(deep_brackets), "5", "nesting deeper than 64", "flatten"),
    case("deep-block-nesting", Blank, Whole(deep_blocks), "67", "nesting deeper than 64", "flatten"),
    case("huge-file", Blank, Whole(huge), "1:1", "file is too large", "smaller files"),
    // --- top level
    case("version-2", D365, Sub(14, "1", "2"), "14:10", "out of range in `version`", "`version: 1`"),
    case("version-quoted", Sf, Sub(11, "1", "\"1\""), "11:10", "expected a whole number in `version`", "remove the quotes"),
    case("unknown-crm", D365, Sub(15, "dynamics365", "dynamics"), "15:6", "\"dynamics\" is not allowed in `crm`", "use one of: dynamics365, salesforce"),
    case("crm-capitalised", Sf, Sub(12, "salesforce", "Salesforce"), "12:6", "not allowed in `crm`", "did you mean `salesforce`?"),
    case("missing-crm", D365, Del(15), "14:1", "missing key \"crm\"", "add `crm:`"),
    case("misspelt-top-key", D365, Ins(14, "verison: 1"), "15:1", "unknown key \"verison\"", "did you mean `version`?"),
    // --- connections: secrets, URLs, budgets
    case("literal-client-secret", D365, Sub(22, "\"${PC_CLIENT_SECRET}\"", "hunter2-literal"), "22:22", "must be a secret reference", "never commit secrets"),
    case("literal-private-key", Sf, Sub(29, "\"${file:/run/secrets/sf_jwt_key.pem}\"", "\"-----BEGIN PRIVATE KEY-----\""), "29:20", "must be a secret reference", "${file:"),
    case("malformed-reference", D365, Sub(28, "\"${DATAVERSE_URL}\"", "\"${DATAVERSE_URL\""), "28:15", "malformed reference", ""),
    case("url-without-scheme", D365, Sub(28, "\"${DATAVERSE_URL}\"", "contoso.crm.dynamics.com"), "28:15", "not an http(s) URL", "https://"),
    case("budget-text", D365, Sub(26, "10000", "ten thousand"), "26:24", "expected a whole number", ""),
    case("budget-negative", D365, Sub(26, "10000", "-5"), "26:24", "-5 is out of range", "smallest allowed value is 1"),
    case("budget-zero", Sf, Sub(30, "concurrent: 8", "concurrent: 0"), "30:43", "0 is out of range", "smallest allowed value is 1"),
    // --- types, enums, unknown keys
    case("setting-not-bool", D365, Sub(38, "true", "maybe"), "38:22", "expected true/false in setting \"checkmark_in_name\"", ""),
    case("yes-for-true", D365, Sub(147, "true", "yes"), "147:12", "expected true/false", "YAML 1.2 reads yes/no"),
    case("unknown-flow-key", D365, Sub(161, "fields:", "feilds:"), "161:5", "unknown key \"feilds\"", "did you mean `fields`?"),
    case("missing-source", D365, Del(158), "154:5", "missing key \"source\"", "add `source:`"),
    case("unknown-target", D365, Sub(159, "opportunity", "opportunites"), "159:13", "\"opportunites\" is not allowed", "did you mean `opportunity`?"),
    case("unknown-transform", D365, Sub(165, "[number]", "[numbr]"), "165:83", "\"numbr\" is not allowed", "did you mean `number`?"),
    case("negative-truncate", D365, Sub(168, "truncate: 2000", "truncate: -1"), "168:69", "-1 is out of range", "smallest allowed value is 0"),
    case("misspelt-transform-key", D365, Sub(168, "truncate: 2000", "truncat: 20"), "168:59", "unknown key \"truncat\"", "did you mean `truncate`?"),
    case("misspelt-on", D365, Sub(177, "on: create", "on: creat"), "177:54", "\"creat\" is not allowed", "did you mean `create`?"),
    case("unknown-fallback", Sf, Sub(57, "error", "throw"), "57:15", "\"throw\" is not allowed", "use one of: error, keep, null"),
    case("misspelt-map-keys", D365, Sub(52, "referral_status", "referal_status"), "52:11", "\"referal_status\" is not allowed", "did you mean `referral_status`?"),
    case("path-and-const", D365, Sub(175, "$.id", "{ path: $.id, const: x }"), "175:26", "2 value sources (path, const); give exactly one", "use one of `path`"),
    case("test-unknown-key", D365, Sub(371, "violations", "violatons"), "371:7", "unknown key \"violatons\" in test 1", "did you mean `violations`?"),
    // --- semantics: paths, expressions, templates, references
    case("referral-field-case", D365, Sub(165, "dealValue", "dealvalue"), "165:50", "`dealvalue` in `$.details.dealvalue` is not a Partner Center referral field", "did you mean `dealValue`?"),
    case("for-each-typo", Sf, Sub(178, "solutions", "solution"), "178:15", "not a Partner Center referral field", "did you mean `solutions`?"),
    case("bad-jsonpath", D365, Sub(118, "$.customerProfile.address.postalCode", "$.customerProfile.address["), "118:28", "invalid JSONPath", "brackets"),
    case("bad-when", D365, Sub(160, "referral.type == 'Shared' and (operation == 'update' or referral.status != 'Closed')", "referral.type =="), "160:11", "expression does not compile", ""),
    case("braces-in-when", D365, Sub(160, "referral.type == 'Shared'", "{{ referral.type }} == 'Shared'"), "160:11", "expression does not compile", "without `{{ }}`"),
    case("unclosed-template", Sf, Sub(132, "{{ referral.substatus }}", "{{ referral.substatus }"), "132:30", "template does not compile", "not closed"),
    case("unknown-filter", D365, Sub(163, "truncate_chars(296)", "truncate_char(296)"), "163:19", "unknown filter `truncate_char`", "did you mean `truncate_chars`?"),
    case("unknown-test-in-rule", D365, Sub(182, "is not blank", "is not blnk"), "182:16", "unknown test `blnk`", "did you mean `blank`?"),
    case("unknown-test-in-when", Sf, Sub(134, "is email", "is e_mail"), "134:52", "unknown test `e_mail`", "did you mean `email`?"),
    case("unknown-setting", D365, Sub(163, "checkmark_in_name", "checkmark_in_nme"), "163:19", "unknown setting `checkmark_in_nme`", "did you mean `checkmark_in_name`?"),
    case("unknown-setting-source", Sf, Sub(165, "lead_status", "lead_stat"), "165:26", "unknown setting `lead_stat`", "did you mean `lead_status`?"),
    case("unknown-value-map", D365, Sub(172, "map: referral_stage", "map: referral_stages"), "172:86", "unknown value map `referral_stages`", "did you mean `referral_stage`?"),
    case("unknown-lookup", D365, Sub(169, "customer_account", "customer_acount"), "169:50", "unknown lookup `customer_acount`", "did you mean `customer_account`?"),
    case("unknown-parent-flow", D365, Sub(224, "referral_to_opportunity", "referral_to_oportunity"), "224:13", "unknown flow `referral_to_oportunity`", "did you mean `referral_to_opportunity`?"),
    case("test-unknown-flow", D365, Sub(349, "referral_to_opportunity", "referral_to_oportunity"), "349:11", "names unknown flow", "did you mean `referral_to_opportunity`?"),
    case("unknown-referral-attribute", D365, Sub(176, "referral.id }}", "referral.idd }}"), "176:40", "`referral.idd` is not a Partner Center referral field", "did you mean `id`?"),
];

fn only_comments() -> Vec<u8> {
    b"# cosell mapping\n# (everything commented out)\n\n".to_vec()
}

fn png() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend((0u8..=255).cycle().take(400));
    v
}

fn utf16() -> Vec<u8> {
    let mut v = vec![0xFF, 0xFE];
    for unit in "version: 1\ncrm: dynamics365\n".encode_utf16() {
        v.extend(unit.to_le_bytes());
    }
    v
}

/// Ten levels of nine aliases each: 9^10 nodes once expanded.
fn billion_laughs() -> Vec<u8> {
    let mut s = String::from(
        "version: 1\ncrm: dynamics365\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for level in 1..10u8 {
        let (name, prev) = ((b'a' + level) as char, (b'a' + level - 1) as char);
        let refs = vec![format!("*{prev}"); 9].join(", ");
        s.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    s.into_bytes()
}

fn deep_brackets() -> Vec<u8> {
    format!(
        "version: 1\ncrm: dynamics365\nsettings:\n  custom:\n    x: {}{}\n",
        "[".repeat(5000),
        "]".repeat(5000)
    )
    .into_bytes()
}

fn deep_blocks() -> Vec<u8> {
    let mut s = String::from("version: 1\ncrm: dynamics365\nx:\n");
    for depth in 1..=2000 {
        s.push_str(&" ".repeat(depth));
        s.push_str("k:\n");
    }
    s.into_bytes()
}

/// The shipped mapping padded with comments past the 8 MiB limit.
fn huge() -> Vec<u8> {
    let mut s = std::fs::read_to_string("mappings/dynamics365.yaml").expect("shipped mapping");
    while s.len() < 9 << 20 {
        s.push_str("# padding: a mapping file nobody should ever have to read past\n");
    }
    s.into_bytes()
}

fn shipped(base: Base) -> (&'static str, String) {
    let path = match base {
        Base::D365 => "mappings/dynamics365.yaml",
        Base::Sf => "mappings/salesforce.yaml",
        Base::Blank => return ("(made here)", String::new()),
    };
    (
        path,
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")),
    )
}

/// The broken file of a case.
fn build(case: &Case) -> Vec<u8> {
    let (path, text) = shipped(case.base);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let line_of = |n: usize| -> usize {
        assert!(
            n >= 1 && n <= lines.len(),
            "{}: {path} has no line {n}",
            case.name
        );
        n - 1
    };
    match case.edit {
        Sub(n, from, to) => {
            let i = line_of(n);
            assert!(
                lines[i].contains(from),
                "{}: line {n} of {path} no longer contains {from:?} (it is {:?}); update the case",
                case.name,
                lines[i]
            );
            lines[i] = lines[i].replacen(from, to, 1);
        }
        Ins(n, text) => {
            let i = line_of(n);
            lines.insert(i + 1, text.to_owned());
        }
        Del(n) => {
            let i = line_of(n);
            lines.remove(i);
        }
        Whole(make) => return make(),
    }
    let mut out = lines.join("\n");
    out.push('\n');
    let mut bytes = out.into_bytes();
    // `\u{FFFF}` marks a byte that is not UTF-8 (a Latin-1 "é" typed into the file).
    let marker = "\u{FFFF}".as_bytes();
    if let Some(pos) = bytes.windows(marker.len()).position(|w| w == marker) {
        bytes.splice(pos..pos + marker.len(), [0xE9]);
    }
    bytes
}

/// Runs the loader the way `cosell validate` does, catching a panic as a failure.
fn validate(name: &str, bytes: &[u8]) -> (Checked, Duration) {
    let started = Instant::now();
    let checked = std::panic::catch_unwind(|| load::check_bytes(name, bytes, &[]))
        .unwrap_or_else(|_| panic!("{name}: the loader panicked"));
    (checked, started.elapsed())
}

fn describe(d: &Diagnostic) -> String {
    match d.span {
        Some(s) => format!(
            "{}:{} [{}] {} (hint: {:?})",
            s.line, s.col, d.code, d.message, d.hint
        ),
        None => format!("- [{}] {} (hint: {:?})", d.code, d.message, d.hint),
    }
}

fn check_case(case: &Case) {
    let bytes = build(case);
    let (checked, took) = validate(case.name, &bytes);
    let all: Vec<String> = checked.diagnostics.iter().map(describe).collect();
    assert!(
        checked.has_errors(),
        "{}: the broken file validated ({all:?})",
        case.name
    );
    assert!(
        checked.plan.is_none(),
        "{}: a plan despite errors",
        case.name
    );
    assert!(took < FAST, "{}: validation took {took:?}", case.name);
    let first = checked
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error)
        .expect("an error");
    let (line, col) = match case.at.split_once(':') {
        Some((l, c)) => (l, Some(c)),
        None => (case.at, None),
    };
    if line.is_empty() {
        assert_eq!(first.span, None, "{}: {all:?}", case.name);
    } else {
        let span = first
            .span
            .unwrap_or_else(|| panic!("{}: no location: {all:?}", case.name));
        assert_eq!(
            span.line.to_string(),
            line,
            "{}: wrong line: {all:?}",
            case.name
        );
        if let Some(col) = col {
            assert_eq!(
                span.col.to_string(),
                col,
                "{}: wrong column: {all:?}",
                case.name
            );
        }
        // Every problem of a file that has lines is located (no bare serde text).
        for d in &checked.diagnostics {
            assert!(
                d.span.is_some(),
                "{}: unlocated diagnostic {d:?}",
                case.name
            );
        }
    }
    assert!(
        first.message.contains(case.message),
        "{}: message {:?} lacks {:?} ({all:?})",
        case.name,
        first.message,
        case.message
    );
    if !case.hint.is_empty() {
        let hint = first.hint.as_deref().unwrap_or_default();
        assert!(
            hint.contains(case.hint),
            "{}: hint {hint:?} lacks {:?}",
            case.name,
            case.hint
        );
    }
    // A literal secret is named by its place, never echoed back.
    if case.name.starts_with("literal-") {
        for d in &checked.diagnostics {
            let text = format!("{} {:?} {:?}", d.message, d.hint, d.label);
            assert!(
                !text.contains("hunter2") && !text.contains("BEGIN PRIVATE"),
                "{}: the diagnostic repeats the secret: {text}",
                case.name
            );
        }
    }
}

/// Some cases through the real binary: exit codes, `file:line:col`, the JSON shape.
fn through_the_binary(dir: &Path) -> u64 {
    let exe = env!("CARGO_BIN_EXE_cosell");
    let mut runs = 0;
    for name in [
        "tab-indent",
        "unknown-flow-key",
        "literal-client-secret",
        "unknown-test-in-rule",
        "budget-zero",
        "binary-garbage",
        "billion-laughs",
    ] {
        let case = CASES.iter().find(|c| c.name == name).expect("case");
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, build(case)).expect("write case");
        let file_name = file.display().to_string();
        let (line, col) = case.at.split_once(':').unwrap_or((case.at, ""));

        let started = Instant::now();
        let out = Command::new(exe)
            .args(["validate", &file_name])
            .output()
            .expect("run cosell validate");
        runs += 1;
        assert!(
            started.elapsed() < FAST * 2,
            "{name}: cosell validate was slow"
        );
        assert_eq!(out.status.code(), Some(1), "{name}: exit code of validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let located = if col.is_empty() {
            format!("{file_name}:{line}:")
        } else {
            format!("{file_name}:{line}:{col}")
        };
        assert!(text.contains(&located), "{name}: no {located} in {text}");
        assert!(text.contains(case.message), "{name}: {text}");
        assert!(!text.contains("panicked"), "{name}: {text}");

        let out = Command::new(exe)
            .args(["validate", "--format", "json", &file_name])
            .output()
            .expect("run cosell validate --format json");
        runs += 1;
        assert_eq!(out.status.code(), Some(1), "{name}: exit code (json)");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: --format json is not JSON: {e}"));
        let first = &json["files"][0]["diagnostics"][0];
        assert_eq!(
            first["file"],
            serde_json::json!(file_name),
            "{name}: {first}"
        );
        assert_eq!(first["line"].to_string(), line, "{name}: {first}");
        if !col.is_empty() {
            assert_eq!(first["column"].to_string(), col, "{name}: {first}");
        }
        assert_eq!(first["severity"], "error", "{name}: {first}");
    }
    // The shipped files are valid (exit 0); a missing file is a usage error (exit 2).
    let ok = Command::new(exe)
        .args([
            "validate",
            "mappings/dynamics365.yaml",
            "mappings/salesforce.yaml",
        ])
        .output()
        .expect("run cosell validate");
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let missing = Command::new(exe)
        .args(["validate", &dir.join("no-such.yaml").display().to_string()])
        .output()
        .expect("run cosell validate");
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    runs + 2
}

/// Small deterministic generator (xorshift), seeded by the suite.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One line of a shipped mapping mutated; the result must be valid, or fail with located
/// diagnostics inside the file, fast, without a panic. Returns (mutants, of which invalid).
fn mutation_sweep(ctx: &Ctx) -> (u64, u64) {
    let mut rng = Rng(ctx.seed | 1);
    let mut tried = 0;
    let mut invalid = 0;
    for base in [Base::D365, Base::Sf] {
        let (path, text) = shipped(base);
        let lines: Vec<&str> = text.lines().collect();
        let picks: Vec<usize> = if ctx.long {
            (0..lines.len()).collect()
        } else {
            (0..60).map(|_| rng.below(lines.len())).collect()
        };
        for i in picks {
            for kind in 0..5 {
                let mut mutant: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
                let what = match kind {
                    0 => {
                        mutant.remove(i);
                        "deleted"
                    }
                    1 => {
                        mutant.insert(i, lines[i].to_owned());
                        "duplicated"
                    }
                    2 => {
                        mutant[i] = format!("\t{}", lines[i]);
                        "tab-indented"
                    }
                    3 => {
                        let cut = lines[i]
                            .char_indices()
                            .map(|(at, _)| at)
                            .nth(lines[i].chars().count() / 2)
                            .unwrap_or(0);
                        mutant[i] = lines[i][..cut].to_owned();
                        "cut in half"
                    }
                    _ => {
                        mutant[i] = format!("{}\"", lines[i]);
                        "given a stray quote"
                    }
                };
                let label = format!("{path} line {} {what}", i + 1);
                let bytes = mutant.join("\n").into_bytes();
                let line_count = mutant.len() as u32 + 1;
                let (checked, took) = validate(&label, &bytes);
                tried += 1;
                assert!(took < FAST, "{label}: validation took {took:?}");
                if checked.has_errors() {
                    invalid += 1;
                    assert!(checked.plan.is_none(), "{label}: a plan despite errors");
                    for d in &checked.diagnostics {
                        let span = d
                            .span
                            .unwrap_or_else(|| panic!("{label}: unlocated {}", describe(d)));
                        assert!(
                            span.line >= 1 && span.line <= line_count,
                            "{label}: diagnostic outside the file: {}",
                            describe(d)
                        );
                        assert!(!d.message.trim().is_empty(), "{label}: empty message");
                    }
                } else {
                    assert!(checked.plan.is_some(), "{label}: valid but no plan");
                }
            }
        }
    }
    (tried, invalid)
}

pub fn run(ctx: &Ctx) -> Figures {
    let started = Instant::now();
    // Every case runs; the failures are reported together.
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|case| {
            std::panic::catch_unwind(|| check_case(case))
                .err()
                .map(|panic| {
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .unwrap_or_else(|| format!("{}: panicked", case.name))
                })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} configs:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    let corpus_took = started.elapsed();
    let dir = tempfile::tempdir().expect("temp dir");
    let binary_runs = through_the_binary(dir.path());
    let (mutants, invalid) = mutation_sweep(ctx);
    let cases = CASES.len() as u64;
    Figures {
        operations: cases + binary_runs + mutants,
        inputs_tried: cases + mutants,
        notes: vec![
            format!(
                "corpus: {cases} broken configs, each validated once ({:.1} s): YAML syntax (tabs, indentation, unclosed quotes/brackets, duplicate keys, stray `---`, tags, aliases), encoding/size/structure (empty, binary, UTF-16, Latin-1, NUL, alias bomb, deep nesting, 9 MB), version/crm, literal secrets, references, URLs, budgets, types/enums/unknown keys with did-you-mean, two value sources, tests:, JSONPath, expressions, templates, unknown filters/tests/settings/value maps/lookups/flows, referral fields",
                corpus_took.as_secs_f64()
            ),
            format!(
                "binary: {binary_runs} runs of `cosell validate` (text and --format json on 7 cases, the shipped files, a missing file)"
            ),
            format!(
                "mutation sweep: {mutants} one-line mutants of the shipped mappings (deleted, duplicated, tab, cut, stray quote; {}), {invalid} invalid, every diagnostic located, none panicked",
                if ctx.long { "every line" } else { "60 seeded lines per file" }
            ),
            "operations = validations run (corpus + binary runs + mutants); inputs_tried = corpus + mutants".into(),
        ],
        ..Figures::default()
    }
}
