use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{ApprovalsConfig, AuditConfig};
use crate::identity::{Caller, Via};

fn approvals(hold: Duration, ttl: Duration) -> Arc<Approvals> {
    let dialer = crate::upstream::Dialer {
        resolve: Default::default(),
        allow_private: Vec::new(),
        own: Vec::new(),
        connect_timeout: Duration::from_secs(1),
        nameserver: None,
    };
    let tls = crate::tls::verify::client_config(&[]).unwrap();
    let upstream = Arc::new(Upstream::new(
        dialer,
        tls,
        Duration::from_secs(1),
        Duration::from_secs(1),
        Default::default(),
    ));
    let audit = Arc::new(
        AuditLog::open(&AuditConfig {
            ring: 10_000,
            file: None,
        })
        .unwrap(),
    );
    Arc::new(Approvals::new(
        ApprovalsConfig {
            hold,
            ttl,
            webhook: None,
        },
        upstream,
        audit,
        Default::default(),
    ))
}

fn binding(body: &str) -> Binding {
    Binding {
        agent: "codex".into(),
        service: "stripe".into(),
        method: "POST".into(),
        url: "https://api.stripe.com/v1/refunds".into(),
        body_sha256: crate::encoding::hex(
            ring::digest::digest(&ring::digest::SHA256, body.as_bytes()).as_ref(),
        ),
    }
}

fn admin() -> Caller {
    Caller::admin(Via::Api)
}

async fn ask(a: &Approvals, body: &str) -> Result<(), ApprovalError> {
    a.gate(
        binding(body),
        "refunds",
        "large",
        body.into(),
        &Caller::anonymous(),
    )
    .await
}

fn pending_id(a: &Approvals) -> String {
    a.list(Some(Status::Pending))[0].id.clone()
}

#[tokio::test(start_paused = true)]
async fn undecided_within_the_hold_is_pending_then_the_identical_request_goes_once() {
    let a = approvals(Duration::from_secs(30), Duration::from_secs(900));
    let e = ask(&a, "amount=9000").await.unwrap_err();
    let ApprovalError::Pending { id, .. } = e else {
        panic!("{e}");
    };
    a.decide(&id, true, &admin(), None).unwrap();
    ask(&a, "amount=9000").await.expect("approved: sent once");
    assert_eq!(a.get(&id).unwrap().status, Status::Used);
    // The same request again needs a new approval: not sent on the old one.
    assert!(matches!(
        ask(&a, "amount=9000").await,
        Err(ApprovalError::Pending { .. })
    ));
    assert_ne!(pending_id(&a), id);
}

