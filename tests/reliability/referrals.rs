//! Section `referrals` (being written).

use crate::report::{Ctx, Figures};

pub fn run(_ctx: &Ctx) -> Figures {
    panic!("section referrals is not written yet")
}
