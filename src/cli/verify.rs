//! `ferry verify`: compare two trees (or a tree against a manifest) by content.

use clap::Args;
use ferry::Exit;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct VerifyArgs {
    /// SRC DST, or just DST with --manifest.
    #[arg(required = true, num_args = 1..=2, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Check DST against this manifest (written by `ferry copy --manifest`).
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Reader threads (default: twice the online CPUs).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// With a ferry:// end: this client's ca.pem, cert.pem, key.pem
    /// [default: $FERRY_TLS_DIR or ~/.config/ferry/tls].
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
}

pub fn verify(v: VerifyArgs) -> ExitCode {
    if let (None, [src, dst]) = (&v.manifest, v.paths.as_slice())
        && ferry::net::url::is_remote(dst.as_os_str())
    {
        return ferry::net::cli::remote_verify(src, dst.as_os_str(), v.json, v.tls_dir.clone());
    }
    let report = match (&v.manifest, v.paths.as_slice()) {
        (Some(m), [dst]) => {
            if !dst.is_dir() {
                eprintln!("ferry verify: '{}' is not a directory", dst.display());
                return Exit::Usage.into();
            }
            match ferry::manifest::read(m) {
                Ok(recs) => ferry::verify::verify_manifest(recs, dst, v.threads),
                Err(e) => {
                    eprintln!("ferry verify: {e}");
                    return Exit::Usage.into();
                }
            }
        }
        (None, [src, dst]) => {
            for p in [src, dst] {
                if let Err(e) = std::fs::symlink_metadata(p) {
                    eprintln!("ferry verify: '{}': {e}", p.display());
                    return Exit::Usage.into();
                }
            }
            ferry::verify::verify_trees(src, dst, v.threads)
        }
        (Some(_), _) => {
            eprintln!("ferry verify: with --manifest, give only the destination directory");
            return Exit::Usage.into();
        }
        (None, _) => {
            eprintln!("ferry verify: give SRC and DST (or --manifest FILE DST)");
            return Exit::Usage.into();
        }
    };
    if v.json {
        ferry::outln!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        for m in &report.mismatches {
            ferry::outln!("differs: {m}");
        }
        ferry::outln!(
            "verified {} files, {:.1} MB in {:.2}s: {}",
            report.files,
            report.bytes as f64 / 1e6,
            report.secs,
            if report.mismatches.is_empty() {
                "all match".to_string()
            } else {
                format!("{} differences", report.mismatches.len())
            }
        );
    }
    if report.mismatches.is_empty() {
        Exit::Ok.into()
    } else {
        Exit::Failed.into()
    }
}
