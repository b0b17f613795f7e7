//! The routing decision of a parsed request, shared by the request path (`intake`) and the dry
//! runs that trace it (`switchyard route`, `POST /admin/route`): the request's preferences are
//! read, the router decides, and a refusal becomes the client's error.

use http::{HeaderMap, HeaderName};

use crate::openai::error::echo;
use crate::openai::{ApiError, Endpoint, RequestView};
use crate::routing::classify::{self, Backend, Known};
use crate::routing::{prefs, Ask, Live, Prefs, Refusal, Route, Router, Trace};

const MAX_TTFT: HeaderName = HeaderName::from_static(prefs::MAX_TTFT_HEADER);

/// Who is asking: the tenant's name and which models it may use.
pub struct Caller<'a> {
    pub tenant: Option<&'a str>,
    pub allowed: &'a (dyn Fn(usize) -> bool + Sync),
}

/// The model the request names, when it exists and the caller may use it; the same 404 for
/// both otherwise.
pub fn resolve(
    router: &Router,
    view: &RequestView<'_>,
    allowed: &dyn Fn(usize) -> bool,
) -> Result<usize, ApiError> {
    router
        .resolve(&view.model)
        .filter(|&m| allowed(m))
        .ok_or_else(|| ApiError::ModelNotFound {
            model: echo(&view.model),
        })
}

/// Routes a request naming `model` (resolved and allowed). A classifier that calls a model is
/// run through `backend` when a rule needs it, and the decision is made again; `known` ends
/// with every classification made.
#[allow(clippy::too_many_arguments)]
pub async fn route(
    router: &Router,
    live: &(dyn Live + Sync),
    model: usize,
    endpoint: Endpoint,
    view: &RequestView<'_>,
    raw: &[u8],
    headers: &HeaderMap,
    caller: &Caller<'_>,
    backend: &dyn Backend,
    known: &mut Known,
    trace: Option<&mut Trace>,
) -> Result<Route, ApiError> {
    // A TTFT target only orders candidates, which only virtual models have (the requested one,
    // or one of the request's `models`): a plain request to a model that serves itself does not
    // look the header up.
    let in_body = view.preferences.iter().any(Option::is_some);
    let max_ttft = (in_body || router.is_virtual(model))
        .then(|| headers.get(MAX_TTFT))
        .flatten();
    let prefs = if in_body || max_ttft.is_some() {
        let [models, provider, ttft] = view.preferences;
        Prefs::parse(models, provider, ttft, max_ttft, |name| {
            router.resolve(name).filter(|&m| (caller.allowed)(m))
        })
        .map_err(|r| refused(r, &view.model))?
    } else {
        Prefs::default()
    };
    let ask = Ask {
        model,
        name: &view.model,
        endpoint,
        view,
        body: raw,
        headers,
        tenant: caller.tenant,
        allowed: caller.allowed,
        prefs: &prefs,
        remember: trace.is_none(),
    };
    let mut trace = trace;
    // Each classifier is run at most once: a decision that asks for one gets it next time.
    for _ in 0..=router.classifiers.list.len() {
        let mut attempt = trace.as_ref().map(|_| Trace::default());
        match router.decide(&ask, live, known, attempt.as_mut()) {
            Err(Refusal::Unclassified(c)) if known.get(c).is_none() => {
                let Some(classifier) = router.classifiers.get(c) else {
                    break;
                };
                let text = router.class_text(c, &ask);
                let vectors = &router.classifiers.memory.vectors;
                // Boxed: its future (the calls, their timeouts) would otherwise make every
                // request's future larger, and Pingora moves that whole into a box per request.
                let fresh = Box::pin(classify::run::run(classifier, vectors, &text, backend)).await;
                known.insert(c, router.settle(&ask, c, fresh));
            }
            result => {
                if let (Some(t), Some(a)) = (trace.as_deref_mut(), attempt) {
                    *t = a;
                    t.classes = router.describe_classes(known);
                }
                return result.map_err(|r| refused(r, &view.model));
            }
        }
    }
    Err(ApiError::Internal)
}

/// The decision a request would get, traced, without sending it anywhere. A request that would
/// be refused has the refusal in the trace (OpenAI's error shape) and its status as `Err`.
pub async fn dry_run(
    router: &Router,
    live: &(dyn Live + Sync),
    endpoint: Endpoint,
    body: &[u8],
    headers: &HeaderMap,
    caller: &Caller<'_>,
    backend: &dyn Backend,
) -> (Trace, Result<(), u16>) {
    let mut trace = Trace::default();
    let mut known = Known::default();
    let result = match RequestView::parse(body) {
        Err(e) => Err(e),
        Ok(view) => match resolve(router, &view, caller.allowed) {
            Err(e) => Err(e),
            Ok(model) => {
                route(
                    router,
                    live,
                    model,
                    endpoint,
                    &view,
                    body,
                    headers,
                    caller,
                    backend,
                    &mut known,
                    Some(&mut trace),
                )
                .await
            }
        },
    };
    match result {
        Ok(_) => (trace, Ok(())),
        Err(e) => {
            trace.refusal = serde_json::from_slice(&e.body()).ok();
            (trace, Err(e.status()))
        }
    }
}

/// The client's answer to a request the router could not place.
fn refused(r: Refusal, model: &str) -> ApiError {
    match r {
        Refusal::UnknownModel { name } => ApiError::ModelNotFound { model: echo(&name) },
        Refusal::NotAllowed => ApiError::ModelNotFound { model: echo(model) },
        Refusal::ContextLengthExceeded { needed, largest } => ApiError::ContextLengthExceeded {
            needed,
            window: largest,
        },
        Refusal::OverMaxPrice { max } => ApiError::OverMaxPrice {
            prompt: max.input_per_mtok.to_string(),
            completion: max.output_per_mtok.to_string(),
        },
        Refusal::NoRule => ApiError::NoMatchingRoute { model: echo(model) },
        Refusal::BadPreference { param, message } => ApiError::invalid(message, Some(param)),
        Refusal::Unclassified(_) => ApiError::Internal,
    }
}
