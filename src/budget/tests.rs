use super::*;

fn window(name: &str, unit: Unit, limit: f64) -> Spec {
    Spec {
        name: name.into(),
        agent: Some("codex".into()),
        service: "openai".into(),
        kind: Kind::Window {
            window: Window::Day,
            unit,
            limit,
        },
    }
}

/// Counts with the budgets of one config, as an exchange sees them.
struct Counted {
    counts: Budgets,
    specs: Specs,
}

impl std::ops::Deref for Counted {
    type Target = Budgets;
    fn deref(&self) -> &Budgets {
        &self.counts
    }
}

impl Counted {
    fn applicable(&self, service: &str, agent: Option<&str>) -> Vec<Arc<Spec>> {
        self.specs.applicable(service, agent)
    }

    async fn statuses(&self) -> Result<Vec<Status>, BudgetError> {
        self.counts.statuses(&self.specs).await
    }

    fn restore(&self, saved: &serde_json::Value) {
        self.counts.restore(saved, &self.specs)
    }
}

fn budgets(specs: Vec<Spec>) -> Counted {
    Counted {
        counts: Budgets::new(&BudgetStore::Memory).unwrap(),
        specs: Specs::new(specs),
    }
}

fn ask(input: f64, output: Option<f64>, spend: f64) -> Ask {
    Ask {
        fixed: Amounts {
            requests: 1.0,
            input_tokens: input,
            output_tokens: output.unwrap_or(0.0),
            spend,
        },
        open_output: if output.is_none() {
            Some(32_768.0)
        } else {
            None
        },
    }
}

async fn used(b: &Counted, name: &str) -> (f64, f64) {
    let s = b.statuses().await.unwrap();
    let s = s.iter().find(|s| s.spec.name == name).unwrap();
    (s.used, s.reserved)
}

#[tokio::test]
async fn reserve_then_settle_with_what_was_used() {
    let b = budgets(vec![window("llm", Unit::Tokens, 1000.0)]);
    let specs = b.applicable("openai", Some("codex"));
    let held = b
        .reserve(&specs, ask(100.0, Some(200.0), 0.0))
        .await
        .unwrap();
    assert_eq!(used(&b, "llm").await, (0.0, 300.0));
    let real = Amounts {
        requests: 1.0,
        input_tokens: 40.0,
        output_tokens: 60.0,
        spend: 0.0,
    };
    b.settle(held, Some(real)).await;
    assert_eq!(used(&b, "llm").await, (100.0, 0.0));
}

#[tokio::test]
async fn a_request_that_would_not_fit_is_refused_before_the_call() {
    let b = budgets(vec![window("llm", Unit::Tokens, 1000.0)]);
    let specs = b.applicable("openai", Some("codex"));
    let _first = b
        .reserve(&specs, ask(100.0, Some(500.0), 0.0))
        .await
        .unwrap();
    let e = b
        .reserve(&specs, ask(100.0, Some(400.0), 0.0))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("\"llm\"") && text.contains("400 left"),
        "{text}"
    );
    assert!(e.retry_after().unwrap() > 0);
    let (policy, now) = e.ratelimit_headers().unwrap();
    assert_eq!(policy, "\"llm\";q=1000;w=86400");
    assert!(now.starts_with("\"llm\";r=400;t="), "{now}");
}

#[tokio::test]
async fn an_open_output_gets_what_remains_and_releases_on_failure() {
    let b = budgets(vec![window("llm", Unit::Tokens, 1000.0)]);
    let specs = b.applicable("openai", Some("codex"));
    let held = b.reserve(&specs, ask(100.0, None, 0.0)).await.unwrap();
    assert_eq!(held.granted_output, Some(900.0));
    assert_eq!(used(&b, "llm").await, (0.0, 1000.0));
    b.settle(held, None).await;
    assert_eq!(used(&b, "llm").await, (0.0, 0.0), "released");
}

#[tokio::test]
async fn several_budgets_reserve_all_or_nothing() {
    let b = budgets(vec![
        window("tokens", Unit::Tokens, 10_000.0),
        window("requests", Unit::Requests, 1.0),
    ]);
    let specs = b.applicable("openai", Some("codex"));
    let _one = b.reserve(&specs, ask(1.0, Some(1.0), 0.0)).await.unwrap();
    assert!(b.reserve(&specs, ask(1.0, Some(1.0), 0.0)).await.is_err());
    assert_eq!(
        used(&b, "tokens").await,
        (0.0, 2.0),
        "the refused one took nothing"
    );
}

