//! Tests of issue 14: inner.
