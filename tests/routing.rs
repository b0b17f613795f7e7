//! Routing by request, black-box: the real binary in front of simulators that each serve one
//! model, so the answer's `model` says which server answered; `x-switchyard-model` and
//! `x-switchyard-route` say what the gateway decided.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{
    client, dead_addr, get_json, get_text, metric_eventually, metric_value, Gateway, Sim,
};
use serde_json::{json, Value};

/// One fast simulator per model.
struct Sims {
    small: Sim,
    big: Sim,
    coder: Sim,
    rc: Sim,
}

impl Sims {
    fn start() -> Self {
        Self {
            small: Sim::fast("small-served"),
            big: Sim::fast("big-served"),
            coder: Sim::fast("coder-served"),
            rc: Sim::fast("rc-served"),
        }
    }

    /// Pools and models `small` (2 048-token context, falls back to pool big), `big`,
    /// `coder`, `rc`, with prices; `models` is appended under `models:`.
    fn config(&self, models: &str) -> String {
        format!(
            r#"pools:
  small:
    model: small-served
    engine: vllm
    context_window: 2048
    cost: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}
    servers: [{{url: "{}"}}]
  big:
    model: big-served
    engine: vllm
    context_window: 8192
    cost: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
    servers: [{{url: "{}"}}]
  coder:
    model: coder-served
    engine: vllm
    cost: {{input_per_mtok: 0.5, output_per_mtok: 0.5}}
    servers: [{{url: "{}"}}]
  rc:
    model: rc-served
    engine: vllm
    servers: [{{url: "{}"}}]
models:
  small: {{pool: small, fallback: [big]}}
  big: {{pool: big}}
  coder: {{pool: coder}}
  rc: {{pool: rc}}
{models}"#,
            self.small.url(),
            self.big.url(),
            self.coder.url(),
            self.rc.url()
        )
    }
}

/// What a request got: status, `x-switchyard-model`, `x-switchyard-route`, the answer's
/// `model` (the served name: which server answered), and the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    model: String,
    route: String,
    served: String,
    body: Value,
}

async fn send(gw: &Gateway, body: Value, headers: &[(&str, &str)]) -> Answer {
    let path = if body.get("prompt").is_some() {
        "/v1/completions"
    } else {
        "/v1/chat/completions"
    };
    let mut req = client().post(gw.url(path)).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, model, route) = (
        resp.status().as_u16(),
        header("x-switchyard-model"),
        header("x-switchyard-route"),
    );
    let stream = body["stream"] == json!(true);
    let text = resp.text().await.unwrap();
    let body: Value = if stream {
        // The first event's JSON.
        text.lines()
            .find_map(|l| l.strip_prefix("data: "))
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null)
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    Answer {
        status,
        model,
        route,
        served: body["model"].as_str().unwrap_or("").to_owned(),
        body,
    }
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 4, "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": text}]})
}

const AUTO: &str = r#"  auto:
    aliases: [router]
    route:
      - when: {tools: true}
        to: big
      - when: {prompt_tokens: {over: 1500}}
        to: big
      - when: {keywords: [python, rust, compile, stack trace]}
        to: coder
      - when: {regex: '(?i)\bsummari[sz]e\b', header: {x-team: docs}}
        to: small
      - when: {images: true}
        to: big
      - when: {json_mode: true}
        to: coder
      - when: {turns: {over: 4}}
        to: rc
      - when: {max_tokens: {over: 1000}}
        to: rc
      - when: {model_requested: [router]}
        to: coder
      - to: small
"#;

