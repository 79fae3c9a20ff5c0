//! Access keys of the S3 endpoint: a key file (one `ACCESS_KEY SECRET_KEY` pair a line, `#`
//! comments), readable by its owner only, never keys on the command line (they would show in
//! `ps` and in shell history). Signature V4 itself is checked by s3s against these secrets.

use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Result, s3_error};
use std::collections::HashMap;
use std::path::Path;

/// Access key ids: 3-128 of [A-Za-z0-9_.-] (AWS's are 16-128 upper-case alphanumerics).
fn valid_id(id: &str) -> bool {
    (3..=128).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The endpoint's keys: access key id -> secret.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: HashMap<String, SecretKey>,
}

impl KeyRing {
    /// Parses a key file's text. Secrets are 8-128 printable non-space ASCII characters.
    pub fn parse(text: &str) -> Result<KeyRing, String> {
        let mut keys = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.split_whitespace();
            let (Some(id), Some(secret), None) = (f.next(), f.next(), f.next()) else {
                return Err(format!("line {}: expected 'ACCESS_KEY SECRET_KEY'", n + 1));
            };
            if !valid_id(id) {
                return Err(format!(
                    "line {}: access key '{id}': use 3-128 of A-Z a-z 0-9 _ . -",
                    n + 1
                ));
            }
            if !(8..=128).contains(&secret.len()) || !secret.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(format!(
                    "line {}: the secret of '{id}' must be 8-128 printable characters",
                    n + 1
                ));
            }
            if keys
                .insert(id.to_string(), SecretKey::from(secret))
                .is_some()
            {
                return Err(format!("line {}: access key '{id}' given twice", n + 1));
            }
        }
        if keys.is_empty() {
            return Err("no keys (anonymous access is never allowed)".into());
        }
        Ok(KeyRing { keys })
    }

    /// Loads a key file; refuses one that others can read or write (mode & 077).
    pub fn load(path: &Path) -> Result<KeyRing, String> {
        use std::os::unix::fs::MetadataExt;
        let shown = path.display();
        let md = std::fs::metadata(path).map_err(|e| format!("--keys '{shown}': {e}"))?;
        if md.mode() & 0o077 != 0 {
            return Err(format!(
                "--keys '{shown}': mode {:o} lets others read it (chmod 600 '{shown}')",
                md.mode() & 0o777
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("--keys '{shown}': {e}"))?;
        Self::parse(&text).map_err(|m| format!("--keys '{shown}': {m}"))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[async_trait::async_trait]
impl S3Auth for KeyRing {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.keys.get(access_key) {
            Some(s) => Ok(s.clone()),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS access key Id you provided does not exist in our records."
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_parse_and_bad_ones_are_refused_with_the_line() {
        let k = KeyRing::parse("# ops\nAKIDEXAMPLE  secretsecret\n\nuser2 s3cr3t/+xyz\n").unwrap();
        assert_eq!(k.len(), 2);
        for (text, want) in [
            ("", "no keys"),
            ("# only a comment\n", "no keys"),
            ("AKID\n", "line 1: expected"),
            ("AKID a b\n", "line 1: expected"),
            (
                "ok_key secretsecret\nA! secretsecret\n",
                "line 2: access key 'A!'",
            ),
            ("AKID short\n", "must be 8-128"),
            ("AKID secretsecret\nAKID othersecret\n", "given twice"),
        ] {
            let e = KeyRing::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys");
        std::fs::write(&p, "AKIDEXAMPLE secretsecret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyRing::load(&p).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(KeyRing::load(&p).unwrap().len(), 1);
    }
}
