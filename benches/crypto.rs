//! The cryptography of one key, beside the raw cipher it is made of:
//!
//! - `derive`: the per-user key (HKDF-SHA256), once per user per load;
//! - `seal/<size>` and `open/<size>`: one secret of 16 B to 16 KiB under a derived key,
//!   with `Throughput::Bytes`, beside `raw_open/<size>`: XChaCha20-Poly1305 alone on the
//!   same bytes, the floor.
//!
//! Run: `cargo bench --bench crypto`.

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tower_byok::__bench::Cipher;
use tower_byok::MasterKey;

const SIZES: [usize; 6] = [16, 64, 256, 1024, 4096, 16 * 1024];

fn crypto(c: &mut Criterion) {
    let master = MasterKey::from_bytes("k1", [7; 32]).expect("key");
    let mut group = c.benchmark_group("crypto");
    group.bench_function("derive", |b| {
        b.iter(|| Cipher::derive(&master, black_box("user-42")))
    });

    let cipher = Cipher::derive(&master, "user-42");
    let raw = XChaCha20Poly1305::new(&[9u8; 32].into());
    let nonce = XNonce::from([3u8; 24]);
    for size in SIZES {
        let secret = vec![b'k'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &secret, |b, s| {
            b.iter(|| cipher.seal("user-42", "openai", black_box(s)))
        });
        let blob = cipher.seal("user-42", "openai", &secret);
        group.bench_with_input(BenchmarkId::new("open", size), &blob, |b, blob| {
            b.iter(|| assert!(cipher.open("user-42", "openai", black_box(blob))))
        });
        let aad = [0u8; 32];
        let sealed = raw
            .encrypt(
                &nonce,
                Payload {
                    msg: &secret,
                    aad: &aad,
                },
            )
            .expect("seal");
        group.bench_with_input(BenchmarkId::new("raw_open", size), &sealed, |b, sealed| {
            b.iter(|| {
                raw.decrypt(
                    &nonce,
                    Payload {
                        msg: black_box(sealed),
                        aad: &aad,
                    },
                )
                .expect("open")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, crypto);
criterion_main!(benches);
