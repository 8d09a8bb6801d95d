//! The key broker: stores model keys under a master key, and releases a key, wrapped to a TEE's
//! public key, only to evidence that satisfies the key's transfer policy (`design.md`,
//! "KBS key transfer").

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
mod error;
pub mod http;
pub mod master_key;
pub mod service;
pub mod store;
pub mod transfer;

pub use error::{KbsError, Result, ServiceError};
