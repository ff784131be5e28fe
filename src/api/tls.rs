//! The API's TLS: a certificate and key given (`--tls-cert`, `--tls-key`, PEM), or a
//! self-signed pair made on first start and kept in the repository directory
//! (`tls/cert.pem`, `tls/key.pem`, the key readable by its owner only) so clients that pin
//! it keep working across restarts. rustls with the ring provider; TLS 1.2 and 1.3 only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("making a self-signed certificate: {0}")]
    Generate(String),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

/// Where the API's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Made on first start in this directory, reused after.
    SelfSigned {
        dir: PathBuf,
    },
}

/// The directory a repository keeps its self-signed certificate in.
pub fn self_signed_dir(repo: &Path) -> PathBuf {
    repo.join("tls")
}

/// The server configuration for `source`.
pub fn server_config(source: &TlsSource) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert, key) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
        TlsSource::SelfSigned { dir } => ensure_self_signed(dir)?,
    };
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Io {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(&cert)?;
    let key_pem = read(&key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert,
            detail: "no CERTIFICATE in it".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key.clone(),
        detail: e.to_string(),
    })?;
    let mut cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The self-signed pair in `dir`, made if missing.
fn ensure_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_owned());
        }
    }
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    // Key first, owner-only, then the certificate: a crash between leaves no certificate,
    // and the next start makes both again.
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), TlsError> {
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    };
    write(&key, &made.signing_key.serialize_pem(), 0o600)?;
    write(&cert, &made.cert.pem(), 0o644)?;
    tracing::info!(cert = %cert.display(), "made a self-signed TLS certificate for the API");
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_self_signed_pair_is_made_once_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let src = TlsSource::SelfSigned {
            dir: d.path().join("tls"),
        };
        server_config(&src).unwrap();
        let cert = std::fs::read(d.path().join("tls/cert.pem")).unwrap();
        let mode = std::fs::metadata(d.path().join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key mode {mode:o}");
        server_config(&src).unwrap();
        assert_eq!(std::fs::read(d.path().join("tls/cert.pem")).unwrap(), cert);
    }

    #[test]
    fn bad_files_say_which() {
        let d = tempfile::tempdir().unwrap();
        let cert = d.path().join("c.pem");
        std::fs::write(&cert, "not pem").unwrap();
        let src = TlsSource::Files {
            cert: cert.clone(),
            key: d.path().join("missing.pem"),
        };
        let e = server_config(&src).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::write(d.path().join("missing.pem"), "x").unwrap();
        let e = server_config(&src).unwrap_err().to_string();
        assert!(e.contains("c.pem"), "{e}");
    }
}