#[tokio::test]
async fn each_condition_routes_to_its_target_the_first_match_wins_and_the_last_is_the_default() {
    let sims = Sims::start();
    let gw = Gateway::start(&sims.config(AUTO));
    // (request, its headers, the route header wanted, the model wanted)
    type Case<'a> = (Value, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            {
                let mut b = chat("auto", "write python for me");
                b["tools"] =
                    json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
                b
            },
            vec![],
            "auto#1:tools",
            "big",
        ),
        (
            chat("auto", &"lorem ipsum ".repeat(600)),
            vec![],
            "auto#2:prompt_tokens",
            "big",
        ),
        (
            chat("auto", "Why won't this Rust code compile?"),
            vec![],
            "auto#3:keywords",
            "coder",
        ),
        (
            chat("auto", "here is a stack trace:\n at main.c:3"),
            vec![],
            "auto#3:keywords",
            "coder",
        ),
        (
            chat("auto", "please summarize this memo"),
            vec![("x-team", "docs")],
            "auto#4:regex+header",
            "small",
        ),
        (
            chat("auto", "please summarize this memo"),
            vec![("x-team", "ops")],
            "auto#10:default",
            "small",
        ),
        (
            json!({"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}),
            vec![],
            "auto#5:images",
            "big",
        ),
        (
            {
                let mut b = chat("auto", "answer in JSON");
                b["response_format"] = json!({"type": "json_object"});
                b
            },
            vec![],
            "auto#6:json_mode",
            "coder",
        ),
        (
            json!({"model": "auto", "max_tokens": 4, "messages": [
                {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
                {"role": "user", "content": "e"}]}),
            vec![],
            "auto#7:turns",
            "rc",
        ),
        (
            {
                let mut b = chat("auto", "a long story please");
                b["max_tokens"] = json!(1500);
                b
            },
            vec![],
            "auto#8:max_tokens",
            "rc",
        ),
        (
            chat("router", "hello"),
            vec![],
            "auto#9:model_requested",
            "coder",
        ),
        (chat("auto", "hello"), vec![], "auto#10:default", "small"),
        (
            json!({"model": "auto", "prompt": "fix my rust code", "max_tokens": 4}),
            vec![],
            "auto#3:keywords",
            "coder",
        ),
    ];
    for (body, headers, route, model) in cases {
        let a = send(&gw, body.clone(), &headers).await;
        assert_eq!(a.status, 200, "{body}: {a:?}");
        assert_eq!(
            (a.route.as_str(), a.model.as_str()),
            (route, model),
            "{body}"
        );
        assert_eq!(
            a.served,
            format!("{model}-served"),
            "the server of {model} answered: {body}"
        );
        // The same decision on a stream, with the headers on the event stream.
        if body.get("prompt").is_none() && route != "auto#8:max_tokens" {
            let mut s = body.clone();
            s["stream"] = json!(true);
            let a = send(&gw, s, &headers).await;
            assert_eq!(
                (a.status, a.route.as_str(), a.model.as_str()),
                (200, route, model)
            );
            assert_eq!(a.served, format!("{model}-served"));
        }
    }
    // A model with a pool says so too.
    let a = send(&gw, chat("coder", "hi"), &[]).await;
    assert_eq!(
        (a.model.as_str(), a.route.as_str()),
        ("coder", "coder#0:direct")
    );
    // Decisions are counted by rule and target.
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"switchyard_route_decisions_total{model="auto",rule="3",target="coder"}"#
        ),
        Some(5.0),
        "two requests and their streams, and one completion:\n{metrics}"
    );
    // The access log line carries the decision.
    let lines = gw.access_log_lines(20).await;
    assert!(lines
        .iter()
        .any(|l| l["route"] == "auto#4:regex+header" && l["model"] == "small"));
}

