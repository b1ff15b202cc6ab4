//! Entry points for the fuzz targets (`fuzz/`) and the property tests
//! (`tests/fuzz_props.rs`): thin wrappers over internal parsers that take
//! hostile bytes, each checking the invariant its part promises and
//! returning a violation as `Err(description)`. Not API: hidden from the
//! docs, and nothing else calls it. The internals stay `pub(crate)`.
//!
//! Every function here must never panic on any input; a panic or an `Err`
//! is a bug in clavis (the targets turn both into crashes).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};

use crate::config::guardrails::RawPolicy;
use crate::config::{Env, RecipeSpec};
use crate::connector::Template;
use crate::credentials::Credentials;
use crate::host::{self, HostPattern, IpNet};
use crate::proxy::decode::{Coding, Decoder, FREE_DECODED, MAX_RATIO};
use crate::proxy::{framing, scrub};
use crate::redact::{Anchors, Patterns};

/// A violated invariant, described.
pub type Violation = String;

/// No environment at all: `${VAR}` lookups find nothing.
struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _name: &str) -> Option<String> {
        None
    }
}

/// The framing guard over `data`, read whole and read in the pieces `cuts`
/// gives (each byte a piece length, 0 read as 1): the flaws noted must not
/// depend on where reads split the bytes. hyper reads at most
/// `max_header_bytes` (64 KiB by default) of a head, so longer inputs are
/// only checked for panics.
pub fn framing(data: &[u8], cuts: &[u8]) -> Result<(), Violation> {
    let whole = framing::judge([data]);
    let mut pieces = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < data.len() {
        let n = usize::from(cuts.get(i).copied().unwrap_or(u8::MAX)).max(1);
        let end = (at + n).min(data.len());
        pieces.push(&data[at..end]);
        at = end;
        i += 1;
    }
    let split = framing::judge(pieces);
    if data.len() <= 64 * 1024 && whole != split {
        return Err(format!(
            "flaws differ with the reads: whole {whole:?}, split {split:?}"
        ));
    }
    Ok(())
}

/// Host parsing and matching: a normalized `host[:port]` normalizes to
/// itself; a parsed pattern prints as text that parses to it again; a
/// wildcard never matches its apex or a name outside its suffix.
pub fn host(text: &str, other: &str) -> Result<(), Violation> {
    if let Some((h, port)) = host::split_host_port(text) {
        let again = match port {
            Some(p) => format!("{h}:{p}"),
            None => h.clone(),
        };
        if host::split_host_port(&again) != Some((h.clone(), port)) {
            return Err(format!(
                "{text:?} normalizes to {again:?}, which does not normalize to itself"
            ));
        }
        let _ = host::authority_matches(&h, port.unwrap_or(443), other);
        if !host::authority_matches(&h, port.unwrap_or(443), &again) {
            return Err(format!("{again:?} does not match its own authority"));
        }
    }
    if let Ok(pattern) = HostPattern::parse(text) {
        let printed = pattern.to_string();
        if HostPattern::parse(&printed).as_ref() != Ok(&pattern) {
            return Err(format!(
                "pattern {text:?} prints as {printed:?}, which parses differently"
            ));
        }
        if let Some((h, _)) = host::split_host_port(other) {
            if pattern.matches(&h) {
                match &pattern {
                    HostPattern::Exact(name) if *name != h => {
                        return Err(format!("exact {name:?} matched {h:?}"));
                    }
                    HostPattern::Wildcard(suffix)
                        if !h.ends_with(suffix.as_str()) || h.len() <= suffix.len() =>
                    {
                        return Err(format!("wildcard {suffix:?} matched {h:?}"));
                    }
                    _ => {}
                }
            }
        }
        if let HostPattern::Wildcard(suffix) = &pattern {
            if pattern.matches(&suffix[1..]) {
                return Err(format!("wildcard {printed:?} matched its apex"));
            }
        }
    }
    if let Some(net) = IpNet::parse(text) {
        if let Ok(ip) = other.parse() {
            let _ = net.contains(host::canonical(ip));
        }
    }
    Ok(())
}

