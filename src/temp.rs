//! Names of ferry's temp files: `.<name>.ferry-<token>.tmp` beside the final name (and of hidden
//! trees, `.<name>.ferry-<token>.tree`, a whole new directory tree built under one). The token is
//! 64 random bits chosen once per job and kept in its checkpoint, so a user's file can only look
//! like one of this job's temps by guessing it: cleanup (and replacing a killed run's temp)
//! touches only names carrying the job's own token, never a user's file of a similar name.

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Longest file name Linux filesystems accept.
const NAME_MAX: usize = 255;
/// Hex digits of a token.
pub const TOKEN_LEN: usize = 16;
const MARK: &[u8] = b".ferry-";
const SUFFIX: &[u8] = b".tmp";
/// A hidden tree's suffix.
const TREE_SUFFIX: &[u8] = b".tree";

/// A job's temp-name token: 16 lower-case hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    /// A fresh token from the kernel's random pool.
    pub fn random() -> Token {
        let mut b = [0u8; 8];
        // SAFETY: b is 8 writable bytes.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        let v = if n == b.len() as isize {
            u64::from_ne_bytes(b)
        } else {
            // No getrandom (very old kernel, seccomp): time and pid still differ per job.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let key = format!("{t}/{}/{:p}", std::process::id(), &b);
            xxhash_rust::xxh3::xxh3_64(key.as_bytes())
        };
        Token(format!("{v:016x}"))
    }

    /// A token as a checkpoint keeps it; None unless exactly 16 lower-case hex digits.
    pub fn parse(s: &str) -> Option<Token> {
        let ok = s.len() == TOKEN_LEN && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Token(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The temp name for `dst` under `tok`. Names too long for it keep a prefix plus a hash of the
/// whole name, so the temp name still fits NAME_MAX, is unique and is the same on every run.
pub fn temp_name(dst: &Path, tok: &Token) -> PathBuf {
    // Every file copied builds one: the common shape (a plain last component after a '/')
    // is cut by bytes into one allocation, without Path's component parser.
    let whole = dst.as_os_str().as_bytes();
    if let Some(cut) = whole.iter().rposition(|&c| c == b'/')
        && plain_name(&whole[cut + 1..])
        && plain_parent(&whole[..cut])
    {
        let name = &whole[cut + 1..];
        let mut t = Vec::with_capacity(cut + 2 + name.len() + TAIL);
        t.extend_from_slice(&whole[..=cut]);
        push_temp(&mut t, name, tok, SUFFIX);
        return PathBuf::from(std::ffi::OsString::from_vec(t));
    }
    let name = dst.file_name().unwrap_or_default().as_bytes();
    let mut t = Vec::with_capacity(NAME_MAX);
    push_temp(&mut t, name, tok, SUFFIX);
    dst.with_file_name(std::ffi::OsString::from_vec(t))
}

/// The hidden name a new directory tree `target` is built under (`--temp tree`), renamed to
/// `target` once all of it is durable. Same shape rules as `temp_name`.
pub fn tree_name(target: &Path, tok: &Token) -> PathBuf {
    let name = target.file_name().unwrap_or_default().as_bytes();
    let mut t = Vec::with_capacity(NAME_MAX);
    push_temp(&mut t, name, tok, TREE_SUFFIX);
    target.with_file_name(std::ffi::OsString::from_vec(t))
}

/// Bytes a temp name adds after the file's name.
const TAIL: usize = MARK.len() + TOKEN_LEN + SUFFIX.len();

/// A last component `Path::file_name` returns as it is (so the byte cut agrees with it).
fn plain_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".."
}

/// A parent `Path::parent` returns as it is: no trailing '/' or "." component, which it
/// would trim.
fn plain_parent(dir: &[u8]) -> bool {
    !dir.ends_with(b"/") && dir != b"." && !dir.ends_with(b"/.")
}

/// Appends the temp name of the file name `name` to `t`, ending in `suffix`.
fn push_temp(t: &mut Vec<u8>, name: &[u8], tok: &Token, suffix: &[u8]) {
    let start = t.len();
    let tail = MARK.len() + TOKEN_LEN + suffix.len();
    t.push(b'.');
    if 1 + name.len() + tail <= NAME_MAX {
        t.extend_from_slice(name);
    } else {
        let hash = format!("~{:016x}", xxhash_rust::xxh3::xxh3_64(name));
        let keep = NAME_MAX - 1 - hash.len() - tail;
        t.extend_from_slice(&name[..keep]);
        t.extend_from_slice(hash.as_bytes());
    }
    t.extend_from_slice(MARK);
    t.extend_from_slice(tok.0.as_bytes());
    t.extend_from_slice(suffix);
    debug_assert!(t.len() - start <= NAME_MAX);
}

/// Whether a file name has the shape of a ferry temp name (any token). Only for places where
/// no user file can have that shape (object stores refuse such keys), never for cleanup.
pub fn is_temp_name(name: &[u8]) -> bool {
    let tail = MARK.len() + TOKEN_LEN + SUFFIX.len();
    if name.len() < 1 + tail || name[0] != b'.' || !name.ends_with(SUFFIX) {
        return false;
    }
    let t = &name[name.len() - tail..];
    t.starts_with(MARK)
        && t[MARK.len()..MARK.len() + TOKEN_LEN]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// A process-wide token, for writers without a job (object put).
pub fn process_token() -> &'static Token {
    static TOK: std::sync::OnceLock<Token> = std::sync::OnceLock::new();
    TOK.get_or_init(Token::random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_the_token_fit_name_max_and_stay_distinct() {
        let tok = Token::parse("0123456789abcdef").unwrap();
        let a = temp_name(Path::new("/d/file"), &tok);
        assert_eq!(a, Path::new("/d/.file.ferry-0123456789abcdef.tmp"));
        assert!(is_temp_name(a.file_name().unwrap().as_bytes()));
        let long1 = "x".repeat(255);
        let long2 = format!("{}y", "x".repeat(254));
        let (t1, t2) = (
            temp_name(&Path::new("/d").join(&long1), &tok),
            temp_name(&Path::new("/d").join(&long2), &tok),
        );
        assert!(t1.file_name().unwrap().len() <= 255);
        assert!(is_temp_name(t1.file_name().unwrap().as_bytes()));
        assert_ne!(t1, t2);
        assert_eq!(t1, temp_name(&Path::new("/d").join(&long1), &tok));
        // The byte cut and Path's own parsing agree, whatever the shape of the path.
        for p in [
            "/d/file", "d/e/f", "f", "/d//f", "./f", "/d/f/", "/d/.", "/d/..", "/", "", "a/b/./",
            "a/./f", "a/../f", "/f", "//f", "a/.f",
        ] {
            let name = Path::new(p).file_name().unwrap_or_default();
            let mut t = Vec::new();
            push_temp(&mut t, name.as_bytes(), &tok, SUFFIX);
            let slow = Path::new(p).with_file_name(std::ffi::OsString::from_vec(t));
            assert_eq!(temp_name(Path::new(p), &tok), slow, "{p}");
        }
        let other = temp_name(Path::new("/d/file"), &Token::random());
        assert_ne!(a, other, "another job's temp is another name");
        let tree = tree_name(Path::new("/d/out"), &tok);
        assert_eq!(tree, Path::new("/d/.out.ferry-0123456789abcdef.tree"));
        assert!(!is_temp_name(tree.file_name().unwrap().as_bytes()));
        let t1 = tree_name(&Path::new("/d").join(&long1), &tok);
        assert!(t1.file_name().unwrap().len() <= 255);
        assert_ne!(t1, tree_name(&Path::new("/d").join(&long2), &tok));
    }

    #[test]
    fn only_ferry_shaped_names_count_and_tokens_parse_strictly() {
        for n in [
            ".big.ferry-tmp",
            "big",
            ".big.ferry-0123.tmp",
            "x.ferry-0123456789abcdef.tmp",
        ] {
            assert!(!is_temp_name(n.as_bytes()), "{n}");
        }
        assert!(!is_temp_name(b".a.ferry-0123456789ABCDEF.tmp"));
        assert!(Token::parse("0123456789ABCDEF").is_none());
        assert!(Token::parse("0123").is_none());
        let r = Token::random();
        assert_eq!(Token::parse(r.as_str()), Some(r));
    }
}
