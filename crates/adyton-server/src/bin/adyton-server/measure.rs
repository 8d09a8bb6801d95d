//! `adyton-server measure`: this binary's SIM measurement, which a policy's `[sim]` table pins.

use adyton_attest::sim;
use adyton_cli::files::print_stdout;
use anyhow::Result;

/// Prints the SIM measurement (SHA-384 of this executable), alone on the last line.
pub fn measure() -> Result<()> {
    let measurement = sim::measurement_of_this_build()?;
    let exe = std::env::current_exe()
        .map_or_else(|_| "adyton-server".into(), |p| p.display().to_string());
    print_stdout(&format!(
        "SIM measurement (SHA-384 of {exe}), for a policy's [sim] measurement list:\n{}",
        hex::encode(measurement)
    ))
}
