//! Who is calling, and what their admission holds until the request ends.

use std::sync::Arc;

use crate::limits::{Admission, RateHeaders};

#[derive(Default)]
pub struct Tenancy {
    /// The caller's tenant (index into `runtime.tenants.list`); `None` on an open gateway.
    pub tenant: Option<usize>,
    /// Its name, for the access log.
    pub name: Option<Arc<str>>,
    /// Permits and token reservations; settled and released when the request ends.
    pub admission: Option<Admission>,
    /// `x-ratelimit-*` values for the response.
    pub rate_headers: Option<RateHeaders>,
}
