//! `cosell run --sandbox --once` and `cosell plan --sandbox`, as a user runs them: the
//! binary, an embedded sandbox, a fresh state file in the working directory.

use std::process::Command;

fn run_once(mapping: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::canonicalize(mapping).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cosell"))
        .current_dir(dir.path())
        .args(["run", "--config"])
        .arg(&config)
        .args(["--sandbox", "--once", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .env_remove("COSELL_STATE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("0 dead-lettered"), "{stdout}");
    // Both ways: seeded referrals became CRM records and flagged opportunities referrals.
    let status = Command::new(env!("CARGO_BIN_EXE_cosell"))
        .current_dir(dir.path())
        .args([
            "status",
            "--state",
            "sqlite://.cosell/sandbox-state.db",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let links: u64 = status["links"]
        .as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    assert!(links >= 5, "links after the run: {status}");
    assert_eq!(status["dead_letters"].as_u64(), Some(0), "{status}");
    // The run's API calls were written for status on the way out.
    let upstreams = &status["api_usage"]["upstreams"];
    let crm = if mapping.contains("salesforce") {
        "salesforce"
    } else {
        "dataverse"
    };
    for api in ["partner_center", crm] {
        assert!(
            upstreams[api]["calls"].as_u64().unwrap_or(0) > 0,
            "{api} calls recorded: {status}"
        );
    }
}

#[test]
fn dynamics_sandbox_once_syncs_both_ways_and_exits_0() {
    run_once("mappings/dynamics365.yaml");
}

#[test]
fn salesforce_sandbox_once_syncs_both_ways_and_exits_0() {
    run_once("mappings/salesforce.yaml");
}

#[test]
fn plan_lists_writes_without_making_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::canonicalize("mappings/dynamics365.yaml").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cosell"))
        .current_dir(dir.path())
        .args(["plan", "--config"])
        .arg(&config)
        .args(["--sandbox", "--format", "json"])
        .env("RUST_LOG", "warn")
        .env_remove("COSELL_STATE")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let planned: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        planned
            .iter()
            .any(|w| w["system"] == "crm" && w["action"] == "create"),
        "{planned:?}"
    );
}
