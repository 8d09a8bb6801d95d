//! End-to-end tests of the `adyton` binary, and interoperability with the reference Python code.

mod interop;
mod model_cli;
mod support;
