//! Getting artifacts: HTTP with retries and proxies, rate limits, verified downloads and
//! archive extraction.

pub mod extract;
pub mod fetch;
pub mod http;
pub mod proxy;
pub mod rate;
pub mod url;
