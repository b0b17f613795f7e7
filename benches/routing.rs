//! The router's decision for a virtual model with 20 rules, over a 4 KB and a 64 KB
//! conversation, where no rule before the last matches (every condition is evaluated): the
//! issue's budget is 2 µs and 20 µs with no allocation per decision. Beside it, the naive way a
//! router does it (parse the whole body into a `serde_json::Value`, lower-case the last user
//! message, search each keyword and regex anew). Allocations per decision are counted first.
//!
//! Then the lexical classifier of `benches/route_eval` (six labels, its exemplars) scoring a
//! 2 KB message: the classifier issue's budget is 20 µs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;

use criterion::{black_box, criterion_group, Criterion, Throughput};
use http::HeaderMap;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use switchyard::openai::{Endpoint, RequestView};
use switchyard::routing::classify::lexical::Lexical;
use switchyard::routing::{Ask, Offline, Prefs, Router};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// 20 rules of every kind; nothing before the default matches the benchmark's request.
pub const RULES: &str = r#"
pools:
  small: {model: s, context_window: 131072, cost: {input_per_mtok: 0.1, output_per_mtok: 0.2}, servers: [{url: "http://127.0.0.1:1"}]}
  big: {model: b, context_window: 131072, cost: {input_per_mtok: 1.0, output_per_mtok: 2.0}, servers: [{url: "http://127.0.0.1:2"}]}
  coder: {model: c, servers: [{url: "http://127.0.0.1:3"}]}
  rc: {model: r, servers: [{url: "http://127.0.0.1:4"}]}
models:
  small: {pool: small}
  big: {pool: big}
  coder: {pool: coder}
  rc: {pool: rc}
  auto:
    aliases: [router]
    route:
      - when: {tools: true}
        to: big
      - when: {images: true}
        to: big
      - when: {json_mode: true}
        to: coder
      - when: {prompt_tokens: {over: 100000}}
        to: big
      - when: {max_tokens: {over: 4000}}
        to: big
      - when: {turns: {over: 400}}
        to: big
      - when: {header: {x-team: [search, ads]}}
        to: small
      - when: {tenant: [acme]}
        to: rc
      - when: {keywords: [kubernetes, helm, terraform, ansible]}
        to: coder
      - when: {keywords: [python, rust, golang, java, typescript, stack trace, segfault]}
        to: coder
      - when: {regex: '(?i)\bsummari[sz]e\b'}
        to: small
      - when: {regex: '(?i)\btranslate (this|into|to)\b'}
        to: small
      - when: {keywords: [invoice, refund, billing, chargeback]}
        to: small
      - when: {model_requested: [router]}
        to: big
      - when: {stream: true, max_tokens: {under: 50}}
        to: small
      - when: {keywords: [sql, database, query plan, index scan]}
        to: coder
      - when: {regex: '\b\d{4}-\d{2}-\d{2}\b'}
        to: small
      - when: {header: {x-experiment: "on"}}
        split:
          - {to: small, weight: 90}
          - {to: rc, weight: 10}
      - when: {keywords: [poem, story, sonnet]}
        to: big
      - to: [small, big]
        prefer: price
tenants:
  acme: {keys: ["sha256:0000000000000000000000000000000000000000000000000000000000000001"]}
"#;

/// A chat body of about `size` bytes: a system prompt, then turns of prose, the last one the
/// user's question (which no rule's keywords or patterns match).
pub fn conversation(size: usize) -> Vec<u8> {
    let prose = "The committee reviewed the quarterly figures and agreed that the new \
        warehouse layout reduced picking times, although seasonal staffing remains a concern \
        for the northern sites. ";
    let question = "Could you tell me what the committee decided about staffing in the \
        northern sites, in two sentences?";
    let body = |turns: usize| {
        let mut messages = vec![
            serde_json::json!({"role": "system", "content": "You are a helpful assistant for the operations team."}),
        ];
        for i in 0..turns {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            messages.push(serde_json::json!({"role": role, "content": prose.repeat(3)}));
        }
        messages.push(serde_json::json!({"role": "user", "content": question}));
        serde_json::to_vec(
            &serde_json::json!({"model": "auto", "max_tokens": 256, "messages": messages}),
        )
        .unwrap()
    };
    let mut turns = 1;
    while body(turns + 1).len() <= size {
        turns += 1;
    }
    body(turns)
}

pub fn router() -> Router {
    let config = switchyard::config::parse(RULES).unwrap();
    switchyard::state::router(&config, Default::default()).unwrap()
}

/// One decision for `body`; returns the decision id.
pub fn decide(router: &Router, body: &[u8], headers: &HeaderMap) -> u32 {
    let view = RequestView::parse(body).unwrap();
    decide_parsed(router, &view, body, headers)
}

fn decide_parsed(router: &Router, view: &RequestView<'_>, body: &[u8], headers: &HeaderMap) -> u32 {
    let prefs = Prefs::default();
    let allowed = |_: usize| true;
    let ask = Ask {
        model: router.resolve(&view.model).unwrap(),
        name: &view.model,
        endpoint: Endpoint::ChatCompletions,
        view,
        body,
        headers,
        tenant: None,
        allowed: &allowed,
        prefs: &prefs,
        remember: true,
    };
    router
        .decide(&ask, &Offline, &mut Default::default(), None)
        .unwrap()
        .decision
}

