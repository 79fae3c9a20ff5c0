//! The ListObjectsV2 reply from a page, with `encoding-type=url` honoured: boto3 asks for it
//! by default and URL-decodes every key it gets back, so a key with '+', '%' or a space must
//! go out encoded or the client would see another name.

use super::list::{Page, encode_token};
use s3s::dto::*;

/// Percent-encodes all but unreserved characters and '/' (what S3 leaves as it is).
pub fn url_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

pub fn output(i: ListObjectsV2Input, page: Page, max_keys: i32) -> ListObjectsV2Output {
    let url = i
        .encoding_type
        .as_ref()
        .is_some_and(|e| e.as_str() == EncodingType::URL);
    let enc = |s: String| if url { url_encode(&s) } else { s };
    let key_count = (page.contents.len() + page.prefixes.len()) as i32;
    let contents = page
        .contents
        .into_iter()
        .map(|(key, it)| Object {
            key: Some(enc(key)),
            size: Some(it.size as i64),
            last_modified: Some(it.modified.into()),
            e_tag: Some(ETag::Strong(it.etag)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect();
    let common_prefixes = page
        .prefixes
        .into_iter()
        .map(|p| CommonPrefix {
            prefix: Some(enc(p)),
        })
        .collect();
    ListObjectsV2Output {
        name: Some(i.bucket),
        prefix: Some(enc(i.prefix.unwrap_or_default())),
        delimiter: i.delimiter.map(enc),
        start_after: i.start_after.map(enc),
        encoding_type: i.encoding_type,
        max_keys: Some(max_keys),
        key_count: Some(key_count),
        is_truncated: Some(page.truncated),
        continuation_token: i.continuation_token,
        next_continuation_token: page
            .next
            .filter(|_| page.truncated)
            .map(|n| encode_token(&n)),
        contents: Some(contents),
        common_prefixes: Some(common_prefixes),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_slashes_and_unreserved_and_escapes_the_rest() {
        assert_eq!(url_encode("a/b-c_d.e~f"), "a/b-c_d.e~f");
        assert_eq!(url_encode("a+b c%d"), "a%2Bb%20c%25d");
        assert_eq!(url_encode("ü"), "%C3%BC");
    }
}
