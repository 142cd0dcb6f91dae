//! Tests of issue 14: logs.
