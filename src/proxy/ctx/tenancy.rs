//! Who is calling, and what their admission holds until the request ends.

use std::sync::Arc;

use crate::limits::{Admission, RateHeaders};

#[derive(Default)]
pub struct Tenancy {
    /// The caller's tenant (index into `runtime.tenants.list`); `None` on an open gateway.
    pub tenant: Option<usize>,
    /// Its name, for the access log.
    pub name: Option<Arc<str>>,
    /// Permits and token reservations; settled and released when the request ends. `None`
    /// when no limit applies (an open gateway). Boxed: the context lives in Pingora's request
    /// future, which is moved whole into a box for every request, so each of its bytes is
    /// copied per request; an admission is 232 bytes, and with it inline (and the route's
    /// indices as usize) the context was 1 224 bytes where it is 944 now, ~1 000 instructions
    /// per request apart under callgrind.
    pub admission: Option<Box<Admission>>,
    /// `x-ratelimit-*` values for the response.
    pub rate_headers: Option<RateHeaders>,
}
