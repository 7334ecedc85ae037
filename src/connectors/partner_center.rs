//! Placeholder replaced by the partner_center client.
