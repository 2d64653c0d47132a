//! [`SimState`]: everything the handlers share: the settings, the token,
//! ticket and user stores, the faults in force, the counters, and the HTTP
//! client that delivers callbacks.

use crate::config::Settings;
use crate::faults::Faults;
use crate::stats::Stats;
use crate::tickets::TicketStore;
use crate::tokens::TokenStore;
use crate::users::UserStore;

/// The simulator's whole state. Each store locks on its own; no handler
/// holds two locks at once.
#[derive(Debug)]
pub struct SimState {
    pub settings: Settings,
    pub tokens: TokenStore,
    pub tickets: TicketStore,
    pub users: UserStore,
    pub faults: Faults,
    pub stats: Stats,
    /// Delivers callbacks (no proxy: the callback is usually local).
    pub http: reqwest::Client,
}

impl SimState {
    pub fn new(settings: Settings) -> Result<SimState, reqwest::Error> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .user_agent("Mozilla/4.0")
            .pool_max_idle_per_host(32)
            .build()?;
        Ok(SimState {
            tokens: TokenStore::new(settings.token_lifetime),
            tickets: TicketStore::new(settings.max_tickets),
            users: UserStore::default(),
            faults: Faults::default(),
            stats: Stats::default(),
            http,
            settings,
        })
    }
}

pub use protocol::wechat::unix_now;
