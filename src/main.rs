//! The `ferry` binary: the command line lives in `cli/` (one file per command).

mod cli;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// With `--features dhat-heap`: a heap profile of this process, written at its clean exit to
/// `$FERRY_DHAT.PID.json`, if its arguments contain one of the `|`-separated texts of
/// `$FERRY_DHAT_MATCH` (every process without it).
#[cfg(feature = "dhat-heap")]
fn heap_profile() -> Option<dhat::Profiler> {
    let file = std::env::var("FERRY_DHAT").ok()?;
    let args = std::env::args().collect::<Vec<_>>().join(" ") + " ";
    let wanted = std::env::var("FERRY_DHAT_MATCH").unwrap_or_default();
    if !wanted.split('|').any(|w| args.contains(w)) {
        return None;
    }
    let file = format!("{file}.{}.json", std::process::id());
    eprintln!("ferry: heap profile to {file}");
    Some(dhat::Profiler::builder().file_name(file).build())
}

fn main() -> std::process::ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profile = heap_profile();
    cli::run()
}
