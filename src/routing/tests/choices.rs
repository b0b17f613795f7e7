//! What a rule chooses among: pools that fit, candidates, prices, the request's models list,
//! split arms and shadows.

use super::*;

#[test]
fn context_windows_skip_pools_and_refuse_what_fits_nowhere() {
    let h = Harness::new("");
    let small = |bytes: usize, max_tokens: u64| {
        body(serde_json::json!({
            "model": "small",
            "messages": [{"role": "user", "content": "x".repeat(bytes)}],
            "max_tokens": max_tokens,
        }))
    };
    let r = h.decide(&small(1000, 100)).unwrap();
    assert_eq!(h.steps(&r), [pair("small", "small"), pair("small", "long")]);
    assert_eq!(h.label(&r), "small#0:direct");
    // ~10 000 tokens: past small's 8 192, within long's 200 000.
    let r = h.decide(&small(40_000, 100)).unwrap();
    assert_eq!(h.steps(&r), [pair("small", "long")]);
    match h.decide(&small(1_000_000, 100)) {
        Err(Refusal::ContextLengthExceeded { needed, largest }) => {
            assert!(needed > 250_000, "{needed}");
            assert_eq!(largest, 200_000);
        }
        other => panic!("{other:?}"),
    }
    // max_tokens counts: 7 000 of prompt room plus 2 000 is past 8 192.
    let r = h.decide(&small(28_000, 2_000)).unwrap();
    assert_eq!(h.first(&r), "small");
    assert_eq!(h.steps(&r), [pair("small", "long")]);
}

#[test]
fn candidates_by_price_latency_and_throughput_with_the_rest_as_fallbacks() {
    let h = Harness::new(
        r#"
  cheap:
    route:
      - to: [big, coder, small]
  fast:
    route:
      - to: [small, big, coder]
        prefer: latency
  quick:
    route:
      - to: [small, big, coder]
        prefer: throughput
"#,
    );
    let req = |m: &str| {
        body(
            serde_json::json!({"model": m, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}),
        )
    };
    let r = h.decide(&req("cheap")).unwrap();
    assert_eq!(h.label(&r), "cheap#1:price=small");
    assert_eq!(
        h.steps(&r),
        [
            pair("small", "small"),
            pair("small", "long"),
            pair("coder", "coder"),
            pair("big", "big")
        ],
        "the cheapest first, its own fallback pool, then the others by price"
    );
    // Pool order in the config file (sorted): big 0, coder 1, long 2, rc 3, small 4.
    let live = Fixed(vec![
        (true, Some(50.0), Some(80.0)),
        (true, Some(400.0), Some(20.0)),
        (true, None, None),
        (true, None, None),
        (true, Some(200.0), Some(40.0)),
    ]);
    let r = h.decide_with(&req("fast"), &live).unwrap();
    assert_eq!(h.label(&r), "fast#1:latency=big");
    let r = h.decide_with(&req("quick"), &live).unwrap();
    assert_eq!(h.label(&r), "quick#1:throughput=big");
    // The cheapest with no usable server goes last.
    let down = Fixed(
        vec![(true, None, None); 4]
            .into_iter()
            .chain([(false, None, None)])
            .collect(),
    );
    let r = h.decide_with(&req("cheap"), &down).unwrap();
    assert_eq!(h.label(&r), "cheap#1:price=coder");
    // A request's provider.sort overrides prefer; its TTFT target skips the slow.
    let mut sorted = req("cheap");
    sorted.body = serde_json::to_vec(&serde_json::json!({"model": "cheap", "messages": [{"role": "user", "content": "x"}], "provider": {"sort": "latency"}, "max_ttft_ms": 300})).unwrap();
    let r = h.decide_with(&sorted, &live).unwrap();
    assert_eq!(h.label(&r), "cheap#1:latency=big");
    let mut slow_ok = req("cheap");
    slow_ok.body = serde_json::to_vec(&serde_json::json!({"model": "cheap", "messages": [{"role": "user", "content": "x"}], "max_ttft_ms": 300})).unwrap();
    let r = h.decide_with(&slow_ok, &live).unwrap();
    assert_eq!(
        h.label(&r),
        "cheap#1:price=small",
        "small's 200 ms is within 300"
    );
    slow_ok.body = serde_json::to_vec(&serde_json::json!({"model": "cheap", "messages": [{"role": "user", "content": "x"}], "max_ttft_ms": 100})).unwrap();
    let r = h.decide_with(&slow_ok, &live).unwrap();
    assert_eq!(
        h.label(&r),
        "cheap#1:price=big",
        "only big is within 100 ms"
    );
    slow_ok.body = serde_json::to_vec(&serde_json::json!({"model": "cheap", "messages": [{"role": "user", "content": "x"}], "max_ttft_ms": 10})).unwrap();
    let r = h.decide_with(&slow_ok, &live).unwrap();
    assert_eq!(
        h.label(&r),
        "cheap#1:price=big",
        "none within 10 ms: the fastest"
    );
}

