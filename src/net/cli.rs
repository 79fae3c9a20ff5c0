//! The network commands' command line: `ferry certs`, `ferry serve`, and `ferry copy|move|
//! verify` with a `ferry://` end. main.rs only forwards to these.

use crate::Exit;
use crate::coord::state::JobState;
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
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("ferry certs: {e}");
            if e.kind() == std::io::ErrorKind::InvalidInput {
                Exit::Usage.into()
            } else {
                Exit::Failed.into()
            }
        }
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on: HOST:PORT, or HOST (port 7733).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7733")]
    pub listen: String,
    /// A directory clients may read and write, by NAME: NAME=DIR (repeatable).
    #[arg(long = "export", value_name = "NAME=DIR", required = true)]
    pub exports: Vec<String>,
    /// ca.pem, cert.pem, key.pem of this server (see `ferry certs issue`)
    /// [default: $FERRY_TLS_DIR or ~/.config/ferry/tls].
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// The server's state (created 0700; reserved for resumable partial receives).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `ferry serve`.
pub fn serve(a: ServeArgs) -> ExitCode {
    let fail = |m: String| {
        eprintln!("ferry serve: {m}");
        Exit::Usage.into()
    };
    let mut exports = Vec::new();
    for e in &a.exports {
        match super::serve::Export::parse(e) {
            Ok(x)
                if exports
                    .iter()
                    .any(|y: &super::serve::Export| y.name == x.name) =>
            {
                return fail(format!("--export {e}: export '{}' given twice", x.name));
            }
            Ok(x) => exports.push(x),
            Err(m) => return fail(m),
        }
    }
    let tls_dir = a.tls_dir.clone().unwrap_or_else(super::tls::default_dir);
    let tls = match super::tls::server_config(&tls_dir) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let state = a
        .state_dir
        .clone()
        .unwrap_or_else(|| crate::coord::checkpoint::default_state_dir().join("serve"));
    {
        use std::os::unix::fs::DirBuilderExt;
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state)
        {
            return fail(format!("--state-dir {}: {e}", state.display()));
        }
    }
    let token = match super::serve::load_token(&state) {
        Ok(t) => t,
        Err(m) => return fail(m),
    };
    let addr = if a.listen.contains(':') {
        a.listen.clone()
    } else {
        format!("{}:{}", a.listen, super::session::DEFAULT_PORT)
    };
    let listener = match std::net::TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => return fail(format!("listen {addr}: {e}")),
    };
    let shown: Vec<String> = exports
        .iter()
        .map(|e| format!("{}={}", e.name, e.dir.display()))
        .collect();
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    eprintln!(
        "ferry serve: listening on {local} (exports: {})",
        shown.join(", ")
    );
    let server = super::serve::Server {
        listener,
        exports: std::sync::Arc::new(exports),
        tls,
        token,
    };
    match server.run() {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("ferry serve: {e}");
            Exit::Failed.into()
        }
    }
}

/// What `ferry copy|move` passes on when one end is a `ferry://` URL.
pub struct RemoteCopy {
    pub paths: Vec<PathBuf>,
    pub moving: bool,
    pub json: bool,
    pub quiet: bool,
    pub report: Option<PathBuf>,
    pub tls_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub fresh: bool,
    /// `--streams N` (0: one per reactor thread).
    pub streams: usize,
}

/// Whether any of `paths` is a `ferry://` URL.
pub fn any_remote(paths: &[PathBuf]) -> bool {
    paths.iter().any(|p| super::url::is_remote(p.as_os_str()))
}

fn options(
    tls_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    fresh: bool,
    streams: usize,
) -> super::client::Options {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    super::client::Options {
        tls_dir: tls_dir.unwrap_or_else(super::tls::default_dir),
        state_dir: state_dir.unwrap_or_else(crate::coord::checkpoint::default_state_dir),
        fresh,
        streams: if streams == 0 { cpus } else { streams },
        sessions: Default::default(),
        steer: Default::default(),
    }
}

fn exit_fatal(f: super::fatal::Fatal) -> ExitCode {
    eprintln!("ferry: {}", f.msg);
    if f.code == Exit::Usage {
        eprintln!("ferry: nothing was copied");
    }
    f.code.into()
}

