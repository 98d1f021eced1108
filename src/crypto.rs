//! Envelope encryption: per-owner keys from HKDF-SHA256, secrets sealed with
//! XChaCha20-Poly1305 and bound to their master key id, owner and provider.
//!
//! A user's rows are sealed exactly as before owners existed (label `user-key`, three
//! fields of associated data), so every existing row and test vector still holds. A team's
//! or the platform's rows use another label (`owner-key`, with the kind in the HKDF info)
//! and a fourth field of associated data, the kind: a user named like a team derives
//! another key and authenticates other data, so it can open none of the team's rows.
//!
//! `docs/FORMAT.md` describes every byte here; keep the two in step.

use chacha20poly1305::aead::{AeadInOut, Generate, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::keyring::{MasterKey, MASTER_KEY_LEN};
use crate::owner::OwnerKind;

/// The first byte of every sealed blob, and of its associated data.
pub(crate) const FORMAT_VERSION: u8 = 1;
pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;
const HKDF_SALT: &[u8] = b"tower-byok v1";

/// Appends `bytes` with its length as a 4-byte big-endian prefix, so that no two
/// different field lists encode to the same bytes.
fn push_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("fields are bounded far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// `HKDF-SHA256(salt, ikm)` expanded over `lp(info[0]) || lp(info[1]) || ...`, fed to
/// HKDF piece by piece (`expand_multi_info`) rather than joined in a buffer first: a
/// miss derives one of these per owner and master key.
fn hkdf_32(ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    const MAX_FIELDS: usize = 3;
    assert!(
        info.len() <= MAX_FIELDS,
        "HKDF info has at most {MAX_FIELDS} fields"
    );
    let mut prefixes = [[0u8; 4]; MAX_FIELDS];
    let mut parts: [&[u8]; 2 * MAX_FIELDS] = [&[]; 2 * MAX_FIELDS];
    for (i, field) in info.iter().enumerate() {
        let len = u32::try_from(field.len()).expect("fields are bounded far below 4 GiB");
        prefixes[i] = len.to_be_bytes();
    }
    for (i, field) in info.iter().enumerate() {
        parts[2 * i] = &prefixes[i];
        parts[2 * i + 1] = field;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(HKDF_SALT), ikm)
        .expand_multi_info(&parts[..2 * info.len()], out.as_mut_slice())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The cipher for one owner (a user unless said otherwise) under one master key.
///
/// Deriving it costs two HMACs; a load derives it once per owner and master key and
/// opens all of that owner's rows with it.
pub(crate) struct UserCipher<'k> {
    master: &'k MasterKey,
    aead: XChaCha20Poly1305,
    kind: OwnerKind,
}

impl<'k> UserCipher<'k> {
    /// A user's cipher: `HKDF(lp("user-key") || lp(user_id))`.
    pub(crate) fn new(master: &'k MasterKey, user_id: &str) -> Self {
        let key = hkdf_32(master.bytes(), &[b"user-key", user_id.as_bytes()]);
        Self {
            master,
            aead: XChaCha20Poly1305::new(<&Key>::from(&*key)),
            kind: OwnerKind::User,
        }
    }

    /// Any owner's cipher: a user's as [`new`](Self::new); a team's or the platform's
    /// from `HKDF(lp("owner-key") || lp(kind) || lp(owner_id))`, and its rows' associated
    /// data end with `lp(kind)`.
    pub(crate) fn for_owner(master: &'k MasterKey, kind: OwnerKind, owner_id: &str) -> Self {
        if kind == OwnerKind::User {
            return Self::new(master, owner_id);
        }
        let key = hkdf_32(
            master.bytes(),
            &[b"owner-key", kind.as_str().as_bytes(), owner_id.as_bytes()],
        );
        Self {
            master,
            aead: XChaCha20Poly1305::new(<&Key>::from(&*key)),
            kind,
        }
    }

    /// Calls `f` with the associated data of one of this owner's rows, built on the
    /// stack when it fits (always, for ids and names within the crate's limits: at most
    /// 1 + 4 × 4 + 255 + 255 + 64 + 8 bytes), so opening a row allocates only its
    /// plaintext.
    fn with_aad<R>(&self, owner_id: &str, provider: &str, f: impl FnOnce(&[u8]) -> R) -> R {
        let kind = (self.kind != OwnerKind::User).then_some(self.kind);
        let mut buf = [0u8; AAD_STACK_LEN];
        match write_aad(&mut buf, self.key_id(), owner_id, provider, kind) {
            Some(len) => f(&buf[..len]),
            None => f(&match kind {
                None => associated_data(self.key_id(), owner_id, provider),
                Some(kind) => owner_associated_data(self.key_id(), kind, owner_id, provider),
            }),
        }
    }

    pub(crate) fn key_id(&self) -> &str {
        self.master.id()
    }

    /// Seals `plaintext` under a fresh random nonce: `version || nonce || ciphertext || tag`.
    pub(crate) fn seal(&self, user_id: &str, provider: &str, plaintext: &[u8]) -> Vec<u8> {
        // From the OS CSPRNG (`getrandom`); 24 random bytes never repeat in practice.
        let nonce = XNonce::generate();
        let mut blob = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        blob.push(FORMAT_VERSION);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(plaintext);
        let tag = self
            .with_aad(user_id, provider, |aad| {
                self.aead
                    .encrypt_inout_detached(&nonce, aad, (&mut blob[HEADER_LEN..]).into())
            })
            .expect("plaintexts are bounded far below the XChaCha20 limit");
        blob.extend_from_slice(&tag);
        blob
    }

    /// Opens a blob sealed by [`seal`](Self::seal) for the same user and provider.
    ///
    /// Every failure, whatever its cause, is the same opaque [`ErrorKind::Decrypt`].
    pub(crate) fn open(
        &self,
        user_id: &str,
        provider: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let decrypt = || Error::new(ErrorKind::Decrypt);
        if blob.len() < HEADER_LEN + TAG_LEN || blob[0] != FORMAT_VERSION {
            return Err(decrypt());
        }
        let nonce = <&XNonce>::try_from(&blob[1..HEADER_LEN]).map_err(|_| decrypt())?;
        let (body, tag) = blob[HEADER_LEN..].split_at(blob.len() - HEADER_LEN - TAG_LEN);
        let tag = <&Tag>::try_from(tag).map_err(|_| decrypt())?;
        let mut plaintext = Zeroizing::new(body.to_vec());
        self.with_aad(user_id, provider, |aad| {
            self.aead
                .decrypt_inout_detached(nonce, aad, plaintext.as_mut_slice().into(), tag)
        })
        .map_err(|_| decrypt())?;
        Ok(plaintext)
    }

    /// Opens a blob and checks that it holds UTF-8 text.
    pub(crate) fn open_text(
        &self,
        user_id: &str,
        provider: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<String>> {
        let mut bytes = self.open(user_id, provider, blob)?;
        let owned = std::mem::take(&mut *bytes);
        match String::from_utf8(owned) {
            Ok(text) => Ok(Zeroizing::new(text)),
            Err(e) => {
                // Zeroize the bytes that came back inside the error before dropping them.
                drop(Zeroizing::new(e.into_bytes()));
                Err(Error::new(ErrorKind::Decrypt))
            }
        }
    }
}

/// Room for the associated data of any row whose ids are within the crate's limits.
const AAD_STACK_LEN: usize = 640;

/// Writes `version || lp(key_id) || lp(owner_id) || lp(provider) [|| lp(kind)]` (the
/// bytes of [`associated_data`] or [`owner_associated_data`]) into `buf` and returns its
/// length, or `None` when it does not fit.
fn write_aad(
    buf: &mut [u8],
    key_id: &str,
    owner_id: &str,
    provider: &str,
    kind: Option<OwnerKind>,
) -> Option<usize> {
    let kind = kind.map(|kind| kind.as_str().as_bytes());
    let fields = [
        Some(key_id.as_bytes()),
        Some(owner_id.as_bytes()),
        Some(provider.as_bytes()),
        kind,
    ];
    let total = buf.len();
    let (first, mut rest) = buf.split_first_mut()?;
    *first = FORMAT_VERSION;
    for field in fields.into_iter().flatten() {
        let len = u32::try_from(field.len()).ok()?.to_be_bytes();
        let (prefix, after) = std::mem::take(&mut rest).split_at_mut_checked(4)?;
        prefix.copy_from_slice(&len);
        let (body, after) = after.split_at_mut_checked(field.len())?;
        body.copy_from_slice(field);
        rest = after;
    }
    Some(total - rest.len())
}

/// `version || lp(key_id) || lp(user_id) || lp(provider)`.
pub(crate) fn associated_data(key_id: &str, user_id: &str, provider: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + 12 + key_id.len() + user_id.len() + provider.len());
    aad.push(FORMAT_VERSION);
    push_lp(&mut aad, key_id.as_bytes());
    push_lp(&mut aad, user_id.as_bytes());
    push_lp(&mut aad, provider.as_bytes());
    aad
}

/// `version || lp(key_id) || lp(owner_id) || lp(provider) || lp(kind)`: a team's or the
/// platform's rows. Never equal to a user row's [`associated_data`]: that has three
/// fields, and a provider name cannot hold the bytes of a length prefix.
pub(crate) fn owner_associated_data(
    key_id: &str,
    kind: OwnerKind,
    owner_id: &str,
    provider: &str,
) -> Vec<u8> {
    let mut aad = associated_data(key_id, owner_id, provider);
    push_lp(&mut aad, kind.as_str().as_bytes());
    aad
}

/// The vault's own random secret, kept sealed in the check record (user id `""`,
/// provider `""`, which no real row can have). Keys for fingerprints and audit user
/// references are derived from it, so they survive master-key rotation.
#[derive(Clone)]
pub(crate) struct VaultSecret {
    fingerprint_key: Zeroizing<[u8; 32]>,
    user_ref_key: Zeroizing<[u8; 32]>,
}

/// The user id and provider under which the vault secret is sealed.
pub(crate) const CHECK_RECORD_SCOPE: (&str, &str) = ("", "");

impl VaultSecret {
    pub(crate) fn generate() -> Zeroizing<[u8; MASTER_KEY_LEN]> {
        // From the OS CSPRNG (`getrandom`).
        Zeroizing::new(<[u8; MASTER_KEY_LEN]>::generate())
    }

    /// Whether `other` was derived from the same vault secret.
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        *self.user_ref_key == *other.user_ref_key
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != MASTER_KEY_LEN {
            return Err(Error::new(ErrorKind::Decrypt));
        }
        Ok(Self {
            fingerprint_key: hkdf_32(bytes, &[b"fingerprint"]),
            user_ref_key: hkdf_32(bytes, &[b"user-ref"]),
        })
    }

    /// A short, keyed fingerprint of a secret: 8 hex digits, enough to tell keys apart on
    /// screen, and useless for guessing the secret without the master key.
    pub(crate) fn fingerprint(&self, secret: &str) -> String {
        hex(&hmac(&self.fingerprint_key, secret.as_bytes())[..4])
    }

    /// The keyed hash that stands for a user id in audit records and log lines.
    pub(crate) fn user_ref(&self, user_id: &str) -> String {
        hex(&hmac(&self.user_ref_key, user_id.as_bytes())[..16])
    }

    /// The keyed hash that stands for any owner: a user's is its [`user_ref`](Self::user_ref);
    /// another kind's is the MAC of `lp(kind) || lp(owner_id)`, which starts with a zero
    /// byte that no user id holds, so no user's reference equals a team's.
    pub(crate) fn owner_ref(&self, kind: OwnerKind, owner_id: &str) -> String {
        if kind == OwnerKind::User {
            return self.user_ref(owner_id);
        }
        let mut msg = Vec::with_capacity(8 + owner_id.len() + 8);
        push_lp(&mut msg, kind.as_str().as_bytes());
        push_lp(&mut msg, owner_id.as_bytes());
        hex(&hmac(&self.user_ref_key, &msg)[..16])
    }
}

fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> MasterKey {
        MasterKey::from_bytes(id, [byte; 32]).unwrap()
    }

    #[test]
    fn round_trips_and_binds_every_field() {
        let k1 = key("k1", 1);
        let alice = UserCipher::new(&k1, "alice");
        let blob = alice.seal("alice", "openai", b"sk-secret");
        assert_eq!(blob.len(), 1 + NONCE_LEN + 9 + TAG_LEN);
        assert_eq!(
            &*alice.open_text("alice", "openai", &blob).unwrap(),
            "sk-secret"
        );

        // Another provider, another user, another key with the same id: all fail.
        assert_eq!(
            alice.open("alice", "gemini", &blob).unwrap_err().kind(),
            ErrorKind::Decrypt
        );
        let bob = UserCipher::new(&k1, "bob");
        assert!(bob.open("bob", "openai", &blob).is_err());
        assert!(
            bob.open("alice", "openai", &blob).is_err(),
            "bob's derived key"
        );
        let other = key("k1", 2);
        assert!(UserCipher::new(&other, "alice")
            .open("alice", "openai", &blob)
            .is_err());
        let renamed = key("k2", 1);
        assert!(UserCipher::new(&renamed, "alice")
            .open("alice", "openai", &blob)
            .is_err());
    }

    #[test]
    fn an_owner_kind_is_its_own_namespace() {
        let k1 = key("k1", 1);
        let team = UserCipher::for_owner(&k1, OwnerKind::Team, "acme");
        let blob = team.seal("acme", "openai", b"sk-team");
        assert_eq!(
            &*team.open_text("acme", "openai", &blob).unwrap(),
            "sk-team"
        );
        // A user named like the team, or named by its id, opens nothing of it; nor does
        // the platform, nor a team cipher asked for another team's row.
        for (kind, id) in [
            (OwnerKind::User, "team:acme"),
            (OwnerKind::User, "acme"),
            (OwnerKind::Platform, "acme"),
            (OwnerKind::Team, "acme2"),
        ] {
            let other = UserCipher::for_owner(&k1, kind, id);
            assert!(other.open("acme", "openai", &blob).is_err(), "{kind} {id}");
            assert!(other.open(id, "openai", &blob).is_err(), "{kind} {id}");
        }
        // The other way: a user's row does not open as the team's.
        let user = UserCipher::for_owner(&k1, OwnerKind::User, "acme");
        let user_blob = user.seal("acme", "openai", b"sk-user");
        assert!(team.open("acme", "openai", &user_blob).is_err());
        // A user's cipher by either constructor is the same cipher.
        assert!(UserCipher::new(&k1, "acme")
            .open("acme", "openai", &user_blob)
            .is_ok());
        assert_eq!(
            owner_associated_data("k1", OwnerKind::Team, "u", "p"),
            [
                associated_data("k1", "u", "p"),
                vec![0, 0, 0, 4],
                b"team".to_vec()
            ]
            .concat()
        );
    }

    #[test]
    fn owner_refs_of_other_kinds_differ_from_user_refs() {
        let v = VaultSecret::from_bytes(&[9; 32]).unwrap();
        assert_eq!(v.owner_ref(OwnerKind::User, "acme"), v.user_ref("acme"));
        assert_ne!(v.owner_ref(OwnerKind::Team, "acme"), v.user_ref("acme"));
        assert_ne!(
            v.owner_ref(OwnerKind::Team, "acme"),
            v.user_ref("team:acme")
        );
        assert_ne!(
            v.owner_ref(OwnerKind::Team, "acme"),
            v.owner_ref(OwnerKind::Platform, "acme")
        );
        assert_eq!(v.owner_ref(OwnerKind::Team, "acme").len(), 32);
    }

    #[test]
    fn associated_data_is_unambiguous() {
        assert_ne!(
            associated_data("k", "a|b", "c"),
            associated_data("k", "a", "b|c")
        );
        assert_ne!(
            associated_data("k", "ab", "c"),
            associated_data("k", "a", "bc")
        );
        assert_eq!(
            associated_data("k1", "u", "p"),
            [
                &[1u8, 0, 0, 0, 2][..],
                b"k1",
                &[0, 0, 0, 1],
                b"u",
                &[0, 0, 0, 1],
                b"p"
            ]
            .concat()
        );
    }

    #[test]
    fn the_stack_built_associated_data_is_the_documented_one() {
        let long = "x".repeat(700);
        let cases = [
            ("k1", "u", "p"),
            ("", "", ""),
            ("key-2026", "alice@example.com", "openai"),
            ("k", &long[..255], &long[..64]),
        ];
        for (key_id, owner, provider) in cases {
            let mut buf = [0u8; AAD_STACK_LEN];
            let len = write_aad(&mut buf, key_id, owner, provider, None).unwrap();
            assert_eq!(buf[..len], associated_data(key_id, owner, provider)[..]);
            for kind in [OwnerKind::Team, OwnerKind::Platform] {
                let len = write_aad(&mut buf, key_id, owner, provider, Some(kind)).unwrap();
                assert_eq!(
                    buf[..len],
                    owner_associated_data(key_id, kind, owner, provider)[..]
                );
            }
        }
        // Too long for the stack: not written, and sealing falls back to the heap.
        let mut buf = [0u8; AAD_STACK_LEN];
        assert_eq!(write_aad(&mut buf, "k", &long, "p", None), None);
        let k1 = key("k1", 7);
        for kind in [OwnerKind::User, OwnerKind::Team] {
            let cipher = UserCipher::for_owner(&k1, kind, &long);
            let blob = cipher.seal(&long, "p", b"sk-long");
            assert_eq!(&**cipher.open(&long, "p", &blob).unwrap(), b"sk-long");
            assert!(cipher.open(&long[1..], "p", &blob).is_err());
        }
    }

    #[test]
    fn rejects_every_flipped_byte_and_truncation() {
        let k1 = key("k1", 7);
        let c = UserCipher::new(&k1, "u");
        let blob = c.seal("u", "p", b"0123456789abcdef");
        for i in 0..blob.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = blob.clone();
                bad[i] ^= bit;
                assert_eq!(
                    c.open("u", "p", &bad).unwrap_err().kind(),
                    ErrorKind::Decrypt,
                    "byte {i}"
                );
            }
        }
        for len in 0..blob.len() {
            assert!(c.open("u", "p", &blob[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn a_hundred_thousand_seals_never_repeat_a_nonce() {
        let k1 = key("k1", 3);
        let c = UserCipher::new(&k1, "u");
        let mut seen = std::collections::HashSet::with_capacity(100_000);
        for _ in 0..100_000 {
            let blob = c.seal("u", "p", b"x");
            let nonce: [u8; NONCE_LEN] = blob[1..HEADER_LEN].try_into().unwrap();
            assert!(
                seen.insert(nonce),
                "nonce repeated after {} seals",
                seen.len()
            );
        }
        assert_eq!(seen.len(), 100_000);
    }

    #[test]
    fn keyed_hashes_are_stable_and_short() {
        let v = VaultSecret::from_bytes(&[9; 32]).unwrap();
        assert_eq!(v.fingerprint("sk-1"), v.fingerprint("sk-1"));
        assert_ne!(v.fingerprint("sk-1"), v.fingerprint("sk-2"));
        assert_eq!(v.fingerprint("sk-1").len(), 8);
        assert_eq!(v.user_ref("alice").len(), 32);
        let w = VaultSecret::from_bytes(&[8; 32]).unwrap();
        assert_ne!(v.user_ref("alice"), w.user_ref("alice"));
    }
}
