//! A throwaway certificate authority for TLS tests: a CA, server certificates for
//! `127.0.0.1`/`localhost`, and client certificates, written as PEM files to a directory.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    dir: PathBuf,
}

/// Paths of a certificate, its key, and the CA that signed it.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TestCa {
    /// A new CA whose files go to `dir` (created if missing).
    pub fn new(dir: &Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).expect("create PKI directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let cert_pem = cert.pem();
        std::fs::write(dir.join(format!("{name}.crt")), &cert_pem).expect("write CA");
        TestCa { issuer: Issuer::new(params, key), cert_pem, dir: dir.to_path_buf() }
    }

    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.join("ca-bundle.crt");
        std::fs::write(&path, &self.cert_pem).expect("write CA bundle");
        path
    }

    fn issue(&self, name: &str, sans: Vec<String>) -> CertFiles {
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let (cert_path, key_path) = (self.dir.join(format!("{name}.crt")), self.dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        CertFiles { cert: cert_path, key: key_path, ca: self.ca_file() }
    }

    /// A server certificate valid for `127.0.0.1` and `localhost` (and `extra` names).
    pub fn server(&self, name: &str, extra: &[&str]) -> CertFiles {
        let mut sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        sans.extend(extra.iter().map(|s| s.to_string()));
        self.issue(name, sans)
    }

    /// A client certificate (for mTLS).
    pub fn client(&self, name: &str) -> CertFiles {
        self.issue(name, vec![name.to_string()])
    }

    /// A client certificate that also names `sans` (IP addresses become IP SANs): a cell's,
    /// naming its underlay IP.
    pub fn client_for(&self, name: &str, sans: &[&str]) -> CertFiles {
        let mut all = vec![name.to_string()];
        all.extend(sans.iter().map(|s| s.to_string()));
        self.issue(name, all)
    }
}
