//! Fake of the Anthropic API for the forwarder tests (owned by the forwarder work).
