//! The logic of cosell's fuzz targets, one module per target (`fuzz_targets/*.rs` only call
//! `run`). Each `run` takes the fuzzer's bytes and must never panic on them: a panic, an
//! abort, a timeout or running out of memory is a product bug. The few `assert!`s here check
//! guarantees the product documents (errors point inside the file, nothing unverified reaches
//! the webhook sink), so a broken guarantee shows up as a crash too.
//!
//! The unit test at the bottom runs every committed seed through its target with the stable
//! compiler (`cargo test --manifest-path fuzz/Cargo.toml`), so the targets stay runnable
//! without nightly flags.

pub mod config_loader;
pub mod mapping_interpreter;
pub mod webhook_handler;

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("seed entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        files
            .iter()
            .map(|path| std::fs::read(path).expect("seed"))
            .collect()
    }

    #[test]
    fn config_loader_seeds() {
        for seed in seeds("config_loader") {
            super::config_loader::run(&seed);
        }
    }

    #[test]
    fn mapping_interpreter_seeds() {
        for seed in seeds("mapping_interpreter") {
            super::mapping_interpreter::run(&seed);
        }
    }

    #[test]
    fn webhook_handler_seeds() {
        for seed in seeds("webhook_handler") {
            super::webhook_handler::run(&seed);
        }
    }

    /// The shipped mappings are valid: the loader seeds reach the compiler and the
    /// evaluation, not just the YAML parser.
    #[test]
    fn shipped_mappings_compile() {
        for file in ["dynamics365.yaml", "salesforce.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../mappings")
                .join(file);
            let checked = cosell::load::check_file(&path, &[]).expect("read");
            assert!(checked.plan.is_some(), "{file}: {:?}", checked.diagnostics);
        }
    }

    /// Each webhook seed reaches the step it was written for: a signed referral event gets
    /// to the sink, the others are answered by the step that refuses them (the target's
    /// oracle is only useful when both happen).
    #[test]
    fn webhook_seeds_reach_their_step() {
        use super::webhook_handler::{Outcome, deliver};
        let seed = |name: &str| {
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("seeds/webhook_handler")
                    .join(name),
            )
            .expect("seed")
        };
        for (name, status, accepted) in [
            ("signed-referral-updated", 200, 1),
            ("ms-signature-test-created", 200, 0),
            ("wrong-signature", 401, 0),
            ("forged-signature", 401, 0),
            ("bad-headers", 401, 0),
            ("signed-odd-event", 400, 0),
            ("signed-declared-too-large", 413, 0),
            ("ms-signature-camelcase-referral", 200, 1),
            ("signed-unknown-certificate", 503, 0),
        ] {
            assert_eq!(deliver(&seed(name)), Outcome { status, accepted }, "{name}");
        }
        // The signed referral once more, now with the certificate cached and the signature
        // over other bytes.
        let mut forged = seed("signed-referral-updated");
        forged[0] = super::webhook_handler::MODE_WRONG_SIGNATURE;
        assert_eq!(
            deliver(&forged),
            Outcome {
                status: 401,
                accepted: 0
            }
        );
    }
}
