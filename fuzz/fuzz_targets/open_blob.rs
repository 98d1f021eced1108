//! Opening a sealed blob: arbitrary bytes never open and never panic, and a sealed blob
//! with any byte changed or cut short does not open. Uses the hidden `__bench` cipher,
//! the only public way to hand the crate a blob (the same `open` the vault runs on rows).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tower_byok::__bench::Cipher;
use tower_byok::MasterKey;

fn master() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(|| MasterKey::from_bytes("k1", [7; 32]).expect("key"))
}

fuzz_target!(|input: (&[u8], u16, u8)| {
    let (data, at, flip) = input;
    let cipher = Cipher::derive(master(), "alice");
    assert!(!cipher.open("alice", "openai", data));

    let blob = cipher.seal("alice", "openai", data);
    assert!(cipher.open("alice", "openai", &blob));
    let mut tampered = blob.clone();
    let at = usize::from(at) % blob.len();
    tampered[at] ^= flip.max(1);
    assert!(!cipher.open("alice", "openai", &tampered));
    assert!(!cipher.open("alice", "openai", &blob[..at]));
});