/// The config loader: any text gives a config or errors, never a panic;
/// errors are located in the text.
pub fn config(text: &str) -> Result<(), Violation> {
    match crate::Config::from_yaml(text, &NoEnv) {
        Ok(_) => {}
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
    Ok(())
}

/// A credential template parsed and rendered, and a sign recipe (YAML of
/// the `sign:` section) built and run on a request made of `parts`.
pub fn connector(template: &str, recipe_yaml: &str, parts: &[&str]) -> Result<(), Violation> {
    let part = |i: usize| parts.get(i).copied().unwrap_or("");
    let fields = [
        "api_key",
        "secret",
        "access_key_id",
        "secret_access_key",
        "session_token",
    ];
    let creds = {
        let mut c = Credentials::default();
        for (i, f) in fields.iter().enumerate() {
            c.insert(
                (*f).to_owned(),
                zeroize::Zeroizing::new(part(i + 5).to_owned()),
            );
        }
        c
    };
    if let Ok(t) = Template::parse(template, &fields) {
        let _ = t.render(&creds);
        if t.fields().any(|f| !fields.contains(&f)) {
            return Err(format!(
                "template {template:?} reads a field it was not given"
            ));
        }
    }
    let Ok(spec) = serde_yaml::from_str::<RecipeSpec>(recipe_yaml) else {
        return Ok(());
    };
    let Ok(recipe) = crate::connector::sign::recipe::build(&spec, &fields) else {
        return Ok(());
    };
    let _ = recipe.needs_body();
    let _ = recipe.header_names();
    let headers = http::HeaderMap::new();
    let input = crate::connector::sign::SignInput {
        method: part(0),
        host: part(1),
        path: part(2),
        query: part(3),
        headers: &headers,
        body: part(4).as_bytes(),
        now: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
    };
    let _ = recipe.sign(&creds, &input);
    Ok(())
}

/// The snapshot decoder, through the store's restore at start: `bytes` as
/// the whole file (`sealed: false`), or as the JSON sealed under the key
/// (`sealed: true`, so the contents past the authentication are reached),
/// in format `version`. Unreadable input is an error, never a panic.
pub fn snapshot(bytes: &[u8], sealed: bool, version: u32) -> Result<(), Violation> {
    use crate::store::{snapshot, Sealer, Snapshot, Store};
    const KEY: [u8; 32] = [7; 32];
    let sealer = Sealer::new(&KEY).map_err(|e| format!("sealer: {e}"))?;
    let file = if sealed {
        snapshot::sealed_file(&sealer, version, 1, bytes).map_err(|e| format!("seal: {e}"))?
    } else {
        bytes.to_vec()
    };
    let path = std::env::temp_dir().join(format!("clavis-fuzz-{}.snapshot", std::process::id()));
    std::fs::write(&path, &file).map_err(|e| format!("write {}: {e}", path.display()))?;
    let _ = Snapshot::new(path.clone()).decode(&file, &sealer);
    let store = Store::new(Sealer::new(&KEY).map_err(|e| format!("sealer: {e}"))?);
    let registry = crate::connector::Registry::builtin();
    let _ = store.restore(Snapshot::new(path), &registry);
    Ok(())
}

/// Which admin body a fuzz input is sent as.
pub fn admin_body(route: u8, content_type: &str, body: &[u8]) -> Result<(), Violation> {
    use crate::admin::BodyRoute;
    let route = match route % 4 {
        0 => BodyRoute::CreateService,
        1 => BodyRoute::StoreCredentials,
        2 => BodyRoute::Proxy,
        _ => BodyRoute::Decision,
    };
    if let Err(e) = crate::admin::read_body(route, content_type, body) {
        let status = e.status();
        if !status.is_client_error() {
            return Err(format!("{route:?}: a bad body answered {status}"));
        }
        let _ = e.to_json();
    }
    Ok(())
}

/// Policy paths and rules: a normalized path normalizes to itself; a
/// policy (YAML) compiled and evaluated on a request never panics.
pub fn policy(
    policy_yaml: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(), Violation> {
    if let Ok(n) = crate::policy::normalize_path(path) {
        match crate::policy::normalize_path(&n) {
            Ok(again) if again == n => {}
            other => return Err(format!("{path:?} normalizes to {n:?}, then to {other:?}")),
        }
    }
    let Ok(raw) = serde_yaml::from_str::<RawPolicy>(policy_yaml) else {
        return Ok(());
    };
    let Ok(policy) = crate::policy::Policy::compile(&raw) else {
        return Ok(());
    };
    let policies = [Arc::new(policy)];
    let (Ok(method), Ok(uri)) = (
        http::Method::from_bytes(method.as_bytes()),
        path.parse::<http::Uri>(),
    ) else {
        return Ok(());
    };
    let body = crate::policy::Body::parse(Some(content_type), body);
    if let Ok(view) = crate::policy::View::new(&policies, &method, "api.example.com", &uri, body) {
        let decision = crate::policy::decide(&policies, &view);
        if let Some(v) = decision.outcome {
            let _ = v.explain();
        }
    }
    Ok(())
}

/// A response body's content coding, for [`scrub`].
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

/// What a body scrubbed by [`scrub`] came out as.
#[derive(Debug)]
pub struct Scrubbed {
    /// The bytes the agent would receive, up to an error.
    pub bytes: Vec<u8>,
    /// The body ended with an error (undecodable, a bomb).
    pub error: bool,
}

/// The response scrubber (and decoder, for a compressed body) over
/// `frames` as the upstream sent them, the exchange's secret being
/// `secret`: no form of the secret (raw, hex, percent-encoded) survives in
/// what the agent gets, however the frames split it, and decoding never
/// yields more than the bomb bound ([`FREE_DECODED`] plus [`MAX_RATIO`]
/// times the compressed bytes).
pub fn scrub(secret: &[u8], frames: &[&[u8]], encoding: Encoding) -> Result<Scrubbed, Violation> {
    let mut patterns = Patterns::new();
    patterns.add(secret);
    let anchors = Arc::new(Anchors::of(&patterns));
    let source = Box::new(Given(Some(patterns)));
    let scrubber = scrub::Scrubber::new(anchors, source);
    let coding = match encoding {
        Encoding::Identity => None,
        Encoding::Gzip => Some(Coding::Gzip),
        Encoding::Deflate => Some(Coding::Deflate),
        Encoding::Brotli => Some(Coding::Brotli),
        Encoding::Zstd => Some(Coding::Zstd),
    };
    let decoder = match coding {
        Some(c) => Some(Decoder::new(c).map_err(|e| format!("decoder: {e}"))?),
        None => None,
    };
    let input = Frames(frames.iter().map(|f| Bytes::copy_from_slice(f)).collect());
    let compressed: u64 = frames.iter().map(|f| f.len() as u64).sum();
    let mut body = scrubber.wrap(input, decoder);
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut out = Vec::new();
    let mut error = false;
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Pending => return Err("the body is pending with all its input given".into()),
            Poll::Ready(None) => break,
            Poll::Ready(Some(Err(_))) => {
                error = true;
                break;
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
        }
        let bound = FREE_DECODED.saturating_add(compressed.saturating_mul(MAX_RATIO));
        if coding.is_some() && out.len() as u64 > bound {
            return Err(format!(
                "decoded {} bytes from {compressed}: past the bomb bound",
                out.len()
            ));
        }
    }
    if coding.is_none() && !error && out.len() as u64 != compressed {
        return Err(format!(
            "masking changed the length: {compressed} bytes in, {} out",
            out.len()
        ));
    }
    for form in forms(secret) {
        if memchr::memmem::find(&out, &form).is_some() {
            return Err(format!(
                "a form of the secret ({} bytes) reached the agent",
                form.len()
            ));
        }
    }
    Ok(Scrubbed { bytes: out, error })
}

/// The forms of `secret` checked in the output: raw, hex and percent,
/// those at least as long as the scrubber's minimum. A form made of the
/// mask's own bytes (`[REDACTED]***`) is skipped: the mask would spell it.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    if secret.len() < 10 {
        return Vec::new();
    }
    let mut forms = vec![secret.to_vec()];
    let mut hex = Vec::new();
    crate::encoding::hex_into(&mut hex, secret, false);
    forms.push(hex);
    forms.push(crate::encoding::percent_encode(secret).into_bytes());
    forms.retain(|f| f.len() >= 10 && !f.iter().all(|b| b"[REDACTED]*".contains(b)));
    forms
}

