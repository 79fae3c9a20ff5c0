//! Paths in JSON (job specs, checkpoints): a UTF-8 path is a string, as serde writes it; any
//! other is its bytes as an array of numbers (serde's own PathBuf refuses those, and a name is
//! raw bytes on Linux). Either form reads back.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// One path in its JSON form (borrowed for writing).
pub struct AsJson<'a>(pub &'a Path);

impl Serialize for AsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => s.collect_seq(self.0.as_os_str().as_bytes()),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Form {
    Text(String),
    Bytes(Vec<u8>),
}

impl From<Form> for PathBuf {
    fn from(f: Form) -> PathBuf {
        match f {
            Form::Text(t) => PathBuf::from(t),
            Form::Bytes(b) => PathBuf::from(OsString::from_vec(b)),
        }
    }
}

pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    AsJson(p).serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    Ok(Form::deserialize(d)?.into())
}

/// `#[serde(with = "crate::pathser::many")]` for a Vec<PathBuf>.
pub mod many {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|p| AsJson(p)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        Ok(Vec::<Form>::deserialize(d)?
            .into_iter()
            .map(PathBuf::from)
            .collect())
    }
}

/// `#[serde(with = "crate::pathser::maybe")]` for an Option<PathBuf>.
pub mod maybe {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(p) => s.serialize_some(&AsJson(p)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Ok(Option::<Form>::deserialize(d)?.map(PathBuf::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "crate::pathser")]
        one: PathBuf,
        #[serde(with = "crate::pathser::many")]
        many: Vec<PathBuf>,
        #[serde(with = "crate::pathser::maybe", default)]
        maybe: Option<PathBuf>,
    }

    #[test]
    fn utf8_paths_stay_strings_and_raw_bytes_round_trip() {
        let odd = PathBuf::from(OsString::from_vec(b"/a/new\nline \xff".to_vec()));
        let t = T {
            one: PathBuf::from("/plain"),
            many: vec![odd.clone(), PathBuf::from("x")],
            maybe: Some(odd),
        };
        let text = serde_json::to_string(&t).unwrap();
        assert!(
            text.starts_with(r#"{"one":"/plain","many":[[47,"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<T>(&text).unwrap(), t);
        let old: T = serde_json::from_str(r#"{"one":"/a","many":["/b"]}"#).unwrap();
        assert_eq!(old.maybe, None);
    }
}
