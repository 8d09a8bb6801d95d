//! The envelope format flag, shared by `adyton model encrypt` and `adyton model publish` (and
//! the demo's stack, which publishes through the latter's code).

use clap::ValueEnum;

/// Envelope format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// CNAP single-shot format (whole file in memory, at most 4 GiB).
    V1,
    /// Adyton chunked streaming format.
    V2,
}
