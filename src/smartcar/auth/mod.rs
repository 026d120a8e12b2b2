//! The application token (contract §1): OAuth 2.0 client credentials, one token for the whole
//! application, valid about an hour, no refresh token.
//!
//! One background task, the *refresher*, is the only code that ever calls the token endpoint.
//! Callers read the current token from a `watch` channel; when there is none (or it was
//! invalidated) they nudge the refresher and wait for the next published state. However many
//! tasks ask at once, one request goes out: single flight by construction.
//!
//! The refresher renews ahead of expiry (75–90 % of `expires_in`, jittered so a fleet of daemons
//! does not renew in lockstep). On a transient failure it keeps the current token published until
//! it really expires and retries with backoff. A rejected credential (`invalid_client`) is logged
//! once per attempt, retried on a long backoff, and the secret is re-read every attempt so an
//! operator can rotate it without a restart.
//!
//! Five concerns, one file each: [`secret`] (where the client secret comes from), [`token`]
//! (the token and its errors), [`provider`] (the single-flight state callers share), [`exchange`]
//! (the refresher: the OAuth request, renewal and backoff) and [`audit`] (what each issued token
//! was used for).

mod audit;
mod exchange;
mod provider;
mod secret;
mod token;

pub use audit::{TokenAudit, TokenUse};
pub(crate) use exchange::describe_transport;
pub use provider::{TokenConfig, TokenProvider};
pub use secret::SecretSource;
pub use token::{AccessToken, TokenError, fingerprint};
