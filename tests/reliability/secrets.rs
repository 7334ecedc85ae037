//! Section `secrets`: canary secrets through the real `cosell` binary.
//!
//! Every secret a mapping can reference — the Partner Center client secret and refresh
//! token, the Dataverse client secret, the Salesforce client secret and JWT private key —
//! is given a distinctive canary value (through `${ENV}` and `${file:…}` references, as in
//! production), and the binary is run against a sandbox on loopback:
//!
//! - *rejected*: the canaries are wrong credentials, so the sandbox refuses them and every
//!   error path prints (token errors, a failed `--once` run, `plan`, `webhook show`);
//! - *accepted*: the secrets are the sandbox's own credentials (themselves canaries here:
//!   `sandbox-secret`, `sandbox-refresh-token`) and the Salesforce JWT key is a canary key
//!   the sandbox accepts, so the success paths run too: a full `run --once` that creates
//!   CRM records, then a long-running `run` whose `/metrics`, `/healthz` and `/readyz` are
//!   scraped.
//!
//! Runs log at `RUST_LOG=trace`, in text and in `--log-format json`; every command that
//! has `--format json` also runs with it. Nothing may show a canary — raw, base64
//! (standard and URL-safe), percent-encoded, nor an issued access token — in any stdout,
//! stderr, the `/metrics` text, the audit trail (`cosell audit --format json`), or the
//! bytes of the SQLite state file and its WAL: the state store keeps no secret (links,
//! jobs, audit, cursors only). The panic hook is Rust's default; no code path of the binary
//! was found that panics on input, and a panic message would be a `panic!` format string
//! with its arguments, none of which is a secret, so no redacting hook is installed.
//!
//! Figures: `inputs_tried` = places checked (one per stream, file or page scanned);
//! `operations` = commands run (plus HTTP scrapes).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cosell::sandbox::{self, SandboxOptions};

use crate::common;
use crate::report::{Ctx, Figures};

/// Canary values (with `+`, `/` and `=` so every encoding differs from the raw text).
const PC_SECRET: &str = "CANARY-pc-client-secret-Qx7+/=z9";
const PC_REFRESH: &str = "CANARY-pc-refresh-token-Hw3+/kL";
const DV_SECRET: &str = "CANARY-dataverse-secret-Mp5+/tR";
const SF_SECRET: &str = "CANARY-salesforce-secret-Vb8+/nQ";
/// What a token issued by the sandbox starts with.
const TOKEN_PREFIX: &str = "eyJ0eXAiOiJKV1Qi.sbx.";

struct Scan {
    /// Canary texts and what they are.
    needles: Vec<(String, String)>,
    figures: Figures,
}

impl Scan {
    fn new(secrets: &[(&str, &str)]) -> Scan {
        let mut needles = Vec::new();
        for (what, secret) in secrets {
            let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
            let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
            let percent: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            let escaped =
                percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            for (form, text) in [
                ("", secret.to_string()),
                (" (base64)", b64),
                (" (base64url)", url),
                (" (form-encoded)", percent),
                (" (percent-encoded)", escaped),
            ] {
                needles.push((format!("{what}{form}"), text));
            }
        }
        needles.push(("an access token".to_owned(), TOKEN_PREFIX.to_owned()));
        needles.sort();
        needles.dedup_by(|a, b| a.1 == b.1);
        Scan {
            needles,
            figures: Figures::default(),
        }
    }

    /// Adds the lines of a PEM key's body (each line of its base64 DER) as canaries.
    fn add_pem(&mut self, what: &str, pem: &str) {
        for line in pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        {
            self.needles
                .push((format!("{what} (PEM line)"), line.to_owned()));
        }
    }

