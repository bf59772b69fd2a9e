//! `GET {path}/simpleio.js`: the browser client, served by the layer itself, so a page needs
//! nothing but `<script src="/simpleio/simpleio.js"></script>` (then `simpleio.connect()`).
//!
//! The bundle is `client/dist/simpleio.min.js`, built from `client/src/` by `npm run build` and
//! committed, so building the crate never needs Node. `npm run check` in `client/` proves the
//! committed file is a fresh build of the source.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// The classic-script bundle: defines `window.simpleio`.
const SCRIPT: &str = include_str!("../client/dist/simpleio.min.js");

/// FNV-1a, 64 bits: not a cryptographic hash, but an ETag only has to change when the content
/// does, and a `const fn` computes it at compile time with no new dependency.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The strong ETag of [`SCRIPT`]: its hash in hex, quoted (RFC 9110 §8.8.3), built at compile
/// time.
const ETAG: &str = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const BYTES: [u8; 18] = {
        let hash = fnv1a(SCRIPT.as_bytes());
        let mut out = [b'"'; 18];
        let mut i = 0;
        while i < 16 {
            out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
            i += 1;
        }
        out
    };
    match std::str::from_utf8(&BYTES) {
        Ok(etag) => etag,
        Err(_) => panic!("hex digits and quotes are ASCII"),
    }
};

/// `no-cache` (store, but revalidate before each use) rather than a `max-age`: the client must
/// speak the same protocol as the server it talks to, so after a deploy every page should get
/// the new bundle at once, not up to an hour later. Revalidating costs one round trip that
/// answers `304` with no body, and the bundle is about 2 kB anyway.
const CACHE_CONTROL: &str = "no-cache";

/// Answers a `GET` (or `HEAD`) of the script: `200` with the bundle, or `304 Not Modified` if
/// the request's `If-None-Match` names our ETag.
pub(crate) fn serve(headers: &HeaderMap) -> Response<Full<Bytes>> {
    let builder = Response::builder()
        .header(header::ETAG, HeaderValue::from_static(ETAG))
        .header(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        );
    let response = if none_match(headers) {
        builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Full::new(Bytes::new()))
    } else {
        builder
            .status(StatusCode::OK)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/javascript; charset=utf-8"),
            )
            // The content type is exact; tell browsers not to second-guess it.
            .header(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            )
            .body(Full::new(Bytes::from_static(SCRIPT.as_bytes())))
    };
    response.expect("static headers are valid")
}

/// Whether `If-None-Match` matches our ETag. RFC 9110 §13.1.2: the header is `*` or a list of
/// entity tags, compared weakly (a `W/` prefix is ignored), possibly over several header lines.
fn none_match(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ETAG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(response: Response<Full<Bytes>>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    fn if_none_match(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[tokio::test]
    async fn serves_the_bundle_as_javascript_with_a_strong_etag() {
        let response = serve(&HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "application/javascript; charset=utf-8"
        );
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        assert!(
            etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'),
            "{etag}"
        );
        assert_eq!(etag, format!("\"{:016x}\"", fnv1a(SCRIPT.as_bytes())));
        let body = body(response).await;
        assert_eq!(body, SCRIPT.as_bytes());
        assert!(
            SCRIPT.contains("globalThis.simpleio"),
            "the classic-script bundle"
        );
    }

    #[tokio::test]
    async fn a_matching_if_none_match_gets_304_with_no_body() {
        for value in [
            ETAG.to_owned(),
            format!("W/{ETAG}"),
            format!("\"other\", {ETAG}"),
            "*".to_owned(),
        ] {
            let response = serve(&if_none_match(&value));
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{value}");
            assert_eq!(response.headers()[header::ETAG], ETAG);
            assert!(body(response).await.is_empty());
        }
    }

    #[tokio::test]
    async fn another_etag_gets_the_full_bundle() {
        let response = serve(&if_none_match("\"0000000000000000\""));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await.len(), SCRIPT.len());
    }

    #[test]
    fn the_hash_is_fnv1a() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
