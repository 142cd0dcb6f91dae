//! Issue 13: egress.

#[allow(unused_imports)]
use crate::common;
