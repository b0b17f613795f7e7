//! Switchyard: an LLM inference gateway on Pingora. One OpenAI-compatible API in front of
//! self-hosted GPU inference servers; see DESIGN.md for the request path.

pub mod admin;
pub mod app;
pub mod balance;
pub mod config;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod proxy;
pub mod routing;
pub mod sim;
pub mod state;
pub mod upstream;
