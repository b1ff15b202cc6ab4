//! AWS Signature Version 4 header signing (`Authorization: AWS4-HMAC-SHA256 …`) for user-defined aws-sigv4 recipes.

use ring::digest::{digest, SHA256};
use ring::hmac;
use zeroize::Zeroizing;

use super::{header, hex, unix_secs, SignError, SignInput, Signed};
use crate::encoding::{percent_decode, percent_encode_into};

/// The key and scope a request is signed with. No `Debug`: it holds the secret.
pub(crate) struct SigV4Key<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) secret_access_key: &'a str,
    /// Temporary (`ASIA…`) credentials only.
    pub(crate) session_token: Option<&'a str>,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
}

/// Headers clavis sets itself: an agent's copies were signed with its dummy
/// key and are replaced, never signed twice.
const OWN: [&str; 5] = [
    "authorization",
    "host",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
];

/// Signs host, x-amz-date, x-amz-content-sha256 (always: S3 requires it and
/// other services accept it), x-amz-security-token when there is a session
/// token, content-type when present, and every other `x-amz-*` header the
/// request carries (S3 refuses unsigned `x-amz-*` headers; botocore signs them).
pub(crate) fn sign(key: &SigV4Key, input: &SignInput) -> Result<Signed, SignError> {
    let date = amz_date(input.now)?;
    let payload = payload_hash(input)?;
    let mut signed: Vec<(String, String)> = vec![
        ("host".into(), input.host.into()),
        ("x-amz-date".into(), date.clone()),
        ("x-amz-content-sha256".into(), payload.clone()),
    ];
    if let Some(token) = key.session_token {
        signed.push(("x-amz-security-token".into(), token.into()));
    }
    let names: Vec<&str> = input
        .headers
        .keys()
        .map(|n| n.as_str())
        .filter(|n| (*n == "content-type" || n.starts_with("x-amz-")) && !OWN.contains(n))
        .collect();
    for name in names {
        let values: Result<Vec<&str>, _> = input
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str())
            .collect();
        let values = values.map_err(|_| SignError::BadHeaderValue(name.to_owned()))?;
        signed.push((name.to_owned(), values.join(",")));
    }
    let pairs: Vec<(&str, &str)> = signed
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let mut out = vec![
        header("authorization", &authorization(key, input, &date, &pairs)?)?,
        header("x-amz-date", &date)?,
        header("x-amz-content-sha256", &payload)?,
    ];
    if let Some(token) = key.session_token {
        out.push(header("x-amz-security-token", token)?);
    }
    Ok(out)
}

/// The body's hex SHA-256, unless the agent's SDK chose an unsigned payload
/// (S3 over HTTPS, aws-chunked uploads with a trailing checksum): that choice
/// is kept, since the body framing depends on it. Chunk-signed uploads chain
/// every chunk to the SDK's own signature and cannot be re-signed here.
fn payload_hash(input: &SignInput) -> Result<String, SignError> {
    match input
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        Some(v @ ("UNSIGNED-PAYLOAD" | "STREAMING-UNSIGNED-PAYLOAD-TRAILER")) => Ok(v.to_owned()),
        Some(v) if v.starts_with("STREAMING-") => Err(SignError::Unsupported(
            "chunk-signed aws-chunked uploads; configure the SDK for unsigned or whole-body payloads",
        )),
        _ => Ok(hex(digest(&SHA256, input.body).as_ref())),
    }
}