/// The exchange's secrets, given up front.
struct Given(Option<Patterns>);

impl scrub::Source for Given {
    fn patterns(&mut self) -> Result<Patterns, crate::store::StoreError> {
        self.0
            .take()
            .ok_or_else(|| crate::store::StoreError::Corrupt("patterns asked twice".into()))
    }
    fn masked(&self, _hits: usize) {}
}

/// A body of the given frames, never pending.
struct Frames(std::collections::VecDeque<Bytes>);

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// The fuzz targets, one per part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Framing,
    Host,
    Config,
    Connector,
    Snapshot,
    AdminBody,
    Scrub,
    Policy,
}

impl Target {
    pub const ALL: [Target; 8] = [
        Target::Framing,
        Target::Host,
        Target::Config,
        Target::Connector,
        Target::Snapshot,
        Target::AdminBody,
        Target::Scrub,
        Target::Policy,
    ];

    /// The name of its fuzz target and corpus directory.
    pub fn name(self) -> &'static str {
        match self {
            Target::Framing => "framing",
            Target::Host => "host",
            Target::Config => "config",
            Target::Connector => "connector",
            Target::Snapshot => "snapshot",
            Target::AdminBody => "admin_body",
            Target::Scrub => "scrub",
            Target::Policy => "policy",
        }
    }
}