    fn check(&mut self, place: &str, bytes: &[u8]) {
        self.figures.inputs_tried += 1;
        for (what, needle) in &self.needles {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "{what} leaked into {place}:\n{}",
                tail(&String::from_utf8_lossy(bytes))
            );
        }
    }

    /// Runs the binary, checks both streams, returns (success, stdout, stderr).
    fn cosell(
        &mut self,
        label: &str,
        dir: &Path,
        env: &[(&str, String)],
        args: &[&str],
    ) -> (bool, String, String) {
        self.figures.operations += 1;
        let output = Command::new(env!("CARGO_BIN_EXE_cosell"))
            .current_dir(dir)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("COSELL_STATE")
            .output()
            .expect("cosell runs");
        self.check(
            &format!("stdout of {label} (cosell {})", args.join(" ")),
            &output.stdout,
        );
        self.check(
            &format!("stderr of {label} (cosell {})", args.join(" ")),
            &output.stderr,
        );
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// The end of a long output, for assertion messages.
fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(3000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The shipped mapping of `crm` with its `connections:` replaced by `connections`.
fn mapping(shipped: &str, connections: &str) -> String {
    let text = std::fs::read_to_string(shipped).expect("shipped mapping");
    let start = text.find("\nconnections:\n").expect("connections block") + 1;
    let end = text[start..].find("\nsettings:").expect("settings block") + start + 1;
    format!("{}{connections}\n{}", &text[..start], &text[end..])
}

fn partner_center(base: &str, refresh_file: &Path) -> String {
    format!(
        r#"connections:
  partner_center:
    base_url: "{base}"
    webhook_base_url: "{base}"
    allow_insecure_http: true
    auth:
      tenant_id: contoso
      client_id: cosell-sandbox
      client_secret: "${{PC_CLIENT_SECRET}}"
      refresh_token: "${{file:{}}}"
      authority: "{base}"
"#,
        refresh_file.display()
    )
}

fn webhooks(base: &str, ca_file: &Path) -> String {
    format!(
        r#"  webhooks:
    trust_anchors: ["{}"]
    allowed_certificate_hosts: ["{}"]
    allow_insecure_certificate_url: true
"#,
        ca_file.display(),
        base.trim_start_matches("http://")
    )
}

/// Reads every file of the state database (the file, its WAL and shared memory).
fn state_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("state dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("state"))
        })
        .collect();
    files.sort();
    files
}

/// A blocking GET over a plain socket (the suite's reqwest is async): the whole response.
fn http_get(url: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    text.starts_with("HTTP/1.1 ").then_some(text)
}

