//! The network commands' command line: `ferry certs`, `ferry serve`, and `ferry copy|move|
//! verify` with a `ferry://` end. main.rs only forwards to these.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub cmd: CertsCmd,
}

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Make a new CA in DIR: ca.pem (certificate) and ca.key (private key, 0600).
    Init { dir: PathBuf },
    /// Issue a certificate for NAME (host name or IP address) signed by the CA in DIR; writes
    /// DIR/NAME/{ca.pem,cert.pem,key.pem}, a ready --tls-dir for that node or client.
    Issue {
        dir: PathBuf,
        name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = super::certs::NODE_DAYS)]
        days: u64,
    },
}

/// `ferry certs init|issue`.
pub fn certs(a: CertsArgs) -> ExitCode {
    let r = match &a.cmd {
        CertsCmd::Init { dir } => super::certs::init(dir).map(|()| {
            eprintln!(
                "ferry: CA written to {} (keep ca.key secret; issue node certificates with \
                 `ferry certs issue {} NAME`)",
                dir.display(),
                dir.display()
            )
        }),
        CertsCmd::Issue { dir, name, days } => {
            super::certs::issue(dir, name, 0, *days as i64).map(|()| {
                eprintln!(
                    "ferry: {} ready: use it as --tls-dir (or FERRY_TLS_DIR) on {name}",
                    dir.join(name).display()
                )
            })
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry certs: {e}");
            ExitCode::from(if e.kind() == std::io::ErrorKind::InvalidInput {
                2
            } else {
                1
            })
        }
    }
}
