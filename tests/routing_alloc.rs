//! A routing decision allocates nothing: the shipped `conf/router.yaml` deciding requests that
//! reach each kind of rule (tools, keywords, regex + header, split, candidates), counted by a
//! counting global allocator after one warm-up decision per thread (its text buffers and the
//! regexes' caches are made once and kept). A rule on a lexical classifier's label decides
//! without allocating too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use switchyard::openai::{Endpoint, RequestView};
use switchyard::routing::{Ask, Offline, Prefs, Router};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn a_decision_allocates_nothing() {
    let config =
        switchyard::config::load(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/router.yaml").as_ref())
            .unwrap();
    let router = switchyard::state::router(&config, Default::default()).unwrap();
    let long_conversation = {
        let mut m = vec![
            serde_json::json!({"role": "system", "content": "You are helpful.\nAnswer briefly."}),
        ];
        for i in 0..40 {
            m.push(
                serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                "content": format!("turn {i}: \"quoted\" text with \\u escapes é and a tab\t")}),
            );
        }
        m.push(serde_json::json!({"role": "user", "content": [
            {"type": "text", "text": "and now my Python code\nraises a stack trace"}]}));
        serde_json::json!({"model": "auto", "messages": m})
    };
    // (request, its headers, its tenant, the start of the label it gets)
    type Case<'a> = (
        serde_json::Value,
        Vec<(&'a str, &'a str)>,
        Option<&'a str>,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]}),
            vec![],
            None,
            "auto#1:tools",
        ),
        (long_conversation, vec![], None, "auto#3:keywords"),
        (
            serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "Please summarize the memo"}]}),
            vec![("x-team", "docs")],
            None,
            "auto#4:regex+header",
        ),
        (
            serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "hello"}]}),
            vec![("x-session-id", "s-1")],
            Some("acme"),
            "auto#5:split=",
        ),
        (
            serde_json::json!({"model": "router", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}),
            vec![],
            None,
            "auto#6:price=llama-3.1-8b",
        ),
    ];
    for (body, headers, tenant, label) in cases {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.insert(k, v.parse().unwrap());
        }
        assert_decides_without_allocating(&router, &body, &map, tenant, label);
    }
    // One test: the counter is global, and the harness allocates when a test ends.
    a_lexical_class_decision_allocates_nothing();
}

/// Decides `body` once (its label must start with `label`), then 100 times more, counting.
fn assert_decides_without_allocating(
    router: &Router,
    body: &serde_json::Value,
    headers: &http::HeaderMap,
    tenant: Option<&str>,
    label: &str,
) {
    let body = serde_json::to_vec(body).unwrap();
    let view = RequestView::parse(&body).unwrap();
    let prefs = Prefs::default();
    let allowed = |_: usize| true;
    let ask = Ask {
        model: router.resolve(&view.model).unwrap(),
        name: &view.model,
        endpoint: Endpoint::ChatCompletions,
        view: &view,
        body: &body,
        headers,
        tenant,
        allowed: &allowed,
        prefs: &prefs,
        remember: true,
    };
    let first = router
        .decide(&ask, &Offline, &mut Default::default(), None)
        .unwrap();
    let got = &router.decision(first.decision).unwrap().label;
    assert!(got.starts_with(label), "{got} for {label}");
    let region = Region::new(GLOBAL);
    for _ in 0..100 {
        std::hint::black_box(
            router
                .decide(&ask, &Offline, &mut Default::default(), None)
                .unwrap(),
        );
    }
    let stats = region.change();
    assert_eq!(
        (stats.allocations, stats.reallocations),
        (0, 0),
        "{label}: allocations per 100 decisions"
    );
}

fn a_lexical_class_decision_allocates_nothing() {
    let config = switchyard::config::parse(
        r#"
pools:
  a: {model: a, servers: [{url: "http://127.0.0.1:1"}]}
  b: {model: b, servers: [{url: "http://127.0.0.1:2"}]}
models:
  coder: {pool: a}
  chat: {pool: b}
  auto:
    route:
      - when: {class: {task: code}}
        to: coder
      - to: chat
classifiers:
  task:
    labels:
      code: {examples: ["fix this segfault in my C loop", "the borrow checker rejects my function"]}
      chat: {examples: ["hello, how are you", "any advice for a rainy weekend"]}
"#,
    )
    .unwrap();
    let router = switchyard::state::router(&config, Default::default()).unwrap();
    let question = "Why does the borrow checker reject my function? ".repeat(40);
    let body = serde_json::json!({"model": "auto", "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": question}]});
    assert_decides_without_allocating(
        &router,
        &body,
        &http::HeaderMap::new(),
        None,
        "auto#1:class",
    );
}
