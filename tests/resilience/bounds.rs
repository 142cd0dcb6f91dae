//! Tests: manifests that ask for unbounded work, and starts that must not block each other.
