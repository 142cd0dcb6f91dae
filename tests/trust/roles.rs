//! Issue 13: roles.

#[allow(unused_imports)]
use crate::common;
