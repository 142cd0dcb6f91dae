//! Issue 13: auth.

#[allow(unused_imports)]
use crate::common;
