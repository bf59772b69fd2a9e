//! `GET {path}/simpleio.js` and `GET {path}/simpleio.mjs`: the browser client, served by the
//! layer itself, so a page needs nothing but `<script src="/simpleio/simpleio.js"></script>`
//! (then `simpleio.connect()`) or `import { connect } from "/simpleio/simpleio.mjs"`.
//!
//! The bundles are `client/dist/simpleio.min.js` and `client/dist/simpleio.mjs`, built from
//! `client/src/` by `npm run build` and committed, so building the crate never needs Node.
//! `npm run check` in `client/` proves the committed files are a fresh build of the source.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// The JavaScript client as a classic script: it defines `window.simpleio` (`connect`,
/// `SimpleIO`). The layer serves it at `{path}/simpleio.js`; this is the same text, for an
/// application that serves it itself (another path, a CDN, a bundle of its own).
///
/// Its API is `client/README.md`; it speaks the protocol of the [`spec`](crate::spec) and is
/// about 2.4 kB min+gzip.
///
/// ```
/// use axum::{Router, http::header, routing::get};
///
/// // The client at /assets/simpleio.js, beside the layer's own copy.
/// let app: Router = Router::new().route(
///     "/assets/simpleio.js",
///     get(|| async {
///         ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], simpleio::CLIENT_SCRIPT)
///     }),
/// );
/// assert!(simpleio::CLIENT_SCRIPT.contains("globalThis.simpleio"));
/// # let _ = app;
/// ```
pub const CLIENT_SCRIPT: &str = include_str!("../client/dist/simpleio.min.js");

/// The JavaScript client as an ES module: it exports `connect` and `SimpleIO`. The layer serves
/// it at `{path}/simpleio.mjs`; this is the same text, for an application that serves it itself.
/// (The npm package `simpleio-client` holds the same file, with its TypeScript declarations.)
///
/// ```
/// use axum::{Router, http::header, routing::get};
///
/// // `import { connect } from "/assets/simpleio.mjs"` in the page. A module needs a
/// // JavaScript content type: browsers refuse to run one served as anything else.
/// let app: Router = Router::new().route(
///     "/assets/simpleio.mjs",
///     get(|| async {
///         ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], simpleio::CLIENT_MODULE)
///     }),
/// );
/// assert!(simpleio::CLIENT_MODULE.contains("export"));
/// # let _ = app;
/// ```
pub const CLIENT_MODULE: &str = include_str!("../client/dist/simpleio.mjs");

/// One bundle as the layer serves it: the text and its ETag. (`static`s, so each has one
/// address.)
#[derive(Debug)]
pub(crate) struct Bundle {
    body: &'static str,
    etag: &'static str,
}

/// The classic script, at `{path}/simpleio.js`.
static SCRIPT: Bundle = Bundle {
    body: CLIENT_SCRIPT,
    etag: SCRIPT_ETAG,
};

/// The ES module, at `{path}/simpleio.mjs`.
static MODULE: Bundle = Bundle {
    body: CLIENT_MODULE,
    etag: MODULE_ETAG,
};

/// The bundle served at `suffix`, the part of a request's path after the route's path.
pub(crate) fn bundle(suffix: &str) -> Option<&'static Bundle> {
    match suffix {
        "/simpleio.js" => Some(&SCRIPT),
        "/simpleio.mjs" => Some(&MODULE),
        _ => None,
    }
}

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

/// A strong ETag of `text`: its hash in hex, quoted (RFC 9110 §8.8.3), built at compile time.
const fn etag(text: &str) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = fnv1a(text.as_bytes());
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

/// [`etag`] as a `&str`: hex digits and quotes are ASCII.
const fn as_str(bytes: &'static [u8]) -> &'static str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => panic!("hex digits and quotes are ASCII"),
    }
}

const SCRIPT_ETAG: &str = as_str(&const { etag(CLIENT_SCRIPT) });
const MODULE_ETAG: &str = as_str(&const { etag(CLIENT_MODULE) });

/// `no-cache` (store, but revalidate before each use) rather than a `max-age`: the client must
/// speak the same protocol as the server it talks to, so after a deploy every page should get
/// the new bundle at once, not up to an hour later. Revalidating costs one round trip that
/// answers `304` with no body, and a bundle is about 2 kB anyway.
const CACHE_CONTROL: &str = "no-cache";

/// Answers a `GET` (or `HEAD`) of a bundle: `200` with it, or `304 Not Modified` if the
/// request's `If-None-Match` names its ETag.
pub(crate) fn serve(bundle: &Bundle, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let builder = Response::builder()
        .header(header::ETAG, HeaderValue::from_static(bundle.etag))
        .header(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        );
    let response = if none_match(headers, bundle.etag) {
        builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Full::new(Bytes::new()))
    } else {
        builder
            .status(StatusCode::OK)
            // One type for both: a module needs a JavaScript type, and this one is it.
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/javascript; charset=utf-8"),
            )
            // The content type is exact; tell browsers not to second-guess it.
            .header(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            )
            .body(Full::new(Bytes::from_static(bundle.body.as_bytes())))
    };
    response.expect("static headers are valid")
}

/// Whether `If-None-Match` matches `etag`. RFC 9110 §13.1.2: the header is `*` or a list of
/// entity tags, compared weakly (a `W/` prefix is ignored), possibly over several header lines.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
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
        let response = serve(&SCRIPT, &HeaderMap::new());
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
        assert_eq!(
            etag,
            format!("\"{:016x}\"", fnv1a(CLIENT_SCRIPT.as_bytes()))
        );
        let body = body(response).await;
        assert_eq!(body, CLIENT_SCRIPT.as_bytes());
        assert!(
            CLIENT_SCRIPT.contains("globalThis.simpleio"),
            "the classic-script bundle"
        );
    }

    #[test]
    fn each_bundle_has_its_own_path_and_etag() {
        assert!(std::ptr::eq(bundle("/simpleio.js").unwrap(), &SCRIPT));
        assert!(std::ptr::eq(bundle("/simpleio.mjs").unwrap(), &MODULE));
        assert!(bundle("/simpleio.min.js").is_none() && bundle("").is_none());
        assert_eq!(
            MODULE_ETAG,
            format!("\"{:016x}\"", fnv1a(CLIENT_MODULE.as_bytes()))
        );
        assert_ne!(SCRIPT_ETAG, MODULE_ETAG);
        assert!(CLIENT_MODULE.contains("export"), "the ES module");
    }

    #[tokio::test]
    async fn a_matching_if_none_match_gets_304_with_no_body() {
        for value in [
            MODULE_ETAG.to_owned(),
            format!("W/{MODULE_ETAG}"),
            format!("\"other\", {MODULE_ETAG}"),
            "*".to_owned(),
        ] {
            let response = serve(&MODULE, &if_none_match(&value));
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{value}");
            assert_eq!(response.headers()[header::ETAG], MODULE_ETAG);
            assert!(body(response).await.is_empty());
        }
    }

    #[tokio::test]
    async fn another_etag_gets_the_full_bundle() {
        // The script's ETag is another bundle's: the module is sent in full.
        let response = serve(&MODULE, &if_none_match(SCRIPT_ETAG));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await.len(), CLIENT_MODULE.len());
    }

    #[test]
    fn the_hash_is_fnv1a() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