#[test]
fn max_price_drops_pools_and_refuses_when_none_is_left() {
    let h = Harness::new(AUTO);
    let req = |max: serde_json::Value| {
        body(
            serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "hello"}],
            "provider": {"max_price": max}}),
        )
    };
    let r = h
        .decide(&req(serde_json::json!({"prompt": 0.5, "completion": 1})))
        .unwrap();
    assert_eq!(
        h.steps(&r),
        [pair("small", "small")],
        "big and long are over it"
    );
    match h.decide(&req(serde_json::json!({"prompt": 0.01}))) {
        Err(Refusal::OverMaxPrice { max }) => assert_eq!(max.input_per_mtok, 0.01),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_models_list_adds_fallback_models_in_order() {
    let h = Harness::new("");
    let r = h
        .decide(&body(
            serde_json::json!({"model": "big", "models": ["coder", "small", "big"],
            "messages": [{"role": "user", "content": "x"}]}),
        ))
        .unwrap();
    assert_eq!(
        h.steps(&r),
        [
            pair("big", "big"),
            pair("coder", "coder"),
            pair("small", "small"),
            pair("small", "long")
        ],
        "each model's pools once, in order"
    );
    let unknown = h.decide(&body(
        serde_json::json!({"model": "big", "models": ["gpt-9"],
        "messages": [{"role": "user", "content": "x"}]}),
    ));
    assert_eq!(
        unknown.unwrap_err(),
        Refusal::UnknownModel {
            name: "gpt-9".into()
        }
    );
    let not_allowed = h.decide(
        &body(serde_json::json!({"model": "small", "models": ["big"],
            "messages": [{"role": "user", "content": "x"}]}))
        .tenant("other"),
    );
    assert_eq!(
        not_allowed.unwrap_err(),
        Refusal::UnknownModel { name: "big".into() },
        "a model the tenant may not use looks like one that does not exist"
    );
}

#[test]
fn split_arms_are_sticky_per_session_and_keep_their_shares() {
    let h = Harness::new(AUTO);
    let session = |id: &'static str| chat("hello").tenant("acme").header("x-session-id", id);
    let first = h.route(&session("s-1"));
    assert!((0..50).all(|_| h.route(&session("s-1")) == first));
    let mut rc = 0;
    let n = 2_000;
    for i in 0..n {
        let mut r = chat("hello").tenant("acme");
        r.headers.insert(
            "x-session-id",
            HeaderValue::try_from(format!("session-{i}")).unwrap(),
        );
        let (label, model) = h.route(&r);
        assert_eq!(label, format!("auto#5:split={model}"));
        rc += usize::from(model == "rc");
    }
    // 10 % ± 3σ (σ = sqrt(2000 × 0.1 × 0.9) ≈ 13.4).
    assert!((160..=240).contains(&rc), "{rc} of {n} on the 10 % arm");
    // The body's `user` keys a session too.
    let by_user = |u: &str| {
        body(serde_json::json!({"model": "auto", "user": u, "messages": [{"role": "user", "content": "hi"}]}))
            .tenant("acme")
    };
    let u = h.route(&by_user("user-7"));
    assert!((0..20).all(|_| h.route(&by_user("user-7")) == u));
}

#[test]
fn the_shadow_is_sampled_by_its_percentage() {
    let h = Harness::new(
        r#"
  mirrored:
    pool: small
    shadow: {to: rc, percent: 25}
"#,
    );
    let rc = h.model("rc");
    let n = 4_000;
    let hits = (0..n)
        .filter(|_| {
            let r = h
                .decide(&body(
                    serde_json::json!({"model": "mirrored", "prompt": "x"}),
                ))
                .unwrap();
            r.shadow.map(|m| usize::from(m.to)) == Some(rc)
        })
        .count();
    assert!((880..=1120).contains(&hits), "{hits} of {n} at 25 %");
}
