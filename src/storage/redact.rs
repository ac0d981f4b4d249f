//! Removes secrets from text that may reach logs, events or statuses: SAS tokens and signed-URL
//! query parameters, access keys, and any value the caller knows to be secret.

/// Query parameters that carry credentials in signed URLs (Azure SAS, S3 and GCS presigning).
const SECRET_PARAMS: &[&str] = &[
    "sig",
    "se",
    "st",
    "sp",
    "sv",
    "sr",
    "skoid",
    "sktid",
    "skt",
    "ske",
    "sks",
    "skv",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "signature",
    "access_token",
    "token",
];

/// Replaces secret query parameter values and every `known` secret with `REDACTED`.
pub fn redact(text: &str, known: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in known.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "REDACTED");
    }
    let lower = out.to_ascii_lowercase();
    let mut result = String::with_capacity(out.len());
    let mut i = 0;
    let bytes = out.as_bytes();
    while i < bytes.len() {
        let at_param = i == 0 || matches!(bytes[i - 1], b'?' | b'&');
        let param = at_param
            .then(|| {
                SECRET_PARAMS
                    .iter()
                    .find(|p| lower[i..].starts_with(&format!("{p}=")))
            })
            .flatten();
        if let Some(p) = param {
            result.push_str(&out[i..i + p.len() + 1]);
            result.push_str("REDACTED");
            i += p.len() + 1;
            while i < bytes.len() && !matches!(bytes[i], b'&' | b' ' | b'"' | b'\'' | b'\n' | b')')
            {
                i += 1;
            }
        } else {
            let c = out[i..]
                .chars()
                .next()
                .expect("index is at a char boundary");
            result.push(c);
            i += c.len_utf8();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn sas_tokens_signatures_and_known_keys_are_removed() {
        let text = "GET https://acct.blob.core.windows.net/c/x?sv=2022-11-02&sig=abc%2Fdef&se=2026 failed; key AKIAEXAMPLEKEY";
        let clean = redact(text, &["AKIAEXAMPLEKEY"]);
        assert!(
            !clean.contains("abc%2Fdef") && !clean.contains("AKIAEXAMPLEKEY"),
            "{clean}"
        );
        assert!(
            clean.contains("sig=REDACTED")
                && clean.contains("https://acct.blob.core.windows.net/c/x?"),
            "{clean}"
        );
        let s3 =
            "url: http://h/b/k?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA%2F2026 returned 403";
        let clean = redact(s3, &[]);
        assert!(
            !clean.contains("deadbeef") && !clean.contains("AKIA%2F2026"),
            "{clean}"
        );
        assert!(clean.ends_with("returned 403"));
    }
}
