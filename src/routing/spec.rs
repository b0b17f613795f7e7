//! The router's configuration, typed and validated: what `models.X.route`, `models.X.shadow`
//! and `models.X.baseline` say once `config::validate` has resolved every name to an index
//! into `Config::models`. The router compiles it ([`super::Router::build`]); nothing here
//! runs per request.

use http::HeaderName;

/// How a public model is served.
#[derive(Debug, Clone)]
pub enum Serve {
    /// By servers: its pool, then its fallback pools in order (indices into `Config::pools`).
    Pools { pool: usize, fallback: Vec<usize> },
    /// A virtual model: rules choose another (non-virtual) public model per request.
    Route(Rules),
}

impl Serve {
    pub fn is_virtual(&self) -> bool {
        matches!(self, Self::Route(_))
    }

    /// The model's own pool, when it has one.
    pub fn pool(&self) -> Option<usize> {
        match self {
            Self::Pools { pool, .. } => Some(*pool),
            Self::Route(_) => None,
        }
    }
}

/// `models.X.route`: rules tried in order; the first whose `when` holds decides. A rule
/// without conditions (the last one) is the default.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub rules: Vec<Rule>,
    /// `models.X.baseline`: the model whose prices the routed traffic is compared with.
    pub baseline: Option<usize>,
    /// `models.X.sticky: conversation`: the switch confidence a later turn's label needs to
    /// replace the conversation's first.
    pub sticky: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Every condition must hold; empty: the default rule.
    pub when: Vec<Condition>,
    /// The text `keywords` and `regex` look at.
    pub scope: Scope,
    pub target: Target,
}

/// Which text of the request `keywords` and `regex` read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// The last user message (chat), the prompt (completions) or the input (embeddings).
    #[default]
    LastUser,
    /// Every message's text, in order.
    Conversation,
}

impl Scope {
    pub const NAMES: [&'static str; 2] = ["last_user", "conversation"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "last_user" => Some(Self::LastUser),
            "conversation" => Some(Self::Conversation),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::LastUser => "last_user",
            Self::Conversation => "conversation",
        }
    }
}

/// Strict bounds on a count: above `over` and below `under`, each when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bounds {
    pub over: Option<u64>,
    pub under: Option<u64>,
}

impl Bounds {
    pub fn holds(&self, n: u64) -> bool {
        self.over.is_none_or(|o| n > o) && self.under.is_none_or(|u| n < u)
    }
}

/// One condition of a rule's `when`. The config name of each is also its name in the route
/// header's reason (`auto#3:keywords`).
#[derive(Debug, Clone)]
pub enum Condition {
    /// `tools`, `functions` or `tool_choice` present (true), or none of them (false).
    Tools(bool),
    /// An `image_url` part in some message.
    Images(bool),
    /// `response_format` asks for JSON (`json_object` or `json_schema`).
    JsonMode(bool),
    Stream(bool),
    /// Estimated prompt tokens of the whole conversation (bytes / `bytes_per_token`).
    PromptTokens(Bounds),
    /// `max_completion_tokens`, else `max_tokens`; a request without either matches neither
    /// bound.
    MaxTokens(Bounds),
    /// Number of messages.
    Turns(Bounds),
    /// Any of these, case-insensitive, as whole words.
    Keywords(Vec<String>),
    /// Any of these regular expressions (Rust `regex` syntax) matches.
    Regex(Vec<String>),
    /// Each named header has one of its values (exact match).
    Header(Vec<(HeaderName, Vec<String>)>),
    /// The caller's tenant is one of these.
    Tenant(Vec<String>),
    /// The client named the model by one of these (the virtual name or one of its aliases).
    ModelRequested(Vec<String>),
    /// Each classifier (index into `Config::classifiers`) gives one of its labels (indices),
    /// checked in order: a classifier runs only when those before it matched.
    Class(Vec<(u16, Vec<u16>)>),
}

impl Condition {
    /// The config name, which is also the reason in the route header.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tools(_) => "tools",
            Self::Images(_) => "images",
            Self::JsonMode(_) => "json_mode",
            Self::Stream(_) => "stream",
            Self::PromptTokens(_) => "prompt_tokens",
            Self::MaxTokens(_) => "max_tokens",
            Self::Turns(_) => "turns",
            Self::Keywords(_) => "keywords",
            Self::Regex(_) => "regex",
            Self::Header(_) => "header",
            Self::Tenant(_) => "tenant",
            Self::ModelRequested(_) => "model_requested",
            Self::Class(_) => "class",
        }
    }
}

/// What a rule sends the request to (model indices).
#[derive(Debug, Clone)]
pub enum Target {
    Model(usize),
    /// Weighted A/B or canary between models.
    Split {
        arms: Vec<(usize, u32)>,
        sticky: Sticky,
    },
    /// The best of these by `prefer` that fits the request; the others follow as fallbacks.
    Candidates {
        models: Vec<usize>,
        prefer: Sort,
    },
}

/// What keeps a client on one split arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sticky {
    /// `x-session-id`, else the body's `user`; a request with neither is placed at random.
    Session,
    Tenant,
    None,
}

impl Sticky {
    pub const NAMES: [&'static str; 3] = ["session", "tenant", "none"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "session" => Some(Self::Session),
            "tenant" => Some(Self::Tenant),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// An order of candidates: the rule's `prefer`, or the request's `provider.sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Cheapest for this request (its estimated prompt and completion tokens).
    Price,
    /// Lowest predicted time to first token.
    Latency,
    /// Highest observed decode rate.
    Throughput,
}

impl Sort {
    pub const ALL: [Sort; 3] = [Sort::Price, Sort::Latency, Sort::Throughput];
    pub const NAMES: [&'static str; 3] = ["price", "latency", "throughput"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "price" => Some(Self::Price),
            "latency" => Some(Self::Latency),
            "throughput" => Some(Self::Throughput),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Price => "price",
            Self::Latency => "latency",
            Self::Throughput => "throughput",
        }
    }
}

/// `models.X.shadow`: a sample of the model's admitted requests is mirrored to another model,
/// whose answer is read and discarded.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// Model index (never virtual).
    pub to: usize,
    /// Share of requests mirrored, 0 < percent <= 100.
    pub percent: f64,
    /// Mirrors in flight at most; over it a mirror is skipped (and counted).
    pub max_inflight: u64,
}
