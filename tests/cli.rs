//! The command line's own documents: shell completions and man pages.

mod common;
use common::*;

#[test]
fn completions_for_each_shell_name_the_commands() {
    for (shell, marker) in [
        ("bash", "_ferry()"),
        ("zsh", "#compdef ferry"),
        ("fish", "complete -c ferry"),
        ("elvish", "edit:completion:arg-completer[ferry]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = ferry(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: no {marker}");
        for cmd in ["copy", "move", "verify", "ctl", "jobs", "rebalance"] {
            assert!(text.contains(cmd), "{shell}: no {cmd}");
        }
    }
    let out = ferry(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad usage");
}

#[test]
fn manpage_prints_ferry_1_and_writes_a_page_per_command() {
    let out = ferry(&["manpage"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH ferry 1"), "{page}");
    assert!(
        page.contains(".SH NAME") && page.contains(".SH SUBCOMMANDS"),
        "{page}"
    );
    let t = tempfile::tempdir().unwrap();
    let out = ferry(&["manpage".as_ref(), "--dir".as_ref(), t.path().as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for p in ["ferry.1", "ferry-copy.1", "ferry-move.1", "ferry-ctl.1"] {
        let text = std::fs::read_to_string(t.path().join(p)).unwrap();
        assert!(text.contains(".SH"), "{p}");
    }
    let copy = std::fs::read_to_string(t.path().join("ferry-copy.1")).unwrap();
    assert!(copy.contains("bwlimit"), "the options are documented");
    let out = ferry(&[
        "manpage".as_ref(),
        "--dir".as_ref(),
        t.path().join("none/deeper").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ferry manpage: writing man pages"),
        "{}",
        stderr(&out)
    );
}
