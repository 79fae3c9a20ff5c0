//! Mutual TLS 1.3 (rustls, ring provider) from a `--tls-dir` laid out by `ferry certs issue`:
//! ca.pem (the only CA trusted), cert.pem and key.pem (this node's identity). The server
//! accepts only clients whose certificate that CA signed; the client accepts only a server
//! whose certificate that CA signed for the host it dialled.

use super::certs::{CA_CERT, NODE_CERT, NODE_KEY};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `$FERRY_TLS_DIR`, else `${XDG_CONFIG_HOME:-$HOME/.config}/ferry/tls`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_TLS_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ferry").join("tls")
}

fn bad(p: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("TLS '{}': {e} (see `ferry certs issue`)", p.display()),
    )
}

struct Identity {
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn load(dir: &Path) -> io::Result<Identity> {
    let ca = dir.join(CA_CERT);
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&ca)
        .map_err(|e| bad(&ca, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&ca, e))?;
    if certs.is_empty() {
        return Err(bad(&ca, "no certificate in it"));
    }
    for c in certs {
        roots.add(c).map_err(|e| bad(&ca, e))?;
    }
    let cert = dir.join(NODE_CERT);
    let chain = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| bad(&cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&cert, e))?;
    if chain.is_empty() {
        return Err(bad(&cert, "no certificate in it"));
    }
    let keyp = dir.join(NODE_KEY);
    let key = PrivateKeyDer::from_pem_file(&keyp).map_err(|e| bad(&keyp, e))?;
    Ok(Identity { roots, chain, key })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: TLS 1.3 only, client certificates required and checked against ca.pem.
pub fn server_config(dir: &Path) -> io::Result<Arc<ServerConfig>> {
    let id = load(dir)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(id.roots), provider())
        .build()
        .map_err(|e| bad(dir, e))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(dir, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain, id.key)
        .map_err(|e| bad(dir, e))?;
    Ok(Arc::new(cfg))
}

/// The client side: TLS 1.3 only, the server checked against ca.pem and the dialled name,
/// this node's certificate presented.
pub fn client_config(dir: &Path) -> io::Result<Arc<ClientConfig>> {
    let id = load(dir)?;
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(dir, e))?
        .with_root_certificates(id.roots)
        .with_client_auth_cert(id.chain, id.key)
        .map_err(|e| bad(dir, e))?;
    Ok(Arc::new(cfg))
}