/// Separates the text fields of one input (ASCII record separator).
pub const SEP: u8 = 0x1e;

/// Runs `target` on one fuzz input. Layouts (`SEP` is 0x1E):
/// - framing: `k`, `k` read lengths, then the bytes read
/// - host: `text SEP other`
/// - config: the YAML text
/// - connector: `template SEP recipe-yaml SEP method SEP host SEP path SEP query SEP body SEP credential values...`
/// - snapshot: a mode byte (bit 0: sealed JSON, bit 1: format 1), then the bytes
/// - admin_body: a route byte (bit 2: a wrong content type), then the body
/// - scrub: a mode byte (coding = mode % 5; mode / 5 odd: the rest is sent
///   as the compressed bytes themselves), the secret's length `n` (10 + n % 40),
///   an insertion byte, `k` and `k` frame lengths, the secret, then the body;
///   the secret is inserted into the body before it is compressed
/// - policy: `policy-yaml SEP method SEP path SEP content-type SEP body`
pub fn run(target: Target, data: &[u8]) -> Result<(), Violation> {
    let text = String::from_utf8_lossy(data);
    let fields: Vec<&str> = text.split(char::from(SEP)).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or("");
    match target {
        Target::Framing => {
            let (cuts, rest) = counted(data);
            framing(rest, cuts)
        }
        Target::Host => host(field(0), field(1)),
        Target::Config => config(&text),
        Target::Connector => {
            let parts: Vec<&str> = fields.iter().skip(2).copied().collect();
            connector(field(0), field(1), &parts)
        }
        Target::Snapshot => {
            let (mode, rest) = data.split_first().map_or((0, data), |(m, r)| (*m, r));
            snapshot(rest, mode & 1 == 1, if mode & 2 == 2 { 1 } else { 2 })
        }
        Target::AdminBody => {
            let (route, rest) = data.split_first().map_or((0, data), |(m, r)| (*m, r));
            let content_type = if route & 4 == 4 {
                "text/plain"
            } else {
                "application/json"
            };
            admin_body(route, content_type, rest)
        }
        Target::Scrub => scrub_input(data),
        Target::Policy => policy(field(0), field(1), field(2), field(3), field(4).as_bytes()),
    }
}

/// `k`, then `k` bytes, then the rest.
fn counted(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    rest.split_at(usize::from(k).min(rest.len()))
}

fn scrub_input(data: &[u8]) -> Result<(), Violation> {
    let [mode, len, insert, rest @ ..] = data else {
        return Ok(());
    };
    let (cuts, rest) = counted(rest);
    let (secret, body) = rest.split_at((10 + usize::from(*len) % 40).min(rest.len()));
    let encoding = [
        Encoding::Identity,
        Encoding::Gzip,
        Encoding::Deflate,
        Encoding::Brotli,
        Encoding::Zstd,
    ][usize::from(*mode % 5)];
    let raw = (*mode / 5) % 2 == 1;
    let sent = if raw {
        body.to_vec()
    } else {
        let at = usize::from(*insert).min(body.len());
        let plain = [&body[..at], secret, &body[at..]].concat();
        match compress(encoding, &plain) {
            Some(c) => c,
            None => return Ok(()),
        }
    };
    let mut frames = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < sent.len() {
        let n = usize::from(cuts.get(i).copied().unwrap_or(u8::MAX)).max(1);
        let end = (at + n).min(sent.len());
        frames.push(&sent[at..end]);
        at = end;
        i += 1;
    }
    let out = scrub(secret, &frames, encoding)?;
    // A body that compressed and decoded whole must decode to what was sent.
    if !raw && !out.error && secret.len() >= 10 && out.bytes.len() != body.len() + secret.len() {
        return Err(format!(
            "{encoding:?}: {} bytes decoded, {} were compressed",
            out.bytes.len(),
            body.len() + secret.len()
        ));
    }
    Ok(())
}

/// `plain` in `encoding`, when clavis has the encoder (it has no brotli one).
fn compress(encoding: Encoding, plain: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    match encoding {
        Encoding::Identity => Some(plain.to_vec()),
        Encoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(plain).ok()?;
            e.finish().ok()
        }
        Encoding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(plain).ok()?;
            e.finish().ok()
        }
        Encoding::Brotli => None,
        Encoding::Zstd => zstd::bulk::compress(plain, 1).ok(),
    }
}
