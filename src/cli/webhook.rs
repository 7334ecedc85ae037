//! `cosell webhook register|show`: the Partner Center webhook registration, as the seeds'
//! "Partner Center Webhook Registration" flow does it — all four referral events, an
//! existing registration overwritten, then a validation event to prove delivery.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::connectors::partner_center::PartnerCenterClient;
use crate::connectors::{ConnectorError, process_env, resolve_text};

use super::{SettingArgs, check, print_diagnostics};

/// The events the sync needs (partner-center-api.md §3.1).
pub const REFERRAL_EVENTS: [&str; 4] = [
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
];

/// `cosell webhook …`
#[derive(Debug, clap::Subcommand)]
pub enum WebhookCommand {
    /// Register URL for the four referral events (overwriting an existing registration),
    /// then send a validation event and report whether it arrived.
    Register {
        /// Mapping file whose `connections.partner_center` to use.
        #[arg(long)]
        config: PathBuf,
        /// Public URL of cosell's webhook endpoint, e.g.
        /// https://cosell.example.com/webhooks/partner-center. Default:
        /// `connections.webhooks.public_url` of the config.
        #[arg(long)]
        url: Option<String>,
        /// Send the signature in `x-ms-signature` instead of `Authorization`.
        #[arg(long)]
        signature_in_ms_header: bool,
        /// Extra CA certificate (PEM file) to trust, e.g. the sandbox CA with `--tls`.
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
        /// Do not send the validation event.
        #[arg(long)]
        no_validation: bool,
        #[command(flatten)]
        settings: SettingArgs,
    },
    /// Show the current registration.
    Show {
        /// Mapping file whose `connections.partner_center` to use.
        #[arg(long)]
        config: PathBuf,
        /// Extra CA certificate (PEM file) to trust.
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
        #[command(flatten)]
        settings: SettingArgs,
    },
}

/// Runs a `webhook` subcommand.
pub fn run(command: &WebhookCommand) -> ExitCode {
    let runtime = match super::runtime(false) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        match command {
            WebhookCommand::Register {
                config,
                url,
                signature_in_ms_header,
                ca,
                no_validation,
                settings,
            } => {
                let (client, public_url) = match client(config, ca.as_ref(), settings) {
                    Ok(found) => found,
                    Err(code) => return code,
                };
                let Some(url) = url.clone().or(public_url) else {
                    eprintln!(
                        "error: give --url or set connections.webhooks.public_url in {}",
                        config.display()
                    );
                    return ExitCode::from(2);
                };
                register(&client, &url, *signature_in_ms_header, !*no_validation).await
            }
            WebhookCommand::Show {
                config,
                ca,
                settings,
            } => {
                let (client, _) = match client(config, ca.as_ref(), settings) {
                    Ok(found) => found,
                    Err(code) => return code,
                };
                match client.get_registration().await {
                    Ok(Some(registration)) => {
                        println!("{}", registration.webhook_url.unwrap_or_default());
                        for event in registration.webhook_events.unwrap_or_default() {
                            println!("  {event}");
                        }
                        ExitCode::SUCCESS
                    }
                    Ok(None) => {
                        println!("no webhook is registered");
                        ExitCode::SUCCESS
                    }
                    Err(error) => failed(&error),
                }
            }
        }
    })
}

/// The Partner Center client of a mapping file, and its `connections.webhooks.public_url`.
fn client(
    config: &Path,
    ca: Option<&PathBuf>,
    settings: &SettingArgs,
) -> Result<(PartnerCenterClient, Option<String>), ExitCode> {
    let checked = check(config, settings).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })?;
    if checked.has_errors() {
        print_diagnostics(&checked);
        return Err(ExitCode::from(1));
    }
    let Some(connection) = checked
        .config
        .as_ref()
        .and_then(|c| c.connections.partner_center.as_ref())
    else {
        eprintln!(
            "error: {} has no `connections.partner_center`; add one (see the README's \"Connecting to production\")",
            config.display()
        );
        return Err(ExitCode::from(1));
    };
    let trusted = match ca {
        Some(path) => vec![std::fs::read_to_string(path).map_err(|error| {
            eprintln!("error: cannot read {}: {error}", path.display());
            ExitCode::from(2)
        })?],
        None => Vec::new(),
    };
    let public_url = match checked
        .config
        .as_ref()
        .and_then(|c| c.connections.webhooks.as_ref())
        .and_then(|w| w.public_url.as_deref())
    {
        Some(url) => Some(
            resolve_text("connections.webhooks.public_url", url, &process_env).map_err(
                |error| {
                    eprintln!("error: {error}");
                    ExitCode::from(1)
                },
            )?,
        ),
        None => None,
    };
    let client =
        PartnerCenterClient::from_config(connection, &process_env, &trusted).map_err(|error| {
            eprintln!("error: {error}");
            ExitCode::from(1)
        })?;
    Ok((client, public_url))
}

fn failed(error: &ConnectorError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(1)
}

async fn register(
    client: &PartnerCenterClient,
    url: &str,
    signature_in_ms_header: bool,
    validate: bool,
) -> ExitCode {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        eprintln!("error: --url must be an absolute http(s) URL, got `{url}`");
        return ExitCode::from(2);
    }
    // The validation event needs `test-created` in the registration.
    let mut events: Vec<&str> = REFERRAL_EVENTS.to_vec();
    if validate {
        events.push("test-created");
    }
    let registration = match client
        .register(url, &events, signature_in_ms_header, true)
        .await
    {
        Ok(registration) => registration,
        Err(error) => return failed(&error),
    };
    println!(
        "registered {} for {}",
        registration.webhook_url.as_deref().unwrap_or(url),
        registration.webhook_events.unwrap_or_default().join(", ")
    );
    if !validate {
        return ExitCode::SUCCESS;
    }
    let correlation = match client.send_validation_event().await {
        Ok(id) => id,
        Err(error) => return failed(&error),
    };
    println!("validation event sent (correlation id {correlation})");
    // Delivery is asynchronous; give it a few seconds before reporting.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match client.validation_status(&correlation).await {
            Ok(status) => match status.status.as_deref() {
                Some("completed") => {
                    println!("validation event delivered: {url} answered OK");
                    return ExitCode::SUCCESS;
                }
                Some("failed") => {
                    let last = status
                        .results
                        .unwrap_or_default()
                        .into_iter()
                        .last()
                        .and_then(|r| r.response_code)
                        .unwrap_or_default();
                    eprintln!(
                        "error: the validation event could not be delivered to {url} (last answer: {last}); is cosell running and reachable there?"
                    );
                    return ExitCode::from(1);
                }
                _ => {}
            },
            Err(error) => return failed(&error),
        }
    }
    eprintln!(
        "warning: the validation event is still pending after 10 s; check `cosell webhook show` and that {url} is reachable"
    );
    ExitCode::from(1)
}
