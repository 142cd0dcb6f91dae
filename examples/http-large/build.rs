//! Generates distinct functions and a table of them into `$OUT_DIR/generated.rs`: code rustc
//! at opt-level 0 turns out quickly and that a wasm engine must still compile, so the
//! component's compile (not its build) takes seconds. `HTTP_LARGE_FUNCTIONS` sets how many
//! (default 3000: a ~5 MB component, seconds to compile; `bench/slow-start.sh` builds more).

use std::fmt::Write as _;

/// How many functions by default; each is `STEPS` mixing steps on a `u64`.
const FUNCTIONS: usize = 3000;
const STEPS: usize = 40;

fn main() {
    println!("cargo:rerun-if-env-changed=HTTP_LARGE_FUNCTIONS");
    let functions = match std::env::var("HTTP_LARGE_FUNCTIONS") {
        Ok(n) => n
            .parse()
            .expect("HTTP_LARGE_FUNCTIONS is a number of functions"),
        Err(_) => FUNCTIONS,
    };
    let mut code = String::new();
    for f in 0..functions {
        let _ = writeln!(
            code,
            "#[inline(never)]\nfn mix_{f}(x: u64) -> u64 {{\n    let mut a = x;"
        );
        for s in 0..STEPS {
            // Constants differ per function and step, so no two bodies are merged.
            let k = (f as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (s as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            let shift = (f + s) % 31 + 1;
            let _ = writeln!(
                code,
                "    a = (a ^ (a >> {shift})).wrapping_mul({k:#x}).rotate_left({});",
                (f * 7 + s) % 63 + 1
            );
        }
        let _ = writeln!(code, "    a\n}}");
    }
    let _ = writeln!(
        code,
        "/// Every generated function, so none is left out of the component."
    );
    let _ = writeln!(code, "pub static MIXERS: [fn(u64) -> u64; {functions}] = [");
    for f in 0..functions {
        let _ = writeln!(code, "    mix_{f},");
    }
    let _ = writeln!(code, "];");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(std::path::Path::new(&out).join("generated.rs"), code)
        .expect("writing generated.rs");
    println!("cargo:rerun-if-changed=build.rs");
}
