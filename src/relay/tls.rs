//! TLS settings for upstream (`wss://`) connections: rustls with the `ring`
//! provider, Mozilla's roots (`webpki-roots`) and an optional extra CA file.
//!
//! # Contract
//! * [`client_config`] is called once, when the relay is configured: it reads
//!   the extra CA file (blocking file I/O, a few KiB) and fails with a
//!   [`TlsConfigError`] naming the file if it is missing, unreadable, not PEM
//!   or holds no certificate. Connecting never touches the file system.
//! * Trust is Mozilla's root set plus every certificate in the extra file;
//!   the operating system's store is not consulted, so behaviour is the same
//!   on every machine and in containers without `ca-certificates`.
//! * The crypto provider is chosen here explicitly (`ring`), never the
//!   process-wide default, so another crate enabling `aws-lc-rs` cannot make
//!   the builder ambiguous.
//! * ALPN offers `http/1.1` only: the WebSocket upgrade is an HTTP/1.1 exchange.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The extra CA file could not be used.
    #[error("extra CA file {}: {reason}", path.display())]
    ExtraCa {
        /// The configured file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the settings (no usable protocol version).
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client settings for `wss://` upstreams: Mozilla's roots plus the
/// certificates in `extra_ca` (PEM, one or more `CERTIFICATE` blocks).
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        let added = add_pem_file(&mut roots, path)?;
        tracing::debug!(file = %path.display(), certificates = added, "extra upstream CA loaded");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Add every certificate in the PEM file at `path`; returns how many.
fn add_pem_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<usize, TlsConfigError> {
    let bad = |reason: String| TlsConfigError::ExtraCa {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut added = 0usize;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("unusable certificate: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(bad("no CERTIFICATE block found".to_owned()));
    }
    Ok(added)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("sluice-tls-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn webpki_roots_alone() {
        let config = client_config(None).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn extra_ca_is_loaded() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let path = temp_file("ca.pem", ca.pem().as_bytes());
        let r = client_config(Some(&path));
        std::fs::remove_file(&path).unwrap();
        r.unwrap();
    }

    #[test]
    fn bad_extra_ca_files_are_named() {
        let missing = std::env::temp_dir().join("sluice-tls-test-does-not-exist.pem");
        let e = client_config(Some(&missing)).unwrap_err();
        assert!(matches!(&e, TlsConfigError::ExtraCa { path, .. } if *path == missing));

        let empty = temp_file("empty.pem", b"not a certificate\n");
        let e = client_config(Some(&empty)).unwrap_err();
        std::fs::remove_file(&empty).unwrap();
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");

        let garbage = temp_file(
            "garbage.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = client_config(Some(&garbage)).unwrap_err();
        std::fs::remove_file(&garbage).unwrap();
        assert!(matches!(e, TlsConfigError::ExtraCa { .. }), "{e}");
    }
}
