//! `ferry certs`: a private CA for ferry nodes (rcgen).
//!
//! `init DIR` writes DIR/ca.pem (the CA certificate) and DIR/ca.key (its key, mode 0600).
//! `issue DIR NAME` writes DIR/NAME/{ca.pem, cert.pem, key.pem}: a ready `--tls-dir` for the
//! node or client NAME (its certificate names NAME: a DNS name or an IP address, which is what
//! clients check against the host in a `ferry://` URL). Keys never appear on a command line.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "cert.pem";
pub const NODE_KEY: &str = "key.pem";

/// How long certificates are valid, in days.
pub const CA_DAYS: u64 = 20 * 365;
pub const NODE_DAYS: u64 = 5 * 365;

fn err(what: &str, p: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what} '{}': {e}", p.display()))
}

/// Civil date (y, m, d) of a unix day number (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Valid from yesterday (clock skew between nodes) for `days` (negative: already expired,
/// for tests).
fn validity(params: &mut CertificateParams, from_days: i64, days: i64) {
    let today = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
        / 86_400) as i64;
    let (y, m, d) = civil(today + from_days - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil(today + from_days + days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// The CA's parameters: a function of its key, so the issuer can be rebuilt from the key
/// alone; the key's hash in the name tells two ferry CAs apart.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let id = xxhash_rust::xxh3::xxh3_64(key.public_key_pem().as_bytes());
    dn.push(DnType::CommonName, format!("ferry CA {id:016x}"));
    dn.push(DnType::OrganizationName, "ferry");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// Writes a new file with `mode`, refusing to overwrite one.
fn write_new(p: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(p)
        .map_err(|e| err("create", p, e))?;
    f.write_all(data).map_err(|e| err("write", p, e))?;
    f.sync_all().map_err(|e| err("fsync", p, e))
}

fn make_dir(p: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|e| err("mkdir", p, e))
}

/// `ferry certs init DIR`.
pub fn init(dir: &Path) -> io::Result<()> {
    make_dir(dir)?;
    let key = KeyPair::generate().map_err(|e| err("generate key", dir, e))?;
    let mut params = ca_params(&key);
    validity(&mut params, 0, CA_DAYS as i64);
    let cert = params
        .self_signed(&key)
        .map_err(|e| err("sign CA", dir, e))?;
    write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)
}

/// `ferry certs issue DIR NAME`: `valid_days` from today (tests pass other spans).
pub fn issue(dir: &Path, name: &str, from_days: i64, valid_days: i64) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("certificate name '{name}': must be a host name or address, no '/'"),
        ));
    }
    let ca_key_path = dir.join(CA_KEY);
    let ca_pem = fs::read(dir.join(CA_CERT)).map_err(|e| err("read", &dir.join(CA_CERT), e))?;
    let ca_key = fs::read_to_string(&ca_key_path).map_err(|e| err("read", &ca_key_path, e))?;
    let ca_key = KeyPair::from_pem(&ca_key).map_err(|e| err("parse key", &ca_key_path, e))?;
    let issuer = Issuer::new(ca_params(&ca_key), ca_key);
    let mut params = CertificateParams::new(vec![name.to_string()])
        .map_err(|e| err("certificate name", Path::new(name), e))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, from_days, valid_days);
    let key = KeyPair::generate().map_err(|e| err("generate key", dir, e))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| err("sign", Path::new(name), e))?;
    let out = dir.join(name);
    make_dir(&out)?;
    write_new(&out.join(NODE_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&out.join(NODE_CERT), cert.pem().as_bytes(), 0o644)?;
    write_new(&out.join(CA_CERT), &ca_pem, 0o644)
}

#[cfg(test)]
mod tests {
    use super::civil;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
    }
}
