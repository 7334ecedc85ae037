//! Real third-party clients against the sandbox over TLS with the sandbox CA trusted:
//! Microsoft's `powerplatform-dataverse-client` and `simple-salesforce` (PyPI). If the
//! sandbox answers something the real services would not, these clients break.
//!
//! The Python interpreter comes from `COSELL_PYTHON` (set by `.ci/test`, which creates the
//! venv from `tests/clients/requirements.txt`) or `.venv/bin/python`. Without either the
//! tests fail and say how to get one; `COSELL_SKIP_PYTHON_CLIENTS=1` skips them explicitly.

use std::path::PathBuf;
use std::process::Command;

use cosell::sandbox::{self, SandboxOptions};

fn python() -> Option<PathBuf> {
    if std::env::var_os("COSELL_SKIP_PYTHON_CLIENTS").is_some_and(|v| v == "1") {
        return None;
    }
    if let Some(path) = std::env::var_os("COSELL_PYTHON") {
        return Some(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the third-party client tests: run `bash .ci/test` (creates .venv from \
         tests/clients/requirements.txt), set COSELL_PYTHON, or skip with COSELL_SKIP_PYTHON_CLIENTS=1"
    );
    Some(venv)
}

async fn run_client(script: &str) {
    let Some(python) = python() else {
        eprintln!("skipped: COSELL_SKIP_PYTHON_CLIENTS=1");
        return;
    };
    let handle = sandbox::start(SandboxOptions {
        tls: true,
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("sandbox-ca.pem");
    std::fs::write(&ca, handle.ca_pem()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let base = handle.base_url().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(&script)
            .env("COSELL_SANDBOX_URL", &base)
            .env("REQUESTS_CA_BUNDLE", &ca)
            .env("SSL_CERT_FILE", &ca)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "client script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsoft_dataverse_python_sdk_works_against_the_sandbox() {
    run_client("dataverse_client.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_salesforce_works_against_the_sandbox() {
    run_client("salesforce_client.py").await;
}
