//! Test plugin: `name-group` allocates 1 MiB after 1 MiB and never lets go. The agent's memory limit must stop
//! it (a failed `memory.grow`, or Rust's allocation-failure abort, both end in a trap).

/// Allocates until the host says no. Each chunk is filled, and `black_box` keeps the optimiser from dropping the
/// hoard.
pub fn hog() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(std::hint::black_box(vec![0xa5u8; 1 << 20]));
        std::hint::black_box(&mut hoard);
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "naming-policy", path: "../../../wit/0.1.0" });

    use exports::writeback::plugin::naming::Guest;
    use writeback::plugin::types::{Group, Placement};

    struct Hog;

    impl Guest for Hog {
        fn name_group(_group: Group) -> Result<Placement, String> {
            super::hog()
        }
    }

    export!(Hog);
}
