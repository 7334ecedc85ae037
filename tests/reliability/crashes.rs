//! Section `crashes` (being written).

use crate::report::{Ctx, Figures};

pub fn run(_ctx: &Ctx) -> Figures {
    panic!("section crashes is not written yet")
}
