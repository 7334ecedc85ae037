//! Placeholder replaced by the sandbox certificate authority.

use std::path::Path;
use std::sync::Arc;

/// The sandbox CA and the certificates it issues.
#[derive(Debug)]
pub struct Pki {}

impl Pki {
    /// Loads the CA from `dir` or generates one.
    pub fn load_or_generate(_dir: Option<&Path>) -> anyhow::Result<Pki> {
        Ok(Pki {})
    }
    /// CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        String::new()
    }
    /// TLS server configuration for 127.0.0.1 and localhost.
    pub fn tls_server_config(&self) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
        anyhow::bail!("not yet")
    }
}
