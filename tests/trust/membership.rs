//! Issue 13: membership.

#[allow(unused_imports)]
use crate::common;
