//! Tests of issue 14: traces.
