//! docs/FORMAT.md §15, the wrapped keyring: its test vector parses as documented, is
//! written back as documented, and the texts it says are refused are refused, each
//! without echoing a ciphertext.
#![allow(clippy::unwrap_used)]

use tower_byok::{ErrorKind, WrappedKeyring, WRAPPED_KEYRING_HEADER};

const FORMAT_MD: &str = include_str!("../docs/FORMAT.md");

/// The `text` code blocks of §15.2, in order.
fn vector_blocks() -> Vec<String> {
    let section = FORMAT_MD
        .split("### 15.2 Test vector")
        .nth(1)
        .expect("FORMAT.md has §15.2");
    section
        .split("```text\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect()
}

const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

#[test]
fn the_format_md_vector_parses_as_documented() {
    let blocks = vector_blocks();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    let wrapped = WrappedKeyring::parse(&blocks[0]).unwrap();
    assert_eq!(wrapped.scheme(), "aws-kms");
    assert_eq!(wrapped.kms_key(), ARN);
    assert_eq!(wrapped.ids().collect::<Vec<_>>(), ["k2", "k1"]);
    let up: Vec<u8> = (1..=16).collect();
    let down: Vec<u8> = (1..=16).rev().collect();
    assert_eq!(wrapped.ciphertext("k2"), Some(up.as_slice()));
    assert_eq!(wrapped.ciphertext("k1"), Some(down.as_slice()));
    // Written back without the comment and the empty line.
    assert_eq!(wrapped.to_text(), blocks[1]);
    assert_eq!(WrappedKeyring::parse(&blocks[1]).unwrap(), wrapped);
    assert!(blocks[1].starts_with(WRAPPED_KEYRING_HEADER));
    // CRLF line ends are read the same.
    let crlf = blocks[0].replace('\n', "\r\n");
    assert_eq!(WrappedKeyring::parse(&crlf).unwrap(), wrapped);
    // Debug names the scheme and the ids, never a ciphertext or the KMS key.
    let shown = format!("{wrapped:?}");
    assert!(shown.contains("k2") && shown.contains("aws-kms"), "{shown}");
    assert!(
        !shown.contains("AQIDBAUG") && !shown.contains("111122223333"),
        "{shown}"
    );
}

#[test]
fn the_texts_format_md_refuses_are_refused() {
    let good = &vector_blocks()[1];
    let cases = [
        (
            good.replace(" v1\n", " v2\n"),
            "unknown wrapped keyring version",
        ),
        (good.replace("scheme aws-kms\n", ""), "expected `scheme"),
        (
            good.replace(&format!("kms-key {ARN}\n"), ""),
            "expected `kms-key",
        ),
        (
            "tower-byok wrapped-keyring v1\nscheme aws-kms\n".to_owned(),
            "missing the `kms-key` line",
        ),
        (good.replace("aws-kms", "AWS_KMS"), "line 2: a scheme is"),
        (good.replace("k2 ", "k1 "), "line 5: duplicate key id"),
        (
            good.replace("EA8ODQwLCgkIBwYFBAMCAQ==", "EA8O!!wLCgkIBwYFBAMCAQ=="),
            "line 5: the ciphertext is not valid base64",
        ),
        (
            good.replace("EA8ODQwLCgkIBwYFBAMCAQ==", "EA8ODQwLCgkIBwYFBAMCAQ"),
            "line 5: the ciphertext is not valid base64",
        ),
        (good.replace("k1 ", "k/1 "), "line 5: a key id may hold"),
        (
            good.lines().take(3).collect::<Vec<_>>().join("\n"),
            "holds no key",
        ),
        ("k1:AAAA".to_owned(), "not a wrapped keyring"),
        (String::new(), "not a wrapped keyring"),
    ];
    for (text, expected) in cases {
        let err = WrappedKeyring::parse(&text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKeyring, "{text}");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(expected), "{shown} (wanted {expected})");
        assert!(
            !shown.contains("EA8O") && !shown.contains("AQIDBAUG"),
            "{shown} echoes a ciphertext"
        );
    }
}
