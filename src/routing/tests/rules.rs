//! Conditions, first match, the default, tenants' lists and traces.

use super::*;

#[test]
fn names_and_aliases_resolve_to_their_model_and_nothing_else() {
    let h = Harness::new(AUTO);
    assert_eq!(h.router.resolve("router"), h.router.resolve("auto"));
    assert!(h.router.is_virtual(h.model("auto")));
    assert!(!h.router.is_virtual(h.model("small")));
    assert_eq!(h.router.resolve("Small"), None);
    assert_eq!(h.router.resolve(""), None);
}

#[test]
fn each_condition_routes_to_its_target_and_the_first_match_wins() {
    let h = Harness::new(AUTO);
    let tools = body(serde_json::json!({
        "model": "auto",
        "messages": [{"role": "user", "content": "write python please"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }));
    assert_eq!(
        h.route(&tools),
        pair("auto#1:tools", "big"),
        "tools before keywords"
    );
    let long = chat(&"lorem ipsum ".repeat(2500));
    assert_eq!(h.route(&long), pair("auto#2:prompt_tokens", "long"));
    assert_eq!(
        h.route(&chat("why won't this compile?")),
        pair("auto#3:keywords", "coder")
    );
    assert_eq!(
        h.route(&chat("here is my Stack Trace")),
        pair("auto#3:keywords", "coder"),
        "a phrase, any case"
    );
    let summary = chat("Please summarise this memo");
    assert_eq!(
        h.route(&summary),
        pair("auto#6:price=small", "small"),
        "regex without the header: all conditions must hold"
    );
    assert_eq!(
        h.route(&chat("Please summarise this memo").header("x-team", "docs")),
        pair("auto#4:regex+header", "small")
    );
    assert_eq!(
        h.route(&chat("hello")),
        pair("auto#6:price=small", "small"),
        "the default"
    );
}

#[test]
fn the_other_conditions_hold_as_documented() {
    let h = Harness::new(
        r#"
  v:
    aliases: [v2]
    route:
      - when: {images: true}
        to: big
      - when: {json_mode: true}
        to: coder
      - when: {stream: true, max_tokens: {under: 100}}
        to: rc
      - when: {turns: {over: 3}}
        to: long
      - when: {model_requested: [v2]}
        to: coder
      - when: {keywords: [deploy], scope: conversation}
        to: rc
      - to: small
"#,
    );
    let route = |v: serde_json::Value| h.route(&body(v)).0;
    let user = |t: &str| serde_json::json!([{"role": "user", "content": t}]);
    assert_eq!(
        route(
            serde_json::json!({"model": "v", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})
        ),
        "v#1:images"
    );
    assert_eq!(
        route(
            serde_json::json!({"model": "v", "messages": user("x"), "response_format": {"type": "json_object"}})
        ),
        "v#2:json_mode"
    );
    assert_eq!(
        route(
            serde_json::json!({"model": "v", "messages": user("x"), "stream": true, "max_tokens": 50})
        ),
        "v#3:stream+max_tokens"
    );
    assert_eq!(
        route(serde_json::json!({"model": "v", "messages": user("x"), "stream": true})),
        "v#7:default",
        "no max_tokens: neither bound holds"
    );
    let four = serde_json::json!([
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]);
    assert_eq!(
        route(serde_json::json!({"model": "v", "messages": four})),
        "v#4:turns"
    );
    assert_eq!(
        route(serde_json::json!({"model": "v2", "messages": user("x")})),
        "v#5:model_requested"
    );
    let earlier = serde_json::json!([
        {"role": "user", "content": "how do I deploy?"}, {"role": "assistant", "content": "like so"},
        {"role": "user", "content": "thanks"}]);
    assert_eq!(
        route(serde_json::json!({"model": "v", "messages": earlier})),
        "v#6:keywords",
        "conversation scope sees earlier turns"
    );
    let mut completion = body(serde_json::json!({"model": "v", "prompt": "deploy it"}));
    completion.endpoint = Endpoint::Completions;
    assert_eq!(
        h.route(&completion).0,
        "v#6:keywords",
        "a completion's prompt is its text"
    );
}

#[test]
fn a_target_the_tenant_may_not_use_passes_the_request_to_the_next_rule() {
    let h = Harness::new(AUTO);
    // `other` may use small and coder, not big: a tool call goes on to the default, whose
    // candidates leave big out.
    let tools = body(serde_json::json!({
        "model": "auto",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }))
    .tenant("other");
    assert_eq!(h.route(&tools), pair("auto#6:price=small", "small"));
    let route = h.decide(&tools).unwrap();
    assert_eq!(
        h.steps(&route),
        [pair("small", "small"), pair("small", "long")],
        "big is not even a fallback"
    );
}

#[test]
fn no_matching_rule_without_a_default_is_a_refusal() {
    let h = Harness::new(
        r#"
  only-code:
    route:
      - when: {keywords: [code]}
        to: coder
"#,
    );
    assert_eq!(
        h.decide(&chat("hello").tap_model("only-code")).unwrap_err(),
        Refusal::NoRule
    );
}

#[test]
fn a_trace_says_what_each_rule_saw() {
    let h = Harness::new(AUTO);
    let r = chat("my rust code will not compile").tenant("acme");
    let view = RequestView::parse(&r.body).unwrap();
    let prefs = Prefs::default();
    let allowed = |_: usize| true;
    let ask = Ask {
        model: h.model("auto"),
        name: "auto",
        endpoint: Endpoint::ChatCompletions,
        view: &view,
        body: &r.body,
        headers: &r.headers,
        tenant: r.tenant,
        allowed: &allowed,
        prefs: &prefs,
        remember: true,
    };
    let mut trace = Trace::default();
    let route = h
        .router
        .decide(&ask, &Offline, &mut Default::default(), Some(&mut trace))
        .unwrap();
    assert_eq!(h.label(&route), "auto#3:keywords");
    assert_eq!(trace.rules.len(), 6);
    assert_eq!(trace.rules[0].outcome, "not matched");
    assert_eq!(trace.rules[2].outcome, "matched");
    assert!(
        trace.rules[2].when[0].detail.contains("\"rust\""),
        "{:?}",
        trace.rules[2]
    );
    assert_eq!(trace.rules[5].outcome, "not reached");
    let d = trace.decision.as_ref().unwrap();
    assert_eq!(d.route, "auto#3:keywords");
    assert_eq!(d.chain[0].pool, "coder");
    let text = trace.render();
    assert!(
        text.contains("rule  3  when keywords → coder: matched"),
        "{text}"
    );
    assert!(
        text.contains("decision: coder (x-switchyard-route: auto#3:keywords)"),
        "{text}"
    );
}
