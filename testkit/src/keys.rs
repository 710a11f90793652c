//! Signing keys for the UAA double, generated at start-up (never checked in).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// Which algorithm the double signs with. UAA signs with RS256; ES256 is offered by some
/// deployments and the server must accept it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    Rs256,
    Es256,
}

/// One signing key: the private half for minting tokens, and its JWK for `/token_keys`.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: SigningAlg,
    encoding: EncodingKey,
    jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

impl SigningKey {
    /// Generates a fresh key. RSA 2048 takes a few hundred milliseconds.
    pub fn generate(kid: &str, alg: SigningAlg) -> Self {
        match alg {
            SigningAlg::Rs256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
                let pkcs8 = pair.as_der().expect("PKCS#8 export");
                let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
                    .expect("own RSA key is valid");
                let public = pair.public_key();
                let spki = public.as_der().expect("SPKI export");
                let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
                let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
                let jwk = json!({
                    "kty": "RSA", "e": e, "use": "sig", "kid": kid, "alg": "RS256",
                    "value": pem("PUBLIC KEY", spki.as_ref()), "n": n,
                });
                SigningKey { kid: kid.to_string(), alg, encoding, jwk }
            }
            SigningAlg::Es256 => {
                let rng = SystemRandom::new();
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("EC key generation");
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                    .expect("own EC key is valid");
                let point = pair.public_key().as_ref();
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                let (x, y) = (&point[1..33], &point[33..65]);
                let encoding = EncodingKey::from_ec_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
                    .expect("own EC key is valid");
                let jwk = json!({
                    "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid, "alg": "ES256",
                    "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
                });
                SigningKey { kid: kid.to_string(), alg, encoding, jwk }
            }
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.alg {
            SigningAlg::Rs256 => Algorithm::RS256,
            SigningAlg::Es256 => Algorithm::ES256,
        }
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The key as UAA lists it in `/token_keys`.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }
}