/// The `Authorization` value signing exactly `headers` (lowercase names,
/// values as sent). Used by [`sign`], and directly by the documented vectors,
/// which sign other header sets.
pub(crate) fn authorization(
    key: &SigV4Key,
    input: &SignInput,
    amz_date: &str,
    headers: &[(&str, &str)],
) -> Result<String, SignError> {
    let (canonical, signed_names) = canonical_request(input, key.service, headers);
    let day = amz_date.get(..8).ok_or(SignError::Clock)?;
    let scope = format!("{day}/{}/{}/aws4_request", key.region, key.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(digest(&SHA256, canonical.as_bytes()).as_ref())
    );
    let k = signing_key(key.secret_access_key, day, key.region, key.service);
    let signature = hex(hmac::sign(&k, to_sign.as_bytes()).as_ref());
    Ok(format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
        key.access_key_id
    ))
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(now: std::time::SystemTime) -> Result<String, SignError> {
    let secs = i64::try_from(unix_secs(now)?).map_err(|_| SignError::Clock)?;
    let t = time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| SignError::Clock)?;
    Ok(format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// The canonical request and its `;`-joined signed header names.
fn canonical_request(
    input: &SignInput,
    service: &str,
    headers: &[(&str, &str)],
) -> (String, String) {
    let mut sorted: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    // By name only: a repeated header keeps its values in request order.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut block = String::new();
    let mut names: Vec<&str> = Vec::new();
    for (name, value) in &sorted {
        // A repeated name is one line with the values comma-joined.
        if names.last() == Some(&name.as_str()) {
            block.pop();
            block.push(',');
        } else {
            names.push(name);
            block.push_str(name);
            block.push(':');
        }
        block.push_str(value);
        block.push('\n');
    }
    let signed_names = names.join(";");
    // S3 requires the payload line to equal a signed x-amz-content-sha256.
    let payload = match sorted.iter().find(|(n, _)| n == "x-amz-content-sha256") {
        Some((_, v)) => v.clone(),
        None => hex(digest(&SHA256, input.body).as_ref()),
    };
    let canonical = format!(
        "{}\n{}\n{}\n{block}\n{signed_names}\n{}",
        input.method,
        canonical_uri(input.path, service),
        canonical_query(input.query),
        payload
    );
    (canonical, signed_names)
}

/// S3: each segment encoded once, no normalization (`a//b` and `..` are
/// object-key characters). Others: the wire path (already encoded once) is
/// dot-segment- and slash-normalized, then encoded again, as botocore does.
fn canonical_uri(path: &str, service: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    if service == "s3" {
        let path = if path.is_empty() { "/" } else { path };
        for (i, segment) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            percent_encode_into(&mut out, &percent_decode(segment));
        }
        return out;
    }
    for (i, segment) in normalize(path).split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        percent_encode_into(&mut out, segment.as_bytes());
    }
    out
}

/// RFC 3986 dot-segment removal plus AWS's collapsing of empty segments;
/// keeps a leading and trailing slash.
fn normalize(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(&kept.join("/"));
    if path.ends_with('/') && !kept.is_empty() {
        out.push('/');
    }
    out
}

/// Pairs decoded then strictly re-encoded, sorted by name then value. A `+`
/// stays a literal plus: AWS SDKs send spaces as `%20`.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            let mut name = String::new();
            let mut value = String::new();
            percent_encode_into(&mut name, &percent_decode(n));
            percent_encode_into(&mut value, &percent_decode(v));
            (name, value)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// kSigning = HMAC chain over date, region, service, "aws4_request".
