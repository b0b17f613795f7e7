//! The floor under the gateway: the smallest Pingora proxy there is, built from the same
//! Pingora, with the same process settings as Switchyard (threads, work-stealing runtime,
//! no L4 read buffer) and nothing of ours on the request path. `benches/load.sh` measures it
//! beside nginx and Switchyard, so that a gap to nginx can be split into what Pingora costs
//! and what the gateway adds.
//!
//! Usage: `pingora_floor LISTEN_ADDR UPSTREAM_ADDR [THREADS]` (forwards every request as is).

use async_trait::async_trait;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Floor {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora_floor LISTEN_ADDR UPSTREAM_ADDR [THREADS]");
        std::process::exit(2);
    };
    let threads = args
        .next()
        .and_then(|t| t.parse().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    let conf = ServerConf {
        threads,
        work_stealing: true,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, Floor { upstream });
    service.add_listener(
        ListenerConfig::tcp(listen.as_str()).l4_buffer(L4BufferSettings::default().read(0)),
    );
    server.add_service(service);
    eprintln!("listening on {listen} (floor)");
    server.run_forever();
}
