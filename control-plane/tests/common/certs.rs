//! A throwaway certificate authority for TLS tests, made at test time with the `openssl` command
//! (no key material is committed; nothing outlives the test). EC P-256 keys in PKCS#8 PEM,
//! certificates valid for two days. Shared by the unit tests (`src/lib.rs` includes this file)
//! and the integration tests (`tests/common`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)] // test helper

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// An EC P-256 key, unencrypted PKCS#8 PEM.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A CA in a temporary directory (removed on drop) that signs leaf certificates.
pub struct TestCa {
    dir: PathBuf,
}

/// A leaf certificate and its key, as PEM files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Runs `openssl` in `dir` with whitespace-separated arguments (file names without spaces).
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed to make test certificates");
    assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestCa {
    /// A new CA whose subject is `name`.
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-ca-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n[dn]\nCN = {name}\n[ext]\n\
                 basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
                 subjectKeyIdentifier = hash\n"
            ),
        )
        .unwrap();
        openssl(&dir, &format!("req -x509 {NEW_KEY} -keyout ca.key -out ca.pem -days 2 -config ca.cnf"));
        Self { dir }
    }

    /// The CA's certificate (PEM): what a peer trusts.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `sans` (`DNS:localhost,IP:127.0.0.1`) usable as a server and a
    /// client certificate, signed by this CA; `file` names its files (no spaces).
    pub fn leaf(&self, file: &str, sans: &str) -> Leaf {
        std::fs::write(
            self.dir.join(format!("{file}.ext")),
            format!(
                "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = serverAuth, clientAuth\nsubjectAltName = {sans}\n"
            ),
        )
        .unwrap();
        let mut serial = [0u8; 8];
        getrandom::fill(&mut serial).unwrap();
        let serial: String = serial.iter().map(|b| format!("{b:02x}")).collect();
        openssl(&self.dir, &format!("req -new {NEW_KEY} -keyout {file}.key -out {file}.csr -subj /CN={file}"));
        openssl(
            &self.dir,
            &format!(
                "x509 -req -in {file}.csr -CA ca.pem -CAkey ca.key -set_serial 0x{serial} -days 2 \
                 -out {file}.pem -extfile {file}.ext"
            ),
        );
        Leaf { cert: self.dir.join(format!("{file}.pem")), key: self.dir.join(format!("{file}.key")) }
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