/// The naive router: the whole body as a `Value`, the last user message lower-cased, every
/// keyword searched with `contains` and word boundaries checked by hand, regexes compiled once
/// but run per rule.
struct Naive {
    keywords: Vec<Vec<String>>,
    regexes: Vec<regex_automata::meta::Regex>,
}

impl Naive {
    fn new() -> Self {
        let k = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Self {
            keywords: vec![
                k(&["kubernetes", "helm", "terraform", "ansible"]),
                k(&[
                    "python",
                    "rust",
                    "golang",
                    "java",
                    "typescript",
                    "stack trace",
                    "segfault",
                ]),
                k(&["invoice", "refund", "billing", "chargeback"]),
                k(&["sql", "database", "query plan", "index scan"]),
                k(&["poem", "story", "sonnet"]),
            ],
            regexes: [
                r"(?i)\bsummari[sz]e\b",
                r"(?i)\btranslate (this|into|to)\b",
                r"\b\d{4}-\d{2}-\d{2}\b",
            ]
            .iter()
            .map(|p| regex_automata::meta::Regex::new(p).unwrap())
            .collect(),
        }
    }

    fn decide(&self, body: &[u8]) -> usize {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let messages = v["messages"].as_array().unwrap();
        let last = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_lowercase();
        let word = |w: &str| {
            last.match_indices(w).any(|(i, _)| {
                let before = last[..i]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !c.is_alphanumeric());
                let after = last[i + w.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_alphanumeric());
                before && after
            })
        };
        let mut hits = 0;
        if v.get("tools").is_some() || v.get("response_format").is_some() {
            hits += 1;
        }
        hits += usize::from(messages.len() > 400);
        for list in &self.keywords {
            hits += usize::from(list.iter().any(|w| word(w)));
        }
        for re in &self.regexes {
            hits += usize::from(re.is_match(&last));
        }
        hits
    }
}

fn report_allocations(router: &Router) {
    let headers = HeaderMap::new();
    for size in [4 << 10, 64 << 10] {
        let body = conversation(size);
        let view = RequestView::parse(&body).unwrap();
        // Warm the thread's scratch buffers and the regexes' caches.
        decide_parsed(router, &view, &body, &headers);
        let n = 1000;
        let region = Region::new(GLOBAL);
        for _ in 0..n {
            black_box(decide_parsed(router, &view, &body, &headers));
        }
        let allocs = region.change().allocations as f64 / n as f64;
        let naive = Naive::new();
        let region = Region::new(GLOBAL);
        for _ in 0..100 {
            black_box(naive.decide(&body));
        }
        let naive_allocs = region.change().allocations as f64 / 100.0;
        println!(
            "allocations per decision, {} KB conversation: {allocs} (naive: {naive_allocs})",
            body.len() >> 10
        );
    }
}

fn routing(c: &mut Criterion) {
    let router = router();
    let headers = HeaderMap::new();
    let naive = Naive::new();
    let mut g = c.benchmark_group("route_20_rules");
    for size in [4 << 10, 64 << 10] {
        let body = conversation(size);
        let view = RequestView::parse(&body).unwrap();
        assert_eq!(
            router
                .decision(decide_parsed(&router, &view, &body, &headers))
                .unwrap()
                .label,
            "auto#20:price=small",
            "the benchmark request must reach the last rule"
        );
        g.throughput(Throughput::Bytes(body.len() as u64));
        let kb = body.len() >> 10;
        g.bench_function(format!("decide_{kb}KB"), |b| {
            b.iter(|| decide_parsed(&router, &view, black_box(&body), &headers))
        });
        g.bench_function(format!("parse_and_decide_{kb}KB"), |b| {
            b.iter(|| decide(&router, black_box(&body), &headers))
        });
        g.bench_function(format!("naive_{kb}KB"), |b| {
            b.iter(|| naive.decide(black_box(&body)))
        });
    }
    g.finish();
}

/// The lexical model of `benches/route_eval/labels.yaml` (each label's name, description and
/// examples, as a classifier builds it).
fn route_eval_lexical() -> Lexical {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/route_eval/labels.yaml"
    ))
    .unwrap();
    let file: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let labels = file["labels"].as_mapping().unwrap();
    let texts: Vec<Vec<String>> = labels
        .iter()
        .map(|(name, l)| {
            let mut t = vec![name.as_str().unwrap().to_owned()];
            t.extend(l["description"].as_str().map(str::to_owned));
            t.extend(
                l["examples"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().unwrap().to_owned()),
            );
            t
        })
        .collect();
    let refs: Vec<Vec<&str>> = texts
        .iter()
        .map(|t| t.iter().map(String::as_str).collect())
        .collect();
    Lexical::build(&refs)
}

fn classify(c: &mut Criterion) {
    let model = route_eval_lexical();
    let paragraph = "I have a small service that reads orders from a queue, validates them and \
        writes them to the database, and since the last deploy it sometimes stops consuming \
        after a few hours without any error in the logs. ";
    let mut message = String::new();
    while message.len() + paragraph.len() <= 2048 {
        message.push_str(paragraph);
    }
    let mut g = c.benchmark_group("classify_lexical");
    g.throughput(Throughput::Bytes(message.len() as u64));
    g.bench_function(format!("{}B_message", message.len()), |b| {
        b.iter(|| model.classify(black_box(&message)))
    });
    g.finish();
}

criterion_group!(benches, routing, classify);

fn main() {
    report_allocations(&router());
    benches();
    Criterion::default().configure_from_args().final_summary();
}