#[tokio::test]
async fn candidates_go_by_price_and_by_measured_latency() {
    let sims = Sims::start();
    let slow = Sim::start(
        "slow-served",
        &["--zero-delay", "--fault", "first_token_delay_ms=300"],
    );
    let fast = Sim::fast("fast-served");
    let extra = r#"  slow: {pool: slowpool}
  fast: {pool: fastpool}
  cheapest:
    route:
      - to: [big, coder, small]
  quickest:
    route:
      - to: [slow, fast]
        prefer: latency
"#;
    let yaml = sims.config(extra).replace(
        "models:\n",
        &format!(
            "  slowpool:\n    model: slow-served\n    engine: vllm\n    servers: [{{url: \"{}\"}}]\n  fastpool:\n    model: fast-served\n    engine: vllm\n    servers: [{{url: \"{}\"}}]\nmodels:\n",
            slow.url(),
            fast.url()
        ),
    );
    let gw = Gateway::start(&yaml);
    let a = send(&gw, chat("cheapest", "hi"), &[]).await;
    assert_eq!(
        (a.route.as_str(), a.served.as_str()),
        ("cheapest#1:price=small", "small-served")
    );
    // Neither is measured: the first in the list is tried, then the other; then the one whose
    // first token came faster keeps the traffic.
    let mut order = Vec::new();
    for _ in 0..8 {
        let mut b = chat("quickest", "hi");
        b["stream"] = json!(true);
        let a = send(&gw, b, &[]).await;
        assert_eq!(a.status, 200);
        order.push(a.model);
    }
    assert_eq!(order[..2], ["slow", "fast"], "{order:?}");
    assert!(order[2..].iter().all(|m| m == "fast"), "{order:?}");
    // /admin/route shows what it compared.
    let trace: Value = client()
        .post(gw.admin_url("/admin/route"))
        .json(&chat("quickest", "hi"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trace["status"], 200);
    assert_eq!(trace["decision"]["route"], "quickest#1:latency=fast");
    let slow_ttft = trace["candidates"][1]["predicted_ttft_ms"]
        .as_f64()
        .unwrap();
    let fast_ttft = trace["candidates"][0]["predicted_ttft_ms"]
        .as_f64()
        .unwrap();
    assert!(slow_ttft >= 300.0 && fast_ttft < 100.0, "{trace:#}");
}

#[tokio::test]
async fn pools_too_small_for_the_request_are_skipped_and_a_request_that_fits_nowhere_is_a_400() {
    let sims = Sims::start();
    let gw = Gateway::start(&sims.config(""));
    // ~1 000 tokens: small's 2 048 hold it.
    let a = send(&gw, chat("small", &"x".repeat(4_000)), &[]).await;
    assert_eq!((a.status, a.served.as_str()), (200, "small-served"));
    // ~3 000 tokens: small is skipped for its fallback pool.
    let a = send(&gw, chat("small", &"x".repeat(12_000)), &[]).await;
    assert_eq!(
        (a.status, a.model.as_str(), a.served.as_str()),
        (200, "small", "big-served")
    );
    // ~10 000 tokens: no pool of the route holds them.
    let before = sims.big.metric("switchyard_sim_http_requests_total").await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("small", &"x".repeat(40_000)))
        .send()
        .await
        .unwrap();
    let v = common::openai_error(resp, 400).await;
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("8192"),
        "{v}"
    );
    assert_eq!(
        sims.big.metric("switchyard_sim_http_requests_total").await,
        before
    );
    // max_tokens counts as well: 1 000 prompt tokens plus 1 500 to generate is past 2 048.
    let mut b = chat("small", &"x".repeat(4_000));
    b["max_tokens"] = json!(1_500);
    assert_eq!(send(&gw, b, &[]).await.served, "big-served");
}

#[tokio::test]
async fn the_requests_models_list_falls_back_and_preferences_never_reach_the_server() {
    let sims = Sims::start();
    let dead = dead_addr();
    let yaml = sims.config("  deadm: {pool: dead}\n").replace(
        "models:\n",
        &format!("  dead:\n    model: dead-served\n    health: {{enabled: false}}\n    servers: [{{url: \"http://{dead}\"}}]\nmodels:\n"),
    );
    let gw = Gateway::start(&yaml);
    let mut b = chat("deadm", "hi");
    b["models"] = json!(["coder", "small"]);
    let a = send(&gw, b, &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        (a.model.as_str(), a.served.as_str()),
        ("coder", "coder-served")
    );
    assert_eq!(a.route, "deadm#0:direct");
    // The server sees none of the router's fields, and a valid body.
    let mut b = chat("small", "hi");
    b["models"] = json!(["big"]);
    b["provider"] = json!({"sort": "price", "max_price": {"prompt": 5, "completion": 5}});
    b["max_ttft_ms"] = json!(500);
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-sim-echo", "body")
        .header("x-switchyard-max-ttft-ms", "800")
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let forwarded: Value = resp.json().await.unwrap();
    for gone in ["models", "provider", "max_ttft_ms"] {
        assert!(
            forwarded.get(gone).is_none(),
            "{gone} forwarded: {forwarded}"
        );
    }
    assert_eq!(forwarded["model"], "small-served");
    assert_eq!(forwarded["messages"], b["messages"]);
    // A model in the list that does not exist is a 404 naming it.
    let mut b = chat("small", "hi");
    b["models"] = json!(["gpt-9"]);
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&b)
        .send()
        .await
        .unwrap();
    let v = common::openai_error(resp, 404).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
}

