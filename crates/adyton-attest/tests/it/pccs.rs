//! Tests: the PCCS and KDS client against a local server.