fn signing_key(secret: &str, day: &str, region: &str, service: &str) -> hmac::Key {
    let seed = Zeroizing::new(format!("AWS4{secret}"));
    let mut key = hmac::Key::new(hmac::HMAC_SHA256, seed.as_bytes());
    for part in [day, region, service, "aws4_request"] {
        let tag = hmac::sign(&key, part.as_bytes());
        key = hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2015-08-30T12:36:00Z, the date of the AWS documentation examples.
    const AUG_30_2015: u64 = 1_440_938_160;

    fn input<'a>(
        method: &'a str,
        host: &'a str,
        path: &'a str,
        query: &'a str,
        headers: &'a http::HeaderMap,
        body: &'a [u8],
        secs: u64,
    ) -> SignInput<'a> {
        SignInput {
            method,
            host,
            path,
            query,
            headers,
            body,
            now: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    fn iam_key(service: &str) -> SigV4Key<'_> {
        SigV4Key {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: None,
            region: "us-east-1",
            service,
        }
    }

    mod authorization {
        use super::*;

        #[test]
        fn iam_list_users_matches_the_documented_example() {
            let h = http::HeaderMap::new();
            let req = input(
                "GET",
                "iam.amazonaws.com",
                "/",
                "Action=ListUsers&Version=2010-05-08",
                &h,
                b"",
                AUG_30_2015,
            );
            let headers = [
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("Host", "iam.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ];
            let lower: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect();
            let pairs: Vec<(&str, &str)> = lower
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let (canonical, _) = canonical_request(&req, "iam", &pairs);
            assert_eq!(
                hex(digest(&SHA256, canonical.as_bytes()).as_ref()),
                "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
            );
            let k = signing_key(
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "20150830",
                "us-east-1",
                "iam",
            );
            // kSigning is not exportable from ring's Key, so check it through a known MAC.
            let expected = hmac::Key::new(
                hmac::HMAC_SHA256,
                &decode_hex("c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"),
            );
            assert_eq!(
                hmac::sign(&k, b"x").as_ref(),
                hmac::sign(&expected, b"x").as_ref()
            );
            assert_eq!(
                authorization(&iam_key("iam"), &req, "20150830T123600Z", &headers).unwrap(),
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
            );
        }

        /// AWS sigv4 test suite (get-vanilla, query-order, normalize-path) and
        /// the S3 header-auth doc examples; not in connectors.md, but the
        /// signatures are AWS's published ones.
        #[test]
        fn aws_test_suite_and_s3_doc_examples() {
            let h = http::HeaderMap::new();
            let date = "20150830T123600Z";
            let base = [("host", "example.amazonaws.com"), ("x-amz-date", date)];
            let suite = |path: &str, query: &str| {
                let req = input(
                    "GET",
                    "example.amazonaws.com",
                    path,
                    query,
                    &h,
                    b"",
                    AUG_30_2015,
                );
                let auth = authorization(&iam_key("service"), &req, date, &base).unwrap();
                auth.rsplit_once("Signature=").unwrap().1.to_owned()
            };
            let vanilla = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
            for path in ["/", "/example1/example2/../..", "/./", "//"] {
                assert_eq!(suite(path, ""), vanilla, "{path}");
            }
            assert_eq!(
                suite("/", "Param2=value2&Param1=value1"),
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
            );

            let s3 = SigV4Key {
                access_key_id: "AKIAIOSFODNN7EXAMPLE",
                secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                session_token: None,
                region: "us-east-1",
                service: "s3",
            };
            let (host, date, empty) = (
                "examplebucket.s3.amazonaws.com",
                "20130524T000000Z",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            );
            let s3_sig = |method, path, query, body: &[u8], headers: &[(&str, &str)]| {
                let req = input(method, host, path, query, &h, body, 1_369_353_600);
                let auth = authorization(&s3, &req, date, headers).unwrap();
                auth.rsplit_once("Signature=").unwrap().1.to_owned()
            };
            let get = [
                ("host", host),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", empty),
                ("x-amz-date", date),
            ];
            assert_eq!(
                s3_sig("GET", "/test.txt", "", b"", &get),
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            );
            let lifecycle = [
                ("host", host),
                ("x-amz-content-sha256", empty),
                ("x-amz-date", date),
            ];
            assert_eq!(
                s3_sig("GET", "/", "lifecycle", b"", &lifecycle),
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
            );
            let put = [
                ("date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("host", host),
                (
                    "x-amz-content-sha256",
                    "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
                ),
                ("x-amz-date", date),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ];
            // `$` is encoded once for S3, whether or not the agent's SDK already did.
            for path in ["/test$file.text", "/test%24file.text"] {
                assert_eq!(
                    s3_sig("PUT", path, "", b"Welcome to Amazon S3.", &put),
                    "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
                );
            }
        }

        fn decode_hex(s: &str) -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        }
    }

    mod canonical {
        use super::*;

        #[test]
        fn uri_encodes_once_for_s3_twice_and_normalized_otherwise() {
            assert_eq!(
                canonical_uri("/my%20file/a+b$", "s3"),
                "/my%20file/a%2Bb%24"
            );
            assert_eq!(canonical_uri("//a/../b", "s3"), "//a/../b");
            assert_eq!(canonical_uri("", "s3"), "/");
            assert_eq!(
                canonical_uri("/a%20b/./c/../d/", "execute-api"),
                "/a%2520b/d/"
            );
            assert_eq!(canonical_uri("//", "iam"), "/");
            assert_eq!(canonical_uri("", "iam"), "/");
        }

        #[test]
        fn query_is_encoded_and_sorted() {
            assert_eq!(canonical_query(""), "");
            assert_eq!(canonical_query("b=2&a=2&a=1&c"), "a=1&a=2&b=2&c=");
            assert_eq!(canonical_query("k=a%2fb&x=y z+"), "k=a%2Fb&x=y%20z%2B");
        }
    }

    mod sign {
        use super::*;

        fn get<'a>(s: &'a Signed, name: &str) -> Option<&'a str> {
            s.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_str().unwrap())
        }

        #[test]
        fn signs_content_sha256_token_content_type_and_amz_headers() {
            let mut h = http::HeaderMap::new();
            h.insert("content-type", "application/json".parse().unwrap());
            h.insert(
                "x-amz-target",
                "DynamoDB_20120810.ListTables".parse().unwrap(),
            );
            h.insert("x-amz-date", "19990101T000000Z".parse().unwrap());
            h.insert("accept", "*/*".parse().unwrap());
            let mut key = iam_key("dynamodb");
            key.session_token = Some("TOKEN");
            let req = input(
                "POST",
                "dynamodb.us-east-1.amazonaws.com",
                "/",
                "",
                &h,
                b"{}",
                AUG_30_2015,
            );
            let s = sign(&key, &req).unwrap();
            let body_hash = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
            assert_eq!(get(&s, "x-amz-date"), Some("20150830T123600Z"));
            assert_eq!(get(&s, "x-amz-content-sha256"), Some(body_hash));
            assert_eq!(get(&s, "x-amz-security-token"), Some("TOKEN"));
            let auth = get(&s, "authorization").unwrap();
            assert!(auth.contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token;x-amz-target,"), "{auth}");
            // Same bytes through the inner function: the public path adds nothing unsigned.
            let expected = authorization(
                &key,
                &req,
                "20150830T123600Z",
                &[
                    ("content-type", "application/json"),
                    ("host", "dynamodb.us-east-1.amazonaws.com"),
                    ("x-amz-content-sha256", body_hash),
                    ("x-amz-date", "20150830T123600Z"),
                    ("x-amz-security-token", "TOKEN"),
                    ("x-amz-target", "DynamoDB_20120810.ListTables"),
                ],
            )
            .unwrap();
            assert_eq!(auth, expected);
        }

        #[test]
        fn keeps_unsigned_payload_modes_and_refuses_chunk_signing() {
            let mut h = http::HeaderMap::new();
            h.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
            let req = input(
                "PUT",
                "b.s3.amazonaws.com",
                "/k",
                "",
                &h,
                b"data",
                AUG_30_2015,
            );
            let s = sign(&iam_key("s3"), &req).unwrap();
            assert_eq!(get(&s, "x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
            let expected = authorization(
                &iam_key("s3"),
                &req,
                "20150830T123600Z",
                &[
                    ("host", "b.s3.amazonaws.com"),
                    ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                    ("x-amz-date", "20150830T123600Z"),
                ],
            )
            .unwrap();
            assert_eq!(get(&s, "authorization"), Some(expected.as_str()));
            h.insert(
                "x-amz-content-sha256",
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD".parse().unwrap(),
            );
            let req = input(
                "PUT",
                "b.s3.amazonaws.com",
                "/k",
                "",
                &h,
                b"data",
                AUG_30_2015,
            );
            assert!(matches!(
                sign(&iam_key("s3"), &req),
                Err(SignError::Unsupported(_))
            ));
        }

        #[test]
        fn repeated_headers_keep_request_order() {
            let h = http::HeaderMap::new();
            let req = input("GET", "h", "/", "", &h, b"", AUG_30_2015);
            let (canonical, names) = canonical_request(
                &req,
                "svc",
                &[("x-amz-meta-a", "2"), ("host", "h"), ("x-amz-meta-a", "1")],
            );
            assert_eq!(names, "host;x-amz-meta-a");
            assert!(
                canonical.contains("host:h\nx-amz-meta-a:2,1\n"),
                "{canonical}"
            );
        }

        #[test]
        fn no_token_header_without_session_token() {
            let h = http::HeaderMap::new();
            let req = input(
                "GET",
                "iam.amazonaws.com",
                "/",
                "Action=ListUsers",
                &h,
                b"",
                AUG_30_2015,
            );
            let s = sign(&iam_key("iam"), &req).unwrap();
            assert_eq!(s.len(), 3);
            assert!(get(&s, "x-amz-security-token").is_none());
            assert!(get(&s, "authorization")
                .unwrap()
                .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date,"));
        }
    }
}
