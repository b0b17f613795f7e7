//! The kinds of inference server a pool may front (`pools.X.engine`).

/// The inference engine behind a pool: its health path and the names of its load metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Vllm,
    Sglang,
    Tgi,
    Llamacpp,
    Ollama,
    Openai,
}

impl Engine {
    pub const NAMES: [&'static str; 6] = ["vllm", "sglang", "tgi", "llamacpp", "ollama", "openai"];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "vllm" => Self::Vllm,
            "sglang" => Self::Sglang,
            "tgi" => Self::Tgi,
            "llamacpp" => Self::Llamacpp,
            "ollama" => Self::Ollama,
            "openai" => Self::Openai,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
            Self::Tgi => "tgi",
            Self::Llamacpp => "llamacpp",
            Self::Ollama => "ollama",
            Self::Openai => "openai",
        }
    }
}
