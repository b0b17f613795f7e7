//! The router against configs as users write them: each condition, first match, the default,
//! splits, candidates, context windows, tenants' lists, preferences and the labels.

use super::*;
use crate::config::Config;

/// Pools `small` (8k context, cheap), `big` (128k, dear), `coder`, `rc`, `long` (200k) and
/// models of the same names, plus `extra` YAML (the virtual models).
fn config(extra: &str) -> Config {
    let yaml = format!(
        r#"
pools:
  small:
    model: small-served
    context_window: 8192
    cost: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}
    servers: [{{url: "http://127.0.0.1:1"}}]
  big:
    model: big-served
    context_window: 131072
    cost: {{input_per_mtok: 1.0, output_per_mtok: 3.0}}
    servers: [{{url: "http://127.0.0.1:2"}}]
  coder:
    model: coder-served
    cost: {{input_per_mtok: 0.5, output_per_mtok: 0.5}}
    servers: [{{url: "http://127.0.0.1:3"}}]
  rc:
    model: rc-served
    servers: [{{url: "http://127.0.0.1:4"}}]
  long:
    model: long-served
    context_window: 200000
    cost: {{input_per_mtok: 2.0, output_per_mtok: 2.0}}
    servers: [{{url: "http://127.0.0.1:5"}}]
models:
  small: {{pool: small, fallback: [long]}}
  big: {{pool: big}}
  coder: {{pool: coder}}
  rc: {{pool: rc}}
  long: {{pool: long}}
{extra}
tenants:
  acme: {{keys: ["sha256:{d1}"]}}
  other: {{keys: ["sha256:{d2}"], models: [small, coder]}}
"#,
        d1 = "ab".repeat(32),
        d2 = "cd".repeat(32),
    );
    crate::config::parse(&yaml).unwrap_or_else(|e| panic!("{e:?}"))
}

const AUTO: &str = r#"
  auto:
    aliases: [router]
    route:
      - when: {tools: true}
        to: big
      - when: {prompt_tokens: {over: 6000}}
        to: long
      - when: {keywords: [python, rust, compile, stack trace, function]}
        to: coder
      - when: {regex: '(?i)\bsummari[sz]e\b', header: {x-team: docs}}
        to: small
      - when: {tenant: [acme]}
        split:
          - {to: small, weight: 90}
          - {to: rc, weight: 10}
        sticky: session
      - to: [small, big]
        prefer: price
"#;

struct Request {
    body: Vec<u8>,
    headers: HeaderMap,
    tenant: Option<&'static str>,
    endpoint: Endpoint,
}

fn chat(text: &str) -> Request {
    body(serde_json::json!({
        "model": "auto",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
    }))
}

fn body(v: serde_json::Value) -> Request {
    Request {
        body: serde_json::to_vec(&v).unwrap(),
        headers: HeaderMap::new(),
        tenant: None,
        endpoint: Endpoint::ChatCompletions,
    }
}

impl Request {
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.insert(k, HeaderValue::from_static(v));
        self
    }

    fn tenant(mut self, t: &'static str) -> Self {
        self.tenant = Some(t);
        self
    }
}

/// Pools with fixed live figures: (usable, ttft ms, tokens/s) by pool index.
struct Fixed(Vec<(bool, Option<f64>, Option<f64>)>);

impl Live for Fixed {
    fn usable(&self, pool: usize) -> bool {
        self.0.get(pool).is_none_or(|p| p.0)
    }
    fn ttft_ms(&self, pool: usize) -> Option<f64> {
        self.0.get(pool).and_then(|p| p.1)
    }
    fn tokens_per_s(&self, pool: usize) -> Option<f64> {
        self.0.get(pool).and_then(|p| p.2)
    }
}

struct Harness {
    config: Config,
    router: Router,
}

impl Harness {
    fn new(extra: &str) -> Self {
        let config = config(extra);
        let router = crate::state::router(&config).unwrap();
        Self { config, router }
    }

    fn model(&self, name: &str) -> usize {
        self.router.resolve(name).unwrap()
    }

    fn decide_with(&self, r: &Request, live: &dyn Live) -> Result<Route, Refusal> {
        let view = RequestView::parse(&r.body).unwrap();
        let model = self.router.resolve(&view.model).unwrap();
        let tenant = r
            .tenant
            .map(|t| self.config.tenants.iter().find(|x| x.name == t).unwrap());
        let allowed = |m: usize| {
            tenant
                .and_then(|t| t.models.as_ref())
                .is_none_or(|list| list.contains(&m))
        };
        let [models, provider, ttft] = view.preferences;
        let prefs = Prefs::parse(models, provider, ttft, None, |n| {
            self.router.resolve(n).filter(|&m| allowed(m))
        })?;
        let ask = Ask {
            model,
            name: &view.model,
            endpoint: r.endpoint,
            view: &view,
            body: &r.body,
            headers: &r.headers,
            tenant: r.tenant,
            allowed: &allowed,
            prefs: &prefs,
        };
        self.router.decide(&ask, live, None)
    }

    fn decide(&self, r: &Request) -> Result<Route, Refusal> {
        self.decide_with(r, &Offline)
    }

    /// `label → model of the first step` of a request.
    fn route(&self, r: &Request) -> (String, String) {
        let route = self.decide(r).unwrap();
        (self.label(&route), self.first(&route))
    }

    fn label(&self, route: &Route) -> String {
        self.router.decision(route.decision).unwrap().label.clone()
    }

    fn first(&self, route: &Route) -> String {
        self.steps(route)[0].0.clone()
    }

    fn steps(&self, route: &Route) -> Vec<(String, String)> {
        route
            .chain
            .iter()
            .map(|s| {
                (
                    self.router.model_name(s.model as usize).to_owned(),
                    self.router.pool_name(s.pool as usize).to_owned(),
                )
            })
            .collect()
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

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
            r.shadow == Some(rc)
        })
        .count();
    assert!((880..=1120).contains(&hits), "{hits} of {n} at 25 %");
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
    };
    let mut trace = Trace::default();
    let route = h.router.decide(&ask, &Offline, Some(&mut trace)).unwrap();
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

trait TapModel {
    fn tap_model(self, m: &str) -> Self;
}

impl TapModel for Request {
    fn tap_model(mut self, m: &str) -> Self {
        let mut v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        v["model"] = m.into();
        self.body = serde_json::to_vec(&v).unwrap();
        self
    }
}