#[tokio::test]
async fn a_max_price_no_model_meets_is_refused_without_contacting_a_server() {
    let sims = Sims::start();
    let gw = Gateway::start(&sims.config("  auto:\n    route:\n      - to: [big, small]\n"));
    let before = sims
        .small
        .metric("switchyard_sim_http_requests_total")
        .await;
    let mut b = chat("auto", "hi");
    b["provider"] = json!({"max_price": {"prompt": 0.01, "completion": 0.01}});
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&b)
        .send()
        .await
        .unwrap();
    let v = common::openai_error(resp, 404).await;
    assert_eq!(v["error"]["code"], "no_model_within_max_price", "{v}");
    assert_eq!(v["error"]["param"], "provider.max_price");
    assert_eq!(
        sims.small
            .metric("switchyard_sim_http_requests_total")
            .await,
        before
    );
    // Within it: the one that meets it.
    b["provider"] = json!({"max_price": {"prompt": 0.5, "completion": 0.5}});
    let a = send(&gw, b, &[]).await;
    assert_eq!((a.status, a.served.as_str()), (200, "small-served"));
    // A malformed preference is a 400 naming it.
    let mut b = chat("auto", "hi");
    b["provider"] = json!({"sort": "cheapest"});
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(
        common::openai_error(resp, 400).await["error"]["param"],
        "provider.sort"
    );
}

#[tokio::test]
async fn a_split_keeps_its_shares_over_2000_requests_and_each_session_on_its_arm() {
    let sims = Sims::start();
    let gw = Gateway::start(&sims.config(
        "  canary:\n    route:\n      - split:\n          - {to: small, weight: 90}\n          - {to: rc, weight: 10}\n        sticky: session\n    ",
    ));
    let c = client();
    let n = 2_000;
    let mut rc = 0;
    let mut tasks = Vec::new();
    for i in 0..n {
        let req = c
            .post(gw.url("/v1/completions"))
            .header("x-session-id", format!("session-{i}"))
            .json(&json!({"model": "canary", "prompt": "x", "max_tokens": 1}));
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let model = resp.headers()["x-switchyard-model"]
                .to_str()
                .unwrap()
                .to_owned();
            resp.bytes().await.unwrap();
            model
        }));
        if tasks.len() == 64 {
            for t in tasks.drain(..) {
                rc += usize::from(t.await.unwrap() == "rc");
            }
        }
    }
    for t in tasks {
        rc += usize::from(t.await.unwrap() == "rc");
    }
    // 10 % of 2 000 ± 3 % of 2 000.
    assert!((140..=260).contains(&rc), "{rc} of {n} on the 10 % arm");
    // A session stays on its arm; the body's `user` keys a session too.
    for key in ["session-7", "session-1234"] {
        let first = send(&gw, chat("canary", "hi"), &[("x-session-id", key)])
            .await
            .model;
        for _ in 0..20 {
            assert_eq!(
                send(&gw, chat("canary", "hi"), &[("x-session-id", key)])
                    .await
                    .model,
                first
            );
        }
    }
    let mut by_user = chat("canary", "hi");
    by_user["user"] = json!("user-42");
    let first = send(&gw, by_user.clone(), &[]).await.model;
    for _ in 0..20 {
        assert_eq!(send(&gw, by_user.clone(), &[]).await.model, first);
    }
}

