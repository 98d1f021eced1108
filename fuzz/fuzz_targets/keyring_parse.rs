//! The keyring text parser: never panics, and an error never shows an entry's key text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_byok::{ErrorKind, Keyring};

/// Every reason the parser gives for a bad entry.
const WHYS: &[&str] = &[
    "expected `<id>:<base64 key>`",
    "a key id must be 1 to 64 characters",
    "a key id may hold only letters, digits, `_`, `.` and `-`",
    "the key is not valid base64",
    "the key is not 32 bytes",
    "the key is all zeros",
    "duplicate key id",
];

fuzz_target!(|text: &str| {
    match Keyring::parse(text) {
        Ok(ring) => {
            // What it parsed, written back, parses to the same keyring.
            let again = Keyring::parse(&ring.expose_text()).expect("round trip");
            assert!(ring.ids().eq(again.ids()));
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidKeyring);
            // The message is built from fixed text and the entry's number only, so it
            // cannot carry key material (a substring check would trip on input that
            // quotes the message itself).
            let shown = e.to_string();
            let rest = shown
                .strip_prefix("invalid master keyring: keyring text")
                .unwrap_or_else(|| panic!("unexpected message: {shown}"));
            let ok = rest == " holds no key"
                || rest.strip_prefix(", entry ").is_some_and(|rest| {
                    let (n, why) = rest.split_once(": ").unwrap_or(("", ""));
                    n.parse::<usize>().is_ok() && WHYS.contains(&why)
                });
            assert!(ok, "the message holds more than fixed text: {shown}");
        }
    }
});
