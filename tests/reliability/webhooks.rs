//! Section `webhooks` (being written).

use crate::report::{Ctx, Figures};

pub fn run(_ctx: &Ctx) -> Figures {
    panic!("section webhooks is not written yet")
}
