//! The `cosell` binary as a user runs it: exit codes, what lands on stdout and stderr, and the
//! acceptance points of the mapping-language issue.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cosell(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cosell"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NO_COLOR")
        .output()
        .expect("run cosell")
}

fn cosell_stdin(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cosell"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn cosell");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const MAPPINGS: [&str; 2] = ["mappings/dynamics365.yaml", "mappings/salesforce.yaml"];

#[test]
fn shipped_mappings_are_valid() {
    let out = cosell(&["validate", MAPPINGS[0], MAPPINGS[1]]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("mappings/dynamics365.yaml is valid"));
}

#[test]
fn shipped_mapping_tests_pass_and_there_are_at_least_twenty() {
    let out = cosell(&["test", MAPPINGS[0], MAPPINGS[1]]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: usize = summary.split_whitespace().next().unwrap().parse().unwrap();
    assert!(passed >= 20, "{summary}");
    assert!(summary.ends_with(" 0 failed"), "{summary}");
    for file in MAPPINGS {
        let count = std::fs::read_to_string(repo(file))
            .unwrap()
            .matches("\n  - name: ")
            .count();
        assert!(count >= 10, "{file} has {count} inline tests");
    }
}

#[test]
fn schema_command_matches_the_checked_in_schema() {
    let out = cosell(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let checked_in =
        std::fs::read_to_string(repo("schemas/cosell.schema.json")).unwrap_or_default();
    assert!(
        text(&out.stdout) == checked_in,
        "schemas/cosell.schema.json is stale: run `cargo run -- schema > schemas/cosell.schema.json` to regenerate it"
    );
}

#[test]
fn shipped_mappings_point_editors_at_the_schema() {
    for file in MAPPINGS {
        let first = std::fs::read_to_string(repo(file)).unwrap();
        assert!(
            first.starts_with("# yaml-language-server: $schema=../schemas/cosell.schema.json\n"),
            "{file}"
        );
    }
}

#[test]
fn map_yields_the_deal_value_and_the_account_lookup() {
    let out = cosell(&[
        "map",
        "--config",
        "mappings/dynamics365.yaml",
        "--flow",
        "referral_to_opportunity",
        "--input",
        "mappings/examples/referral-doc-create-request.json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["estimatedvalue"], 50000);
    let lookup = &record["parentaccountid@odata.bind"]["$lookup"];
    assert_eq!(lookup["entity"], "accounts");
    assert_eq!(lookup["match"]["name"], "Contoso Customer Inc");
    assert_eq!(lookup["match"]["address1_postalcode"], "98052");
    assert_eq!(lookup["on_missing"], "create");
    assert_eq!(lookup["create"]["address1_country"], "US");
}

#[test]
fn map_streams_json_lines_and_reports_violations_by_line() {
    let doc = std::fs::read_to_string(repo("mappings/examples/dynamics-opportunity.json")).unwrap();
    let mut good: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let one = serde_json::to_string(&good).unwrap();
    good["parentaccountid"]["address1_country"] = "Narnia".into();
    let bad = serde_json::to_string(&good).unwrap();
    let input = format!("{one}\n{bad}\nnot json\n{one}\n");
    let out = cosell_stdin(
        &[
            "map",
            "--config",
            "mappings/dynamics365.yaml",
            "--flow",
            "opportunity_to_referral",
        ],
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("record 2: ✘ Two letter country code is required"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3: not valid JSON"), "{stderr}");
}

#[test]
fn map_resolves_lookups_against_given_records() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("crm.json");
    std::fs::write(
        &records,
        r#"{"accounts":[{"accountid":"a-1","name":"Contoso Customer Inc","address1_postalcode":"98052"}],
            "transactioncurrencies":[{"transactioncurrencyid":"c-1","isocurrencycode":"USD"}]}"#,
    )
    .unwrap();
    let out = cosell(&[
        "map",
        "--config",
        "mappings/dynamics365.yaml",
        "--flow",
        "referral_to_opportunity",
        "--input",
        "mappings/examples/referral-doc-create-request.json",
        "--records",
        records.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["parentaccountid@odata.bind"], "/accounts(a-1)");
    assert_eq!(
        record["transactioncurrencyid@odata.bind"],
        "/transactioncurrencies(c-1)"
    );
}

#[test]
fn settings_can_be_overridden_from_the_command_line_and_the_environment() {
    let out = cosell(&[
        "map",
        "--config",
        "mappings/dynamics365.yaml",
        "--flow",
        "referral_to_opportunity",
        "--input",
        "mappings/examples/referral-doc-create-request.json",
        "--set",
        "deal_value_field=new_dealvalue",
    ]);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["new_dealvalue"], 50000);
    assert!(record.get("estimatedvalue").is_none());

    let out = Command::new(env!("CARGO_BIN_EXE_cosell"))
        .args([
            "map",
            "--config",
            "mappings/dynamics365.yaml",
            "--flow",
            "referral_to_opportunity",
            "--input",
            "mappings/examples/referral-doc-create-request.json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("COSELL_SETTING_CHECKMARK_IN_NAME", "no")
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["name"], "Test Cosell Invite_20");

    let bad = cosell(&["validate", MAPPINGS[0], "--set", "checkmark_in_name=maybe"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("expected true or false"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn unknown_flow_is_a_usage_error_with_a_suggestion() {
    let out = cosell(&[
        "map",
        "--config",
        MAPPINGS[0],
        "--flow",
        "referral_to_oportunity",
        "--input",
        "mappings/examples/referral-doc-create-request.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("did you mean `referral_to_opportunity`?"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unreadable_files_are_usage_errors() {
    let out = cosell(&["validate", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("does/not/exist.yaml"));
}

/// A corrupted copy of the shipped Dynamics mapping: `(what, find, replace)`; the diagnostic
/// must name the line where the replacement landed.
fn corrupt(find: &str, replace: &str) -> (tempfile::TempDir, PathBuf, usize) {
    let original = std::fs::read_to_string(repo(MAPPINGS[0])).unwrap();
    let at = original
        .find(find)
        .unwrap_or_else(|| panic!("`{find}` not in the mapping"));
    let line = original[..at].matches('\n').count()
        + 1
        + find[..find.len() - find.trim_start_matches('\n').len()]
            .matches('\n')
            .count();
    let corrupted = original.replacen(find, replace, 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    let path = dir.path().join("mappings/broken.yaml");
    std::fs::write(&path, corrupted).unwrap();
    (dir, path, line)
}

fn assert_invalid_at(find: &str, replace: &str, expect_in_message: &str) {
    let (_dir, path, line) = corrupt(find, replace);
    let out = cosell(&["validate", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{find} → {replace}\n{stderr}");
    let located = format!("broken.yaml:{line}:");
    assert!(
        stderr.contains(&located),
        "expected {located} for `{replace}`:\n{stderr}"
    );
    assert!(
        stderr.contains(expect_in_message),
        "expected `{expect_in_message}`:\n{stderr}"
    );
}

#[test]
fn corrupted_mappings_name_the_right_line() {
    assert_invalid_at(
        "    source: related_referral\n",
        "    sorce: related_referral\n",
        "did you mean `source`?",
    );
    assert_invalid_at(
        "      cosell_microsoftcrmid: $.trackingInfo.microsoftMsxId",
        "      cosell_microsoftcrmid: $.trackingInfo[microsoftMsxId",
        "invalid JSONPath",
    );
    assert_invalid_at(
        "      cosell_microsoftstatus: \"{{ related_referral.status }}",
        "      cosell_microsoftstatus: \"{{ related_referral.status",
        "template does not compile",
    );
    assert_invalid_at(
        "  checkmark_in_name: true",
        "  checkmark_in_name: 42",
        "expected true/false",
    );
    assert_invalid_at(
        "      salesstage: { path: $.salesStage, map: sales_stage }",
        "      salesstage: { path: $.salesStage, map: sales_stages }",
        "unknown value map `sales_stages`",
    );
}

#[test]
fn bad_indentation_is_located() {
    // One key indented one space too far inside a flow.
    let (_dir, path, line) = corrupt("    target: lead\n", "     target: lead\n");
    let out = cosell(&["validate", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("broken.yaml:{line}:")),
        "line {line}:\n{stderr}"
    );
}

#[test]
fn all_errors_are_reported_in_one_run() {
    let original = std::fs::read_to_string(repo(MAPPINGS[0])).unwrap();
    let broken = original
        .replacen("map: sales_stage }", "map: sales_stages }", 1)
        .replacen(
            "$.trackingInfo.microsoftMsxId",
            "$.trackingInfo.microsoftMsxID",
            1,
        )
        .replacen(
            "message: Customer name is required",
            "message: Customer name is required\n        when: referral.nme",
            1,
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = cosell(&["validate", "--format", "json", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diags = doc["files"][0]["diagnostics"].as_array().unwrap();
    let codes: Vec<&str> = diags.iter().map(|d| d["code"].as_str().unwrap()).collect();
    assert!(codes.contains(&"unknown-value-map"), "{codes:?}");
    assert!(codes.contains(&"unknown-referral-field"), "{codes:?}");
    assert!(diags.len() >= 3, "{diags:#?}");
    for d in diags {
        assert!(
            d["line"].as_u64().unwrap() > 0 && d["column"].as_u64().unwrap() > 0,
            "{d}"
        );
    }
    let hints: Vec<&str> = diags.iter().filter_map(|d| d["hint"].as_str()).collect();
    assert!(
        hints.iter().any(|h| h.contains("microsoftMsxId")),
        "{hints:?}"
    );
    assert!(hints.iter().any(|h| h.contains("`name`")), "{hints:?}");
}

#[test]
fn literal_secrets_are_rejected() {
    let original = std::fs::read_to_string(repo(MAPPINGS[0])).unwrap();
    let broken = original.replacen(
        "client_secret: \"${PC_CLIENT_SECRET}\"",
        "client_secret: \"hunter2-canary\"",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = cosell(&["validate", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("must be a secret reference"), "{stderr}");
}

#[test]
fn a_stage_map_must_cover_every_status_it_can_meet() {
    let original = std::fs::read_to_string(repo(MAPPINGS[0])).unwrap();
    let broken = original.replacen("      Closed/Expired: 4              # Canceled\n", "", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = cosell(&["validate", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(
            "no entry for the referral status/substatus pairs it can meet: Closed/Expired"
        ),
        "{stderr}"
    );
}

#[test]
fn binary_and_empty_files_are_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("binary.yaml", vec![0u8, 159, 146, 150, 255, 0, 1, 2]),
        (
            "latin1.yaml",
            b"version: 1\ncrm: dynamics365\nname: caf\xe9\n".to_vec(),
        ),
        ("empty.yaml", Vec::new()),
        ("deep.yaml", "[".repeat(100_000).into_bytes()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let out = cosell(&["validate", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("error"),
            "{name}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn failing_inline_tests_show_expected_and_actual() {
    let original = std::fs::read_to_string(repo(MAPPINGS[0])).unwrap();
    let broken = original.replacen(
        "        estimatedvalue: 50000\n",
        "        estimatedvalue: 50001\n",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("examples")).unwrap();
    for f in std::fs::read_dir(repo("mappings/examples")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join("examples").join(f.file_name())).unwrap();
    }
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = cosell(&["test", path.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("field `estimatedvalue`: expected 50001, got 50000"),
        "{stdout}"
    );
    assert!(
        stdout.lines().last().unwrap().ends_with("1 failed"),
        "{stdout}"
    );
}
