//! Section `configs` (being written).

use crate::report::{Ctx, Figures};

pub fn run(_ctx: &Ctx) -> Figures {
    panic!("section configs is not written yet")
}
