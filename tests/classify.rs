//! Classifier routing (`classifiers:`, `when: {class: ...}`) against the real binary and
//! simulators: each method on clear cases, the vote, the fallback within the budget,
//! hierarchical laziness, conversation stickiness, exemplar vectors across a reload that
//! cannot reach the embeddings pool, and the traces of `/admin/route` and `switchyard route`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{client, dead_addr, get_json, get_text, metric_value, Gateway, Sim};
use serde_json::{json, Value};

/// Words the simulated classifier model answers by.
const JUDGE_LABELS: &str = "code:rust|python|segfault|compile|function|sql|bug,math:integral|equation|derivative|prove|solve,chat:hello|thanks|weekend|movie";

const LABELS: &str = r#"
      code:
        description: programming, debugging, code review
        examples:
          - fix this segfault in my C loop
          - write a SQL query that joins orders and customers
          - why does the borrow checker reject my rust function
          - python exception stack trace when importing a module
          - refactor this javascript class into smaller functions
      math:
        description: calculations, proofs, equations
        examples:
          - solve the integral of x squared
          - prove that the square root of two is irrational
          - find the derivative of sin x times x
          - solve this system of linear equations for x and y
          - what is the probability of rolling two sixes
      chat:
        description: small talk and everything else
        examples:
          - hi how are you today
          - tell me about your weekend plans
          - thanks that was really helpful
          - what is your favourite movie
          - good morning, nice to meet you"#;

/// The served models every test routes between, and the classifier models.
struct Fleet {
    coder: Sim,
    maths: Sim,
    general: Sim,
    embed: Sim,
    judge: Sim,
}

impl Fleet {
    fn start(judge_extra: &[&str]) -> Self {
        let mut judge = vec!["--zero-delay", "--classifier-labels", JUDGE_LABELS];
        judge.extend_from_slice(judge_extra);
        Self {
            coder: Sim::fast("coder-m"),
            maths: Sim::fast("math-m"),
            general: Sim::fast("general-m"),
            embed: Sim::fast("embed-small"),
            judge: Sim::start("judge-m", &judge),
        }
    }

    /// A config with these classifiers and virtual models (YAML under `classifiers:` and
    /// `models:`), `embed_url` for the embeddings pool.
    fn yaml_with(&self, embed_url: &str, classifiers: &str, models: &str) -> String {
        format!(
            r#"pools:
  coder: {{model: coder-m, servers: [{{url: "{}"}}]}}
  maths: {{model: math-m, servers: [{{url: "{}"}}]}}
  general: {{model: general-m, servers: [{{url: "{}"}}]}}
  embed: {{model: embed-small, servers: [{{url: "{embed_url}"}}]}}
  judge: {{model: judge-m, servers: [{{url: "{}"}}]}}
models:
  coder: {{pool: coder}}
  mathm: {{pool: maths}}
  general: {{pool: general}}
  embedder: {{pool: embed}}
  judge: {{pool: judge}}
{models}
classifiers:
{classifiers}
"#,
            self.coder.url(),
            self.maths.url(),
            self.general.url(),
            self.judge.url(),
        )
    }

    fn yaml(&self, classifiers: &str, models: &str) -> String {
        self.yaml_with(&self.embed.url(), classifiers, models)
    }
}

/// A classifier named `name` over the shared labels; `settings` are more of its YAML lines.
fn classifier(name: &str, settings: &str) -> String {
    format!("  {name}:\n    labels:{LABELS}\n{settings}")
}

/// A virtual model `name` routing code → coder, math → mathm, else general, by `by`.
fn auto(name: &str, by: &str, extra: &str) -> String {
    format!(
        "  {name}:\n{extra}    route:\n      - when: {{class: {{{by}: code}}}}\n        to: coder\n      - when: {{class: {{{by}: math}}}}\n        to: mathm\n      - to: general\n"
    )
}