#[tokio::test]
async fn a_shadow_mirrors_without_touching_the_clients_answer_and_a_dead_one_changes_nothing() {
    let sims = Sims::start();
    // The shadow takes a second to its first token; the client must not wait for it.
    let shadow = Sim::start(
        "shadow-served",
        &["--zero-delay", "--fault", "first_token_delay_ms=1000"],
    );
    let dead = dead_addr();
    let yaml = sims
        .config(
            "  shadowm: {pool: shadowpool}\n  deadm: {pool: dead}\n  mirrored:\n    pool: small\n    shadow: {to: shadowm, percent: 100, max_inflight: 2}\n  doomed:\n    pool: coder\n    shadow: {to: deadm}\n",
        )
        .replace(
            "models:\n",
            &format!(
                "  shadowpool:\n    model: shadow-served\n    engine: vllm\n    servers: [{{url: \"{}\"}}]\n  dead:\n    model: dead-served\n    health: {{enabled: false}}\n    servers: [{{url: \"http://{dead}\"}}]\nmodels:\n",
                shadow.url()
            ),
        );
    let gw = Gateway::start(&yaml);
    for _ in 0..5 {
        let started = Instant::now();
        let a = send(&gw, chat("mirrored", "hello"), &[]).await;
        assert_eq!((a.status, a.served.as_str()), (200, "small-served"));
        assert!(a.body["choices"][0]["message"]["content"].is_string());
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    // Two mirrors in flight at most: the other three are skipped.
    let metrics = gw.admin_url("/metrics");
    metric_eventually(
        &metrics,
        r#"switchyard_shadow_requests_total{model="mirrored",outcome="ok",target="shadowm"}"#,
        2.0,
    )
    .await;
    let text = metric_eventually(
        &metrics,
        r#"switchyard_shadow_requests_total{model="mirrored",outcome="skipped",target="shadowm"}"#,
        3.0,
    )
    .await;
    assert_eq!(
        shadow.metric("switchyard_sim_http_requests_total").await,
        2.0,
        "{text}"
    );
    let lines = gw.access_log_lines(7).await;
    let mirrors: Vec<&Value> = lines.iter().filter(|l| l["shadow"] == true).collect();
    assert_eq!(mirrors.len(), 2, "{lines:#?}");
    assert_eq!(mirrors[0]["model"], "shadowm");
    assert_eq!(mirrors[0]["status"], 200);
    // A shadow that cannot be reached: the client's answers are as ever, the mirror an error.
    for _ in 0..3 {
        let a = send(&gw, chat("doomed", "hello"), &[]).await;
        assert_eq!((a.status, a.served.as_str()), (200, "coder-served"));
    }
    metric_eventually(
        &metrics,
        r#"switchyard_shadow_requests_total{model="doomed",outcome="error",target="deadm"}"#,
        3.0,
    )
    .await;
}

#[tokio::test]
async fn cost_and_the_baseline_add_up_from_the_servers_usage() {
    let sims = Sims::start();
    let gw = Gateway::start(&sims.config(
        "  auto:\n    baseline: big\n    route:\n      - when: {keywords: [code]}\n        to: coder\n      - to: small\n",
    ));
    let (mut cost, mut baseline) = (0.0, 0.0);
    for text in ["write code", "hello", "more code please", "bye"] {
        let a = send(&gw, chat("auto", text), &[]).await;
        let u = &a.body["usage"];
        let (p, c) = (
            u["prompt_tokens"].as_f64().unwrap(),
            u["completion_tokens"].as_f64().unwrap(),
        );
        cost += match a.model.as_str() {
            "coder" => p * 0.5 + c * 0.5,
            _ => p * 0.1 + c * 0.2,
        } / 1e6;
        baseline += (p * 1.0 + c * 2.0) / 1e6;
    }
    // Counted when each request ends (after its last byte): poll until the last is in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = get_text(&gw.admin_url("/metrics")).await;
    let name = r#"switchyard_cost_baseline_usd_total{model="auto"}"#;
    while (metric_value(&text, name).unwrap_or(0.0) - baseline).abs() > 1e-12 {
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
        text = get_text(&gw.admin_url("/metrics")).await;
    }
    let got = metric_value(&text, r#"switchyard_cost_usd_total{model="auto"}"#).unwrap();
    assert!((got - cost).abs() < 1e-12, "cost {got} against {cost}");
    assert!(cost < baseline, "routing saved: {cost} < {baseline}");
}

#[tokio::test]
async fn admin_route_traces_the_decision_against_the_live_state() {
    let sims = Sims::start();
    let gw = Gateway::start(
        &(sims.config(AUTO)
            + "tenants:\n  acme:\n    keys: [\"sha256:"
            + &"ab".repeat(32)
            + "\"]\n    models: [auto, small, coder]\n"),
    );
    let post = |body: Value, query: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let mut req = client()
            .post(gw.admin_url(&format!("/admin/route{query}")))
            .json(&body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let v = post(
        chat("auto", "summarize please"),
        "",
        vec![("x-team", "docs")],
    )
    .await;
    assert_eq!(v["status"], 200);
    assert_eq!(v["decision"]["route"], "auto#4:regex+header");
    assert_eq!(
        v["decision"]["chain"][0],
        json!({"model": "small", "pool": "small"})
    );
    assert_eq!(v["rules"][3]["outcome"], "matched");
    assert_eq!(v["rules"][3]["when"][0]["holds"], true);
    assert_eq!(v["rules"][2]["outcome"], "not matched");
    assert_eq!(v["rules"][4]["outcome"], "not reached");
    // As a tenant that may not use big: the tool call goes on to the default.
    let mut tools = chat("auto", "hi");
    tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    let v = post(tools, "?tenant=acme", vec![]).await;
    assert!(
        v["rules"][0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("matched, but"),
        "{v:#}"
    );
    assert_eq!(v["decision"]["route"], "auto#10:default");
    // A refusal is in the trace with the status the client would get.
    let v = post(chat("small", &"x".repeat(40_000)), "", vec![]).await;
    assert_eq!(v["status"], 400);
    assert_eq!(v["refusal"]["error"]["code"], "context_length_exceeded");
    // Nothing was sent anywhere.
    for s in [&sims.small, &sims.big, &sims.coder, &sims.rc] {
        assert_eq!(s.metric("switchyard_sim_http_requests_total").await, 0.0);
    }
    let unknown = client()
        .post(gw.admin_url("/admin/route?tenant=ghost"))
        .json(&chat("auto", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    let config = get_json(&gw.admin_url("/admin/config")).await;
    let auto = config["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "auto")
        .unwrap();
    assert_eq!(
        auto["route"]["rules"][3]["when"],
        json!(["regex", "header"])
    );
}

#[tokio::test]
async fn a_tenants_list_applies_to_the_virtual_model_and_to_the_model_it_routes_to() {
    let sims = Sims::start();
    let key = "sk-routing-test";
    let digest = {
        use sha2::Digest as _;
        sha2::Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let gw = Gateway::start(&format!(
        "{}tenants:\n  acme:\n    keys: [\"sha256:{digest}\"]\n    models: [auto, small, coder]\n  nobody:\n    keys: [\"sha256:{}\"]\n    models: [small]\n",
        sims.config(AUTO),
        "ef".repeat(32)
    ));
    let send_as = |body: Value| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let mut tools = chat("auto", "hi");
    tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    let resp = send_as(tools).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-switchyard-route"],
        "auto#10:default",
        "big is not acme's"
    );
    let resp = send_as(chat("auto", "fix my rust")).await.unwrap();
    assert_eq!(resp.headers()["x-switchyard-model"], "coder");
    // Directly, big is a model acme does not have.
    let resp = send_as(chat("big", "hi")).await.unwrap();
    common::openai_error(resp, 404).await;
}