pub fn run(ctx: &Ctx) -> Figures {
    let _ = ctx;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The sandbox serves from the runtime's workers while this thread runs the binary.
    let handle = runtime
        .block_on(sandbox::start(SandboxOptions::default()))
        .expect("sandbox starts");
    let base = handle.base_url().to_owned();
    let referrals: Vec<String> = (0..3)
        .map(|n| {
            runtime.block_on(async {
                let (status, body) = common::control(
                    &base,
                    "/_sandbox/partner-center/referrals/incoming",
                    &common::cosell_referral(&format!("Canary referral {n}")),
                )
                .await;
                assert!(status.is_success(), "{status} {body}");
                body["id"].as_str().expect("id").to_owned()
            })
        })
        .collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let secrets_dir = root.join("secrets");
    std::fs::create_dir_all(&secrets_dir).expect("secrets dir");
    let refresh_file = secrets_dir.join("pc_refresh_token");
    let ca_file = secrets_dir.join("sandbox-ca.pem");
    std::fs::write(&ca_file, handle.ca_pem()).expect("CA file");
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("RSA key");
    let key_pem = key.serialize_pem();
    let key_file = secrets_dir.join("sf_jwt_key.pem");
    std::fs::write(&key_file, &key_pem).expect("key file");

    let dynamics = root.join("dynamics365.yaml");
    std::fs::write(
        &dynamics,
        mapping(
            "mappings/dynamics365.yaml",
            &format!(
                "{}  crm:\n    base_url: \"{base}\"\n    allow_insecure_http: true\n    auth:\n      tenant_id: contoso\n      client_id: cosell-sandbox\n      client_secret: \"${{DV_CLIENT_SECRET}}\"\n      authority: \"{base}\"\n{}",
                partner_center(&base, &refresh_file),
                webhooks(&base, &ca_file)
            ),
        ),
    )
    .expect("dynamics mapping");
    let salesforce_secret = root.join("salesforce-secret.yaml");
    std::fs::write(
        &salesforce_secret,
        mapping(
            "mappings/salesforce.yaml",
            &format!(
                "{}  crm:\n    base_url: \"{base}\"\n    allow_insecure_http: true\n    auth:\n      client_id: cosell-sandbox\n      client_secret: \"${{SF_CLIENT_SECRET}}\"\n",
                partner_center(&base, &refresh_file)
            ),
        ),
    )
    .expect("salesforce mapping");
    let salesforce_jwt = root.join("salesforce-jwt.yaml");
    std::fs::write(
        &salesforce_jwt,
        mapping(
            "mappings/salesforce.yaml",
            &format!(
                "{}  crm:\n    base_url: \"{base}\"\n    allow_insecure_http: true\n    auth:\n      client_id: cosell-sandbox\n      username: admin@sandbox.cosell.dev\n      private_key: \"${{file:{}}}\"\n",
                partner_center(&base, &refresh_file),
                key_file.display()
            ),
        ),
    )
    .expect("salesforce JWT mapping");

    let mut scan = Scan::new(&[
        ("the Partner Center client secret", PC_SECRET),
        ("the Partner Center refresh token", PC_REFRESH),
        ("the Dataverse client secret", DV_SECRET),
        ("the Salesforce client secret", SF_SECRET),
        ("the sandbox client secret", "sandbox-secret"),
        ("the sandbox refresh token", "sandbox-refresh-token"),
    ]);
    scan.add_pem("the Salesforce JWT private key", &key_pem);

    let config = |path: &Path| path.display().to_string();
    let state = |name: &str| {
        format!(
            "sqlite://{}",
            root.join(format!("state-{name}.db")).display()
        )
    };
    let trace = |extra: &[(&'static str, String)]| {
        let mut env = vec![("RUST_LOG", "trace".to_owned())];
        env.extend(extra.iter().cloned());
        env
    };

    // Rejected: the canaries are wrong credentials.
    std::fs::write(&refresh_file, PC_REFRESH).expect("refresh token file");
    let canaries = trace(&[
        ("PC_CLIENT_SECRET", PC_SECRET.to_owned()),
        ("DV_CLIENT_SECRET", DV_SECRET.to_owned()),
        ("SF_CLIENT_SECRET", SF_SECRET.to_owned()),
    ]);
    for file in [&dynamics, &salesforce_secret, &salesforce_jwt] {
        for format in ["human", "json"] {
            let (ok, out, err) = scan.cosell(
                "validate",
                root,
                &canaries,
                &["validate", "--format", format, &config(file)],
            );
            assert!(ok, "validate {}: {out}{err}", file.display());
        }
    }
    let rejected_state = state("rejected");
    let rejected_sf_state = state("rejected-salesforce");
    for (file, log_format, state) in [
        (&dynamics, "text", &rejected_state),
        (&dynamics, "json", &rejected_state),
        (&salesforce_secret, "text", &rejected_sf_state),
        (&salesforce_secret, "json", &rejected_sf_state),
    ] {
        let (ok, out, err) = scan.cosell(
            "a run with rejected credentials",
            root,
            &canaries,
            &[
                "run",
                "--config",
                &config(file),
                "--once",
                "--listen",
                "127.0.0.1:0",
                "--state",
                state,
                "--log-format",
                log_format,
            ],
        );
        assert!(
            !ok,
            "the sandbox refused the canaries, the run must fail: {}",
            tail(&format!("{out}{err}"))
        );
        let shown = format!("{out}{err}");
        assert!(
            shown.contains("invalid_client") || shown.contains("invalid_grant"),
            "the error path printed why: {}",
            tail(&format!("{out}{err}"))
        );
    }
    for format in ["human", "json"] {
        let (ok, out, err) = scan.cosell(
            "plan with rejected credentials",
            root,
            &canaries,
            &[
                "plan",
                "--config",
                &config(&dynamics),
                "--state",
                &rejected_state,
                "--format",
                format,
            ],
        );
        assert!(
            !ok,
            "plan with refused credentials: {}",
            tail(&format!("{out}{err}"))
        );
    }
    scan.cosell(
        "webhook show with rejected credentials",
        root,
        &canaries,
        &["webhook", "show", "--config", &config(&dynamics)],
    );

    // Accepted: the sandbox's credentials, and the canary JWT key.
    std::fs::write(&refresh_file, "sandbox-refresh-token").expect("refresh token file");
    let accepted = trace(&[
        ("PC_CLIENT_SECRET", "sandbox-secret".to_owned()),
        ("DV_CLIENT_SECRET", "sandbox-secret".to_owned()),
    ]);
    let dynamics_state = state("dynamics");
    for log_format in ["text", "json"] {
        let (ok, out, err) = scan.cosell(
            "a successful run",
            root,
            &accepted,
            &[
                "run",
                "--config",
                &config(&dynamics),
                "--once",
                "--listen",
                "127.0.0.1:0",
                "--state",
                &dynamics_state,
                "--log-format",
                log_format,
            ],
        );
        assert!(
            ok,
            "run --once with the sandbox's credentials: {}",
            tail(&format!("{out}{err}"))
        );
    }
    let salesforce_state = state("salesforce");
    let (ok, out, err) = scan.cosell(
        "a successful Salesforce JWT run",
        root,
        &accepted,
        &[
            "run",
            "--config",
            &config(&salesforce_jwt),
            "--once",
            "--listen",
            "127.0.0.1:0",
            "--state",
            &salesforce_state,
            "--log-format",
            "json",
        ],
    );
    assert!(
        ok,
        "run --once with the canary JWT key: {}",
        tail(&format!("{out}{err}"))
    );
    for format in ["human", "json"] {
        let (ok, out, err) = scan.cosell(
            "plan",
            root,
            &accepted,
            &[
                "plan",
                "--config",
                &config(&dynamics),
                "--state",
                &dynamics_state,
                "--format",
                format,
            ],
        );
        assert!(ok, "plan: {}", tail(&format!("{out}{err}")));
        for state in [&dynamics_state, &salesforce_state, &rejected_state] {
            let (ok, out, err) = scan.cosell(
                "status",
                root,
                &accepted,
                &["status", "--state", state, "--format", format],
            );
            assert!(ok, "status: {}", tail(&format!("{out}{err}")));
            scan.cosell(
                "failures",
                root,
                &accepted,
                &["failures", "--state", state, "--format", format],
            );
        }
        for id in &referrals {
            for state in [&dynamics_state, &salesforce_state] {
                let (ok, out, err) = scan.cosell(
                    "audit",
                    root,
                    &accepted,
                    &["audit", id, "--state", state, "--format", format],
                );
                assert!(ok, "audit {id}: {}", tail(&format!("{out}{err}")));
                assert!(!out.trim().is_empty(), "the audit trail of {id} is empty");
            }
        }
        scan.cosell(
            "webhook show",
            root,
            &accepted,
            &["webhook", "show", "--config", &config(&dynamics)],
        );
    }
    let (_, audit, _) = scan.cosell(
        "audit",
        root,
        &accepted,
        &[
            "audit",
            &referrals[0],
            "--state",
            &dynamics_state,
            "--format",
            "json",
        ],
    );
    let audit: serde_json::Value = serde_json::from_str(&audit).expect("audit JSON");
    assert!(
        audit.to_string().contains(&referrals[0]),
        "the audit trail names the referral: {audit}"
    );

    // A long-running engine: its HTTP pages, then stopped.
    let port = common::free_port();
    scan.figures.operations += 1;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cosell"))
        .current_dir(root)
        .args([
            "run",
            "--config",
            &config(&dynamics),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state",
            &dynamics_state,
            "--log-format",
            "json",
            "--reconcile-every",
            "1",
            "--poll-every",
            "1",
        ])
        .envs(accepted.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("COSELL_STATE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cosell run starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if let Some(page) = http_get(&format!("http://127.0.0.1:{port}/metrics"))
            && page.contains("cosell_upstream_calls_total{")
        {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "no /metrics with upstream calls within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // A few reconcile rounds, so tokens are refreshed and calls are counted.
    std::thread::sleep(Duration::from_secs(2));
    for page in ["/metrics", "/healthz", "/readyz"] {
        scan.figures.operations += 1;
        let text = http_get(&format!("http://127.0.0.1:{port}{page}")).unwrap_or_default();
        assert!(text.starts_with("HTTP/1.1 "), "{page}: {text}");
        scan.check(&format!("GET {page}"), text.as_bytes());
    }
    scan.check("the first /metrics page", metrics.as_bytes());
    child.kill().expect("stop the engine we started");
    let output = child.wait_with_output().expect("engine output");
    scan.check("stdout of a long-running run", &output.stdout);
    scan.check("stderr of a long-running run", &output.stderr);
    assert!(
        !output.stderr.is_empty() || !output.stdout.is_empty(),
        "the run logged"
    );

    // The state files, byte for byte.
    for file in state_files(root) {
        let bytes = std::fs::read(&file).expect("state file");
        scan.check(&format!("state file {}", file.display()), &bytes);
    }
    runtime.block_on(handle.shutdown());

    let mut figures = scan.figures;
    figures.notes = vec![
        format!(
            "inputs tried = places checked (stdout/stderr of each command, /metrics, /healthz, /readyz, state DB files) for {} canary forms",
            scan.needles.len()
        ),
        "operations = cosell commands run and HTTP pages scraped".to_owned(),
    ];
    figures
}
