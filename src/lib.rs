//! sqlgate: a protocol-aware database firewall gateway.
//!
//! Agents connect with ordinary drivers and an OIDC access token as the password.
//! The core is protocol-agnostic — identity → policy → session → audit — and each
//! wire protocol is a front end onto it:
//!
//! * [`config`]: `gateway.toml`, validated with messages that name file, key, problem.
//! * [`identity`]: token verification against the issuer's JWKS → [`identity::Principal`];
//!   and a dev OIDC issuer.
//! * [`policy`]: principal × connection → [`policy::Grant`]; statement facts →
//!   [`policy::readonly::Verdict`].
//! * [`sql`]: the classifier — per-dialect front ends filling one fact sheet.
//! * [`catalog`]: upstream facts the text cannot show (function volatility).
//! * [`audit`]: the trail of grant decisions and statements.
//! * [`session`]: sockets and relays; [`session::postgres`] is the Postgres front end.
//! * [`gateway`]: listeners, shared services, shutdown.
//! * [`tls`], [`demo`], [`cli`]: the rest of the binary.

pub mod audit;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod identity;
pub mod policy;
pub mod session;
pub mod sql;
pub mod tls;
