//! Test plugin: `name-group` never returns. The agent must stop it at its wall-clock limit (epoch
//! interruption), log it, and carry on with a fresh instance.

/// Counts for ever. `black_box` keeps the optimiser from proving anything about the counter, so the loop stays a
/// real loop that burns CPU (and passes the epoch checks at its back edge).
pub fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter).wrapping_add(1);
        std::hint::black_box(&mut counter);
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../../wit/0.1.0" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::types::{Group, Placement};

    struct Spin;

    impl Guest for Spin {
        fn name_group(_group: Group) -> Result<Placement, String> {
            super::spin()
        }
    }

    export!(Spin);
}
