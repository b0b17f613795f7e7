//! `/readyz`: whether this gateway should get traffic from its load balancer, and the state
//! of every pool and model behind it.
//!
//! Ready while the gateway can serve: its config is loaded (a runtime exists), its listeners
//! are up (they are before the admin listener answers), and it is not draining. A pool
//! without a usable server, or a model answered only through its fallback, is reported in the
//! body but does not make the gateway unready: one dead model would take every gateway of a
//! fleet out of rotation, and every other model with it. `server.ready_requires` names the
//! models the gateway is not ready without.

use serde_json::{json, Map, Value};

use super::{Runtime, Shared};
use crate::routing::spec::{Serve, Target};

/// How a model is answered right now; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ModelState {
    /// By its own pool (a virtual model: by one of its targets' own pools).
    Serving,
    /// Only through a fallback pool.
    Fallback,
    Down,
}

impl ModelState {
    fn name(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Fallback => "fallback",
            Self::Down => "down",
        }
    }
}

/// Whether the gateway is ready, and the body that says why.
pub fn readiness(shared: &Shared) -> (bool, Value) {
    let runtime = shared.runtime();
    let draining = shared.lifecycle.is_draining();
    let now = crate::upstream::now_ms();
    // A pool in panic mode is tried, but it is not counted on.
    let usable: Vec<bool> = (runtime.pools.iter())
        .map(|p| p.servers.iter().any(|s| s.state.is_usable(now)))
        .collect();
    let pools: Map<String, Value> = runtime
        .pools
        .iter()
        .map(|p| {
            let up = p.servers.iter().filter(|s| s.state.is_usable(now)).count();
            let state = json!({"servers": p.servers.len(), "usable": up, "panic": p.in_panic(now)});
            (p.name.clone(), state)
        })
        .collect();
    let states: Vec<ModelState> = (0..runtime.config.models.len())
        .map(|m| state(&runtime, &usable, m))
        .collect();
    let name = |m: usize| runtime.config.models[m].name.as_str();
    let models: Map<String, Value> = (states.iter().enumerate())
        .map(|(m, s)| (name(m).to_owned(), json!(s.name())))
        .collect();
    let missing: Vec<&str> = (runtime.config.server.ready_requires.iter())
        .filter(|&&m| states.get(m) == Some(&ModelState::Down))
        .map(|&m| name(m))
        .collect();
    let ready = !draining && missing.is_empty();
    // Exemplar vectors of embedding classifiers: a classifier without them still answers by
    // its other methods, so they do not make the gateway unready; they are shown.
    let classifiers: Map<String, Value> = (runtime.router.classifiers.vector_status().into_iter())
        .map(|(name, status)| (name.to_owned(), json!({"embedding": status})))
        .collect();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "draining": draining,
        "missing": missing,
        "pools": pools,
        "models": models,
        "classifiers": classifiers,
    });
    (ready, body)
}

/// A model's state from which pools have a usable server (`usable`, by pool index).
fn state(runtime: &Runtime, usable: &[bool], model: usize) -> ModelState {
    match runtime.config.models.get(model).map(|m| &m.serve) {
        Some(Serve::Pools { pool, fallback }) => {
            if usable.get(*pool) == Some(&true) {
                ModelState::Serving
            } else if fallback.iter().any(|f| usable.get(*f) == Some(&true)) {
                ModelState::Fallback
            } else {
                ModelState::Down
            }
        }
        // A virtual model is as good as its best target (targets are never virtual).
        Some(Serve::Route(rules)) => (rules.rules.iter())
            .flat_map(|r| targets(&r.target))
            .filter(|&t| t != model && !runtime.config.models[t].serve.is_virtual())
            .map(|t| state(runtime, usable, t))
            .min()
            .unwrap_or(ModelState::Down),
        None => ModelState::Down,
    }
}

fn targets(target: &Target) -> Vec<usize> {
    match target {
        Target::Model(m) => vec![*m],
        Target::Split { arms, .. } => arms.iter().map(|(m, _)| *m).collect(),
        Target::Candidates { models, .. } => models.clone(),
    }
}
