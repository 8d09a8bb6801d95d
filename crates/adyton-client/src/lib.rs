//! Typed clients of Adyton's services, over HTTP only: this crate never links a service crate.
//!
//! So far: [`KbsClient`], the key broker's admin API (`docs/kbs.md`, "Admin API"). The client is
//! blocking (`ureq` on rustls with aws-lc-rs, Mozilla's roots compiled in), so callers need no async
//! runtime.

#![forbid(unsafe_code)]

mod error;
pub mod kbs;

pub use error::ClientError;
pub use kbs::{KbsClient, KeyInfo, KeyInformation, PolicyInfo, Token};
