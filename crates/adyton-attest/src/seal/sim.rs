//! SIM sealing: keys from the SIM key file's seed. INSECURE by design: whoever reads the key file
//! has every SIM sealing key.

use std::fmt;

use zeroize::Zeroizing;

use crate::attester::sim::SimAttester;
use crate::error::Result;
use crate::evidence::TeeKind;
use crate::seal::{derive_key, Sealer, SealingKey, SealingPolicy};

/// Derives sealing keys from a SIM attester's seed. The exact-build policy mixes in the SIM
/// measurement; the signer policy does not, because SIM builds are unsigned: under it any build
/// on the same SIM device (the same SIM key file) gets the key.
pub struct SimSealer {
    seed: Zeroizing<[u8; 32]>,
    measurement: [u8; 48],
}

impl SimSealer {
    /// The sealer of `attester`'s device (its seed) and build (its measurement).
    pub fn new(attester: &SimAttester) -> Self {
        Self {
            seed: Zeroizing::new(*attester.secret_seed()),
            measurement: attester.measurement(),
        }
    }
}

impl fmt::Debug for SimSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSealer")
            .field("measurement", &hex::encode(self.measurement))
            .finish_non_exhaustive()
    }
}

impl Sealer for SimSealer {
    fn tee(&self) -> TeeKind {
        TeeKind::Sim
    }

    fn sealing_key(&self, policy: SealingPolicy, context: &[u8]) -> Result<SealingKey> {
        let binding: &[u8] = match policy {
            SealingPolicy::ExactBuild => &self.measurement,
            SealingPolicy::Signer => &[],
        };
        derive_key(TeeKind::Sim, policy, self.seed.as_slice(), binding, context)
    }
}
