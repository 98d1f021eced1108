//! What the miss-path benches share (criterion's `miss_path` and the callgrind driver):
//! a cold user's three keys, and the floor, a raw decryption written from
//! `docs/FORMAT.md` with the raw crates.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use tower_byok::{Keyring, MasterKey, Vault};

pub(crate) const USER: &str = "bench-cold-user";
pub(crate) const MASTER: [u8; 32] = [7; 32];

fn lp(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

/// The raw decryption of `docs/FORMAT.md`: derive once, open each row.
pub(crate) fn raw_open(rows: &[(String, String, Vec<u8>)]) -> usize {
    let mut info = Vec::new();
    lp(&mut info, b"user-key");
    lp(&mut info, USER.as_bytes());
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"tower-byok v1"), &MASTER)
        .expand(&info, &mut key)
        .expect("hkdf");
    let cipher = XChaCha20Poly1305::new(&key.into());
    let mut opened = 0;
    for (provider, key_id, blob) in rows {
        let mut aad = vec![1u8];
        lp(&mut aad, key_id.as_bytes());
        lp(&mut aad, USER.as_bytes());
        lp(&mut aad, provider.as_bytes());
        let (body, tag) = blob[25..].split_at(blob.len() - 25 - 16);
        let mut plain = body.to_vec();
        cipher
            .decrypt_inout_detached(
                <&XNonce>::try_from(&blob[1..25]).expect("nonce"),
                &aad,
                plain.as_mut_slice().into(),
                <&Tag>::try_from(tag).expect("tag"),
            )
            .expect("open");
        opened += usize::from(!plain.is_empty());
    }
    opened
}

pub(crate) const SELECT: &str = "SELECT provider, key_id, sealed FROM byok_keys WHERE user_id = $1";

pub(crate) async fn seed(vault: &Vault) {
    for (provider, secret) in [
        (
            "openai",
            "sk-proj-bench-0123456789abcdefghijklmnopqrstuvwxyzABCD",
        ),
        ("gemini", "AIzaSyBench-0123456789abcdefghijklmnop"),
        ("exa", "exa-bench-0123456789abcdefghijklmno"),
    ] {
        vault.put(USER, provider, secret).await.expect("put");
    }
}

pub(crate) fn keyring() -> Keyring {
    Keyring::new(MasterKey::from_bytes("k1", MASTER).expect("key"))
}