#[tokio::test(start_paused = true)]
async fn decided_within_the_hold_answers_the_held_request() {
    let a = approvals(Duration::from_secs(30), Duration::from_secs(900));
    let held = {
        let a = a.clone();
        tokio::spawn(async move { ask(&a, "amount=9000").await })
    };
    while a.list(Some(Status::Pending)).is_empty() {
        tokio::task::yield_now().await;
    }
    a.decide(&pending_id(&a), true, &admin(), Some("ok".into()))
        .unwrap();
    held.await.unwrap().expect("sent after approval");

    let held = {
        let a = a.clone();
        tokio::spawn(async move { ask(&a, "amount=9999").await })
    };
    while a.list(Some(Status::Pending)).is_empty() {
        tokio::task::yield_now().await;
    }
    let id = pending_id(&a);
    assert!(matches!(
        a.decide(&id, false, &admin(), None),
        Err(DecideError::NoReason)
    ));
    a.decide(&id, false, &admin(), Some("too much".into()))
        .unwrap();
    let e = held.await.unwrap().unwrap_err();
    assert!(
        matches!(&e, ApprovalError::Denied { reason, .. } if reason == "too much"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn two_approvals_of_one_request_take_once() {
    let a = approvals(Duration::from_secs(1), Duration::from_secs(900));
    let _ = ask(&a, "amount=1").await;
    let id = pending_id(&a);
    a.decide(&id, true, &admin(), None).unwrap();
    assert!(matches!(
        a.decide(&id, true, &admin(), None),
        Err(DecideError::NotPending { .. })
    ));
    assert!(matches!(
        a.decide(&id, false, &admin(), Some("no".into())),
        Err(DecideError::NotPending { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_changed_body_needs_its_own_approval() {
    let a = approvals(Duration::from_secs(1), Duration::from_secs(900));
    let _ = ask(&a, "amount=9000").await;
    a.decide(&pending_id(&a), true, &admin(), None).unwrap();
    assert!(matches!(
        ask(&a, "amount=90000").await,
        Err(ApprovalError::Pending { .. })
    ));
    // The approved one is still there for the identical request.
    ask(&a, "amount=9000").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_same_approved_request_replayed_twice_goes_once() {
    let a = approvals(Duration::from_secs(1), Duration::from_secs(900));
    let _ = ask(&a, "amount=9000").await;
    a.decide(&pending_id(&a), true, &admin(), None).unwrap();
    let (x, y) = tokio::join!(ask(&a, "amount=9000"), ask(&a, "amount=9000"));
    assert_eq!([x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(), 1);
}

#[tokio::test(start_paused = true)]
async fn two_requests_held_on_one_approval_take_it_once() {
    let a = approvals(Duration::from_secs(30), Duration::from_secs(900));
    let (x, y) = {
        let (a1, a2) = (a.clone(), a.clone());
        let x = tokio::spawn(async move { ask(&a1, "amount=9000").await });
        while a.list(Some(Status::Pending)).is_empty() {
            tokio::task::yield_now().await;
        }
        let y = tokio::spawn(async move { ask(&a2, "amount=9000").await });
        // Let the second reach the gate: it joins the pending approval.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        (x, y)
    };
    assert_eq!(
        a.list(None).len(),
        1,
        "one approval for the identical request"
    );
    let id = pending_id(&a);
    a.decide(&id, true, &admin(), None).unwrap();
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    let lost = match (x, y) {
        (Ok(()), Err(e)) | (Err(e), Ok(())) => e,
        other => panic!("want one sent: {other:?}"),
    };
    let ApprovalError::Pending { id: new, why, .. } = &lost else {
        panic!("{lost}");
    };
    assert_ne!(*new, id);
    assert!(why.contains(&id), "{why}");
    assert_eq!(a.get(&id).unwrap().status, Status::Used);
    assert_eq!(a.get(new).unwrap().status, Status::Pending);
}

#[test]
fn approving_at_the_moment_of_expiry_is_one_or_the_other() {
    // Each round waits for a second boundary: a few rounds, both outcomes.
    for _ in 0..6 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let a = approvals(Duration::from_millis(1), Duration::from_secs(1));
            let _ = ask(&a, "amount=9000").await;
            let id = pending_id(&a);
            // Wait for the expiry second, then race the decision and the sweep.
            let deadline = a.get(&id).unwrap().expires_at;
            while super::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let sweeper = {
                let a = a.clone();
                tokio::spawn(async move { a.sweep() })
            };
            let decided = a.decide(&id, true, &admin(), None);
            sweeper.await.unwrap();
            let status = a.get(&id).unwrap().status;
            match decided {
                Ok(r) => assert_eq!((r.status, status), (Status::Approved, Status::Approved)),
                Err(_) => assert_eq!(status, Status::Expired),
            }
        });
    }
}

#[tokio::test(start_paused = true)]
async fn fifty_held_requests_decided_in_random_order_go_exactly_as_decided() {
    let a = approvals(Duration::from_secs(30), Duration::from_secs(900));
    let mut held = Vec::new();
    for i in 0..50 {
        let a = a.clone();
        held.push(tokio::spawn(async move {
            ask(&a, &format!("amount={i}")).await
        }));
    }
    while a.list(Some(Status::Pending)).len() < 50 {
        tokio::task::yield_now().await;
    }
    let mut pending = a.list(Some(Status::Pending));
    // A fixed shuffle: every third approved, the rest denied, out of order.
    pending.sort_by_key(|r| crate::encoding::hex(r.id.as_bytes()));
    let mut approved = std::collections::HashSet::new();
    for (i, r) in pending.iter().enumerate() {
        let yes = i % 3 == 0;
        a.decide(&r.id, yes, &admin(), (!yes).then(|| "no".to_string()))
            .unwrap();
        if yes {
            approved.insert(r.body_preview.clone());
        }
    }
    let mut sent = std::collections::HashSet::new();
    for (i, h) in held.into_iter().enumerate() {
        if h.await.unwrap().is_ok() {
            sent.insert(format!("amount={i}"));
        }
    }
    assert_eq!(sent, approved);
    assert_eq!(a.list(Some(Status::Used)).len(), approved.len());
}

#[tokio::test(start_paused = true)]
async fn pending_approvals_survive_a_restart() {
    let a = approvals(Duration::from_millis(10), Duration::from_secs(900));
    let _ = ask(&a, "amount=9000").await;
    let id = pending_id(&a);
    let saved = a.to_snapshot().unwrap();
    let b = approvals(Duration::from_millis(10), Duration::from_secs(900));
    b.restore(&saved);
    b.decide(&id, true, &admin(), None).unwrap();
    ask(&b, "amount=9000").await.unwrap();
}

#[test]
fn previews_are_short_text_and_never_a_credential() {
    let long = "x".repeat(5000);
    assert!(preview(long.as_bytes(), None).ends_with("(5000 bytes in all)"));
    let mut p = crate::redact::Patterns::new();
    p.add(b"sk_live_REAL0123456789");
    let anchors = crate::redact::Anchors::of(&p);
    assert!(
        preview(b"amount=1&key=sk_live_REAL0123456789", Some(&anchors)).starts_with("[REDACTED")
    );
}
