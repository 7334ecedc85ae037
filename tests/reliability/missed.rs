//! Section `missed` (being written).

use crate::report::{Ctx, Figures};

pub fn run(_ctx: &Ctx) -> Figures {
    panic!("section missed is not written yet")
}
