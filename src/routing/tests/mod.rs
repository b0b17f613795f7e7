//! The router against configs as users write them: `rules.rs` for conditions, first match,
//! the default, tenants' lists and traces; `choices.rs` for what a rule chooses among
//! (context windows, candidates, prices, the models list, splits, shadows). This file is
//! their harness.

mod choices;
mod rules;

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
        let router = crate::state::router(&config, Default::default()).unwrap();
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
            remember: true,
        };
        self.router
            .decide(&ask, live, &mut Default::default(), None)
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
