//! The fuzz targets' entry points (`clavis::fuzzing`) as property tests in
//! `cargo test`: each target's seed corpus (`fuzz/corpus/<target>`) and
//! every crash ever found (`fuzz/regressions/<target>`) run first, then
//! inputs mutated from them by a fixed-seed generator for a bounded time.
//! CI runs this rather than libFuzzer: building the cargo-fuzz targets
//! (sanitizers, coverage, release) costs more than CI's budget, and this
//! reuses the debug build `cargo test` has made anyway. `make fuzz` runs
//! the real fuzzer (fuzz/README.md).
//!
//! Env: `FUZZ_PROPS_MS` (per target, default 4000), `FUZZ_PROPS_SEED`.
//! A failing input is written to `target/fuzz-props/<target>-<n>` and
//! named in the failure; move it to `fuzz/regressions/<target>/` once fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clavis::fuzzing::{run, Target};

/// xorshift64*: deterministic, no extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Tokens worth splicing in: the syntax each parser branches on.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"0\r\n\r\n",
    b"\r\n 0",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"transfer-encoding: gzip, chunked\r\n",
    b"CONNECT ",
    b"POST / HTTP/1.1\r\n",
    b"fff;x=",
    b"*.",
    b".",
    b"..",
    b"[",
    b"]",
    b"::",
    b"/",
    b"%2f",
    b"%2e",
    b"%25",
    b"%",
    b"\\",
    b"?",
    b"#",
    b"{",
    b"}",
    b"{{",
    b"{api_key}",
    b"{body}",
    b"{signature}",
    b"\"",
    b"'",
    b"- ",
    b": ",
    b"\n  ",
    b"&",
    b"=",
    b"+",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"1e999",
    b"-1",
    b"18446744073709551615",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"\x1e",
    b"regex:",
    b"**",
    b"services:",
    b"connectors:",
    b"sk-REAL-secret-0123456789",
    b"c2stUkVBTC1zZWNyZXQ",
    b"736b2d5245414c",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], base: &[u8]) -> Vec<u8> {
    let mut data = base.to_vec();
    for _ in 0..=rng.below(4) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                data.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(16)) + 1;
                data.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64)) + 1;
                let copy = data[i..i + n].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            5 | 6 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                data.splice(at..at, token.iter().copied());
            }
            _ => {
                // Splice: a head of this input, a tail of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
        }
    }
    data.truncate(8192);
    data
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// Runs one input, turning a panic into a failure with the input saved.
fn check(target: Target, data: &[u8], what: &str) {
    let result = std::panic::catch_unwind(|| run(target, data));
    let problem = match result {
        Ok(Ok(())) => return,
        Ok(Err(violation)) => violation,
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".into()),
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-props");
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join(format!("{}-{}", target.name(), what.replace('/', "_")));
    std::fs::write(&saved, data).unwrap();
    panic!(
        "{} on {what}: {problem}\ninput saved as {} ({} bytes, {:?})",
        target.name(),
        saved.display(),
        data.len(),
        String::from_utf8_lossy(&data[..data.len().min(300)])
    );
}

fn props(target: Target) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seeds = Vec::new();
    for sub in ["corpus", "regressions"] {
        for (path, bytes) in files(&root.join(sub).join(target.name())) {
            check(target, &bytes, &path.display().to_string());
            seeds.push(bytes);
        }
    }
    assert!(!seeds.is_empty(), "no seed corpus for {}", target.name());
    let ms = std::env::var("FUZZ_PROPS_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let seed = std::env::var("FUZZ_PROPS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15_u64);
    let mut rng = Rng(seed ^ target.name().len() as u64 ^ 1);
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let base = seeds[rng.below(seeds.len())].clone();
        let input = mutate(&mut rng, &seeds, &base);
        check(target, &input, &format!("mutant-{n}"));
        n += 1;
    }
    eprintln!("{}: {} seeds, {n} mutants", target.name(), seeds.len());
}

#[test]
fn framing_verdicts_do_not_depend_on_read_boundaries() {
    props(Target::Framing);
}

#[test]
fn host_normalization_is_stable_and_wildcards_never_match_the_apex() {
    props(Target::Host);
}

#[test]
fn config_loader_never_panics() {
    props(Target::Config);
}

#[test]
fn connector_templates_and_sign_recipes_never_panic() {
    props(Target::Connector);
}

#[test]
fn snapshot_decoder_refuses_any_bytes_without_panicking() {
    props(Target::Snapshot);
}

#[test]
fn admin_bodies_answer_4xx_never_panic() {
    props(Target::AdminBody);
}

#[test]
fn scrubber_lets_no_secret_through_any_split_or_coding() {
    props(Target::Scrub);
}

#[test]
fn policy_paths_normalize_stably_and_rules_never_panic() {
    props(Target::Policy);
}

#[test]
fn every_target_has_a_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for t in Target::ALL {
        assert!(
            !files(&root.join(t.name())).is_empty(),
            "fuzz/corpus/{} is empty",
            t.name()
        );
    }
}
