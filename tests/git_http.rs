//! git over HTTPS through clavis (SPEC §13.4): the `github` connector
//! claims github.com, injects git's Basic credential on the smart-HTTP and
//! LFS paths only, removes whatever `Authorization` the agent sent (a
//! placeholder inside Basic still picks the service), and forwards the
//! web site's other paths with nothing injected.

mod support;

use base64::Engine;
use support::*;

const OTHER_GITHUB: &str = "ghp_OTHERgithub0123456789abcdef";

fn basic(userpass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(userpass)
    )
}

async fn setup(unmatched: &str) -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, &["github.com", "api.github.com"]).await;
    let yaml = format!(
        r#"
proxy: {{ unmatched: {unmatched} }}
services:
  - {{ name: my-github, connector: github, default: true, credentials: {{ api_key: "{REAL_GITHUB}" }} }}
  - {{ name: other-github, connector: github, credentials: {{ api_key: "{OTHER_GITHUB}" }} }}
agents:
  - {{ name: codex, token: codex-token, services: ["*"] }}
  - {{ name: narrow, token: narrow-token, services: [my-github] }}
"#
    );
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    (ca, up, clavis)
}

#[tokio::test]
async fn smart_http_paths_get_x_access_token_basic() {
    let (_ca, up, clavis) = setup("tunnel").await;
    let c = clavis.client(Some(("codex", "codex-token")));
    for (method, path) in [
        ("GET", "/acme/widgets.git/info/refs?service=git-upload-pack"),
        ("POST", "/acme/widgets.git/git-upload-pack"),
        ("POST", "/acme/widgets.git/git-receive-pack"),
        ("POST", "/acme/widgets.git/info/lfs/objects/batch"),
    ] {
        let r = c
            .request(method.parse().unwrap(), format!("https://github.com{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let seen = up.last();
        assert_eq!(seen.path, path);
        assert_eq!(
            seen.all("authorization"),
            [basic(&format!("x-access-token:{REAL_GITHUB}"))],
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_agents_basic_is_removed_and_its_placeholder_picks_the_service() {
    let (_ca, up, clavis) = setup("tunnel").await;
    let c = clavis.client(Some(("codex", "codex-token")));
    let url = "https://github.com/acme/widgets.git/info/refs?service=git-upload-pack";
    // git's credential helper (password) and actions/checkout's extraheader form.
    for sent in [
        basic("x-access-token:clavis:other-github"),
        basic("clavis:other-github:"),
    ] {
        let r = c
            .get(url)
            .header("Authorization", &sent)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            up.last().all("authorization"),
            [basic(&format!("x-access-token:{OTHER_GITHUB}"))]
        );
    }
    // Anything else the agent sends is dropped for the default's.
    c.get(url)
        .header("Authorization", basic("me:not-a-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().all("authorization"),
        [basic(&format!("x-access-token:{REAL_GITHUB}"))]
    );
    // A placeholder outside the agent's scope is refused, nothing forwarded.
    let before = up.seen().len();
    let r = clavis
        .client(Some(("narrow", "narrow-token")))
        .get(url)
        .header("Authorization", basic("x-access-token:clavis:other-github"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(up.seen().len(), before);
}

#[tokio::test]
async fn bodies_pass_byte_for_byte() {
    let (_ca, up, clavis) = setup("tunnel").await;
    // A gzip header and bytes that are no UTF-8: git compresses request bodies.
    let mut body = vec![0x1f, 0x8b, 0x08, 0x00];
    body.extend((0..=255u8).cycle().take(70_000));
    let r = clavis
        .client(None)
        .post("https://github.com/acme/widgets.git/git-upload-pack")
        .header("Content-Encoding", "gzip")
        .header("Content-Type", "application/x-git-upload-pack-request")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.body_len, body.len());
    assert_eq!(seen.header("content-encoding"), Some("gzip"));
    let text = "0032want 0123456789abcdef0123456789abcdef01234567\n00000009done\n";
    let r = clavis
        .client(None)
        .post("https://github.com/acme/widgets.git/git-upload-pack")
        .body(text)
        .send()
        .await
        .unwrap();
    let echoed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echoed["body"], text);
}

#[tokio::test]
async fn other_github_com_paths_go_out_with_nothing_injected() {
    let (_ca, up, clavis) = setup("tunnel").await;
    let c = clavis.client(Some(("narrow", "narrow-token")));
    for path in [
        "/acme/widgets",
        "/login",
        "/acme/widgets/../../settings/info/refs",
        "/acme/widgets%2f..%2fx/info/refs",
    ] {
        let r = c
            .get(format!("https://github.com{path}"))
            .header("Authorization", basic("x-access-token:clavis:my-github"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let seen = up.last();
        assert_eq!(seen.header("authorization"), None, "{path}");
    }
    // Nothing was used, so nothing was audited as a use.
    let uses = clavis
        .state
        .audit_events(100)
        .into_iter()
        .filter(|e| e["action"] == "inject")
        .count();
    assert_eq!(uses, 0);
    // The API host keeps its Bearer.
    c.get("https://api.github.com/user")
        .header("Authorization", "token clavis:my-github")
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {REAL_GITHUB}").as_str())
    );
}

#[tokio::test]
async fn with_unmatched_deny_the_web_site_is_refused() {
    let (_ca, up, clavis) = setup("deny").await;
    let c = clavis.client(None);
    let before = up.seen().len();
    let r = c
        .get("https://github.com/acme/widgets")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("nothing injected"), "{body}");
    assert_eq!(up.seen().len(), before);
    let r = c
        .get("https://github.com/acme/widgets.git/info/refs?service=git-upload-pack")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn without_a_github_service_public_repositories_still_clone() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, &["github.com", "api.openai.com"]).await;
    let yaml = format!(
        r#"
services:
  - {{ name: my-openai, connector: openai, credentials: {{ api_key: "{REAL_OPENAI}" }} }}
  - {{ name: my-github, connector: github, credentials: {{ api_key: "{REAL_GITHUB}" }} }}
agents:
  - {{ name: writer, token: writer-token, services: [my-openai] }}
"#
    );
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    let c = clavis.client(Some(("writer", "writer-token")));
    let url = "https://github.com/octo/public.git/info/refs?service=git-upload-pack";
    // No github service in the agent's scope: out as it came, nothing injected.
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().header("authorization"), None);
    let r = c
        .get(url)
        .header("Authorization", basic("me:my-own-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().header("authorization"), None, "stripped");
    // Naming a service it may not use is still refused.
    let before = up.seen().len();
    let r = c
        .get(url)
        .header("Authorization", basic("x-access-token:clavis:my-github"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(up.seen().len(), before);
}
