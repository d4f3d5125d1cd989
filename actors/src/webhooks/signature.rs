//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(key,
//! "{webhook-id}.{webhook-timestamp}.{body}")), the key being the base64
//! part of a `whsec_` secret.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngExt;
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// Random bytes in a new secret (the spec asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// A signing key.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A fresh random secret and its `whsec_` text.
    pub fn generate() -> (Self, String) {
        let mut key = vec![0u8; SECRET_BYTES];
        rand::rng().fill(&mut key[..]);
        let text = format!("{PREFIX}{}", BASE64.encode(&key));
        (Self(key), text)
    }

    /// Parses a `whsec_` secret.
    pub fn parse(text: &str) -> Option<Self> {
        BASE64.decode(text.strip_prefix(PREFIX)?).ok().map(Self)
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};

    /// The example published with the Standard Webhooks specification.
    #[test]
    fn signs_the_specifications_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_reference_library_verifies_what_we_sign() {
        let (secret, text) = Secret::generate();
        assert!(text.starts_with("whsec_"));
        let body = br#"{"type":"webhook.test"}"#;
        // The reference library checks the timestamp against the system
        // clock, so this one must be real.
        let now = SystemClock.now().unix_timestamp();
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert(
            "webhook-signature",
            secret.sign("msg_1", now, body).parse().unwrap(),
        );
        let verifier = standardwebhooks::Webhook::new(&text).unwrap();
        verifier.verify(body, &headers).unwrap();
        // A changed body does not verify.
        assert!(verifier.verify(b"{}", &headers).is_err());
    }
}
