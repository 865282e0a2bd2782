//! TLS for sandwatch's own outgoing connections (the records database, remediation
//! receivers): rustls with the ring provider, the public web roots, and optionally a CA
//! bundle for private endpoints. Verification is always on.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, pem::PemObject};
use tracing::warn;

/// A client configuration trusting the public roots plus the certificates in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        match CertificateDer::pem_file_iter(path) {
            Ok(certs) => {
                for cert in certs.flatten() {
                    if let Err(e) = roots.add(cert) {
                        warn!(file = %path.display(), error = %e, "skipped a CA certificate");
                    }
                }
            }
            Err(e) => warn!(file = %path.display(), error = %e, "cannot read the CA file"),
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
