//! `balance: prefix_aware` through the gateway, against simulator servers: conversations and
//! system prompts keep to the server that holds them, a loaded server loses them, a reload
//! moves only the prefixes of the server it removed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;

use common::{get_json, Gateway, Sim};
use serde_json::{json, Value};

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn config(servers: &[&Sim], extra: &str) -> String {
    let list: String = servers
        .iter()
        .map(|s| format!("      - url: {}\n", s.url()))
        .collect();
    format!(
        "server:\n  access_log: stdout\npools:\n  p:\n    model: {SERVED}\n    engine: vllm\n    balance: prefix_aware\n{extra}    servers:\n{list}models:\n  m:\n    pool: p\n"
    )
}

/// A system prompt of ~2 KB that differs from system prompt `k`'s from its first bytes.
fn system_prompt(k: usize) -> String {
    format!("You are assistant number {k}. ") + &"Answer briefly and cite the manual. ".repeat(60)
}

/// A conversation: its system prompt and the turns so far.
struct Conversation {
    messages: Vec<Value>,
}

impl Conversation {
    fn new(system: usize) -> Self {
        Self {
            messages: vec![json!({"role": "system", "content": system_prompt(system)})],
        }
    }

    /// Sends the next user turn; the answer joins the conversation. Returns the server that
    /// answered, from the access log (line `line`, 1-based).
    async fn turn(&mut self, gw: &Gateway, line: usize) -> String {
        let n = self.messages.len();
        self.messages
            .push(json!({"role": "user", "content": format!("question {n}: how do I reset it?")}));
        let body = json!({"model": "m", "messages": self.messages, "max_tokens": 4});
        let resp = gw.post("/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        self.messages
            .push(json!({"role": "assistant", "content": v["choices"][0]["message"]["content"]}));
        let log = gw.access_log_lines(line).await;
        assert_eq!(log.len(), line, "access log: {log:?}");
        log[line - 1]["server"].as_str().unwrap().to_owned()
    }
}

/// Each conversation keeps to one server over its turns; conversations over two system
/// prompts, interleaved, stay on two servers; eight system prompts spread over the pool.
#[tokio::test]
async fn turns_follow_their_server_and_system_prompts_stay_apart() {
    let sims: Vec<Sim> = (0..4).map(|_| Sim::fast(SERVED)).collect();
    let gw = Gateway::start(&config(&sims.iter().collect::<Vec<_>>(), ""));
    let mut line = 0;
    let mut a = Conversation::new(1);
    let mut b = Conversation::new(2);
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        line += 1;
        on_a.push(a.turn(&gw, line).await);
        line += 1;
        on_b.push(b.turn(&gw, line).await);
    }
    assert!(on_a.iter().all(|s| *s == on_a[0]), "{on_a:?}");
    assert!(on_b.iter().all(|s| *s == on_b[0]), "{on_b:?}");
    assert_ne!(on_a[0], on_b[0], "two prompts, idle servers: two servers");

    // New conversations over the same system prompts join them, other users' included.
    for _ in 0..3 {
        line += 1;
        assert_eq!(Conversation::new(1).turn(&gw, line).await, on_a[0]);
        line += 1;
        assert_eq!(Conversation::new(2).turn(&gw, line).await, on_b[0]);
    }

    // Eight system prompts: every server gets some, each prompt keeps to its server.
    let mut owner: HashMap<usize, String> = HashMap::new();
    for round in 0..3 {
        for k in 10..18 {
            line += 1;
            let server = Conversation::new(k).turn(&gw, line).await;
            if round == 0 {
                owner.insert(k, server);
            } else {
                assert_eq!(server, owner[&k], "system prompt {k}, round {round}");
            }
        }
    }
    let used: std::collections::HashSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 4, "{owner:?}");
}

/// A server whose engine queue (scraped) is over the guard loses its conversations to the
/// least loaded server, which then holds them.
#[tokio::test]
async fn a_server_whose_queue_is_over_the_guard_loses_affinity() {
    let flags = [
        "--max-num-seqs",
        "1",
        "--decode-step-ms",
        "20",
        "--prefill-us-per-token",
        "0",
    ];
    let sims = [Sim::start(SERVED, &flags), Sim::start(SERVED, &flags)];
    let gw = Gateway::start(&config(
        &[&sims[0], &sims[1]],
        "    engine_metrics:\n      interval: 50ms\n",
    ));
    let mut c = Conversation::new(1);
    let owner = c.turn(&gw, 1).await;
    assert_eq!(c.turn(&gw, 2).await, owner);
    let (busy, other) = if owner == sims[0].addr.to_string() {
        (0, 1)
    } else {
        (1, 0)
    };

    // Eight long generations straight to the owner: one runs, seven wait. Over
    // max(abs_threshold 4, 1.25 × mean 4) = 5.
    let background = sims[busy].occupy(SERVED, 8, 5000);
    gw.wait_server_load(busy, |l| l >= 8.0).await;
    let moved = c.turn(&gw, 3).await;
    assert_eq!(moved, sims[other].addr.to_string());
    // The next turn stays where it went: that server holds the conversation now.
    assert_eq!(c.turn(&gw, 4).await, moved);
    for b in background {
        b.abort();
    }
}

/// A reload that removes a server moves the conversations it held, and only those: the others
/// keep their servers (the index outlives the runtime).
#[tokio::test]
async fn a_reload_removing_a_server_moves_only_its_prefixes() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::fast(SERVED)).collect();
    let all: Vec<&Sim> = sims.iter().collect();
    let gw = Gateway::start(&config(&all, ""));
    let mut line = 0;
    let mut convs: Vec<Conversation> = (0..6).map(Conversation::new).collect();
    let mut owner = Vec::new();
    for c in &mut convs {
        line += 1;
        owner.push(c.turn(&gw, line).await);
    }
    let removed = sims[0].addr.to_string();
    assert!(owner.contains(&removed), "{owner:?}");

    gw.rewrite_config(&config(&all[1..], ""));
    assert_eq!(gw.reload().await.status(), 200);
    // What the index remembers, per server that stayed.
    let servers = get_json(&gw.admin_url("/admin/servers")).await;
    let listed = servers["pools"][0]["servers"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for s in listed {
        let id = s["id"].as_str().unwrap();
        let blocks = s["prefix_blocks"].as_u64().unwrap();
        assert_eq!(blocks > 0, owner.iter().any(|o| o == id), "{servers}");
    }
    for (c, was) in convs.iter_mut().zip(&owner) {
        line += 1;
        let now = c.turn(&gw, line).await;
        if *was == removed {
            assert_ne!(now, removed);
        } else {
            assert_eq!(now, *was, "a conversation of a server that stayed moved");
        }
    }
}
