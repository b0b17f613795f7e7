//! Switchyard: an LLM inference gateway on Pingora. One OpenAI-compatible API in front of
//! self-hosted GPU inference servers; see DESIGN.md for the request path.

pub mod admin;
pub mod app;
pub mod balance;
pub mod cache;
pub mod config;
pub mod fleet;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod otel;
pub mod proxy;
pub mod routing;
pub mod sim;
pub mod state;
pub mod tls;
pub mod upstream;

/// Locks `m` whether or not a holder panicked: every mutex here guards plain data that each
/// critical section leaves consistent (an insert, a counter, a buffer append), so a panic
/// elsewhere is no reason to stop using it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
