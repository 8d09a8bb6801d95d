//! What Adyton's two binaries share at the edge: `adyton` (the operator's commands, the key
//! broker, the registry, the demo) and `adyton-server` (what runs in the TEE).
//!
//! - [`net`]: the one serve loop of every server (bind, bounded connections, timeouts, graceful
//!   shutdown), its `[connections]` section and flags, and the listen and TLS flag groups.
//! - [`collateral`]: where collateral comes from (bundle file, PCCS, KDS): the flag group of
//!   every verifier and the `[collateral]` table.
//! - [`files`]: outputs written atomically, bounded reads, standard output.
//! - [`secrets`]: bearer-token files (bounded, zeroized, a warning when others may read them) and
//!   the `--token-file` flag group.
//! - [`bytes`]: byte-count flags (`64K`, `512M`, `2G`).
//! - [`report_data`]: report data given as hex.
//!
//! For binaries only: errors are `anyhow`'s, with the file or flag they concern.

#![forbid(unsafe_code)]

pub mod bytes;
pub mod collateral;
pub mod files;
pub mod net;
pub mod report_data;
pub mod secrets;
