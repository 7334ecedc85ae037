//! `cosell sandbox`: run the emulators in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::sandbox::{self, SandboxOptions, auth};

/// Run local emulators of Partner Center (referrals + webhooks), the Dataverse Web API and
/// the Salesforce REST API on one port, at their real paths, plus a control API.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct SandboxArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8787", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Serve HTTPS with a certificate from the sandbox CA for 127.0.0.1 and localhost.
    /// Trust the CA from GET /_sandbox/ca.pem (or <DIR>/pki/ca.pem with --data).
    #[arg(long)]
    tls: bool,
    /// Latency added to every API call, in milliseconds (the control API is not delayed).
    #[arg(long, default_value_t = 0, value_name = "N")]
    latency_ms: u64,
    /// Seed for generated ids, seeded data and random faults: the same seed and the same
    /// calls give the same results.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,
    /// Keep records, webhook registration and the CA in this directory across restarts
    /// (default: in memory only).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Lifetime of issued access tokens in seconds; clients must refresh after it.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    token_ttl: u64,
    /// Create this many realistic referrals, accounts and opportunities at start.
    #[arg(long, value_name = "N")]
    seed_records: Option<usize>,
}

const AFTER_HELP: &str = "\
Emulated APIs (real paths):
  POST /{tenant}/oauth2/v2.0/token        Entra ID tokens (client_credentials, password, refresh_token)
  /v1.0/engagements/referrals             Partner Center referrals (OData list, get, create, JSON Patch)
  /webhooks/v1/registration               Partner Center webhook registration; signed event delivery
  /api/data/v9.2/                         Dataverse Web API
  POST /services/oauth2/token             Salesforce tokens (client_credentials, password,
                                          refresh_token, JWT bearer)
  /services/data/vNN.N/                   Salesforce REST API (sObjects, SOQL query, limits)

Credentials: client id `cosell-sandbox`, secret `sandbox-secret`, user
`admin@sandbox.cosell.dev` / `sandbox-password`, refresh token `sandbox-refresh-token`.
Scopes: https://api.partner.microsoft.com/.default (referrals),
https://api.partnercenter.microsoft.com/.default (webhooks), <base-url>/.default (Dataverse).

Control API:
  GET  /_sandbox/                                    base URL, credentials, API roots
  POST /_sandbox/partner-center/referrals/incoming   body: referral JSON; Microsoft shares a
                                                     new referral (Incoming, New/Pending)
  POST /_sandbox/partner-center/referrals/{id}/microsoft
                                                     Microsoft-side change: status, substatus,
                                                     dealValue, microsoftMsxId
  GET  /_sandbox/stats    DELETE /_sandbox/stats     call counters per API, endpoint, status
  GET|POST|DELETE /_sandbox/faults                   latency, error rates (429/500/503),
                                                     connection resets, dropped webhooks, quotas
  GET  /_sandbox/webhooks                            registration, deliveries, offline queue
  POST /_sandbox/webhooks/offline/redeliver          offline events back into the queue
  GET|PUT /_sandbox/webhooks/retry                   delivery retry policy (10 attempts)
  GET  /_sandbox/certificates/pcnotifications-dispatch.cer
                                                     webhook signing certificate (X-MS-Certificate-Url)
  GET  /_sandbox/ca.pem                              the sandbox CA certificate
  POST /_sandbox/reset                               forget all records, counters and faults
  POST /_sandbox/seed     {\"count\":N}                realistic referrals, accounts, opportunities
  POST /_sandbox/clock    {\"advance_seconds\":N}      move the sandbox clock forward
  POST /_sandbox/tokens/expire                       expire every access token now
  PUT  /_sandbox/tokens/ttl {\"seconds\":N}            lifetime of new tokens

Example:
  cosell sandbox --listen 127.0.0.1:8787 --seed-records 20
  curl -s localhost:8787/_sandbox/ | jq .";

/// Runs the sandbox until Ctrl-C.
pub fn run(args: &SandboxArgs) -> ExitCode {
    init_logging();
    let runtime = match super::runtime(true) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let options = SandboxOptions {
            listen: args.listen,
            tls: args.tls,
            latency: Duration::from_millis(args.latency_ms),
            seed: args.seed,
            data_dir: args.data.clone(),
            token_ttl: Duration::from_secs(args.token_ttl),
        };
        let handle = match sandbox::start(options).await {
            Ok(handle) => handle,
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::from(2);
            }
        };
        if let Some(count) = args.seed_records {
            let state = handle.state();
            let mut rng = sandbox::Rng::new(args.seed ^ 0x5EED);
            state.partner_center.seed(state, &mut rng, count);
            state.dataverse.seed(state, &mut rng, count);
            state.salesforce.seed(state, &mut rng, count);
            state.changed();
        }
        let base = handle.base_url().to_owned();
        println!("cosell sandbox listening on {base}");
        println!("  control API     {base}/_sandbox/");
        println!("  Partner Center  {base}/v1.0/engagements/referrals");
        println!("  Dataverse       {base}/api/data/v9.2/");
        println!("  Salesforce      {base}/services/data/v59.0/");
        println!(
            "  credentials     client id {} / secret {}",
            auth::CLIENT_ID,
            auth::CLIENT_SECRET
        );
        if args.tls {
            println!("  CA certificate  {base}/_sandbox/ca.pem");
        }
        println!("Press Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
        println!("stopping");
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