/// `ferry copy SRC... ferry://...` (push) or `ferry copy ferry://... DST` (pull).
pub fn remote_copy(mut a: RemoteCopy) -> ExitCode {
    use super::url::{is_remote, parse};
    let dst = a.paths.pop().expect("clap requires two paths");
    let remote_srcs = a.paths.iter().filter(|p| is_remote(p.as_os_str())).count();
    let start = std::time::Instant::now();
    let mut o = options(a.tls_dir.take(), a.state_dir.take(), a.fresh, a.streams);
    if a.json {
        let sink: super::steer::Sink = Box::new(|v| crate::outln!("{v}"));
        o.steer = std::sync::Arc::new(super::steer::Steer::new(Some(sink)));
    }
    let (res, target) = if is_remote(dst.as_os_str()) {
        if remote_srcs > 0 {
            return exit_fatal(super::fatal::Fatal {
                code: Exit::Usage,
                msg: "copying from one ferry:// URL to another is not supported".into(),
            });
        }
        let r = match parse(dst.as_os_str()) {
            Ok(r) => r,
            Err(m) => {
                return exit_fatal(super::fatal::Fatal {
                    code: Exit::Usage,
                    msg: m,
                });
            }
        };
        let res = if a.moving {
            super::client::move_push(&a.paths, &r, &o)
        } else {
            super::client::push(&a.paths, &r, &o).map(|p| p.out)
        };
        (res, r.to_string())
    } else {
        if a.paths.len() != 1 || remote_srcs != 1 {
            return exit_fatal(super::fatal::Fatal {
                code: Exit::Usage,
                msg: "a pull takes exactly one ferry:// source".into(),
            });
        }
        let r = match parse(a.paths[0].as_os_str()) {
            Ok(r) => r,
            Err(m) => {
                return exit_fatal(super::fatal::Fatal {
                    code: Exit::Usage,
                    msg: m,
                });
            }
        };
        let res = if a.moving {
            super::client::move_pull(&r, &dst, &o)
        } else {
            super::client::pull(&r, &dst, &o)
        };
        (res, dst.display().to_string())
    };
    o.steer.end(match &res {
        Ok(out) if out.errors.is_empty() => JobState::Completed,
        Err(f) if f.code == Exit::Cancelled => JobState::Cancelled,
        _ => JobState::Failed,
    });
    match res {
        Ok(out) => report(
            &out,
            &target,
            start.elapsed(),
            a.json,
            a.quiet,
            a.report.as_deref(),
        ),
        Err(f) => exit_fatal(f),
    }
}

/// Prints the outcome; exit 0 only if everything was durable at the far end.
fn report(
    out: &super::send::Outcome,
    target: &str,
    took: std::time::Duration,
    json: bool,
    quiet: bool,
    report_file: Option<&std::path::Path>,
) -> ExitCode {
    let errors: Vec<String> = out
        .errors
        .iter()
        .map(|(p, e)| {
            if p.is_empty() {
                e.clone()
            } else {
                format!("'{}': {e}", super::beneath::show(p))
            }
        })
        .collect();
    for e in &errors {
        eprintln!("ferry: {e}");
    }
    let secs = took.as_secs_f64();
    let v = serde_json::json!({
        "event": "report", "target": target, "files": out.files, "bytes": out.bytes,
        "skipped": out.skipped, "removed": out.removed, "failed": errors.len(), "seconds": secs,
        "errors": errors,
    });
    if json {
        crate::outln!("{v}");
    } else if !quiet {
        if out.removed > 0 {
            eprintln!(
                "ferry: {} sources removed once their copies were durable and verified",
                out.removed
            );
        }
        eprintln!(
            "ferry: {} files, {} bytes durable at {target} in {secs:.2} s ({:.1} MiB/s); {} skipped (journal), {} failed",
            out.files,
            out.bytes,
            out.bytes as f64 / secs.max(1e-9) / (1 << 20) as f64,
            out.skipped,
            errors.len()
        );
    }
    if let Some(p) = report_file
        && let Err(e) = std::fs::write(p, serde_json::to_vec_pretty(&v).unwrap_or_default())
    {
        eprintln!("ferry: --report {}: {e}", p.display());
    }
    if errors.is_empty() {
        Exit::Ok.into()
    } else {
        Exit::Failed.into()
    }
}

/// `ferry verify SRC ferry://HOST/NAME/PATH`.
pub fn remote_verify(
    src: &std::path::Path,
    url: &std::ffi::OsStr,
    json: bool,
    tls_dir: Option<PathBuf>,
) -> ExitCode {
    let r = match super::url::parse(url) {
        Ok(r) => r,
        Err(m) => {
            eprintln!("ferry verify: {m}");
            return Exit::Usage.into();
        }
    };
    match super::client::verify(src, &r, &options(tls_dir, None, false, 1)) {
        Ok(diffs) => {
            if json {
                crate::outln!(
                    "{}",
                    serde_json::json!({"differences": diffs.len(), "list": diffs})
                );
            } else {
                for d in &diffs {
                    println!("{d}");
                }
                eprintln!("ferry verify: {} differences against {r}", diffs.len());
            }
            Exit::ok_or_failed(diffs.is_empty()).into()
        }
        Err(f) => {
            eprintln!("ferry verify: {}", f.msg);
            f.code.into()
        }
    }
}