#[tokio::test]
async fn shared_and_per_agent_budgets_apply_to_the_right_callers() {
    let mut shared = window("shared", Unit::Requests, 5.0);
    shared.agent = None;
    let b = budgets(vec![window("mine", Unit::Requests, 5.0), shared]);
    assert_eq!(b.applicable("openai", Some("codex")).len(), 2);
    assert_eq!(b.applicable("openai", Some("other")).len(), 1);
    assert_eq!(b.applicable("openai", None).len(), 1);
    assert!(b.applicable("stripe", Some("codex")).is_empty());
}

#[tokio::test(start_paused = true)]
async fn rate_limits_are_token_buckets() {
    let b = budgets(vec![Spec {
        name: "gh".into(),
        agent: None,
        service: "github".into(),
        kind: Kind::Rate {
            requests: 10.0,
            per: Duration::from_secs(1),
            burst: 2.0,
        },
    }]);
    let specs = b.applicable("github", None);
    let one = ask(0.0, Some(0.0), 0.0);
    b.reserve(&specs, one).await.unwrap();
    b.reserve(&specs, one).await.unwrap();
    let e = b.reserve(&specs, one).await.unwrap_err();
    assert!(
        matches!(e, BudgetError::Rate { retry_after_ms, .. } if (1..=100).contains(&retry_after_ms)),
        "{e}"
    );
    tokio::time::advance(Duration::from_millis(110)).await;
    b.reserve(&specs, one).await.unwrap();
}

#[tokio::test]
async fn counts_survive_a_restart_within_their_window() {
    let b = budgets(vec![window("llm", Unit::Tokens, 1000.0)]);
    let specs = b.applicable("openai", Some("codex"));
    let held = b.reserve(&specs, ask(10.0, Some(10.0), 0.0)).await.unwrap();
    let real = Amounts {
        requests: 1.0,
        input_tokens: 7.0,
        output_tokens: 5.0,
        spend: 0.0,
    };
    b.settle(held, Some(real)).await;
    let saved = b.to_snapshot().unwrap();
    assert!(b.to_snapshot().is_none(), "only when changed");
    let again = budgets(vec![window("llm", Unit::Tokens, 1000.0)]);
    again.restore(&saved);
    assert_eq!(used(&again, "llm").await, (12.0, 0.0));
}

#[tokio::test]
async fn a_reload_keeps_counts_of_alike_budgets_only() {
    let b = budgets(vec![
        window("kept", Unit::Requests, 10.0),
        window("unit", Unit::Requests, 10.0),
        window("gone", Unit::Requests, 10.0),
    ]);
    let specs = b.applicable("openai", Some("codex"));
    let held = b.reserve(&specs, ask(0.0, Some(0.0), 0.0)).await.unwrap();
    b.settle(
        held,
        Some(Amounts {
            requests: 1.0,
            ..Amounts::default()
        }),
    )
    .await;
    let new = Specs::new(vec![
        window("kept", Unit::Requests, 20.0),
        window("unit", Unit::Tokens, 10.0),
    ]);
    b.counts.reconcile(&b.specs, &new);
    let after = Counted {
        counts: b.counts,
        specs: new,
    };
    assert_eq!(
        used(&after, "kept").await.0,
        1.0,
        "same name and window: kept"
    );
    assert_eq!(
        used(&after, "unit").await.0,
        0.0,
        "another unit starts over"
    );
}

#[test]
fn windows_align_to_utc() {
    // 2026-12-03T10:20:30Z is a Thursday.
    let now = 1_796_293_230;
    assert_eq!(bounds(Window::Minute, now).0 % 60, 0);
    assert_eq!(bounds(Window::Day, now), (1_796_256_000, 1_796_342_400));
    let (monday, next) = bounds(Window::Week, now);
    assert_eq!(next - monday, 7 * 86_400);
    assert_eq!(monday, 1_796_256_000 - 3 * 86_400, "Monday 00:00 UTC");
    let (first, next_first) = bounds(Window::Month, now);
    assert_eq!(first, 1_796_083_200, "2026-12-01T00:00:00Z");
    assert_eq!(next_first, 1_798_761_600, "2027-01-01T00:00:00Z");
}