/// The model that answered a chat request (its served name) and the route header.
async fn ask(gw: &Gateway, model: &str, text: &str, headers: &[(&str, &str)]) -> (String, String) {
    let mut req = client().post(gw.url("/v1/chat/completions")).json(
        &json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": text}]}),
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let route = resp.headers()["x-switchyard-route"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    (body["model"].as_str().unwrap().to_owned(), route)
}

/// `/admin/route`'s trace of a chat request.
async fn trace(gw: &Gateway, model: &str, text: &str) -> Value {
    let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    client()
        .post(gw.admin_url("/admin/route"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls /readyz until classifier `name`'s exemplar vectors are in `state`.
async fn vectors_state(gw: &Gateway, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = get_json(&gw.admin_url("/readyz")).await;
        let got = &ready["classifiers"][name]["embedding"];
        if got["state"] == state {
            return got.clone();
        }
        assert!(Instant::now() < deadline, "{name} never {state}: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CODE: &str = "My rust function won't compile because of the borrow checker";
const MATH: &str = "Solve the integral of 3x squared from 0 to 2";
const CHAT: &str = "Hi there, how was your weekend?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_method_picks_the_right_label_on_clear_cases() {
    let f = Fleet::start(&[]);
    let classifiers = [
        classifier("lex", "    method: lexical"),
        classifier(
            "emb",
            "    method: embedding\n    embedding: {model: embedder, k: 3}",
        ),
        classifier(
            "ask",
            "    method: llm\n    llm: {model: judge, max_tokens: 4}",
        ),
    ]
    .join("\n");
    let models = [
        auto("by-lex", "lex", ""),
        auto("by-emb", "emb", ""),
        auto("by-llm", "ask", ""),
    ]
    .join("");
    let gw = Gateway::start(&f.yaml(&classifiers, &models));
    let ready = vectors_state(&gw, "emb", "ready").await;
    assert_eq!(ready["exemplars"], 15, "{ready}");
    for model in ["by-lex", "by-emb", "by-llm"] {
        for (text, served, rule) in [
            (CODE, "coder-m", 1),
            (MATH, "math-m", 2),
            (CHAT, "general-m", 3),
        ] {
            let (got, route) = ask(&gw, model, text, &[]).await;
            assert_eq!(got, served, "{model}: {text:?} went to {got} by {route}");
            let reason = if rule == 3 { "default" } else { "class" };
            assert_eq!(route, format!("{model}#{rule}:{reason}"));
        }
    }
    // The llm method asked the judge once per request (6 requests by-llm... 3 texts) and the
    // embeddings pool embedded the exemplars once and each by-emb text once.
    assert_eq!(
        f.judge.metric("switchyard_sim_http_requests_total").await,
        3.0
    );
    assert_eq!(
        f.embed.metric("switchyard_sim_http_requests_total").await,
        1.0 + 3.0
    );
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    for (series, want) in [
        (
            r#"switchyard_classifier_decisions_total{classifier="lex",label="code",method="final"}"#,
            1.0,
        ),
        (
            r#"switchyard_classifier_decisions_total{classifier="emb",label="math",method="embedding"}"#,
            1.0,
        ),
        (
            r#"switchyard_classifier_decisions_total{classifier="ask",label="chat",method="llm"}"#,
            1.0,
        ),
        (
            r#"switchyard_classifier_seconds_count{classifier="ask",method="llm"}"#,
            3.0,
        ),
        (
            r#"switchyard_classifier_cache_total{classifier="emb",result="miss"}"#,
            3.0,
        ),
    ] {
        assert_eq!(
            metric_value(&metrics, series),
            Some(want),
            "{series}\n{metrics}"
        );
    }
    // The same text again is a cache hit: the judge is not asked.
    ask(&gw, "by-llm", CODE, &[]).await;
    assert_eq!(
        f.judge.metric("switchyard_sim_http_requests_total").await,
        3.0
    );
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    let hit = r#"switchyard_classifier_cache_total{classifier="ask",result="hit"}"#;
    assert_eq!(metric_value(&metrics, hit), Some(1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ensemble_is_a_weighted_vote_and_traces_show_each_method() {
    let f = Fleet::start(&[]);
    // A text the lexical exemplars call chat, and the judge calls code (it says "bug").
    let text = "good morning, nice to meet you, how are you today? I found a bug";
    let ensemble = |lexical: f32, llm: f32| {
        format!("    method: ensemble\n    llm: {{model: judge}}\n    ensemble: {{lexical: {lexical}, llm: {llm}}}\n    cache: {{entries: 10, ttl: 1s}}")
    };
    let classifiers = [
        classifier("heavy_llm", &ensemble(1.0, 3.0)),
        classifier("heavy_lex", &ensemble(3.0, 0.5)),
    ]
    .join("\n");
    let models = [auto("a", "heavy_llm", ""), auto("b", "heavy_lex", "")].join("");
    let gw = Gateway::start(&f.yaml(&classifiers, &models));
    let t = trace(&gw, "a", text).await;
    let class = &t["classes"][0];
    assert_eq!(class["classifier"], "heavy_llm", "{t}");
    let methods: Vec<(String, String)> = class["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["method"].as_str().unwrap().to_owned(),
                m["label"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        methods,
        [
            ("lexical".into(), "chat".into()),
            ("llm".into(), "code".into())
        ],
        "{t}"
    );
    assert_eq!(class["label"], "code", "the heavier llm wins: {t}");
    assert_eq!(t["decision"]["route"], "a#1:class", "{t}");
    assert!(class["methods"][1]["micros"].as_u64().unwrap() > 0, "{t}");
    let t = trace(&gw, "b", text).await;
    assert_eq!(
        t["classes"][0]["label"], "chat",
        "the heavier lexical wins: {t}"
    );
    assert_eq!(t["decision"]["route"], "b#3:default", "{t}");
    // The request path decides the same.
    assert_eq!(ask(&gw, "a", text, &[]).await.0, "coder-m");
    assert_eq!(ask(&gw, "b", text, &[]).await.0, "general-m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_slower_than_the_budget_is_left_out_and_the_fallback_bounds_ttft() {
    // The judge's first token comes after 3 s; the budget is 150 ms.
    let f = Fleet::start(&["--fault", "first_token_delay_ms=3000"]);
    let c = classifier(
        "slow",
        "    method: llm\n    llm: {model: judge}\n    budget: 150ms\n    fallback: math",
    );
    let gw = Gateway::start(&f.yaml(&c, &auto("auto", "slow", "")));
    for _ in 0..3 {
        let started = Instant::now();
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": "auto", "stream": true, "max_tokens": 2,
                          "messages": [{"role": "user", "content": CODE}]}))
            .send()
            .await
            .unwrap();
        let mut resp = resp;
        let first = resp.chunk().await.unwrap().unwrap();
        let ttft = started.elapsed();
        assert!(String::from_utf8_lossy(&first).contains("data: "));
        assert!(
            ttft < Duration::from_millis(900),
            "TTFT {ttft:?} with a 150 ms budget"
        );
        assert!(
            ttft >= Duration::from_millis(150),
            "the budget was waited: {ttft:?}"
        );
        while resp.chunk().await.unwrap().is_some() {}
        assert_eq!(resp.status(), 200);
    }
    // Fallback `math` sent each to mathm; a timed-out answer is not cached.
    assert_eq!(
        f.maths.metric("switchyard_sim_http_requests_total").await,
        3.0
    );
    assert_eq!(
        f.judge.metric("switchyard_sim_http_requests_total").await,
        3.0
    );
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    let fallbacks =
        r#"switchyard_classifier_fallbacks_total{classifier="slow",reason="no_answer"}"#;
    assert_eq!(metric_value(&metrics, fallbacks), Some(3.0), "{metrics}");
    // The histogram of the wait: all three within the 0.25 s bucket, none under 0.1 s.
    let bucket = |le: &str| {
        metric_value(
            &metrics,
            &format!(
                r#"switchyard_classifier_seconds_bucket{{classifier="slow",method="total",le="{le}"}}"#
            ),
        )
    };
    assert_eq!(
        (bucket("0.1"), bucket("0.25")),
        (Some(0.0), Some(3.0)),
        "{metrics}"
    );
    let t = trace(&gw, "auto", CODE).await;
    assert_eq!(t["classes"][0]["source"], "no_answer", "{t}");
    assert_eq!(t["classes"][0]["methods"][0]["failure"], "timeout", "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_classifier_runs_only_when_the_first_label_needs_it() {
    let f = Fleet::start(&[]);
    let kinds = Sim::start(
        "kind-m",
        &[
            "--zero-delay",
            "--classifier-labels",
            "rust:borrow|cargo|lifetime,python:pip|django|pandas",
        ],
    );
    let kind_labels = r#"
      rust: {examples: ["the borrow checker and lifetimes", "cargo build fails"]}
      python: {examples: ["pip install breaks my django app", "pandas dataframe merge"]}"#;
    let classifiers = format!(
        "{}\n  code_kind:\n    labels:{kind_labels}\n    method: llm\n    llm: {{model: kinds}}\n",
        classifier("task", "    method: llm\n    llm: {model: judge}"),
    );
    let models = "  kinds: {pool: kinds}\n  auto:\n    route:\n      - when: {class: {task: code, code_kind: rust}}\n        to: coder\n      - when: {class: {task: math}}\n        to: mathm\n      - to: general\n";
    let yaml = f.yaml(&classifiers, models).replace(
        "pools:\n",
        &format!(
            "pools:\n  kinds: {{model: kind-m, servers: [{{url: \"{}\"}}]}}\n",
            kinds.url()
        ),
    );
    let gw = Gateway::start(&yaml);
    let calls = || async {
        (
            f.judge.metric("switchyard_sim_http_requests_total").await,
            kinds.metric("switchyard_sim_http_requests_total").await,
        )
    };
    // Math: task is asked, code_kind is not (rule 1 fails on task first; rule 2 matches).
    assert_eq!(ask(&gw, "auto", MATH, &[]).await.0, "math-m");
    assert_eq!(calls().await, (1.0, 0.0));
    // Code about rust: both, once each, although rule 1 and 2 both read task.
    assert_eq!(
        ask(
            &gw,
            "auto",
            "my rust function has a bug with the borrow checker",
            &[]
        )
        .await
        .0,
        "coder-m"
    );
    assert_eq!(calls().await, (2.0, 1.0));
    // Code about python: code_kind says python, so rule 1 fails and so does rule 2.
    assert_eq!(
        ask(&gw, "auto", "a python function bug: pip install fails", &[])
            .await
            .0,
        "general-m"
    );
    assert_eq!(calls().await, (3.0, 2.0));
    // Chat: no code_kind call.
    assert_eq!(ask(&gw, "auto", CHAT, &[]).await.0, "general-m");
    assert_eq!(calls().await, (4.0, 2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_keeps_its_first_label_unless_a_later_turn_is_confident() {
    let f = Fleet::start(&[]);
    let c = classifier("task", "    method: lexical");
    let gw = Gateway::start(&f.yaml(
        &c,
        &auto(
            "auto",
            "task",
            "    sticky: conversation\n    switch_confidence: 0.85\n",
        ),
    ));
    let session = [("x-session-id", "conv-1")];
    assert_eq!(ask(&gw, "auto", CODE, &session).await.0, "coder-m");
    // A vague follow-up: alone it is chat; in the conversation it stays with code.
    let vague = "thanks, and how would you do the second one?";
    let alone = trace(&gw, "auto", vague).await;
    assert_eq!(alone["classes"][0]["label"], "chat", "{alone}");
    assert!(
        alone["classes"][0]["confidence"].as_f64().unwrap() < 0.85,
        "{alone}"
    );
    let (served, _) = ask(&gw, "auto", vague, &session).await;
    assert_eq!(
        served, "coder-m",
        "sticky to the conversation's first label"
    );
    assert_eq!(
        ask(&gw, "auto", vague, &[("x-session-id", "conv-2")])
            .await
            .0,
        "general-m"
    );
    // A confident turn about something else switches, and the new label is then kept.
    let sure = "solve the integral and the derivative, prove the equation";
    let t = trace(&gw, "auto", sure).await;
    assert!(
        t["classes"][0]["confidence"].as_f64().unwrap() >= 0.85,
        "{t}"
    );
    assert_eq!(ask(&gw, "auto", sure, &session).await.0, "math-m");
    assert_eq!(ask(&gw, "auto", vague, &session).await.0, "math-m");
    // Without a session id, the first user message is the conversation's key.
    let turns = |last: &str| {
        json!({"model": "auto", "max_tokens": 2, "messages": [
            {"role": "user", "content": CODE},
            {"role": "assistant", "content": "Here is a fix."},
            {"role": "user", "content": last}]})
    };
    let first =
        json!({"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": CODE}]});
    for (body, want) in [(first, "coder-m"), (turns(vague), "coder-m")] {
        let v: Value = client()
            .post(gw.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["model"], want, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_reach_the_embeddings_pool_keeps_the_old_vectors() {
    let f = Fleet::start(&[]);
    let c = classifier(
        "emb",
        "    method: embedding\n    embedding: {model: embedder}",
    );
    let gw = Gateway::start(&f.yaml(&c, &auto("auto", "emb", "")));
    vectors_state(&gw, "emb", "ready").await;
    assert_eq!(ask(&gw, "auto", MATH, &[]).await.0, "math-m");
    // New exemplars, and the embeddings pool moved to an address nothing listens on.
    let gone = dead_addr();
    let changed = f
        .yaml_with(&format!("http://{gone}"), &c, &auto("auto", "emb", ""))
        .replace(
            "what is your favourite movie",
            "which film did you like best",
        );
    gw.rewrite_config(&changed);
    assert_eq!(gw.reload().await.status(), 200);
    let stale = vectors_state(&gw, "emb", "stale").await;
    assert_eq!(stale["exemplars"], 15, "the old vectors serve: {stale}");
    assert!(!stale["error"].as_str().unwrap().is_empty(), "{stale}");
    gw.proc.wait_for_stderr("exemplar vectors not computed", 1);
    // The embedding call of a request fails too (it is an error, not missing vectors), so the
    // classifier has no answer; with vectors but a reachable pool it would answer (below).
    let t = trace(&gw, "auto", MATH).await;
    assert_eq!(t["classes"][0]["methods"][0]["failure"], "error", "{t}");
    // The pool comes back where the config points: the new exemplars are embedded.
    let _back = Sim::start_at("embed-small", gone, &["--zero-delay"]);
    let ready = vectors_state(&gw, "emb", "ready").await;
    assert_eq!(ready["exemplars"], 15, "{ready}");
    assert_eq!(ask(&gw, "auto", MATH, &[]).await.0, "math-m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_route_shows_each_method_label_confidence_and_time() {
    let f = Fleet::start(&[]);
    let c = classifier("task", "    method: ensemble\n    llm: {model: judge}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, f.yaml(&c, &auto("auto", "task", ""))).unwrap();
    let run = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(["route", "-c", path.to_str().unwrap()]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        let body = json!({"model": "auto", "messages": [{"role": "user", "content": CODE}]});
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(false);
    assert!(text.contains("class task: code (confidence "), "{text}");
    assert!(text.contains("lexical: code ("), "{text}");
    assert!(text.contains("llm: code (1.00, "), "{text}");
    let v: Value = serde_json::from_str(&run(true)).unwrap();
    let methods = v["classes"][0]["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2, "{v}");
    assert!(
        methods
            .iter()
            .all(|m| m["label"] == "code" && m["micros"].is_u64()),
        "{v}"
    );
    assert_eq!(v["decision"]["route"], "auto#1:class", "{v}");
}
