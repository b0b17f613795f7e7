//! The routing decision of a parsed request, shared by the request path (`intake`) and the dry
//! runs that trace it (`switchyard route`, `POST /admin/route`): the request's preferences are
//! read, the router decides, and a refusal becomes the client's error.

use http::{HeaderMap, HeaderName};

use crate::openai::error::echo;
use crate::openai::{ApiError, Endpoint, RequestView};
use crate::routing::{prefs, Ask, Live, Prefs, Refusal, Route, Router, Trace};

const MAX_TTFT: HeaderName = HeaderName::from_static(prefs::MAX_TTFT_HEADER);

/// Who is asking: the tenant's name and which models it may use.
pub struct Caller<'a> {
    pub tenant: Option<&'a str>,
    pub allowed: &'a dyn Fn(usize) -> bool,
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

/// Routes a request naming `model` (resolved and allowed).
#[allow(clippy::too_many_arguments)]
pub fn route(
    router: &Router,
    live: &dyn Live,
    model: usize,
    endpoint: Endpoint,
    view: &RequestView<'_>,
    raw: &[u8],
    headers: &HeaderMap,
    caller: &Caller<'_>,
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
    };
    router
        .decide(&ask, live, trace)
        .map_err(|r| refused(r, &view.model))
}

/// The decision a request would get, traced, without sending it anywhere. A request that would
/// be refused has the refusal in the trace (OpenAI's error shape) and its status as `Err`.
pub fn dry_run(
    router: &Router,
    live: &dyn Live,
    endpoint: Endpoint,
    body: &[u8],
    headers: &HeaderMap,
    caller: &Caller<'_>,
) -> (Trace, Result<(), u16>) {
    let mut trace = Trace::default();
    let result = RequestView::parse(body).and_then(|view| {
        let model = resolve(router, &view, caller.allowed)?;
        route(
            router,
            live,
            model,
            endpoint,
            &view,
            body,
            headers,
            caller,
            Some(&mut trace),
        )
    });
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
    }
}
