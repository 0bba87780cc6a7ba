//! Integration tests: every test starts the real `croupier` binary on loopback with its own temporary
//! data dirs and talks to it through the Rust client (or raw gRPC for malformed requests).

mod common;

mod bad_input;
mod corruption;
mod crash;
mod faults;
mod fuzz;
mod integrity;
mod lifecycle;
mod memory;
mod model;
mod multi_server;
mod ops;
mod recycling;
mod round_trip;
mod security;
